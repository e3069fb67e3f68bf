"""Runs the project's command lines in processes forked from one that has imported
TensorFlow and the project once: each is what `python <script> args...` is after its
imports, without their ~5 s. tools/demo.py runs its commands this way, and so do the
tests (tests/helpers.run_cli).

The server (`python -m tools.forked_cli`) imports what every entry point imports (not
the entry points: each defines flags of its own at import), then forks a child per
request. The child changes to the requested directory, takes the requested
environment, sends its stdout and stderr (file descriptors 1 and 2) to the requested
files and runs the script as __main__ with sys.argv set, as the interpreter would; its
exit code is the script's. No TensorFlow op has run in the server when it forks.

Protocol (one JSON object per line): request {"script", "args", "cwd", "env", "stdout",
"stderr"} on stdin; replies {"pid": child pid} at once, then {"code": exit code} when
the child ends (a signal N gives -N, as subprocess reports it).
"""
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Environment variables TensorFlow reads when it is imported: a command that sets one
# of them otherwise than the server had gets an interpreter of its own.
IMPORT_TIME_ENV = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL", "ONEDNN_MAX_CPU_ISA",
                   "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "LD_PRELOAD", "GLIBC_TUNABLES",
                   "MPLBACKEND")


class Server(object):
  """A forking server started with `env`; run() is thread-safe (one command at a time)."""

  def __init__(self, env):
    self.env = dict(env)
    self.lock = threading.Lock()
    self.process = subprocess.Popen(
        [sys.executable, "-m", "tools.forked_cli"], cwd=ROOT, env=self.env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, bufsize=1)

  def alive(self):
    return self.process.poll() is None

  def serves(self, env):
    """Whether a command with environment `env` may run here."""
    return all(env.get(k) == self.env.get(k) for k in IMPORT_TIME_ENV)

  def run(self, script, args, cwd=None, env=None, timeout=None):
    """The CompletedProcess of `python <script> args` (script: a path, relative to the
    repository or absolute) in a forked child. Raises subprocess.TimeoutExpired after
    `timeout` seconds (the child killed), as subprocess.run does."""
    script = os.path.join(ROOT, script)
    with self.lock, tempfile.TemporaryDirectory() as directory:
      out, err = os.path.join(directory, "out"), os.path.join(directory, "err")
      self.process.stdin.write(json.dumps({
          "script": script, "args": list(args), "cwd": cwd or os.getcwd(),
          "env": dict(env if env is not None else self.env), "stdout": out,
          "stderr": err}) + "\n")
      self.process.stdin.flush()
      pid = json.loads(self.process.stdout.readline())["pid"]
      ready, _, _ = select.select([self.process.stdout], [], [], timeout)
      if not ready:
        os.kill(pid, signal.SIGKILL)
        self.process.stdout.readline()
        raise subprocess.TimeoutExpired([script] + list(args), timeout)
      code = json.loads(self.process.stdout.readline())["code"]
      with open(out) as f_out, open(err) as f_err:
        return subprocess.CompletedProcess([sys.executable, script] + list(args), code,
                                           f_out.read(), f_err.read())

  def close(self):
    if self.alive():
      self.process.stdin.close()
      self.process.wait()


def _preload():
  """What the entry points import."""
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
  """Runs one command in the forked child; never returns."""
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
    sys.path[0] = os.path.dirname(request["script"])  # as the interpreter sets it
    try:
      runpy.run_path(request["script"], run_name="__main__")
      code = 0
    except SystemExit as e:
      if e.code is None or isinstance(e.code, int):
        code = e.code or 0
      else:  # sys.exit("message"): printed, exit 1
        print(e.code, file=sys.stderr)
    except BaseException:  # a traceback, as the interpreter prints it
      traceback.print_exc()
  finally:
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)


def serve():
  """The server loop (stdin requests, stdout replies)."""
  _preload()
  if ROOT not in sys.path[1:]:
    sys.path.append(ROOT)
  for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      _child(request)
    sys.stdout.write(json.dumps({"pid": pid}) + "\n")
    sys.stdout.flush()
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
  serve()
