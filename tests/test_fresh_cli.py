"""Each entry point in an interpreter of its own, as a user starts it: `python train.py`
(and eval.py, inference.py, export_model.py, tools/demo.py) from another directory,
nothing imported beforehand. The other CLI tests fork their commands from a process
that has already imported TensorFlow and the project (tools/forked_cli.py): a script
that only works after those imports passes there, and fails here.

One tiny teacher run serves every check; the tiny demo runs beside it.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers

tf1 = tf.compat.v1
NUM_CLASSES = 20
VALIDATE_VIDEOS = 10
STEPS = 3
# The demo at its smoke-test size (tests/test_demo.py): 20 train / 10 validate videos.
DEMO_MODEL = ("--nextvlad_cluster_size=4 --nextvlad_hidden_size=16 --groups=2 "
              "--expansion=1 --batch_size=8")


def fresh_env():
  """The user's environment: quiet TensorFlow, nothing on PYTHONPATH."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("PYTHONPATH", None)
  return env


def start(script, args, cwd, log):
  """Starts `python <repo>/<script> args` in a fresh interpreter, output to `log`."""
  with open(str(log), "w") as out:
    return subprocess.Popen([sys.executable, os.path.join(helpers.ROOT, script)] + args,
                            cwd=str(cwd), env=fresh_env(), stdout=out,
                            stderr=subprocess.STDOUT)


def run(script, args, cwd):
  """Runs `python <repo>/<script> args` in a fresh interpreter; its stdout (asserts it
  succeeded)."""
  process = subprocess.run([sys.executable, os.path.join(helpers.ROOT, script)] + args,
                           cwd=str(cwd), env=fresh_env(), capture_output=True,
                           text=True, timeout=300)
  assert process.returncode == 0, (script, process.stdout[-2000:],
                                   process.stderr[-3000:])
  assert "Traceback" not in process.stderr
  return process.stdout


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
  """A tiny teacher trained, evaluated, predicted and exported by fresh interpreters
  (cwd: a directory of their own), and the tiny demo run in its own process meanwhile.
  Returns {name: path or stdout}."""
  root = tmp_path_factory.mktemp("fresh")
  cwd = root / "cwd"
  cwd.mkdir()
  demo = start("tools/demo.py", ["--out_dir=demo", "--scale=0.01",
                                 "--model_flags=" + DEMO_MODEL], cwd, root / "demo.log")
  try:
    train, validate = helpers.make_dataset(root / "data", train_videos=16,
                                           validate_videos=VALIDATE_VIDEOS,
                                           min_frames=20, max_frames=60)
    found = {"root": root, "cwd": cwd, "validate": validate,
             "run": str(cwd / "run_teacher"), "csv": str(cwd / "predictions.csv"),
             "saved": str(cwd / "saved")}
    found["train"] = run("train.py", [
        "--train_data_pattern=" + train, "--eval_data_pattern=" + validate,
        "--train_dir=run", "--max_steps=%d" % STEPS, "--export_model_steps=%d" % STEPS,
        "--batch_size=4", "--pca_eigenvals="] + helpers.TINY_MODEL, cwd)
    found["eval"] = run("eval.py", ["--train_dir=run_teacher", "--run_once",
                                    "--eval_data_pattern=" + validate], cwd)
    found["inference"] = run("inference.py", [
        "--train_dir=run_teacher", "--input_data_pattern=" + validate,
        "--output_file=predictions.csv"], cwd)
    found["export"] = run("export_model.py", ["--train_dir=run_teacher",
                                              "--output_dir=saved"], cwd)
    demo.wait(timeout=600)
  finally:
    if demo.poll() is None:
      demo.kill()
      demo.wait()
  found["demo"] = str(cwd / "demo")
  found["demo_code"] = demo.returncode
  found["demo_log"] = (root / "demo.log").read_text()
  return found


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def metric_line(stdout, split):
  """{name: value} of the starter's metrics line `<split>: global_step N | ...`."""
  line, = [l for l in stdout.splitlines() if l.startswith(split + ": global_step")]
  found = {key: float(value) for key, value in re.findall(r"([\w@]+): ([0-9.]+)", line)}
  found["global_step"] = int(re.search(r"global_step (\d+) ", line).group(1))
  return found


def test_train_trains_and_validates(fresh):
  assert "Starting at step 0." in fresh["train"]
  assert "Done training at step %d" % STEPS in fresh["train"]
  assert tf1.train.latest_checkpoint(fresh["run"]).endswith("model.ckpt-%d" % STEPS)
  record = read_jsonl(os.path.join(fresh["run"], "validation.jsonl"))[-1]
  assert record["step"] == STEPS and record["num_examples"] == VALIDATE_VIDEOS
  assert 0 < record["gap"] <= 1
  assert metric_line(fresh["train"], "validation")["GAP"] == float(
      "%.4f" % record["gap"])


def test_eval_scores_the_checkpoint_as_training_validated_it(fresh):
  printed = metric_line(fresh["eval"], "eval")
  record = read_jsonl(os.path.join(fresh["run"], "eval.jsonl"))[-1]
  validated = read_jsonl(os.path.join(fresh["run"], "validation.jsonl"))[-1]
  assert (printed["global_step"], record["checkpoint"]) == (
      STEPS, "model.ckpt-%d" % STEPS)
  assert printed["GAP"] == float("%.4f" % record["gap"])
  assert record["num_examples"] == VALIDATE_VIDEOS
  for key in ("gap", "hit_at_one", "map_all_classes", "perr"):
    assert record[key] == pytest.approx(validated[key], abs=1e-6), key
  # The metrics of the CSV's scores against the records' labels, computed here.
  predicted = helpers.csv_predictions(fresh["csv"], NUM_CLASSES)
  labels = helpers.record_labels(fresh["validate"], NUM_CLASSES)
  assert set(predicted) == set(labels)
  ids = sorted(labels)
  expected = helpers.reference_metrics([predicted[i] for i in ids],
                                       [labels[i] for i in ids])
  assert 0 < expected["gap"] < 1
  # (The CSV's scores have 6 digits.)
  for key in ("gap", "map_all_classes"):
    assert record[key] == pytest.approx(expected[key], abs=1e-4), key
  assert record["hit_at_one"] == pytest.approx(expected["hit_at_one"], abs=1e-9)


def test_inference_writes_a_row_of_top_classes_per_video(fresh):
  assert "Wrote %d videos to" % VALIDATE_VIDEOS in fresh["inference"]
  lines = open(fresh["csv"]).read().splitlines()
  assert len(lines) == 1 + VALIDATE_VIDEOS
  for line in lines[1:]:  # every class (20 = --top_k), as "%g" scores
    assert re.fullmatch(r"\w+,(\d+ [0-9.e-]+ ){19}\d+ [0-9.e-]+", line), line
  predicted = helpers.csv_predictions(fresh["csv"], NUM_CLASSES)
  assert set(predicted) == set(helpers.record_labels(fresh["validate"], NUM_CLASSES))


def test_export_writes_a_saved_model_that_serves_the_csvs_predictions(fresh):
  assert ("Exported the teacher of run_teacher (model.ckpt-%d) to saved" % STEPS
          in fresh["export"])
  assert os.path.exists(os.path.join(fresh["saved"], "saved_model.pb"))
  records = [r for path in sorted(tf.io.gfile.glob(fresh["validate"]))
             for r in tf1.io.tf_record_iterator(path)]
  with tf.Graph().as_default(), tf1.Session() as sess:
    meta_graph = tf1.saved_model.load(sess, ["serve"], fresh["saved"])
    signature = meta_graph.signature_def["serving_default"]
    served = sess.run({k: v.name for k, v in signature.outputs.items()},
                      {signature.inputs["examples"].name: records})
  rows = {line.split(",")[0]: line.split(",")[1].split()
          for line in open(fresh["csv"]).read().splitlines()[1:]}
  assert len(served["video_id"]) == len(rows) == VALIDATE_VIDEOS
  for video_id, classes, scores in zip(served["video_id"], served["class_indexes"],
                                       served["predictions"]):
    row = rows[video_id.decode()]
    np.testing.assert_allclose([float(s) for s in row[1::2]], scores, rtol=1e-5,
                               atol=1e-6)
    assert [int(c) for c in row[0::2]] == list(classes)


def test_the_demo_runs_in_its_own_process(fresh):
  assert fresh["demo_code"] == 0, fresh["demo_log"][-3000:]
  demo = fresh["demo"]
  table = [l for l in open(os.path.join(demo, "results.md")).read().splitlines()
           if l.startswith("| ") and not l.startswith("| model")]
  # The three runs, then the distilled student served from its --tflite=dynamic file.
  assert len(table) == 4 and "dynamic" in table[3]
  for row, kind in zip(table, ("teacher", "student_k_6", "KD_k_6")):
    record = read_jsonl(os.path.join(demo, "runs", "demo_s0_" + kind, "eval.jsonl"))[-1]
    assert float(row.split("|")[3]) == float("%.4f" % record["gap"]), (kind, row)
    assert record["num_examples"] == 10
  csv = helpers.csv_predictions(os.path.join(demo, "predictions.csv"), 200)
  assert len(csv) == 10
