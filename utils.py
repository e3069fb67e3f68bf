"""Small helpers shared by the entry points: dequantization, flag parsing, summaries,
gradient plumbing, file access on any TensorFlow file system (atomic writes included)
and one-line user errors."""

import contextlib
import json
import os
import shutil
import sys
import tempfile
import uuid

import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS  # parsed by run_main only: the entry points read the flags


REPOSITORY = os.path.dirname(os.path.abspath(__file__))


def shipped_path(path):
  """`path` as given when it exists (or is absolute, or a URL such as gs://...), else
  relative to this repository, which ships the files the originals expect next to them
  (yt8m_pca/eigenvals.npy, vocabulary.csv)."""
  if not is_local(path) or os.path.isabs(path) or os.path.exists(path):
    return path
  shipped = os.path.join(REPOSITORY, path)
  return shipped if os.path.exists(shipped) else path


class UsageError(Exception):
  """A mistake the user can fix (bad flag, path, file, checkpoint).

  Entry points print its message as one line and exit non-zero, without a traceback.
  """


def run_main(main, argv=None):
  """Parses flags and runs `main(argv)`; user mistakes become one line on stderr.

  Exit codes: 0 success, 2 usage error (bad flag, file or checkpoint, or a file system
  that refuses access), 130 interrupted.
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
  except tf.errors.OpError as e:
    line = file_system_failure(e)
    if line is None:
      raise
    print("%s: error: %s" % (prog, line), file=sys.stderr)
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


# --- Files on any TensorFlow file system ----------------------------------------------
# A local path keeps the operating system's guarantees (fsync, permissions, an atomic
# rename over the old file). A URL (gs://bucket/x, ram://x) goes through tf.io.gfile;
# there a file appears whole or not at all, but a directory is not swapped atomically
# (docs/operations.md, "Cloud storage (gs://) and other file systems").


def is_local(path):
  """Whether `path` is on the local disk: it has no scheme (gs://, ram://, file://)."""
  return "://" not in path


def absolute(path):
  """A local path made absolute; a URL as it is (abspath would turn gs://b/x into
  <cwd>/gs:/b/x)."""
  return os.path.abspath(path) if is_local(path) else path


def check_file_systems(paths):
  """Raises UsageError naming the flag when TensorFlow has no file system for a path's
  scheme (s3://, hdfs:// are not part of TensorFlow 2.21), or when a remote one cannot
  be reached (no network, no credentials, access refused): one cheap existence query
  per remote path, before anything runs.

  paths: {flag name (--train_dir): value}; a value may be a comma-separated list.
  """
  registered = set(tf.io.gfile.get_registered_schemes())
  for flag_name, value in sorted(paths.items()):
    for path in (value or "").split(","):
      scheme = path.strip().split("://", 1)[0] if "://" in path else ""
      if scheme not in registered:
        raise UsageError(
            "%s=%s: TensorFlow %s has no file system for %s:// (it has %s); see "
            "docs/operations.md on cloud storage"
            % (flag_name, value, tf.__version__, scheme,
               ", ".join("%s://" % s for s in sorted(registered) if s)))
      if scheme and scheme != "ram":
        try:
          tf.io.gfile.exists(path.strip())  # a glob pattern is queried as a name: False
        except tf.errors.OpError as e:
          raise UsageError("%s=%s: %s" % (flag_name, value,
                                          file_system_failure(e) or
                                          str(e).strip().splitlines()[0]))


def file_system_failure(error):
  """The one line to show for a file-system error the user can act on (no access, no
  credentials or network for a cloud store, an unknown scheme), else None."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  if isinstance(error, (tf.errors.PermissionDeniedError, tf.errors.UnauthenticatedError)):
    return text or "permission denied"
  if text.startswith("File system scheme") or "Error executing an HTTP request" in text:
    return text
  return None


def remove_tree(path):
  """Deletes directory `path` with everything in it."""
  if is_local(path):
    shutil.rmtree(path)
  else:
    tf.io.gfile.rmtree(path)


def replace_file(source, target):
  """Renames file `source` to `target`, replacing it: atomic on a local disk; on an
  object store a copy that appears whole, then the source's deletion."""
  if is_local(source) and is_local(target):
    os.replace(source, target)
  else:
    tf.io.gfile.rename(source, target, overwrite=True)


def copy_file(source, target):
  """Copies file `source` to `target` (a file path or, locally, a directory)."""
  if is_local(source) and is_local(target):
    shutil.copy(source, target)
  else:
    tf.io.gfile.copy(source, target, overwrite=True)


def file_signature(path):
  """(size in bytes, modification time in ns) of a file. Locally from os.stat, whose
  times have ns resolution (tf.io.gfile.stat's have whole seconds there)."""
  if is_local(path):
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns
  stat = tf.io.gfile.stat(path)
  return stat.length, stat.mtime_nsec


def temporary_name(path, suffix=".tmp"):
  """A hidden name next to `path` no other process picks: .<name>.<random><suffix>."""
  return os.path.join(os.path.dirname(path), ".%s.%s%s" % (os.path.basename(path),
                                                             uuid.uuid4().hex, suffix))


@contextlib.contextmanager
def atomic_output(path, mode="w"):
  """Opens a temporary file next to `path`; renames it to `path` only on success.

  A crash or exception leaves `path` untouched (either absent or the old version).
  Locally the data is fsynced before the rename; on another file system the temporary
  file is written with tf.io.gfile and renamed over `path` (an object store copies it:
  the new object appears whole, never half-written).
  """
  if not is_local(path):
    with _remote_atomic_output(path, mode) as f:
      yield f
    return
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


@contextlib.contextmanager
def _remote_atomic_output(path, mode):
  """atomic_output on a file system other than the local disk."""
  tf.io.gfile.makedirs(os.path.dirname(path))
  tmp = temporary_name(path)
  try:
    with tf.io.gfile.GFile(tmp, mode) as f:
      yield f
    replace_file(tmp, path)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
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
    f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
  """Reads a JSON file; a missing or malformed file is a UsageError naming it."""
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.loads(f.read())
  except (FileNotFoundError, tf.errors.NotFoundError):
    raise UsageError("%s does not exist" % path)
  except ValueError as e:
    raise UsageError("%s is not valid JSON: %s" % (path, e))


def append_jsonl(path, record):
  """Appends `record` as one JSON line with a single write (no torn lines).

  Locally one O_APPEND write. Elsewhere a tf.io.gfile append, where the file system has
  one (gs:// rewrites the object whole: concurrent appenders can lose a line), else the
  file is rewritten atomically with the line added.
  """
  line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
  if not is_local(path):
    _append_remote(path, line)
    return
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    os.write(fd, line)
  finally:
    os.close(fd)


def _append_remote(path, line):
  try:
    with tf.io.gfile.GFile(path, "ab") as f:
      f.write(line)
  except tf.errors.UnimplementedError:  # a file system without appendable files
    old = b""
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path, "rb") as f:
        old = f.read()
    with atomic_output(path, "wb") as f:
      f.write(old + line)


def read_jsonl(path):
  """Records of a JSON-lines file; a torn or malformed line is skipped."""
  records = []
  if not tf.io.gfile.exists(path):
    return records
  with tf.io.gfile.GFile(path) as f:
    lines = f.read().split("\n")
  for line in lines:
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records
