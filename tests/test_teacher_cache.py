"""Offline distillation: train.py --model_type=KD --teacher_cache=DIR."""
import concurrent.futures
import glob
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

import readers
import teacher_cache
from tests import helpers

tf1 = tf.compat.v1
K = 4
# No dropout and uniform frames: the online and the offline graph hold their ops in
# another order, so unseeded random ops would draw differently; everything else is
# the same computation. Plain gradient descent: Adam turns last-bit differences of
# near-zero gradients (the teacher computed on other batches) into full-size steps.
COMMON = ["--batch_size=4", "--num_readers=2", "--seed=7", "--drop_rate=0",
          "--log_every_n_steps=1", "--export_model_steps=1000",
          "--optimizer=GradientDescentOptimizer", "--base_learning_rate=0.05"
          ] + helpers.TINY_MODEL


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("cache")
  train, validate = helpers.make_dataset(root / "data", train_videos=24,
                                         validate_videos=8, min_frames=10, max_frames=40)
  base = str(root / "run")
  helpers.run_cli("train.py", ["--train_data_pattern=" + train, "--train_dir=" + base,
                               "--max_steps=6"] + COMMON)
  return {"root": root, "train": train, "validate": validate, "base": base,
          "teacher": base + "_teacher"}


def _train(setup, *args, check=True):
  return helpers.run_cli("train.py", ["--train_data_pattern=" + setup["train"],
                                      "--train_dir=" + setup["base"]] + COMMON +
                         list(args), check=check)


def _values(directory, step, prefix="student/"):
  checkpoint = os.path.join(directory, "model.ckpt-%d" % step)
  return {name: tf.train.load_variable(checkpoint, name)
          for name, _ in tf.train.list_variables(checkpoint) if name.startswith(prefix)}


def _loss_lines(out):
  """{step: {term: value}} from train.py's log lines."""
  terms = {}
  for line in out.splitlines():
    match = re.match(r"step (\d+) \| loss ([0-9.]+)(.*?) \| hit@1", line)
    if match:
      values = dict(re.findall(r"\| (\w+_loss) ([0-9.]+)", line))
      values["total"] = match.group(2)
      terms[int(match.group(1))] = {k: float(v) for k, v in values.items()}
  return terms


def _offline_from_the_same_start(setup, online_dir, name, *args):
  """An offline KD run with the online run's seed, trained the same steps on the same
  batches from scratch: its variables are seeded by name (model_utils.stable_seed), so
  without a teacher in the graph it starts from the online student's weights."""
  base = str(setup["root"] / name)
  run = base + "_KD_k_%d" % K
  out = helpers.run_cli("train.py", [
      "--train_data_pattern=" + setup["train"], "--train_dir=" + base,
      "--teacher_checkpoint=" + setup["teacher"], "--model_type=KD", "--k_frame=%d" % K,
      "--max_steps=20"] + COMMON + list(args)).stdout
  assert "Starting at step 0." in out
  online_start, offline_start = _values(online_dir, 0, "student/"), _values(run, 0)
  assert set(online_start) == set(offline_start) and online_start
  for variable, value in online_start.items():
    np.testing.assert_array_equal(offline_start[variable], value, err_msg=variable)
  return run, out


@pytest.fixture(scope="module")
def online(setup):
  out = _train(setup, "--model_type=KD", "--k_frame=%d" % K, "--max_steps=20").stdout
  return setup["base"] + "_KD_k_%d" % K, out


def test_float32_cache_trains_the_same_student_as_online_kd(setup, online):
  online_dir, online_out = online
  cache = str(setup["root"] / "cache32")
  run, out = _offline_from_the_same_start(setup, online_dir, "offline32",
                                          "--teacher_cache=" + cache,
                                          "--teacher_cache_dtype=float32")
  assert "Teacher cache: computing 2 of 2 shards" in out
  assert re.search(r"Teacher cache: 24 videos in 2 shards, [0-9.]+ videos/s", out)
  recorded = json.load(open(os.path.join(run, "model_flags.json")))["teacher_cache"]
  fingerprint = json.load(open(os.path.join(cache, "fingerprint.json")))
  assert recorded["digest"] == fingerprint["digest"]
  assert recorded["teacher_checkpoint"] == os.path.abspath(
      tf1.train.latest_checkpoint(setup["teacher"]))
  assert (recorded["num_files"], recorded["dtype"]) == (2, "float32")
  # No teacher in the offline graph, hence none in its checkpoints.
  assert not _values(run, 20, "teacher/")
  online_values, offline_values = _values(online_dir, 20), _values(run, 20)
  assert set(online_values) == set(offline_values) and online_values
  start = _values(online_dir, 0)
  weights = "student/tower/hidden1/weights"
  assert not np.allclose(start[weights], online_values[weights])
  for name in online_values:  # weights, batch-norm statistics, Adam slots
    # Within 1e-4 of each tensor's scale: the cached and the in-graph teacher outputs
    # differ in their last bits, which 20 steps grow to ~3e-6 on weights of ~0.5 (an
    # element-wise rtol would fail on the near-zero elements of such a tensor).
    scale = float(np.max(np.abs(online_values[name])))
    np.testing.assert_allclose(offline_values[name], online_values[name], rtol=1e-4,
                               atol=max(1e-6, 1e-4 * scale), err_msg=name)
  assert set(_loss_lines(out)) == set(_loss_lines(online_out)) == set(range(1, 21))


def test_float16_cache_gives_the_loss_terms_within_half_a_percent(setup, online):
  online_dir, online_out = online
  cache = str(setup["root"] / "cache16")
  _, out = _offline_from_the_same_start(setup, online_dir, "offline16",
                                        "--teacher_cache=" + cache)
  online_terms, offline_terms = _loss_lines(online_out), _loss_lines(out)
  assert set(online_terms[1]) == {"total", "label_loss", "pred_loss", "rep_loss"}
  for step in online_terms:
    for term, value in online_terms[step].items():
      assert offline_terms[step][term] == pytest.approx(value, rel=5e-3, abs=1e-3), (
          step, term)
  # The entries hold float16 (2 bytes a value) where float32 ones hold 4.
  for directory, width in [(cache, 2), (str(setup["root"] / "cache32"), 4)]:
    record = next(tf1.io.tf_record_iterator(os.path.join(directory,
                                                         "teacher-00000.tfrecord")))
    feature = tf.train.Example.FromString(record).features.feature
    assert len(feature["predictions"].bytes_list.value[0]) == width * 20
    assert len(feature["representation"].bytes_list.value[0]) == width * 16


@pytest.fixture(scope="module")
def built_cache(setup):
  """A float16 cache of the setup's teacher, built alone (--build_teacher_cache_only);
  tests only read it."""
  cache = str(setup["root"] / "cache_built")
  out = _train(setup, "--model_type=KD", "--k_frame=%d" % K, "--teacher_cache=" + cache,
               "--build_teacher_cache_only", "--teacher_checkpoint=" + setup["teacher"]
               ).stdout
  assert "Teacher cache: computing 2 of 2 shards" in out
  return cache


def test_shuffled_readers_join_every_record_with_its_own_video(setup, built_cache):
  # Unseeded shuffling, two readers interleaving: each record must still travel with
  # its own video's cache entry (the cache keys entries by video id).
  cache = built_cache
  with tf.Graph().as_default():
    import config
    cfg = config.defaults().replace(num_classes=20)
    stored = json.load(open(os.path.join(cache, "fingerprint.json")))
    cached = teacher_cache.TeacherCache(
        cache, stored["fingerprint"],
        representation_width=stored["representation_width"])
    expected = {}  # each video's cached predictions, read with protobuf
    for shard in glob.glob(os.path.join(cache, "teacher-*.tfrecord")):
      for record in tf1.io.tf_record_iterator(shard):
        feature = tf.train.Example.FromString(record).features.feature
        expected[feature["id"].bytes_list.value[0]] = np.frombuffer(
            feature["predictions"].bytes_list.value[0], np.float16).astype(np.float32)
    batch = readers.get_input_data_tensors(
        readers.get_reader(cfg, dequantize=False),
        readers.list_data_files(setup["train"]), 5, num_readers=2, num_epochs=3,
        shuffle=True, teacher_cache=cached)
    seen = []
    with tf1.Session() as sess:
      while True:
        try:
          ids, predictions = sess.run([batch["video_ids"],
                                       batch["teacher_predictions"]])
        except tf.errors.OutOfRangeError:
          break
        for video_id, row in zip(ids, predictions):
          assert np.array_equal(row, expected[video_id])
        seen.extend(ids)
  assert len(seen) == 3 * 24 - (3 * 24) % 5 and len(set(seen)) == 24


def test_one_cache_serves_students_of_every_k_and_sampling(setup):
  cache = str(setup["root"] / "cache_shared")
  teacher = "--teacher_checkpoint=" + setup["teacher"]
  first = _train(setup, "--model_type=KD", "--k_frame=3", "--teacher_cache=" + cache,
                 "--max_steps=2", "--train_dir=" + str(setup["root"] / "k3"),
                 teacher).stdout
  assert "Teacher cache: computing 2 of 2 shards" in first
  mtimes = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(cache, "teacher-*"))}
  for name, flags in [("k5", ["--k_frame=5", "--frame_sampling=random"])]:
    out = _train(setup, "--model_type=KD", "--teacher_cache=" + cache, "--max_steps=2",
                 "--train_dir=" + str(setup["root"] / name), teacher, *flags).stdout
    assert "Teacher cache" not in out and "Starting at step 0" in out
  assert mtimes == {p: os.stat(p).st_mtime_ns
                    for p in glob.glob(os.path.join(cache, "teacher-*"))}


def test_a_killed_build_resumes_with_the_missing_shards_only(setup):
  cache = str(setup["root"] / "cache_resume")
  _train(setup, "--model_type=KD", "--k_frame=%d" % K, "--teacher_cache=" + cache,
         "--build_teacher_cache_only")
  # As a kill during the second shard leaves it: the first complete, the second only
  # as a hidden temporary file.
  os.rename(os.path.join(cache, "teacher-00001.tfrecord"),
            os.path.join(cache, ".teacher-00001.tfrecord.123.tmp"))
  kept = os.stat(os.path.join(cache, "teacher-00000.tfrecord")).st_mtime_ns
  out = _train(setup, "--model_type=KD", "--k_frame=%d" % K, "--teacher_cache=" + cache,
               "--build_teacher_cache_only").stdout
  assert "Teacher cache: computing 1 of 2 shards" in out
  assert os.stat(os.path.join(cache, "teacher-00000.tfrecord")).st_mtime_ns == kept
  assert sorted(n for n in os.listdir(cache) if not n.startswith(".")) == [
      "fingerprint.json", "teacher-00000.tfrecord", "teacher-00001.tfrecord"]


def _refused(process):
  assert process.returncode == 2
  return helpers.user_error_line(process)


def test_refusals(setup, tmp_path):
  cache = str(setup["root"] / "cache_refusals")
  kd = ["--model_type=KD", "--k_frame=%d" % K, "--teacher_cache=" + cache]
  _train(setup, *kd, "--build_teacher_cache_only")
  # Another teacher checkpoint: the teacher trained on.
  other_teacher = str(tmp_path / "other")
  helpers.run_cli("train.py", ["--train_data_pattern=" + setup["train"],
                               "--train_dir=" + other_teacher, "--max_steps=7"] + COMMON)
  line = _refused(_train(setup, *kd, "--teacher_checkpoint=" + other_teacher + "_teacher",
                         "--max_steps=1", check=False))
  assert "--teacher_cache=%s holds teacher outputs computed from another teacher " \
         "checkpoint" % cache in line
  # Other data files.
  line = _refused(helpers.run_cli("train.py", [
      "--train_data_pattern=" + setup["train"] + "," + setup["validate"],
      "--train_dir=" + setup["base"], "--max_steps=1"] + COMMON + kd, check=False))
  assert "from other data files" in line
  # (Another preprocessing, teacher config or dtype: test_each_mismatch_is_named.)
  # Parallel KD: the teacher trains.
  line = _refused(_train(setup, *kd, "--kd_mode=parallel", check=False))
  assert "--teacher_cache cannot serve --kd_mode=parallel" in line
  # A record with no cached entry: the shards' contents swapped behind its back.
  tampered = str(tmp_path / "tampered")
  shutil.copytree(cache, tampered)
  for a, b in [("00000", "tmp"), ("00001", "00000"), ("tmp", "00001")]:
    os.rename(os.path.join(tampered, "teacher-%s.tfrecord" % a),
              os.path.join(tampered, "teacher-%s.tfrecord" % b))
  line = _refused(_train(setup, "--model_type=KD", "--k_frame=%d" % K, "--max_steps=2",
                         "--teacher_cache=" + tampered, "--train_dir=" +
                         str(tmp_path / "tampered_run"), "--teacher_checkpoint=" +
                         setup["teacher"], check=False))
  assert "--teacher_cache=%s has no entry for a record of --train_data_pattern" \
         % tampered in line


def test_each_mismatch_is_named():
  wanted = {"teacher": {"preprocessing": "pca_eigenvals", "model": "NeXtVLADModel",
                        "max_frames": 300},
            "rgb_scale_sha256": "a", "teacher_checkpoint_sha256": "c",
            "teacher_checkpoint": "/runs/x_teacher/model.ckpt-6", "files": [["f", 1, 2]],
            "dtype": "float16", "format": teacher_cache.FORMAT, "teacher_scope": "teacher"}
  assert teacher_cache._mismatch(wanted, dict(wanted)) is None
  # Where the teacher lives is not part of a cache's identity: a run directory moves.
  moved = dict(wanted, teacher_checkpoint="/elsewhere/x_teacher/model.ckpt-6")
  assert teacher_cache._mismatch(moved, wanted) is None
  assert teacher_cache.digest(moved) == teacher_cache.digest(wanted)
  cases = [
      (dict(format=1), "by an earlier version of this code"),
      (dict(teacher_scope="student"), "from another teacher checkpoint"),
      (dict(teacher=dict(wanted["teacher"], preprocessing="none"), rgb_scale_sha256=None,
            teacher_checkpoint_sha256="d"), "with another preprocessing"),
      (dict(teacher=dict(wanted["teacher"], max_frames=200)),
       "for another teacher model or feature config (--max_frames differs)"),
      (dict(teacher_checkpoint_sha256="d"),
       "from another teacher checkpoint (/runs/x_teacher/model.ckpt-6)"),
      (dict(files=[["f", 1, 3]]), "from other data files"),
      (dict(dtype="float32"), "in float32, not float16 (--teacher_cache_dtype)")]
  for changes, phrase in cases:
    assert phrase in teacher_cache._mismatch(dict(wanted, **changes), wanted), phrase


def test_offline_kd_with_towers_skipped_records_and_a_resume(setup, tmp_path):
  # A shard with a corrupt record in the middle (a frame of 1000 rgb bytes): the cache
  # holds entries for the valid records only, and training skips the same record.
  from tools import make_synthetic_yt8m as synth
  generator = synth.SyntheticYT8M(seed=5, num_classes=20, num_verticals=4)
  videos = [generator.video("train", index) for index in range(9)]
  videos[4]["rgb"] = videos[4]["rgb"][:, :1000]
  data = str(tmp_path / "mixed.tfrecord")
  synth.write_frame_records(data, videos)
  args = ["--train_data_pattern=" + data, "--train_dir=" + str(tmp_path / "run"),
          "--teacher_checkpoint=" + setup["teacher"], "--model_type=KD", "--k_frame=3",
          "--teacher_cache=" + str(tmp_path / "cache"), "--skip_corrupt_records",
          "--batch_size=2", "--num_epochs=3"] + COMMON[1:]
  towers = {"YT8M_CPU_TOWERS": "2"}  # two towers of 2 videos on logical CPU devices
  out = helpers.run_cli("train.py", args + ["--max_steps=2"], env=towers).stdout
  assert "Teacher cache: 8 videos in 1 shards" in out
  assert "2 towers on logical CPU devices" in out
  assert "skipped 3 corrupt records" in out  # once per epoch: all 3 read ahead
  out = helpers.run_cli("train.py", args + ["--max_steps=4"], env=towers).stdout
  assert "Starting at step 2 (resumed)" in out and "Teacher cache: computing" not in out
  assert tf1.train.latest_checkpoint(str(tmp_path / "run_KD_k_3")).endswith("-4")


def _doctor(shard, predictions, representation):
  """Rewrites every entry of a cache shard with predictions(values) and
  representation(values) in place of the teacher's outputs; ids, record order, the
  tf.train.Example layout and the float16 dtype stay. Returns the number of entries."""
  records = list(tf1.io.tf_record_iterator(shard))
  with tf.io.TFRecordWriter(shard) as writer:
    for record in records:
      example = tf.train.Example.FromString(record)
      feature = example.features.feature
      for key, change in (("predictions", predictions),
                          ("representation", representation)):
        values = np.frombuffer(feature[key].bytes_list.value[0], np.float16)
        changed = np.asarray(change(values), np.float16)
        assert changed.shape == values.shape and not np.array_equal(changed, values)
        feature[key].bytes_list.value[0] = changed.tobytes()
      writer.write(example.SerializeToString())
  return len(records)


def test_the_student_learns_from_what_the_cache_holds(setup, built_cache):
  """--teacher_cache is read, not ignored: three KD students of the same seed and
  steps, from a cache built alone, from an untouched copy of it and from a copy with
  one shard doctored (teacher predictions all ones, representation doubled), log the
  same loss terms and end with the same weights for the first two, and other pred_loss
  and rep_loss (the label loss of step 1 unchanged) and other weights for the third."""
  root = setup["root"]
  cache = built_cache
  kd = ["--model_type=KD", "--k_frame=%d" % K, "--teacher_checkpoint=" + setup["teacher"]]
  shutil.copytree(cache, str(root / "cache_read_copy"))
  shutil.copytree(cache, str(root / "cache_read_doctored"))
  stored = json.load(open(os.path.join(cache, "fingerprint.json")))
  assert stored["fingerprint"]["dtype"] == "float16"
  # The first of the two training files' shards (12 videos): two readers interleave the
  # files, so every batch holds videos of both.
  shard = os.path.join(str(root / "cache_read_doctored"), "teacher-00000.tfrecord")
  assert _doctor(shard, np.ones_like, lambda values: values * 2) == 12
  with open(shard, "rb") as f, open(os.path.join(cache, "teacher-00000.tfrecord"),
                                     "rb") as g:
    assert f.read() != g.read()

  def train(name):
    process = _train(setup, *kd, "--teacher_cache=" + str(root / name), "--max_steps=2",
                     "--kd_pred_weight=1", "--kd_rep_weight=1",
                     "--train_dir=" + str(root / ("student_" + name)))
    assert "Teacher cache" not in process.stdout  # read, not built again
    return (_loss_lines(process.stdout),
            _values(str(root / ("student_%s_KD_k_%d" % (name, K))), 2))

  # Three students at once: the two cores take two, and the test stays short.
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    (terms, values), (copy_terms, copy_values), (doctored_terms, doctored_values) = (
        pool.map(train, [os.path.basename(cache), "cache_read_copy",
                         "cache_read_doctored"]))
  assert set(terms) == {1, 2}
  assert set(terms[1]) == {"total", "label_loss", "pred_loss", "rep_loss"}
  assert copy_terms == terms
  assert set(values) == set(copy_values) and values
  for name in values:
    np.testing.assert_array_equal(copy_values[name], values[name], err_msg=name)
  assert doctored_terms[1]["label_loss"] == terms[1]["label_loss"]  # same student
  for term in ("pred_loss", "rep_loss"):
    assert doctored_terms[1][term] != terms[1][term], term
  assert any(not np.array_equal(doctored_values[name], values[name]) for name in values)
