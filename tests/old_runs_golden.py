"""Golden results of the old run directories (tests/data/old_runs) under today's code.

tests/test_old_runs.py evaluates and predicts with the run directories an earlier
version wrote, on validation data it generates, and compares to the files of
tests/data/old_runs_golden (see its README): the eval.py records of the teacher run, the
KD run's student and the KD run's teacher (--role=teacher), and the inference.py CSVs
of the teacher and the KD run, all with uniformly spread DBoF frames (see copy_runs).

Regenerating them is only legitimate when a change of results is intended and explained
(the reason is recorded in metrics.json and belongs in the commit message):

  .venv/bin/python -m tests.old_runs_golden --reason="why the results change"
"""
import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from tests import helpers

OLD_RUNS = os.path.join(helpers.ROOT, "tests", "data", "old_runs")
GOLDEN = os.path.join(helpers.ROOT, "tests", "data", "old_runs_golden")
METRICS_FILE = "metrics.json"
# helpers.make_dataset(<dir>, **DATA): the validation split the golden files hold results
# of (8 videos, seed 1).
DATA = {"train_videos": 24, "validate_videos": 8}
RUNS = {"teacher": "old_teacher", "kd": "old_KD_k_4"}
# eval.py records: name -> (run, --role); inference.py CSVs: run -> golden file.
EVALS = {"teacher": ("teacher", ""), "kd": ("kd", ""), "kd_as_teacher": ("kd", "teacher")}
CSVS = {"teacher": "teacher.csv", "kd": "kd.csv"}
METRICS = ("gap", "hit_at_one", "perr", "map_all_classes", "map_labelled_classes",
           "loss", "num_examples")
# Tight, yet not bit-exact: float32 results differ in their last bits between CPU
# classes (AVX-512 vs AVX2 kernels). The loss (~23, a sum over classes) gets 1e-6 of
# its value on top of the 1e-5 (a float32 ulp at 23 is 2e-6).
METRIC_ABS, LOSS_REL = 1e-5, 1e-6
SCORE_REL = 1e-4  # CSV scores (printed with %g, 6 significant digits)


def copy_runs(directory, uniform_frames=False):
  """Copies tests/data/old_runs to `directory`; returns {run: its run directory}.

  uniform_frames: records sample_random_frames=false in the copies' model_flags.json.
  Both old runs' teachers are DBoF models that sample --iterations=10 random frames per
  video, at evaluation too and from an unseeded op, so their eval records and CSVs
  change from one run to the next; with uniformly spread frames they are
  deterministic. The KD run's student (k_frame=4 <= 10 frames: all of them, masked) is
  the same either way.
  """
  shutil.copytree(OLD_RUNS, str(directory))
  runs = {run: os.path.join(str(directory), name) for run, name in RUNS.items()}
  if uniform_frames:
    for run in runs.values():
      path = os.path.join(run, "model_flags.json")
      with open(path) as f:
        recorded = json.load(f)
      assert recorded["sample_random_frames"] is True, path
      recorded["sample_random_frames"] = False
      with open(path, "w") as f:
        json.dump(recorded, f, indent=2, sort_keys=True)
  return runs


def data_digests(pattern):
  """{file name: sha256 of its bytes} of the files of a glob."""
  digests = {}
  for path in sorted(glob.glob(pattern)):
    with open(path, "rb") as f:
      digests[os.path.basename(path)] = hashlib.sha256(f.read()).hexdigest()
  return digests


def evaluate(run, validate, role=""):
  """eval.py --run_once on the run's latest checkpoint; returns its eval.jsonl record."""
  helpers.run_cli("eval.py", ["--train_dir=" + run, "--run_once", "--batch_size=4",
                              "--eval_data_pattern=" + validate] +
                  (["--role=" + role] if role else []))
  with open(os.path.join(run, "eval.jsonl")) as f:
    return [json.loads(line) for line in f][-1]


def predict(run, validate, output_file):
  """inference.py's CSV of the run's latest checkpoint."""
  helpers.run_cli("inference.py", ["--train_dir=" + run, "--output_file=" + output_file,
                                   "--input_data_pattern=" + validate])


def read_csv(path):
  """[(video id, [(class, score), ...] in the file's order)] of an inference CSV."""
  with open(path) as f:
    lines = f.read().splitlines()
  assert lines[0] == "VideoId,LabelConfidencePairs", path
  rows = []
  for line in lines[1:]:
    video_id, pairs = line.split(",")
    values = pairs.split()
    rows.append((video_id, [(int(c), float(s)) for c, s in zip(values[::2],
                                                               values[1::2])]))
  return rows


def golden_metrics():
  with open(os.path.join(GOLDEN, METRICS_FILE)) as f:
    return json.load(f)


def assert_metrics_match(record, golden, name):
  """Each of METRICS of an eval.jsonl record equals the golden one within the
  tolerances; the step and role are the same."""
  assert (record["step"], record["role"]) == (golden["step"], golden["role"]), name
  for metric in METRICS:
    rel = LOSS_REL if metric == "loss" else 0
    assert record[metric] == pytest.approx(golden[metric], abs=METRIC_ABS, rel=rel), (
        name, metric, record[metric], golden[metric])


def assert_rows_match(path, golden_path):
  """The same video ids in the same order, the same classes in the same order in each
  row, each score within SCORE_REL of the golden one.

  Two classes may trade places only where their golden scores are within 2 SCORE_REL of
  each other (a near tie that last-bit differences can turn around).
  """
  rows, golden = read_csv(path), read_csv(golden_path)
  assert [r[0] for r in rows] == [g[0] for g in golden], path
  for (video_id, pairs), (_, golden_pairs) in zip(rows, golden):
    scores, golden_scores = dict(pairs), dict(golden_pairs)
    assert len(scores) == len(pairs) and set(scores) == set(golden_scores), video_id
    for label, score in golden_scores.items():
      assert scores[label] == pytest.approx(score, rel=SCORE_REL), (video_id, label)
    for position, ((label, _), (golden_label, golden_score)) in enumerate(
        zip(pairs, golden_pairs)):
      if label != golden_label:  # tolerated only in a near tie
        assert scores[label] == pytest.approx(golden_score, rel=2 * SCORE_REL), (
            video_id, position, label, golden_label)


def _commit():
  def git(*args):
    return subprocess.run(["git", "-C", helpers.ROOT] + list(args), capture_output=True,
                          text=True, check=True).stdout.rstrip()
  dirty = [line for line in git("status", "--porcelain").splitlines()
           if not line[3:].startswith("tests/")]
  return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


def regenerate(reason, output_dir=GOLDEN):
  """Writes the golden files of today's code to output_dir."""
  work = tempfile.mkdtemp(prefix="old_runs_golden")
  try:
    runs = copy_runs(os.path.join(work, "runs"), uniform_frames=True)
    _, validate = helpers.make_dataset(os.path.join(work, "data"), **DATA)
    evals = {}
    for name, (run, role) in EVALS.items():
      record = evaluate(runs[run], validate, role)
      evals[name] = {k: record[k] for k in ("step", "role") + METRICS}
    os.makedirs(output_dir, exist_ok=True)
    for run, name in CSVS.items():
      predict(runs[run], validate, os.path.join(output_dir, name))
    with open(os.path.join(output_dir, METRICS_FILE), "w") as f:
      json.dump({"commit": _commit(), "reason": reason,
                 "data": dict(DATA, validate_sha256=data_digests(validate)),
                 "eval": evals}, f, indent=2, sort_keys=True)
      f.write("\n")
  finally:
    shutil.rmtree(work, ignore_errors=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reason", required=True, help="Why the results change "
                      "(recorded in metrics.json; say it in the commit message too).")
  parser.add_argument("--output_dir", default=GOLDEN)
  args = parser.parse_args()
  regenerate(args.reason, args.output_dir)
  print("Wrote %s; review `git diff` before committing." % args.output_dir)


if __name__ == "__main__":
  main()
