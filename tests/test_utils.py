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


def test_native_bf16_needs_the_cpu_flag_and_an_isa_limit_that_keeps_it():
  assert utils.native_bf16(["avx2", "avx512f", "avx512_bf16"])
  assert utils.native_bf16(["avx2", "amx_bf16", "amx_tile"], "AVX512_CORE_AMX")
  assert not utils.native_bf16(["avx2", "fma"])  # an AVX2-only CPU
  assert not utils.native_bf16(["avx512f", "avx512_bf16"], "AVX2")  # limited by oneDNN
  assert not utils.native_bf16(["avx512f", "avx512_bf16"], "avx512_core")


def test_bf16_without_native_support_says_so_once(monkeypatch, capsys):
  monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
  monkeypatch.setattr(utils, "_cpu_flags", lambda: ["avx2", "fma"])
  monkeypatch.setattr(utils, "_warned_bf16", [])
  utils.session_config(bf16=True)
  utils.session_config(bf16=True)
  utils.session_config()
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["note: --bf16 on a CPU without native bfloat16 (no AVX512_BF16 or "
                   "AMX): it will not speed anything up here; the run is otherwise the "
                   "same"]
  monkeypatch.setattr(utils, "_cpu_flags", lambda: ["avx512f", "avx512_bf16"])
  monkeypatch.setattr(utils, "_warned_bf16", [])
  utils.session_config(bf16=True)
  assert capsys.readouterr().out == ""


def test_bf16_rewrite_stays_off_under_an_isa_limit_without_bfloat16(monkeypatch):
  # oneDNN aborts on a bfloat16 graph when ONEDNN_MAX_CPU_ISA rules bfloat16 out.
  from tensorflow.core.protobuf import rewriter_config_pb2
  on = rewriter_config_pb2.RewriterConfig.ON
  monkeypatch.setattr(utils, "_warned_bf16", [True])
  monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
  rewrites = utils.session_config(bf16=True).graph_options.rewrite_options
  assert rewrites.auto_mixed_precision_onednn_bfloat16 != on
  monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
  rewrites = utils.session_config(bf16=True).graph_options.rewrite_options
  assert rewrites.auto_mixed_precision_onednn_bfloat16 == on
