"""Shared test fixtures: tiny generated datasets and running the CLIs as a user would.

Preprocessing: CLI tests run train.py with its defaults, so generated frame-level rgb
(1024 values) is PCA-scaled with the shipped yt8m_pca/eigenvals.npy as in the original;
tests that check numbers independent of it pass --pca_eigenvals= or build graphs with
feature sizes other than 1024 (never scaled).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A NeXtVLAD small enough for a training step in milliseconds.
TINY_MODEL = ["--nextvlad_cluster_size=4", "--nextvlad_hidden_size=16", "--groups=2",
              "--expansion=1", "--gating_reduction=4", "--num_classes=20"]

def make_dataset(directory, train_videos=24, validate_videos=12, num_classes=20,
                 seed=1, **kwargs):
  """Writes a small synthetic YouTube-8M dataset; returns (train, validate) patterns."""
  from tools import make_synthetic_yt8m
  make_synthetic_yt8m.write_dataset(
      str(directory), train_videos=train_videos, validate_videos=validate_videos,
      num_classes=num_classes, num_verticals=4, seed=seed, shards=2, video_level=False,
      log=None, **kwargs)
  return (os.path.join(str(directory), "frame", "train*.tfrecord"),
          os.path.join(str(directory), "frame", "validate*.tfrecord"))


_server = []  # the tools.forked_cli.Server of this test process, once started


def _forking_server(env):
  """This test process's forking server (started at the first call), or None when it
  cannot serve `env` or YT8M_TEST_SUBPROCESS=1 asks for interpreters of their own."""
  if os.environ.get("YT8M_TEST_SUBPROCESS") == "1":
    return None
  from tools import forked_cli
  if not _server or not _server[0].alive():
    _server[:] = [forked_cli.Server(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                                         PYTHONPATH=ROOT))]
  return _server[0] if _server[0].serves(env) else None


def cli_env(env=None):
  """The environment a CLI runs with: this one, quiet TensorFlow, the repo importable,
  plus `env`."""
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
  full_env.update(env or {})
  return full_env


def start_cli(script, args, log_path, env=None, cwd=None):
  """Starts `python <script> args...` with stdout and stderr to the file log_path;
  returns its process (Popen's pid, poll, wait, kill, send_signal), forked as run_cli's.
  `script` is relative to the repository (or absolute)."""
  full_env = cli_env(env)
  server = _forking_server(full_env)
  if server is not None:
    return server.start(script, args, log_path, log_path, cwd, full_env)
  with open(log_path, "w") as log:
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script)] + list(args),
                            cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT)


def run_cli(script, args, cwd=None, env=None, check=True, timeout=300):
  """Runs `python <script> args...` from the repo; returns the CompletedProcess.

  The command runs in a child forked from a process that imported TensorFlow and the
  project once (tools/forked_cli.py): a fresh interpreter after its imports, without
  their seconds. YT8M_TEST_SUBPROCESS=1 runs every command in an interpreter of its own.
  """
  full_env = cli_env(env)
  server = _forking_server(full_env)
  if server is not None:
    process = server.run(script, args, cwd, full_env, timeout)
  else:
    process = subprocess.run([sys.executable, os.path.join(ROOT, script)] + list(args),
                             cwd=cwd, env=full_env, capture_output=True, text=True,
                             timeout=timeout)
  if check and process.returncode != 0:
    raise AssertionError("%s %s failed (%d):\n%s\n%s" % (
        script, " ".join(args), process.returncode, process.stdout,
        process.stderr[-3000:]))
  return process


def user_error_line(process):
  """The one-line error a failed CLI printed (asserts there is exactly one such line)."""
  lines = [l for l in process.stderr.splitlines()
           if l and not l.startswith(("WARNING: All log", "I0000", "W0000", "E0000"))]
  assert len(lines) == 1, process.stderr
  assert "Traceback" not in process.stderr
  return lines[0]


def run_in_one_process(tmp_path, plan, env=None):
  """Runs tests/one_process.py on `plan` (a list of steps, see there) in a fresh
  process: several CLIs share one TensorFlow start-up and one ram:// file system.
  env: extra environment variables. Returns its results, one per step."""
  plan_path, results_path = tmp_path / "plan.json", tmp_path / "results.json"
  plan_path.write_text(json.dumps(plan))
  process = subprocess.run(
      [sys.executable, "-m", "tests.one_process", str(plan_path), str(results_path)],
      cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})),
      capture_output=True, text=True, timeout=900)
  assert process.returncode == 0, process.stderr[-3000:]
  return json.loads(results_path.read_text())


def run_plan(tmp_path, plan, env=None):
  """Runs the steps of a tests/one_process.py plan; returns their results, one each.

  A plan that touches ram:// (which lives in one process's memory) runs in one
  process; any other runs each command through run_cli, which is faster, and its copy
  and list steps here.
  """
  if "ram://" in json.dumps(plan):
    return run_in_one_process(tmp_path, plan, env)
  from tests import one_process
  results = []
  for step in plan:
    if "cli" in step:
      process = run_cli(step["cli"], step["args"], env=env, check=False, timeout=900)
      results.append({"code": process.returncode, "stdout": process.stdout,
                      "stderr": process.stderr})
    elif "copy" in step:
      one_process.copy(*step["copy"])
      results.append({"copied": step["copy"]})
    else:
      results.append({"files": one_process.files_under(step["list"])})
  return results


def reference_metrics(predictions, labels, top_k=20):
  """GAP, Hit@1 and mAP over all classes, written plainly from their definitions (not
  eval_util's code), for checking eval.py's numbers.

  predictions: [N, C] scores (compared as float32); labels: [N, C] 0/1.
  Returns {"gap", "hit_at_one", "map_all_classes"}. Within an example equal scores rank
  by ascending class, and pooled equal scores keep example order (eval_util's rules).
  """
  import numpy as np
  predictions = np.asarray(predictions, np.float32)
  labels = np.asarray(labels) != 0

  def average_precision(scores, positives, num_positives):
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    precisions = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precisions[hits].sum() / num_positives) if num_positives else 0.0

  pooled_scores, pooled_labels = [], []
  for scores, positives in zip(predictions, labels):
    best = np.argsort(-scores, kind="stable")[:top_k]
    pooled_scores.extend(scores[best])
    pooled_labels.extend(positives[best])
  gap = average_precision(np.array(pooled_scores, np.float32), np.array(pooled_labels),
                          labels.sum())
  hit_at_one = float(np.mean(labels[np.arange(len(labels)),
                                    np.argmax(predictions, axis=1)]))
  aps = [average_precision(predictions[:, c], labels[:, c], labels[:, c].sum())
         for c in range(predictions.shape[1])]
  return {"gap": gap, "hit_at_one": hit_at_one, "map_all_classes": float(np.mean(aps))}


def csv_predictions(path, num_classes):
  """{video id: dense scores [num_classes] float32} of a Kaggle CSV that inference.py
  wrote (classes it left out score 0); asserts the file's format on the way: the
  header, and per row distinct classes in range with scores descending in [0, 1]."""
  import numpy as np
  lines = open(str(path)).read().splitlines()
  assert lines[0] == "VideoId,LabelConfidencePairs", lines[0]
  found = {}
  for line in lines[1:]:
    video_id, pairs = line.split(",")
    fields = pairs.split()
    classes, scores = [int(c) for c in fields[0::2]], [float(s) for s in fields[1::2]]
    assert len(classes) == len(scores) and len(set(classes)) == len(classes), line
    assert all(0 <= c < num_classes for c in classes), line
    assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
    assert video_id and video_id not in found, line
    dense = np.zeros(num_classes, np.float32)
    dense[classes] = scores
    found[video_id] = dense
  return found


def record_labels(pattern, num_classes):
  """{video id: 0/1 labels [num_classes]} of the records of a file pattern, read with
  protocol buffers alone (frame-level SequenceExamples)."""
  import tensorflow as tf
  from tools import teacher_diagnosis
  return {video_id.decode(): labels for video_id, labels in
          teacher_diagnosis.labels_of(tf, pattern, num_classes).items()}


def record_role_models(monkeypatch):
  """Records every create_role_model call's (role, outputs)."""
  import kd_model
  calls = []
  create = kd_model.create_role_model

  def recording_create(cfg, role, *args, **kwargs):
    outputs = create(cfg, role, *args, **kwargs)
    calls.append((role, outputs))
    return outputs
  monkeypatch.setattr(kd_model, "create_role_model", recording_create)
  return calls
