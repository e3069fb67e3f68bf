"""Small helpers shared by the entry points: dequantization, flag parsing, summaries,
gradient plumbing, atomic file writes and one-line user errors."""

import contextlib
import json
import os
import sys
import tempfile

import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS  # parsed by run_main only: the entry points read the flags


REPOSITORY = os.path.dirname(os.path.abspath(__file__))


def shipped_path(path):
  """`path` as given when it exists (or is absolute), else relative to this repository,
  which ships the files the originals expect next to them (yt8m_pca/eigenvals.npy,
  vocabulary.csv)."""
  if os.path.isabs(path) or os.path.exists(path):
    return path
  shipped = os.path.join(REPOSITORY, path)
  return shipped if os.path.exists(shipped) else path


class UsageError(Exception):
  """A mistake the user can fix (bad flag, path, file, checkpoint).

  Entry points print its message as one line and exit non-zero, without a traceback.
  """


def run_main(main, argv=None):
  """Parses flags and runs `main(argv)`; user mistakes become one line on stderr.

  Exit codes: 0 success, 2 usage error (bad flag, file or checkpoint), 130 interrupted.
  """
  argv = list(sys.argv if argv is None else argv)
  prog = os.path.basename(argv[0])
  tf1.logging.set_verbosity(tf1.logging.ERROR)  # no deprecation chatter on the console
  try:
    remaining = FLAGS(argv)
  except flags.Error as e:
    print("%s: error: %s" % (prog, str(e).splitlines()[0]), file=sys.stderr)
    sys.exit(2)
  try:
    sys.exit(main(remaining) or 0)
  except UsageError as e:
    print("%s: error: %s" % (prog, e), file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("%s: interrupted" % prog, file=sys.stderr)
    sys.exit(130)


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


def Dequantize(feat_vector, max_quantized_value=2, min_quantized_value=-2):
  """Maps uint8 bucket ids (0..255, any shape) back to floats in about [-2, 2].

  x = q * (max - min) / 255 + (max - min) / 512 + min: the half-bucket bias is part of
  the YouTube-8M formula. Works on numpy arrays and tensors alike.
  """
  quantized_range = max_quantized_value - min_quantized_value
  scalar = quantized_range / 255.0
  bias = (quantized_range / 512.0) + min_quantized_value
  return feat_vector * scalar + bias


def Quantize(features, max_quantized_value=2, min_quantized_value=-2):
  """Inverse of Dequantize up to rounding: floats -> uint8 numpy array (same shape)."""
  import numpy as np
  quantized_range = max_quantized_value - min_quantized_value
  clipped = np.clip(features, min_quantized_value, max_quantized_value)
  return np.round((clipped - min_quantized_value) * 255.0 / quantized_range).astype(np.uint8)


def GetListOfFeatureNamesAndSizes(feature_names, feature_sizes):
  """Parses `--feature_names="rgb,audio"` and `--feature_sizes="1024,128"`.

  Returns:
    (names, sizes): a list of str and a list of int of equal length.
  Raises:
    UsageError naming the flags when the lists differ in length or a size is bad.
  """
  names = [n.strip() for n in feature_names.split(",") if n.strip()]
  raw_sizes = [s.strip() for s in str(feature_sizes).split(",") if s.strip()]
  if not names:
    raise UsageError("--feature_names is empty")
  if len(names) != len(raw_sizes):
    raise UsageError(
        "--feature_names has %d entries (%s) but --feature_sizes has %d (%s); give one "
        "size per feature" % (len(names), ",".join(names), len(raw_sizes),
                              ",".join(raw_sizes)))
  sizes = []
  for name, size in zip(names, raw_sizes):
    try:
      value = int(size)
    except ValueError:
      value = 0
    if value <= 0:
      raise UsageError("--feature_sizes: size %r of feature %r is not a positive integer"
                       % (size, name))
    sizes.append(value)
  if len(set(names)) != len(names):
    raise UsageError("--feature_names lists a feature twice: %s" % ",".join(names))
  return names, sizes


def MakeSummary(name, value):
  """Creates a tf.Summary proto with one scalar `value` under tag `name`."""
  summary = tf1.Summary()
  val = summary.value.add()
  val.tag = str(name)
  val.simple_value = float(value)
  return summary


def AddScalarSummaries(summary_writer, scalars, global_step):
  """Writes a dict {tag: float} of scalars for `global_step` and flushes."""
  for tag, value in sorted(scalars.items()):
    summary_writer.add_summary(MakeSummary(tag, value), global_step)
  summary_writer.flush()


def FormatEvalInfo(global_step, metrics, examples_per_second=None):
  """The starter's one-line evaluation summary (Hit@1, PERR, both mAPs, GAP, loss).

  MAP_all_classes averages AP over every class (the original KD / NeXtVLAD code),
  MAP_labelled_classes over the classes with a true label (today's starter).
  """
  info = ("global_step {0} | Avg_Hit@1: {1:.4f} | Avg_PERR: {2:.4f} | "
          "MAP_all_classes: {3:.4f} | MAP_labelled_classes: {4:.4f} | GAP: {5:.4f} | "
          "Avg_Loss: {6:.6f}").format(
              global_step, metrics["avg_hit_at_one"], metrics["avg_perr"],
              metrics["map_all_classes"], metrics["map_labelled_classes"], metrics["gap"],
              metrics["avg_loss"])
  if examples_per_second is not None:
    info += " | Examples_per_sec: {0:.1f}".format(examples_per_second)
  return info


def combine_gradients(tower_grads):
  """Averages per-tower gradient lists into one list of (gradient, variable).

  Args:
    tower_grads: one list of (gradient or None, variable) per tower, same variable order.
  Returns:
    list of (mean gradient, variable) for the variables that have a gradient.
  """
  combined = []
  for pairs in zip(*tower_grads):
    grads = [g for g, _ in pairs if g is not None]
    if not grads:
      continue
    variable = pairs[0][1]
    if len(grads) == 1:
      combined.append((grads[0], variable))
    else:
      combined.append((tf.add_n(grads) / float(len(grads)), variable))
  return combined


def clip_gradient_norms(gradients_to_variables, max_norm):
  """Clips each gradient tensor to L2 norm `max_norm` (per tensor, as the starter).

  Returns (clipped (gradient, variable) pairs, the L2 norm of each gradient before
  clipping): the norms are computed anyway, and a NaN or Inf in any gradient makes its
  norm non-finite, so callers check them instead of reading the gradients again.
  """
  clipped, norms = [], []
  for grad, var in gradients_to_variables:
    if grad is not None:
      values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
      norm = tf.norm(values)
      values = values * (max_norm / tf.maximum(norm, max_norm))
      norms.append(norm)
      grad = (tf.IndexedSlices(values, grad.indices, grad.dense_shape)
              if isinstance(grad, tf.IndexedSlices) else values)
    clipped.append((grad, var))
  return clipped, norms


@contextlib.contextmanager
def atomic_output(path, mode="w"):
  """Opens a temporary file next to `path`; renames it to `path` only on success.

  A crash or exception leaves `path` untouched (either absent or the old version).
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                             dir=directory)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have made
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _umask():
  """The process's umask (reading it means setting it; it is set right back)."""
  mask = os.umask(0)
  os.umask(mask)
  return mask


def restore_checkpoint(saver, session, checkpoint):
  """saver.restore; a checkpoint deleted meanwhile is a UsageError naming it.

  A running training's Saver deletes all but its newest checkpoints, possibly between
  choosing `checkpoint` and restoring it (tf.train.Saver then raises ValueError or
  NotFoundError).
  """
  try:
    saver.restore(session, checkpoint)
  except (ValueError, tf.errors.NotFoundError):
    if tf.io.gfile.exists(checkpoint + ".index"):
      raise
    raise UsageError("checkpoint %s was deleted while being read (a running training "
                     "keeps only its newest checkpoints); try again" % checkpoint)


def write_json(path, obj):
  """Writes `obj` as pretty JSON to `path` atomically."""
  with atomic_output(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


def read_json(path):
  """Reads a JSON file; a missing or malformed file is a UsageError naming it."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise UsageError("%s does not exist" % path)
  except ValueError as e:
    raise UsageError("%s is not valid JSON: %s" % (path, e))


def append_jsonl(path, record):
  """Appends `record` as one JSON line with a single write (no torn lines)."""
  line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    os.write(fd, line)
  finally:
    os.close(fd)


def read_jsonl(path):
  """Records of a JSON-lines file; a torn or malformed line is skipped."""
  records = []
  if not os.path.exists(path):
    return records
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records
