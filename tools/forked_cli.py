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

Protocol (one JSON object per line): a request {"id", "script", "args", "cwd", "env",
"stdout", "stderr"} on stdin (stderr equal to stdout: both to one file) gets
{"id", "pid"} at once, and {"id", "code"} when that child ends (a signal N gives -N, as
subprocess reports it); children run concurrently. When stdin closes (the client
closed the server or died), children still running get SIGTERM: none outlives its
client.
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


class ForkedProcess(object):
  """A command the Server started: subprocess.Popen's pid, poll, wait, send_signal and
  kill, returncode."""

  def __init__(self, server, request_id, pid, args):
    self.server = server
    self.id = request_id
    self.pid = pid
    self.args = args
    self.returncode = None

  def poll(self):
    if self.returncode is None:
      self.returncode = self.server.exit_code(self.id)
    return self.returncode

  def wait(self, timeout=None):
    """The exit code; subprocess.TimeoutExpired after `timeout` seconds."""
    if self.returncode is None:
      if not self.server.ended(self.id).wait(timeout):
        raise subprocess.TimeoutExpired(self.args, timeout)
      self.returncode = self.server.exit_code(self.id)
    return self.returncode

  def send_signal(self, signal_number):
    if self.poll() is None:
      try:
        os.kill(self.pid, signal_number)
      except ProcessLookupError:
        pass

  def kill(self):
    self.send_signal(signal.SIGKILL)


class Server(object):
  """A forking server started with `env` (thread-safe)."""

  def __init__(self, env):
    self.env = dict(env)
    self.lock = threading.Lock()
    self.next_id = 0
    self.pids = {}
    self.codes = {}
    self.events = {}
    self.process = subprocess.Popen(
        [sys.executable, "-m", "tools.forked_cli"], cwd=ROOT, env=self.env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, bufsize=1)
    self.reader = threading.Thread(target=self._read_replies, daemon=True)
    self.reader.start()

  def _read_replies(self):
    for line in self.process.stdout:
      reply = json.loads(line)
      with self.lock:
        if "pid" in reply:
          self.pids[reply["id"]] = reply["pid"]
        else:
          self.codes[reply["id"]] = reply["code"]
        self.events[reply["id"]][0 if "pid" in reply else 1].set()

  def alive(self):
    return self.process.poll() is None

  def serves(self, env):
    """Whether a command with environment `env` may run here."""
    return all(env.get(k) == self.env.get(k) for k in IMPORT_TIME_ENV)

  def start(self, script, args, stdout, stderr, cwd=None, env=None):
    """Starts `python <script> args` (script relative to the repository, or absolute)
    in a forked child writing to the files stdout and stderr (the same path: one
    file); returns its ForkedProcess."""
    script = os.path.join(ROOT, script)
    for path in (stdout, stderr):  # there (empty) from the start, as Popen's would be
      open(path, "w").close()
    with self.lock:
      request_id = self.next_id
      self.next_id += 1
      self.events[request_id] = (threading.Event(), threading.Event())
      self.process.stdin.write(json.dumps({
          "id": request_id, "script": script, "args": list(args),
          "cwd": cwd or os.getcwd(), "env": dict(env if env is not None else self.env),
          "stdout": stdout, "stderr": stderr}) + "\n")
      self.process.stdin.flush()
    self.events[request_id][0].wait()
    return ForkedProcess(self, request_id, self.pids[request_id],
                         [sys.executable, script] + list(args))

  def ended(self, request_id):
    return self.events[request_id][1]

  def exit_code(self, request_id):
    with self.lock:
      return self.codes.get(request_id)

  def run(self, script, args, cwd=None, env=None, timeout=None):
    """The CompletedProcess of `python <script> args` in a forked child. Raises
    subprocess.TimeoutExpired after `timeout` seconds (the child killed), as
    subprocess.run does."""
    with tempfile.TemporaryDirectory() as directory:
      out, err = os.path.join(directory, "out"), os.path.join(directory, "err")
      child = self.start(script, args, out, err, cwd, env)
      try:
        code = child.wait(timeout)
      except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise
      with open(out) as f_out, open(err) as f_err:
        return subprocess.CompletedProcess(child.args, code, f_out.read(), f_err.read())

  def close(self):
    """Ends the server; commands still running get SIGTERM."""
    if self.alive():
      self.process.stdin.close()
      self.process.wait()


def _preload():
  """What the entry points import."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  import tensorflow  # noqa: F401
  import cli  # noqa: F401
  import cluster  # noqa: F401
  import config  # noqa: F401
  import eval_util  # noqa: F401
  import file_io  # noqa: F401
  import gradients  # noqa: F401
  import inference_graph  # noqa: F401
  import kd_model  # noqa: F401
  import readers  # noqa: F401
  import run_dir  # noqa: F401
  import sessions  # noqa: F401
  import summaries  # noqa: F401
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
    opened = {}
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
      if path not in opened:
        opened[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
      os.dup2(opened[path], fd)
    for target in opened.values():
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


def _reply(message):
  os.write(1, (json.dumps(message) + "\n").encode("utf-8"))


def serve():
  """The server loop: requests on stdin fork children, replies on stdout; ended
  children are reported as they end."""
  _preload()
  if ROOT not in sys.path[1:]:
    sys.path.append(ROOT)
  sys.stdout.flush()
  sys.stderr.flush()
  children = {}  # pid -> request id
  pending = b""
  stdin_open = True
  while stdin_open or children:
    if stdin_open:
      ready, _, _ = select.select([0], [], [], 0.01)
      if ready:
        data = os.read(0, 1 << 16)
        stdin_open = bool(data)
        pending += data
        if not stdin_open:
          # The client closed or died: nobody can wait for these any more, so they
          # must not run on as orphans (a killed demo would train on unseen).
          for pid in children:
            os.kill(pid, signal.SIGTERM)
    while b"\n" in pending:
      line, pending = pending.split(b"\n", 1)
      request = json.loads(line)
      pid = os.fork()
      if pid == 0:
        _child(request)
      children[pid] = request["id"]
      _reply({"id": request["id"], "pid": pid})
    while children:
      pid, status = os.waitpid(-1, os.WNOHANG)
      if not pid:
        break
      _reply({"id": children.pop(pid), "code": os.waitstatus_to_exitcode(status)})
    if not stdin_open and children:
      pid, status = os.waitpid(-1, 0)
      _reply({"id": children.pop(pid), "code": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
  serve()
