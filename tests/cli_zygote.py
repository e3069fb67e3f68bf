"""A process that has imported TensorFlow and the project once, and forks a child per
command line it is asked to run: the child is what `python <script> args...` would be
after its imports, without their ~5 s (tests/helpers.run_cli).

Each child changes to the requested directory, takes the requested environment,
sends its stdout and stderr (file descriptors 1 and 2) to the requested files and runs
the script as __main__ with sys.argv set, as the interpreter would; its exit code is
the script's. Only the standard library and modules every entry point imports anyway
are imported here, before any TensorFlow op runs, so a fork starts from the state a
fresh interpreter reaches after `import`.

Protocol (one JSON object per line): request {"script", "args", "cwd", "env", "stdout",
"stderr"} on stdin; replies {"pid": child pid} at once, then {"code": exit code} when
the child ends (a signal N gives -N, as subprocess reports it).
"""
import json
import os
import runpy
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def preload():
  """Imports what the entry points import (not the entry points: each defines flags of
  its own at import, as it does in a fresh interpreter)."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  import tensorflow  # noqa: F401
  import cluster  # noqa: F401
  import config  # noqa: F401
  import eval_util  # noqa: F401
  import inference_graph  # noqa: F401
  import kd_model  # noqa: F401
  import readers  # noqa: F401
  import run_dir  # noqa: F401
  import teacher_cache  # noqa: F401
  import train_graph  # noqa: F401
  import utils  # noqa: F401
  import vocabulary  # noqa: F401


def _child(request):
  """Runs in the forked child: never returns."""
  code = 1
  try:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
      target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
      os.dup2(target, fd)
      os.close(target)
    sys.stdin = open(os.devnull)
    sys.argv = [request["script"]] + list(request["args"])
    try:
      runpy.run_path(request["script"], run_name="__main__")
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if not isinstance(e.code, (int, type(None))):
        print(e.code, file=sys.stderr)
    except BaseException:  # a traceback, as the interpreter prints it
      traceback.print_exc()
      code = 1
  finally:
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)


def main():
  preload()
  out = sys.stdout
  for line in sys.stdin:
    request = json.loads(line)
    out.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      _child(request)
    out.write(json.dumps({"pid": pid}) + "\n")
    out.flush()
    _, status = os.waitpid(pid, 0)
    out.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
    out.flush()


if __name__ == "__main__":
  main()
