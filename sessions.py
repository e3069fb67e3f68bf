"""The session config every entry point uses: soft placement and, with --bf16,
the reduced-precision rewrite (oneDNN bfloat16 on CPUs, mixed float16 on
GPUs), with one note where the CPU has no native bfloat16."""

import os

import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

tf1 = tf.compat.v1
# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) that still include native bfloat16 arithmetic.
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
              "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX",
              "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "DEFAULT", "ALL")
_warned_bf16 = []


def native_bf16(cpu_flags, max_isa=""):
  """Whether oneDNN computes bfloat16 natively: the CPU has AVX512_BF16 or AMX and
  ONEDNN_MAX_CPU_ISA (max_isa) does not rule them out. cpu_flags: /proc/cpuinfo's."""
  if max_isa and max_isa.upper() not in _BF16_ISAS:
    return False
  return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags))


def _cpu_flags():
  """The CPU's feature flags from /proc/cpuinfo, or None where there is none."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return line.split(":", 1)[1].split()
  except OSError:
    pass
  return None


def session_config(bf16=False, **kwargs):
  """A ConfigProto with soft placement and, with bf16 (--bf16), the reduced-precision
  rewrite: oneDNN bfloat16 on CPUs, mixed float16 on GPUs. On a CPU without native
  bfloat16 one line says the rewrite will not make it faster (once per process)."""
  config = tf1.ConfigProto(allow_soft_placement=True, **kwargs)
  if bf16:
    rewrites = config.graph_options.rewrite_options
    if tf.config.list_physical_devices("GPU"):
      rewrites.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    else:
      max_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
      # A bfloat16 graph under an ISA limit without bfloat16 aborts inside oneDNN
      # ("could not create a primitive descriptor"): there the rewrite stays off.
      if not max_isa or max_isa.upper() in _BF16_ISAS:
        rewrites.auto_mixed_precision_onednn_bfloat16 = (
            rewriter_config_pb2.RewriterConfig.ON)
      flags_found = _cpu_flags()
      if (flags_found is not None and not _warned_bf16 and
          not native_bf16(flags_found, max_isa)):
        _warned_bf16.append(True)
        print("note: --bf16 on a CPU without native bfloat16 (no AVX512_BF16 or AMX): "
              "it will not speed anything up here; the run is otherwise the same",
              flush=True)
  return config
