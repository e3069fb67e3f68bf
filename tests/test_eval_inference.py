"""eval.py, inference.py and export_model.py on tiny trained runs."""
import csv
import json
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

import eval_util
import kd_model
import readers
import run_dir
from tests import helpers

tf1 = tf.compat.v1
NUM_CLASSES = 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny teacher run and a KD run distilled from it, plus validation data.

  30 classes (the data uses 20 of them), so the top 20 that eval.py, inference.py and
  the SavedModel keep are a real cut of the predictions.
  """
  root = tmp_path_factory.mktemp("runs")
  train, validate = helpers.make_dataset(root / "data", train_videos=16,
                                         validate_videos=13, min_frames=10, max_frames=40)
  common = ["--train_data_pattern=" + train, "--train_dir=%s/run" % root,
            "--batch_size=4", "--max_steps=4", "--export_model_steps=100", "--seed=1"]
  common += helpers.TINY_MODEL + ["--num_classes=%d" % NUM_CLASSES]
  helpers.run_cli("train.py", common + ["--model_type=teacher", "--k_frame=300"])
  # The KD run also logs every 2 steps and validates at steps 2 and 4 (TensorBoard test).
  helpers.run_cli("train.py", common + ["--model_type=KD", "--k_frame=3",
                                        "--log_every_n_steps=2", "--export_model_steps=2",
                                        "--eval_data_pattern=" + validate])
  return {"root": root, "validate": validate, "teacher": str(root / "run_teacher"),
          "kd": str(root / "run_KD_k_3")}


def _direct_predictions(directory, pattern, role, batch_size=4):
  """Predictions of `role` computed in-process from the run's latest checkpoint.

  The batch size matches the eval.py call below: oneDNN may block a matmul
  differently for another batch, and a last-bit change can swap two near-tied
  scores of a tiny model, which moves GAP by ~1e-5.
  """
  cfg = run_dir.load(directory)
  with tf.Graph().as_default():
    reader = readers.get_reader(cfg, dequantize=False)
    batch = readers.get_input_data_tensors(reader, readers.list_data_files(pattern),
                                           batch_size, 1, num_epochs=1,
                                           shuffle=False)
    outputs = kd_model.inference_outputs(cfg, batch, role)
    saver = tf1.train.Saver()
    values = {"ids": [], "predictions": [], "labels": []}
    with tf1.Session() as sess:
      saver.restore(sess, tf1.train.latest_checkpoint(directory))
      while True:
        try:
          ids, predictions, labels = sess.run([batch["video_ids"],
                                               outputs["predictions"], batch["labels"]])
        except tf.errors.OutOfRangeError:
          break
        values["ids"].extend(v.decode() for v in ids)
        values["predictions"].append(predictions)
        values["labels"].append(labels)
  return (values["ids"], np.concatenate(values["predictions"]),
          np.concatenate(values["labels"]))


@pytest.mark.parametrize("run,role", [("teacher", None), ("kd", None), ("kd", "teacher")])
def test_eval_metrics_equal_eval_util_on_direct_predictions(runs, run, role):
  args = ["--train_dir=" + runs[run], "--eval_data_pattern=" + runs["validate"],
          "--run_once", "--batch_size=4"] + (["--role=" + role] if role else [])
  out = helpers.run_cli("eval.py", args).stdout
  expected_role = role or ("student" if run == "kd" else "teacher")
  assert "Evaluating the %s of" % expected_role in out
  record = [json.loads(l) for l in open(os.path.join(runs[run], "eval.jsonl"))][-1]
  assert record["role"] == expected_role and record["step"] == 4
  ids, predictions, labels = _direct_predictions(runs[run], runs["validate"],
                                                 expected_role)
  assert record["num_examples"] == len(ids) == len(set(ids)) == 13
  metrics = eval_util.EvaluationMetrics(NUM_CLASSES, 20)
  metrics.accumulate(predictions, labels, 0.0)
  expected = metrics.get()
  for key, name in [("gap", "gap"), ("map_all_classes", "map_all_classes"),
                    ("map_labelled_classes", "map_labelled_classes"),
                    ("hit_at_one", "avg_hit_at_one"), ("perr", "avg_perr")]:
    assert record[key] == pytest.approx(expected[name], abs=1e-6), key
  assert "GAP: %.4f" % expected["gap"] in out


def test_bf16_eval_stays_close_to_float32_and_is_recorded(runs):
  pattern = "--eval_data_pattern=" + runs["validate"]
  records = []
  for extra in ([], ["--bf16"]):
    helpers.run_cli("eval.py", ["--train_dir=" + runs["teacher"], pattern, "--run_once",
                                "--batch_size=4"] + extra)
    records.append([json.loads(l) for l in open(os.path.join(runs["teacher"],
                                                               "eval.jsonl"))][-1])
  fp32, bf16 = records
  assert (fp32["bf16"], bf16["bf16"]) == (False, True)
  assert fp32["num_examples"] == bf16["num_examples"] == 13
  # bfloat16 keeps 8 bits of mantissa: the ranking moves a little, not a lot.
  assert abs(bf16["gap"] - fp32["gap"]) < 0.03
  # The loss sums log(p + 1e-8) over the classes: bfloat16 rounds probabilities near 0
  # or 1 to exactly 0 or 1, where the original's tiny epsilon makes each such term
  # differ by nats, so the mean loss moves more than the ranking (4-7% here).
  assert abs(bf16["loss"] - fp32["loss"]) / fp32["loss"] < 0.15


def test_kd_student_and_teacher_predictions_differ(runs):
  _, student, _ = _direct_predictions(runs["kd"], runs["validate"], "student")
  _, teacher, _ = _direct_predictions(runs["kd"], runs["validate"], "teacher")
  assert not np.allclose(student, teacher)


def _parse_csv(path):
  lines = open(path).read().splitlines()
  assert lines[0] == "VideoId,LabelConfidencePairs"
  rows = {}
  for line in lines[1:]:
    video_id, pairs = line.split(",")
    values = pairs.split(" ")
    rows[video_id] = ([int(v) for v in values[0::2]], [float(v) for v in values[1::2]])
  assert len(rows) == len(lines) - 1  # one row per video
  return rows


def test_inference_csv_identical_via_train_dir_tgz_and_saved_model(runs, tmp_path):
  pattern = runs["validate"]
  a, b, c = [str(tmp_path / n) for n in ("a.csv", "b.csv", "c.csv")]
  tgz, saved = str(tmp_path / "model.tgz"), str(tmp_path / "saved")
  helpers.run_cli("inference.py", ["--train_dir=" + runs["kd"], "--input_data_pattern=" +
                                   pattern, "--output_file=" + a, "--batch_size=4",
                                   "--output_model_tgz=" + tgz])
  helpers.run_cli("inference.py", ["--input_model_tgz=" + tgz, "--untar_model_dir=" +
                                   str(tmp_path / "untar"), "--input_data_pattern=" +
                                   pattern, "--output_file=" + b, "--batch_size=4"])
  helpers.run_cli("export_model.py", ["--train_dir=" + runs["kd"], "--output_dir=" + saved])
  helpers.run_cli("inference.py", ["--saved_model=" + saved, "--input_data_pattern=" +
                                   pattern, "--output_file=" + c, "--batch_size=4"])
  rows = _parse_csv(a)
  ids, predictions, _ = _direct_predictions(runs["kd"], pattern, "student")
  assert sorted(rows) == sorted(ids)
  for video_id, prediction in zip(ids, predictions):
    labels, scores = rows[video_id]
    assert len(labels) == 20 and all(0 <= l < NUM_CLASSES for l in labels)
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, prediction[labels], rtol=1e-5)
    assert set(labels) == set(np.argsort(-prediction, kind="stable")[:20])
  assert open(a).read() == open(b).read() == open(c).read()


def test_saved_model_loads_in_tf2_eager(runs, tmp_path):
  saved = str(tmp_path / "saved")
  helpers.run_cli("export_model.py", ["--train_dir=" + runs["teacher"],
                                      "--output_dir=" + saved])
  script = tmp_path / "load.py"
  script.write_text(
      "import sys, glob, tensorflow as tf\n"
      "model = tf.saved_model.load(sys.argv[1])\n"
      "serve = model.signatures['serving_default']\n"
      "records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(sys.argv[2])))]\n"
      "out = serve(examples=tf.constant(records))\n"
      "print(out['class_indexes'].shape, out['predictions'].shape, out['video_id'].shape)\n")
  process = helpers.run_cli(str(script), [saved, runs["validate"]])
  assert "(13, 20) (13, 20) (13,)" in process.stdout


def _evil_tgz(path, member_name, link=None):
  with tarfile.open(path, "w:gz") as tar:
    info = tarfile.TarInfo(member_name)
    if link:
      info.type = tarfile.SYMTYPE
      info.linkname = link
      tar.addfile(info)
    else:
      data = b"pwned"
      info.size = len(data)
      import io
      tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("member,link", [("../evil", None), ("/tmp/evil_abs_yt8m", None),
                                         ("model/../../evil", None),
                                         ("model/link", "/etc/passwd")])
def test_hostile_model_tgz_is_refused_and_writes_nothing_outside(tmp_path, member, link):
  tgz = str(tmp_path / "evil.tgz")
  _evil_tgz(tgz, member, link)
  target = tmp_path / "untar"
  process = helpers.run_cli("inference.py", [
      "--input_model_tgz=" + tgz, "--untar_model_dir=" + str(target),
      "--input_data_pattern=/nonexistent", "--output_file=" + str(tmp_path / "o.csv")],
      check=False)
  assert process.returncode != 0
  assert "refused" in helpers.user_error_line(process)
  assert not (tmp_path / "evil").exists() and not os.path.exists("/tmp/evil_abs_yt8m")
  assert not target.exists() or not any(target.rglob("*"))
  assert not (tmp_path / "o.csv").exists()


def test_eval_and_inference_name_missing_checkpoint_and_run_dir(tmp_path, runs):
  empty = tmp_path / "empty_run"
  empty.mkdir()
  (empty / "model_flags.json").write_text(open(os.path.join(runs["teacher"],
                                                            "model_flags.json")).read())
  process = helpers.run_cli("eval.py", ["--train_dir=" + str(empty), "--run_once",
                                        "--eval_data_pattern=" + runs["validate"]],
                            check=False)
  assert process.returncode == 2
  assert "has no checkpoint" in helpers.user_error_line(process)
  process = helpers.run_cli("inference.py", ["--train_dir=" + str(tmp_path / "nope"),
                                             "--input_data_pattern=" + runs["validate"],
                                             "--output_file=" + str(tmp_path / "x.csv")],
                            check=False)
  assert process.returncode == 2
  assert "--train_dir=%s does not exist" % (tmp_path / "nope") in \
      helpers.user_error_line(process)


def test_csv_quotes_ids_with_commas_quotes_and_line_breaks(runs, tmp_path):
  from tools import make_synthetic_yt8m as synth
  generator = synth.SyntheticYT8M(seed=3, num_classes=20, num_verticals=4)
  ids = ["ab,c", "new\nline", 'say "hi"', "plain"]
  videos = []
  for index, video_id in enumerate(ids):
    video = generator.video("validate", index)
    video["id"] = video_id
    videos.append(video)
  records = str(tmp_path / "odd_ids.tfrecord")
  synth.write_frame_records(records, videos)
  output = str(tmp_path / "odd.csv")
  helpers.run_cli("inference.py", ["--train_dir=" + runs["teacher"], "--output_file=" +
                                   output, "--input_data_pattern=" + records])
  with open(output, newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["VideoId", "LabelConfidencePairs"]
  assert [row[0] for row in rows[1:]] == ids
  assert all(len(row) == 2 and len(row[1].split()) == 40 for row in rows[1:])
  # Plain ids stay unquoted, as Kaggle's format has them.
  assert open(output).read().splitlines()[-1].startswith("plain,")


def _event_tags(directory):
  """{tag: [steps]} of the scalar summaries in a directory's event files."""
  tags = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*"))):
    for event in tf1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  return tags


def test_tensorboard_events_hold_the_documented_tags(runs):
  # train.py: every --log_every_n_steps the loss terms, learning rate and examples/s;
  # every --export_model_steps the validation metrics (docs/evaluation.md lists them).
  tags = _event_tags(runs["kd"])
  for tag in ("losses/total", "losses/label_loss", "losses/pred_loss", "losses/rep_loss",
              "losses/regularization", "learning_rate", "examples_per_second",
              "training/hit_at_one", "training/gap"):
    assert tags.get(tag) == [2, 4], (tag, sorted(tags))
  for tag in ("validation/gap", "validation/hit_at_one", "validation/perr",
              "validation/loss", "validation/map_all_classes",
              "validation/map_labelled_classes"):
    assert tags.get(tag) == [2, 4], (tag, sorted(tags))
  records = [json.loads(l) for l in open(os.path.join(runs["kd"], "validation.jsonl"))]
  assert [r["step"] for r in records] == [2, 4]
  # eval.py: <run dir>/eval, the same metric names under eval/.
  helpers.run_cli("eval.py", ["--train_dir=" + runs["kd"], "--run_once",
                              "--eval_data_pattern=" + runs["validate"]])
  tags = _event_tags(os.path.join(runs["kd"], "eval"))
  assert {t for t in tags} >= {"eval/gap", "eval/hit_at_one", "eval/perr", "eval/loss",
                               "eval/map_all_classes", "eval/map_labelled_classes"}
  assert all(steps[-1] == 4 for steps in tags.values())


def test_a_checkpoint_that_predicts_nan_is_one_line_naming_it(runs, tmp_path):
  # A negative batch-norm variance (what racing tower updates once wrote) makes every
  # prediction NaN: eval.py names the checkpoint instead of a metrics traceback.
  broken = str(tmp_path / "broken")
  checkpoint = tf1.train.latest_checkpoint(runs["teacher"])
  with tf.Graph().as_default():
    variables = []
    for name, _ in tf.train.list_variables(checkpoint):
      value = tf.train.load_variable(checkpoint, name)
      if name.endswith("vlad_bn/moving_variance"):
        value = -np.ones_like(value)
      variables.append(tf1.Variable(value, name=name))
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      os.makedirs(broken)
      tf1.train.Saver(variables).save(sess, os.path.join(broken, "model.ckpt"),
                                      global_step=4)
  with open(os.path.join(runs["teacher"], run_dir.MODEL_FLAGS_FILE)) as f:
    open(os.path.join(broken, run_dir.MODEL_FLAGS_FILE), "w").write(f.read())
  process = helpers.run_cli("eval.py", ["--train_dir=" + broken, "--run_once",
                                        "--eval_data_pattern=" + runs["validate"],
                                        "--batch_size=4"], check=False)
  assert process.returncode == 2
  assert helpers.user_error_line(process) == (
      "eval.py: error: checkpoint %s/model.ckpt-4 predicts NaN (after 0 videos): unusable "
      "weights or batch-norm statistics" % broken)
