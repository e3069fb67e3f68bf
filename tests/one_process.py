"""Runs entry points (train.py, eval.py, inference.py, export_model.py) one after the
other in this one process, each as its __main__ would, so that they share TensorFlow's
in-memory ram:// file system (which lives and dies with the process).

Each entry point defines its own absl flags, and several share names (--train_dir,
--batch_size), so two cannot be imported together. Between steps the previous entry
point's own flags are deleted from FLAGS and its module forgotten, then the next one is
imported fresh; the flags of the modules they share (config.py's) stay defined.

  python -m tests.one_process PLAN.json RESULTS.json

PLAN is a JSON list of steps, each one of
  {"cli": "train.py", "args": [...]}  run it; RESULTS gets its exit code, stdout, stderr
                                      (captured at the file-descriptor level) and seconds
  {"copy": [source, target]}          copy a file or a directory tree, any file systems
  {"list": directory}                 RESULTS gets every file under it (relative paths)
"""
import importlib
import json
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import tensorflow as tf  # noqa: E402

import cli  # noqa: E402
import config  # noqa: E402,F401  (the shared flags, defined once for every step)

tf1 = tf.compat.v1
FLAGS = tf1.flags.FLAGS
_loaded = {}  # the entry point imported now: {"name", "module", "flags"}


def entry_point(script):
  """The module of `script` (train.py, ...), imported fresh when another one ran last."""
  name = script[:-3]
  if _loaded.get("name") == name:
    return _loaded["module"]
  if _loaded:
    for flag in _loaded["flags"]:
      delattr(FLAGS, flag)
    sys.modules.pop(_loaded["name"], None)
  before = set(FLAGS)
  module = importlib.import_module(name)
  _loaded.update(name=name, module=module, flags=sorted(set(FLAGS) - before))
  return module


def run_cli(script, args):
  """Runs `script args` through cli.run_main; returns code, stdout, stderr, seconds."""
  module = entry_point(script)
  FLAGS.unparse_flags()
  start = time.time()
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    try:
      cli.run_main(module.main, [script] + list(args))
      code = 0
    except SystemExit as e:
      code = e.code
    except BaseException:  # reported as a result, so later steps still run
      traceback.print_exc()
      code = "uncaught exception"
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      os.close(saved[0])
      os.close(saved[1])
    out.seek(0)
    err.seek(0)
    return {"code": code, "stdout": out.read(), "stderr": err.read(),
            "seconds": time.time() - start}


def files_under(directory):
  """Paths of every file under `directory`, relative to it, sorted.

  ram:// lists a directory's name prefixes too (the directory eval next to eval.jsonl
  seems to hold ".jsonl"): names that do not exist are left out.
  """
  paths = [os.path.join(path, name) for path, _, names in tf.io.gfile.walk(directory)
           for name in names]
  return sorted(path[len(directory):].lstrip("/") for path in paths
                if tf.io.gfile.exists(path))


def copy(source, target):
  """Copies file `source` to `target`, or directory `source` to directory `target`."""
  if not tf.io.gfile.isdir(source):
    tf.io.gfile.makedirs(os.path.dirname(target))
    try:
      tf.io.gfile.copy(source, target, overwrite=True)
    except tf.errors.OpError as e:
      raise RuntimeError("cannot copy %s to %s: %r" % (source, target, e))
    return
  for name in files_under(source):
    copy(os.path.join(source, name), os.path.join(target, name))


def main(plan_path, results_path):
  tf1.disable_eager_execution()
  with open(plan_path) as f:
    plan = json.load(f)
  results = []
  for step in plan:
    if "cli" in step:
      results.append(run_cli(step["cli"], step["args"]))
    elif "copy" in step:
      copy(*step["copy"])
      results.append({"copied": step["copy"]})
    else:
      results.append({"files": files_under(step["list"])})
  with open(results_path, "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
