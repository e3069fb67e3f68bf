"""A .tflite file (export_model.py --tflite) served where a checkpoint serves:
inference.py and eval.py --tflite_model through the same reader, metrics and CSVs, and
one-line errors for a file that does not fit the command."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from tests import helpers

NUM_CLASSES = 30
METRIC = re.compile(r"^eval( \((\w+)\))?: .*GAP: ([0-9.]+)", re.M)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """A tiny teacher and a KD student (k=3), each exported as float32 and dynamic."""
  root = tmp_path_factory.mktemp("tflite")
  train, validate = helpers.make_dataset(root / "data", train_videos=16,
                                         validate_videos=13, min_frames=10, max_frames=40)
  common = ["--train_data_pattern=" + train, "--train_dir=%s/run" % root,
            "--batch_size=4", "--max_steps=3", "--export_model_steps=100", "--seed=1"]
  common += helpers.TINY_MODEL + ["--num_classes=%d" % NUM_CLASSES]
  helpers.run_cli("train.py", common + ["--model_type=teacher", "--k_frame=300"])
  helpers.run_cli("train.py", common + ["--model_type=KD", "--k_frame=3"])
  found = {"root": root, "validate": validate}
  for run in ("teacher", "KD_k_3"):
    for mode in ("float32", "dynamic"):
      out = str(root / ("%s_%s" % (run, mode)))
      helpers.run_cli("export_model.py", ["--train_dir=%s/run_%s" % (root, run),
                                          "--output_dir=" + out, "--tflite=" + mode])
      found[(run, mode)] = os.path.join(out, "model.tflite")
  return found


def _rows(path):
  lines = open(path).read().splitlines()
  assert lines[0] == "VideoId,LabelConfidencePairs"
  rows = {}
  for line in lines[1:]:
    video_id, pairs = line.split(",")
    values = pairs.split(" ")
    rows[video_id] = ([int(v) for v in values[0::2]],
                      np.array([float(v) for v in values[1::2]]))
  return rows


@pytest.mark.parametrize("run", ["teacher", "KD_k_3"])
def test_inference_csv_of_the_file_is_the_checkpoints(served, run, tmp_path):
  """float32: the same classes, scores within 1e-5 (the CSV's %g keeps 6 digits);
  dynamic: scores within 3e-2 of the checkpoint's (int8 weights of a barely trained
  tiny model whose logits reach 17; the demo's trained students move far less, see
  docs/performance.md)."""
  root = served["root"]
  reference = str(tmp_path / "checkpoint.csv")
  helpers.run_cli("inference.py", ["--train_dir=%s/run_%s" % (root, run),
                                   "--input_data_pattern=" + served["validate"],
                                   "--output_file=" + reference, "--batch_size=5"])
  expected = _rows(reference)
  assert len(expected) == 13
  for mode, tolerance in (("float32", 1e-5), ("dynamic", 3e-2)):
    output = str(tmp_path / ("%s.csv" % mode))
    out = helpers.run_cli("inference.py", ["--tflite_model=" + served[(run, mode)],
                                           "--input_data_pattern=" + served["validate"],
                                           "--output_file=" + output,
                                           "--batch_size=5"]).stdout
    assert "(%s)" % mode in out.splitlines()[0] or mode in out.splitlines()[0]
    rows = _rows(output)
    assert sorted(rows) == sorted(expected)
    for video_id, (classes, scores) in rows.items():
      want_classes, want_scores = expected[video_id]
      assert len(classes) == 20
      # Each served class scores as the checkpoint scores it.
      want = dict(zip(want_classes, want_scores))
      shared = [c for c in classes if c in want]
      assert len(shared) >= (20 if mode == "float32" else 15), (video_id, mode)
      for c, s in zip(classes, scores):
        if c in want:
          assert abs(s - want[c]) <= tolerance * max(1.0, abs(s)) + 1e-6, (mode, c)
      if mode == "float32":
        assert classes == want_classes


def test_eval_of_the_file_prints_the_checkpoints_metrics_and_writes_nothing(served):
  root = served["root"]
  run = "%s/run_KD_k_3" % root
  checkpoint_out = helpers.run_cli("eval.py", ["--train_dir=" + run, "--run_once",
                                               "--eval_data_pattern=" +
                                               served["validate"]]).stdout
  want = float(METRIC.search(checkpoint_out).group(3))
  before = sorted(os.listdir(run))
  for mode, tolerance in (("float32", 1e-5), ("dynamic", 5e-3)):
    out = helpers.run_cli("eval.py", ["--tflite_model=" + served[("KD_k_3", mode)],
                                      "--eval_data_pattern=" + served["validate"]]).stdout
    found = METRIC.search(out)
    assert found and found.group(2) == mode, out
    assert abs(float(found.group(3)) - want) <= tolerance
  assert sorted(os.listdir(run)) == before
  assert not any(name.endswith(".jsonl") or name.startswith("events")
                 for name in os.listdir(os.path.dirname(served[("KD_k_3", "dynamic")])))


def test_a_file_made_for_other_flags_is_refused_in_one_line(served, tmp_path):
  model = served[("KD_k_3", "dynamic")]
  base = ["--tflite_model=" + model, "--input_data_pattern=" + served["validate"],
          "--output_file=" + str(tmp_path / "x.csv")]
  for flag, named in (("--k_frame=6", "--k_frame"), ("--num_classes=20", "--num_classes"),
                      ("--segment_labels", "--segment_labels"),
                      ("--feature_names=rgb", "--feature_names"),
                      ("--pca_eigenvals=", "--pca_eigenvals"),
                      ("--role=teacher", "--role=teacher")):
    process = helpers.run_cli("inference.py", base + [flag], check=False)
    line = helpers.user_error_line(process)
    assert named in line and model in line, (flag, line)
  assert not os.path.exists(str(tmp_path / "x.csv"))


def test_a_truncated_or_foreign_file_is_refused_in_one_line(served, tmp_path):
  original = served[("teacher", "dynamic")]
  truncated = str(tmp_path / "truncated.tflite")
  data = open(original, "rb").read()
  open(truncated, "wb").write(data[:len(data) // 2])
  shutil.copy(original + ".json", truncated + ".json")
  foreign = str(tmp_path / "foreign.tflite")
  open(foreign, "wb").write(b"not a model at all" * 100)
  sidecar = json.load(open(original + ".json"))
  import hashlib
  sidecar.update(tflite_bytes=os.path.getsize(foreign),
                 tflite_sha256=hashlib.sha256(open(foreign, "rb").read()).hexdigest())
  json.dump(sidecar, open(foreign + ".json", "w"))
  lonely = str(tmp_path / "lonely.tflite")
  shutil.copy(original, lonely)
  for path, says in ((truncated, "truncated"), (foreign, "not a TFLite model"),
                     (lonely, "has no lonely.tflite.json")):
    process = helpers.run_cli("eval.py", ["--tflite_model=" + path,
                                          "--eval_data_pattern=" + served["validate"]],
                              check=False)
    line = helpers.user_error_line(process)
    assert path in line and says in line, line
