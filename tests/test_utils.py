"""utils: atomic writes and files on any TensorFlow file system."""
import os
import stat

import pytest
import tensorflow as tf

import cli
import file_io
import sessions


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path):
  # mkstemp makes 0600 files: model_flags.json and CSVs must be readable like any file.
  old = os.umask(0o022)
  try:
    path = str(tmp_path / "model_flags.json")
    file_io.write_json(path, {"a": 1})
    plain = str(tmp_path / "plain.txt")
    open(plain, "w").close()
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode) == 0o644
  assert file_io.read_json(path) == {"a": 1}
  assert set(os.listdir(str(tmp_path))) == {"model_flags.json", "plain.txt"}


def test_native_bf16_needs_the_cpu_flag_and_an_isa_limit_that_keeps_it():
  assert sessions.native_bf16(["avx2", "avx512f", "avx512_bf16"])
  assert sessions.native_bf16(["avx2", "amx_bf16", "amx_tile"], "AVX512_CORE_AMX")
  assert not sessions.native_bf16(["avx2", "fma"])  # an AVX2-only CPU
  assert not sessions.native_bf16(["avx512f", "avx512_bf16"], "AVX2")  # limited by oneDNN
  assert not sessions.native_bf16(["avx512f", "avx512_bf16"], "avx512_core")


def test_bf16_without_native_support_says_so_once(monkeypatch, capsys):
  monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
  monkeypatch.setattr(sessions, "_cpu_flags", lambda: ["avx2", "fma"])
  monkeypatch.setattr(sessions, "_warned_bf16", [])
  sessions.session_config(bf16=True)
  sessions.session_config(bf16=True)
  sessions.session_config()
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["note: --bf16 on a CPU without native bfloat16 (no AVX512_BF16 or "
                   "AMX): it will not speed anything up here; the run is otherwise the "
                   "same"]
  monkeypatch.setattr(sessions, "_cpu_flags", lambda: ["avx512f", "avx512_bf16"])
  monkeypatch.setattr(sessions, "_warned_bf16", [])
  sessions.session_config(bf16=True)
  assert capsys.readouterr().out == ""


def test_bf16_rewrite_stays_off_under_an_isa_limit_without_bfloat16(monkeypatch):
  # oneDNN aborts on a bfloat16 graph when ONEDNN_MAX_CPU_ISA rules bfloat16 out.
  from tensorflow.core.protobuf import rewriter_config_pb2
  on = rewriter_config_pb2.RewriterConfig.ON
  monkeypatch.setattr(sessions, "_warned_bf16", [True])
  monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
  rewrites = sessions.session_config(bf16=True).graph_options.rewrite_options
  assert rewrites.auto_mixed_precision_onednn_bfloat16 != on
  monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
  rewrites = sessions.session_config(bf16=True).graph_options.rewrite_options
  assert rewrites.auto_mixed_precision_onednn_bfloat16 == on


# --- Files on any TensorFlow file system (ram:// stands for gs:// here) ---------------

def test_urls_are_neither_made_absolute_nor_looked_up_in_the_repository():
  assert file_io.is_local("runs/a") and file_io.is_local("/tmp/a")
  assert not file_io.is_local("gs://bucket/a") and not file_io.is_local("ram://a")
  assert file_io.absolute("gs://bucket/runs/a") == "gs://bucket/runs/a"
  assert file_io.absolute("runs/a") == os.path.join(os.getcwd(), "runs", "a")
  assert file_io.shipped_path("ram://nowhere/vocabulary.csv") == "ram://nowhere/vocabulary.csv"
  assert file_io.shipped_path("vocabulary.csv") in ("vocabulary.csv",
                                                    os.path.join(file_io.REPOSITORY,
                                                                 "vocabulary.csv"))


def test_atomic_output_off_the_local_disk_replaces_the_file_whole_or_not_at_all():
  directory = "ram://utils_atomic/sub"
  path = directory + "/model_flags.json"
  file_io.write_json(path, {"a": 1})
  assert file_io.read_json(path) == {"a": 1}
  with pytest.raises(RuntimeError):
    with file_io.atomic_output(path) as f:
      f.write('{"half": ')
      raise RuntimeError("killed while writing")
  assert file_io.read_json(path) == {"a": 1}
  assert tf.io.gfile.listdir(directory) == ["model_flags.json"]  # no temporary left
  file_io.write_json(path, {"b": 2})
  assert file_io.read_json(path) == {"b": 2}
  assert tf.io.gfile.listdir(directory) == ["model_flags.json"]


def test_append_jsonl_off_the_local_disk_with_and_without_append(monkeypatch):
  path = "ram://utils_jsonl/eval.jsonl"
  tf.io.gfile.makedirs("ram://utils_jsonl")
  file_io.append_jsonl(path, {"step": 1})
  file_io.append_jsonl(path, {"step": 2})
  assert file_io.read_jsonl(path) == [{"step": 1}, {"step": 2}]
  # A file system without appendable files: the file is rewritten with the line added.
  gfile, refused = tf.io.gfile.GFile, []

  class NoAppend(gfile):
    def write(self, data):
      if "a" in self.mode:
        refused.append(self.name)
        raise tf.errors.UnimplementedError(None, None, "no appendable files")
      return super().write(data)

  monkeypatch.setattr(tf.io.gfile, "GFile", NoAppend)
  file_io.append_jsonl(path, {"step": 3})
  assert refused == [path]
  assert file_io.read_jsonl(path) == [{"step": 1}, {"step": 2}, {"step": 3}]
  assert tf.io.gfile.listdir("ram://utils_jsonl") == ["eval.jsonl"]


def test_local_file_signature_keeps_nanoseconds(tmp_path):
  # Teacher-cache fingerprints record it: tf.io.gfile.stat has whole seconds locally,
  # and a cache built before files went through tf.io.gfile must still be recognised.
  path = tmp_path / "train0000.tfrecord"
  path.write_bytes(b"12345")
  stat = os.stat(str(path))
  assert file_io.file_signature(str(path)) == (5, stat.st_mtime_ns)


def test_an_unknown_file_system_is_one_line_naming_the_flag(monkeypatch):
  queried = []
  monkeypatch.setattr(tf.io.gfile, "exists", lambda path: queried.append(path) or False)
  file_io.check_file_systems({"--train_dir": "gs://bucket/run", "--output_file": "",
                              "--vocabulary": "vocabulary.csv",
                              "--train_data_pattern": "/d/a*,ram://d/b*"})
  with pytest.raises(cli.UsageError) as error:
    file_io.check_file_systems({"--train_data_pattern": "/data/a*,s3://bucket/b*"})
  message = str(error.value)
  assert message.startswith("--train_data_pattern=/data/a*,s3://bucket/b*: TensorFlow ")
  assert "has no file system for s3://" in message and "gs://" in message
  assert "\n" not in message
  assert queried == ["gs://bucket/run"]  # remote paths only; ram:// is in-process


def test_an_unreachable_file_system_is_one_line_naming_the_flag(monkeypatch):
  def offline(path):
    raise tf.errors.FailedPreconditionError(
        None, None, "Error executing an HTTP request: libcurl code 6\n\t when reading " + path)
  monkeypatch.setattr(tf.io.gfile, "exists", offline)
  with pytest.raises(cli.UsageError) as error:
    file_io.check_file_systems({"--train_data_pattern": "gs://b/train*.tfrecord"})
  assert str(error.value) == ("--train_data_pattern=gs://b/train*.tfrecord: Error executing "
                              "an HTTP request: libcurl code 6")


def test_file_system_refusals_become_one_line_other_errors_do_not():
  denied = tf.errors.PermissionDeniedError(None, None, "gs://b/x: 403 Forbidden\nmore")
  assert cli.file_system_failure(denied) == "gs://b/x: 403 Forbidden"
  offline = tf.errors.FailedPreconditionError(
      None, None, "Error executing an HTTP request: libcurl code 6\n\t when reading gs://b")
  assert cli.file_system_failure(offline) == "Error executing an HTTP request: libcurl code 6"
  assert cli.file_system_failure(tf.errors.InvalidArgumentError(None, None, "x")) is None
