"""The forking command server (tools/forked_cli.py): a command's exit code and output
are what its own interpreter would give, and no command outlives its client."""
import os
import signal
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools import forked_cli  # noqa: E402

SCRIPT = """
import sys, time
print("args", sys.argv[1:])
mode = sys.argv[1]
if mode == "exit3":
  sys.exit(3)
if mode == "message":
  sys.exit("no such file: x")
if mode == "raise":
  raise ValueError("boom")
if mode == "sleep":
  time.sleep(600)
"""


@pytest.fixture(scope="module")
def server_and_script(tmp_path_factory):
  directory = tmp_path_factory.mktemp("forked")
  script = directory / "script.py"
  script.write_text(SCRIPT)
  server = forked_cli.Server(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  yield server, str(script)
  server.close()


@pytest.mark.parametrize("mode,code,text", [
    ("ok", 0, "args ['ok', '--x=1']"), ("exit3", 3, "args"),
    ("message", 1, "no such file: x"), ("raise", 1, "ValueError: boom")])
def test_exit_codes_and_output_are_the_interpreters(server_and_script, mode, code, text):
  server, script = server_and_script
  done = server.run(script, [mode, "--x=1"], timeout=60)
  assert done.returncode == code
  assert text in done.stdout + done.stderr


def test_closing_the_server_ends_commands_still_running(server_and_script, tmp_path):
  _, script = server_and_script
  server = forked_cli.Server(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  log = str(tmp_path / "log")
  child = server.start(script, ["sleep"], log, log)
  server.process.stdin.close()  # what the client's death does
  try:
    assert child.wait(timeout=30) == -signal.SIGTERM
  finally:
    child.kill()
  server.process.wait(timeout=30)
  with pytest.raises(ProcessLookupError):
    os.kill(child.pid, 0)
