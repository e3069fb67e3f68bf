"""train.py end to end on tiny configs: the documented recipe, towers, resume, TF_CONFIG."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers

tf1 = tf.compat.v1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  directory = tmp_path_factory.mktemp("data")
  return helpers.make_dataset(directory, train_videos=24, validate_videos=8,
                              min_frames=20, max_frames=60)


def _checkpoint_values(checkpoint, prefix=""):
  return {name: tf.train.load_variable(checkpoint, name)
          for name, _ in tf.train.list_variables(checkpoint) if name.startswith(prefix)}


def test_readme_documented_command_runs_verbatim(data, tmp_path):
  """The README's command string itself, with only data, steps and sizes appended.

  absl keeps the last value of a repeated flag, so appended flags override the
  command's own; everything else (model, features, PCA preprocessing by default,
  classifier, loss, learning rate, --max_step, --num_gpu=2, --visible_gpu, the relative
  --train_dir) runs as written. The teacher and the baseline runs append their
  --model_type and --k_frame too; the KD run (the command's own k=30) does not.
  """
  from tools import documented_command
  import preprocessing
  command = documented_command.documented_command()
  assert command.startswith("python train.py ") and command.endswith(
      "--k_frame=30 --model_type=KD")
  train_pattern, _ = data
  overrides = ["--train_data_pattern=" + train_pattern, "--max_step=3",
               "--export_model_steps=2", "--batch_size=4", "--groups=2",
               "--nextvlad_cluster_size=4", "--nextvlad_hidden_size=16", "--expansion=1",
               "--gating_reduction=4", "--num_classes=20"]
  verbatim = documented_command.documented_flags()
  runs = [(["--model_type=teacher", "--k_frame=300"], "_teacher"),
          (["--model_type=teacher", "--k_frame=30"], "_student_k_30"),
          ([], "_KD_k_30")]
  for kind_flags, _ in runs:
    out = helpers.run_cli("train.py", verbatim + overrides + kind_flags,
                          cwd=str(tmp_path)).stdout
    assert out.splitlines()[0].startswith("Run directory: ")
  base = str(tmp_path / "nextvlad_8g_5l2_5drop_128k_2048_2x80_logistic")
  teacher_dir, student_dir, kd_dir = [base + suffix for _, suffix in runs]
  scale = preprocessing.Preprocessing.from_eigenvalues(
      preprocessing.DEFAULT_EIGENVALS).rgb_scale
  for directory in (teacher_dir, student_dir, kd_dir):
    checkpoint = tf1.train.latest_checkpoint(directory)
    assert checkpoint.endswith("-3"), directory
    # PCA scaling by default, from the repository's yt8m_pca/ although cwd is tmp_path.
    recorded = json.load(open(os.path.join(directory, "model_flags.json")))
    assert recorded["preprocessing"] == "pca_eigenvals"
    np.testing.assert_array_equal(
        tf.train.load_variable(checkpoint, "input_preprocessing/rgb_scale"), scale)
  flags = json.load(open(os.path.join(kd_dir, "model_flags.json")))
  assert (flags["model_type"], flags["k_frame"], flags["model"], flags["label_loss"],
          flags["l2_penalty"]) == ("KD", 30, "NeXtVLADModel", "CrossEntropyLoss", 1e-5)
  teacher = _checkpoint_values(tf1.train.latest_checkpoint(teacher_dir), "teacher/")
  kd_teacher = _checkpoint_values(tf1.train.latest_checkpoint(kd_dir), "teacher/")
  # Every teacher variable of the KD graph (weights and batch-norm statistics; the
  # teacher run's Adam slots are not part of it) equals the teacher run's value.
  assert set(kd_teacher) <= set(teacher)
  assert set(kd_teacher) == {n for n in teacher if "/Adam" not in n}
  assert any("moving_mean" in n for n in kd_teacher)
  for name in kd_teacher:
    np.testing.assert_array_equal(teacher[name], kd_teacher[name], err_msg=name)
  # The baseline trained student/ variables only; the teacher run teacher/ only.
  assert not _checkpoint_values(tf1.train.latest_checkpoint(student_dir), "teacher/")
  assert not _checkpoint_values(tf1.train.latest_checkpoint(teacher_dir), "student/")


def test_model_type_student_is_the_baseline_too(data, tmp_path):
  train_pattern, _ = data
  helpers.run_cli("train.py", [
      "--train_data_pattern=" + train_pattern, "--train_dir=%s/run" % tmp_path,
      "--model_type=student", "--k_frame=5", "--batch_size=4", "--max_steps=1"] +
      helpers.TINY_MODEL)
  assert tf1.train.latest_checkpoint(str(tmp_path / "run_student_k_5"))


def test_bf16_trains_float32_variables_and_resumes_without_it(data, tmp_path):
  train_pattern, _ = data
  common = ["--train_data_pattern=" + train_pattern, "--train_dir=%s/run" % tmp_path,
            "--batch_size=4", "--export_model_steps=100"] + helpers.TINY_MODEL
  helpers.run_cli("train.py", common + ["--max_steps=2", "--bf16"])
  run_dir = str(tmp_path / "run_teacher")
  assert json.load(open(os.path.join(run_dir, "model_flags.json")))["bf16"] is True
  reader = tf1.train.NewCheckpointReader(tf1.train.latest_checkpoint(run_dir))
  dtypes = reader.get_variable_to_dtype_map()
  assert dtypes and all(d in (tf.float32, tf.int64) for d in dtypes.values()), dtypes
  before = _checkpoint_values(tf1.train.latest_checkpoint(run_dir), "teacher/")
  assert all(np.all(np.isfinite(v)) for v in before.values())
  # Recorded for information only: the run resumes in float32.
  out = helpers.run_cli("train.py", common + ["--max_steps=3"]).stdout
  assert "Starting at step 2 (resumed)" in out


def test_bf16_session_config_turns_on_the_onednn_rewrite(monkeypatch):
  monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # see test_utils for the limit
  from tensorflow.core.protobuf import rewriter_config_pb2
  import sessions
  rewrites = sessions.session_config().graph_options.rewrite_options
  assert rewrites.auto_mixed_precision_onednn_bfloat16 != rewriter_config_pb2.RewriterConfig.ON
  rewrites = sessions.session_config(bf16=True).graph_options.rewrite_options
  assert rewrites.auto_mixed_precision_onednn_bfloat16 == rewriter_config_pb2.RewriterConfig.ON


def _one_step(train_pattern, train_dir, batch_size, towers):
  helpers.run_cli("train.py", [
      "--train_data_pattern=" + train_pattern, "--train_dir=" + train_dir,
      "--model=FrameLevelLogisticModel", "--num_classes=20", "--optimizer=GradientDescentOptimizer",
      "--base_learning_rate=0.5", "--batch_size=%d" % batch_size, "--max_steps=1",
      "--seed=3", "--clip_gradient_norm=0", "--l2_penalty=0.1"],
      env={"YT8M_CPU_TOWERS": str(towers)} if towers > 1 else None)
  return _checkpoint_values(tf1.train.latest_checkpoint(train_dir + "_teacher"))


def test_two_cpu_towers_update_like_one_tower_on_the_same_global_batch(data, tmp_path):
  train_pattern, _ = data
  one = _one_step(train_pattern, str(tmp_path / "one"), 8, 1)
  two = _one_step(train_pattern, str(tmp_path / "two"), 4, 2)
  initial_one = _checkpoint_values(str(tmp_path / "one_teacher" / "model.ckpt-0"))
  weights = "teacher/tower/classifier/logistic/weights"
  assert not np.allclose(one[weights], initial_one[weights])  # the step did something
  for name in one:
    np.testing.assert_allclose(one[name], two[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_batch_norm_statistics_stay_valid_when_towers_update_them_together(data, tmp_path):
  # Both towers update each moving average at the same time; with the debiased rates
  # near 1 of the first steps, a read-modify-write from a stale read once drove
  # vlad_bn's moving variance to -0.2, and every prediction after training to NaN.
  train_pattern, validate_pattern = data
  helpers.run_cli("train.py", [
      "--train_data_pattern=" + train_pattern, "--eval_data_pattern=" + validate_pattern,
      "--train_dir=%s/towers" % tmp_path, "--model_type=student", "--k_frame=5",
      "--batch_size=4", "--max_steps=2", "--export_model_steps=2", "--seed=1"]
      + helpers.TINY_MODEL, env={"YT8M_CPU_TOWERS": "2"})
  run = str(tmp_path / "towers_student_k_5")
  values = _checkpoint_values(tf1.train.latest_checkpoint(run))
  variances = {name: v for name, v in values.items() if name.endswith("moving_variance")}
  assert len(variances) >= 4
  for name, value in variances.items():
    assert np.all(value >= 0), name
  record = [json.loads(l) for l in open(os.path.join(run, "validation.jsonl"))][-1]
  assert record["step"] == 2 and 0 < record["gap"] <= 1


def _learning_rates(train_dir):
  rates = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(train_dir, "events.out.tfevents.*"))):
    for event in tf1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == "learning_rate":
          rates[event.step] = value.simple_value
  return rates


def test_resume_equals_an_uninterrupted_run_in_step_learning_rate_and_weights(
    data, tmp_path):
  # With --seed the record order is fixed and a resumed run skips the batches it had
  # read. No dropout here: dropout draws new random numbers after a resume.
  train_pattern, _ = data
  common = ["--train_data_pattern=" + train_pattern, "--batch_size=4", "--seed=5",
            "--learning_rate_decay_examples=8", "--learning_rate_decay=0.5",
            "--log_every_n_steps=1", "--export_model_steps=100", "--drop_rate=0",
            "--num_readers=2"] + helpers.TINY_MODEL
  # 24 videos, 6 batches an epoch: the interruption at step 4 is mid-epoch, and
  # the run goes on into the second epoch.
  helpers.run_cli("train.py", common + ["--train_dir=%s/full" % tmp_path, "--max_steps=9"])
  helpers.run_cli("train.py", common + ["--train_dir=%s/part" % tmp_path, "--max_steps=4"])
  out = helpers.run_cli("train.py", common + ["--train_dir=%s/part" % tmp_path,
                                              "--max_steps=9"]).stdout
  assert "Starting at step 4 (resumed)" in out
  full, part = str(tmp_path / "full_teacher"), str(tmp_path / "part_teacher")
  assert tf1.train.latest_checkpoint(full).endswith("-9")
  assert tf1.train.latest_checkpoint(part).endswith("-9")
  full_rates, part_rates = _learning_rates(full), _learning_rates(part)
  # Logged with step 9: the rate of the 9th update, floor(8 steps * 4 / 8) = 4 decays.
  assert full_rates[9] == part_rates[9] == pytest.approx(0.01 * 0.5 ** 4)
  assert full_rates == part_rates
  full_values = _checkpoint_values(tf1.train.latest_checkpoint(full))
  part_values = _checkpoint_values(tf1.train.latest_checkpoint(part))
  start = _checkpoint_values(os.path.join(part, "model.ckpt-4"))
  assert set(full_values) == set(part_values)
  weights = "teacher/tower/hidden1/weights"
  assert not np.allclose(start[weights], full_values[weights])  # steps 5-9 did something
  for name in full_values:  # weights, batch-norm statistics, Adam slots
    np.testing.assert_allclose(part_values[name], full_values[name], rtol=1e-5,
                               atol=1e-7, err_msg=name)


def test_resume_with_other_model_flags_is_refused(data, tmp_path):
  train_pattern, _ = data
  common = ["--train_data_pattern=" + train_pattern, "--batch_size=4", "--max_steps=1",
            "--train_dir=%s/run" % tmp_path] + helpers.TINY_MODEL
  helpers.run_cli("train.py", common)
  process = helpers.run_cli("train.py", common + ["--drop_rate=0.1"], check=False)
  assert process.returncode != 0
  line = helpers.user_error_line(process)
  assert "--drop_rate: 0.5 -> 0.1" in line and "--start_new_model" in line
  # --start_new_model=True starts over instead.
  helpers.run_cli("train.py", common + ["--drop_rate=0.1", "--start_new_model=True"])


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_distributed_ps_and_two_workers_train_and_the_chief_checkpoints(data, tmp_path):
  train_pattern, _ = data
  ps, w0, w1 = ["127.0.0.1:%d" % p for p in _free_ports(3)]
  cluster = {"ps": [ps], "worker": [w0, w1]}
  # One epoch of 24 videos is 6 steps per worker, so each worker runs exactly 6 steps
  # whatever the timing, and the global step reaches 12 only with both.
  args = ["--train_data_pattern=" + train_pattern, "--train_dir=%s/dist" % tmp_path,
          "--batch_size=4", "--num_epochs=1", "--export_model_steps=1000",
          "--log_every_n_steps=1"] + helpers.TINY_MODEL
  processes = []
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=helpers.ROOT)
  try:
    for task_type, index in [("ps", 0), ("worker", 0), ("worker", 1)]:
      task_env = dict(env, TF_CONFIG=json.dumps(
          {"cluster": cluster, "task": {"type": task_type, "index": index}}))
      # Logs go to files: a full pipe nobody reads would block the process.
      processes.append(helpers.start_cli(
          "train.py", args, str(tmp_path / ("%s%d.log" % (task_type, index))),
          env=task_env))
    for index, worker in enumerate(processes[1:]):
      worker.wait(timeout=240)
      assert worker.returncode == 0, open(str(tmp_path / ("worker%d.log" % index))).read()
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  checkpoint = tf1.train.latest_checkpoint(str(tmp_path / "dist_teacher"))
  assert checkpoint is not None
  # Both workers ran their 6 steps (one log line each) and the updates all reached the
  # parameter server: the chief's last checkpoint has at least its own 6.
  logs = [open(str(tmp_path / ("worker%d.log" % index))).read() for index in (0, 1)]
  steps_run = [sum(line.startswith("step ") for line in log.splitlines()) for log in logs]
  assert steps_run == [6, 6], logs
  assert all("End of the training data (--num_epochs=1)." in log for log in logs)
  assert any("Done training at step 12;" in log for log in logs), logs
  assert tf.train.load_variable(checkpoint, "global_step") >= 6
  # The chief's checkpoint holds trained values, not the initial ones.
  initial = _checkpoint_values(str(tmp_path / "dist_teacher" / "model.ckpt-0"), "teacher/")
  trained = _checkpoint_values(checkpoint, "teacher/")
  assert set(initial) == set(trained)
  weights = "teacher/tower/hidden1/weights"
  assert not np.allclose(initial[weights], trained[weights])
  assert trained["teacher/tower/hidden1_bn/update_count"] >= 1


def test_a_second_train_py_on_the_same_run_directory_is_refused(data, tmp_path):
  train_pattern, _ = data
  args = ["--train_data_pattern=" + train_pattern, "--train_dir=%s/run" % tmp_path,
          "--batch_size=4", "--export_model_steps=5", "--num_epochs=1000"] + \
      helpers.TINY_MODEL
  log = str(tmp_path / "first.log")
  first = helpers.start_cli("train.py", args, log)
  try:
    deadline = time.time() + 120
    while "Starting at step" not in open(log).read():
      assert first.poll() is None and time.time() < deadline, open(log).read()
      time.sleep(0.1)
    second = helpers.run_cli("train.py", args + ["--max_steps=2"], check=False)
    assert second.returncode == 2
    assert helpers.user_error_line(second) == (
        "train.py: error: %s/run_teacher is in use by another train.py (pid %d); wait "
        "for it to end or use another --train_dir" % (tmp_path, first.pid))
    assert first.poll() is None  # the first one trains on
  finally:
    first.kill()
    first.wait()
  # The lock went with the killed process: the run resumes.
  latest = tf1.train.latest_checkpoint(str(tmp_path / "run_teacher"))
  steps = int(latest.split("-")[-1]) + 1
  out = helpers.run_cli("train.py", args + ["--max_steps=%d" % steps])
  assert "Starting at step %d (resumed)" % (steps - 1) in out.stdout


def test_a_checkpoint_that_does_not_fit_is_one_line(data, tmp_path):
  import resource
  train_pattern, _ = data
  process = subprocess.run(
      [sys.executable, os.path.join(helpers.ROOT, "train.py"),
       "--train_data_pattern=" + train_pattern, "--train_dir=%s/run" % tmp_path,
       "--batch_size=4", "--max_steps=3"] + helpers.TINY_MODEL,
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=helpers.ROOT),
      # A 2 MB file-size limit: the first checkpoint (4 MB of weights) cannot be written.
      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20)))
  assert process.returncode == 2, process.stderr[-2000:]
  assert helpers.user_error_line(process) == (
      "train.py: error: training stopped at step 0: cannot write to %s/run_teacher (File "
      "too large); the last complete checkpoint there is kept" % tmp_path)
