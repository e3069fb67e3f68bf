"""utils: atomic writes."""
import os
import stat

import utils


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path):
  # mkstemp makes 0600 files: model_flags.json and CSVs must be readable like any file.
  old = os.umask(0o022)
  try:
    path = str(tmp_path / "model_flags.json")
    utils.write_json(path, {"a": 1})
    plain = str(tmp_path / "plain.txt")
    open(plain, "w").close()
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode) == 0o644
  assert utils.read_json(path) == {"a": 1}
  assert set(os.listdir(str(tmp_path))) == {"model_flags.json", "plain.txt"}
