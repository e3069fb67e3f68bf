"""Files on any TensorFlow file system (local disk, gs://, ram://): paths,
checks that name the flag at fault, atomic writes, copies and renames, JSON
and JSON lines."""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid

import tensorflow as tf

import cli


# A local path keeps the operating system's guarantees (fsync, permissions, an atomic
# rename over the old file). A URL (gs://bucket/x, ram://x) goes through tf.io.gfile;
# there a file appears whole or not at all, but a directory is not swapped atomically
# (docs/operations.md, "Cloud storage (gs://) and other file systems").


REPOSITORY = os.path.dirname(os.path.abspath(__file__))


def shipped_path(path):
  """`path` as given when it exists (or is absolute, or a URL such as gs://...), else
  relative to this repository, which ships the files the originals expect next to them
  (yt8m_pca/eigenvals.npy, vocabulary.csv)."""
  if not is_local(path) or os.path.isabs(path) or os.path.exists(path):
    return path
  shipped = os.path.join(REPOSITORY, path)
  return shipped if os.path.exists(shipped) else path


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
        raise cli.UsageError(
            "%s=%s: TensorFlow %s has no file system for %s:// (it has %s); see "
            "docs/operations.md on cloud storage"
            % (flag_name, value, tf.__version__, scheme,
               ", ".join("%s://" % s for s in sorted(registered) if s)))
      if scheme and scheme != "ram":
        try:
          tf.io.gfile.exists(path.strip())  # a glob pattern is queried as a name: False
        except tf.errors.OpError as e:
          raise cli.UsageError("%s=%s: %s" % (flag_name, value,
                                              cli.file_system_failure(e) or
                                              str(e).strip().splitlines()[0]))


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
    raise cli.UsageError("%s does not exist" % path)
  except ValueError as e:
    raise cli.UsageError("%s is not valid JSON: %s" % (path, e))


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


def sha256(path):
  """The hex sha256 of a file on any TensorFlow file system, read 1 MB at a time."""
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
