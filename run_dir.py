"""Run directories: their model_flags.json and their checkpoints.

A run directory (`<train_dir>_teacher`, `_student_k_<k>`, `_KD_k_<k>`) holds the
checkpoints, TensorBoard events and model_flags.json, the GraphConfig it was trained
with, so eval.py, inference.py and export_model.py rebuild its graph from it alone.

A run directory can be moved or copied (another disk, machine, gs:// <-> local): its
`checkpoint` state file names the checkpoints relative to the directory, and one
written by an earlier version (with absolute paths that no longer exist) is read by
falling back to the newest complete checkpoint in the directory (find_checkpoint).
"""

import fcntl
import os
import re

import tensorflow as tf

import cli
import config
import file_io
import kd_model

tf1 = tf.compat.v1
MODEL_FLAGS_FILE = "model_flags.json"
STATE_FILE = "checkpoint"  # the state file tf.compat.v1.train.Saver writes
CHECKPOINT_BASENAME = "model.ckpt"  # train.py's checkpoints: model.ckpt-<global step>
_DATA_SHARD = re.compile(r"\.data-(\d+)-of-(\d+)$")


def lock(run_dir):
  """Claims run_dir for this training process until it exits; returns the open lock.

  The lock is an advisory lock (flock) on `.<name>.lock` next to the run directory
  (outside it, so --start_new_model's wipe keeps it), which the operating system
  releases when the process ends, however it ends. It works on local and NFS disks.
  Object stores (gs://) have no such locks: there nothing is locked (a marker file
  would outlive a killed or preempted trainer and refuse its restart), and one line
  says so. Returns None then.
  Raises:
    UsageError when another process holds it.
  """
  if not file_io.is_local(run_dir):
    print("note: %s is not on a local disk: no lock keeps a second train.py out of it "
          "(docs/operations.md)" % run_dir, flush=True)
    return None
  parent, name = os.path.split(os.path.abspath(run_dir))
  os.makedirs(parent, exist_ok=True)
  handle = open(os.path.join(parent, "." + name + ".lock"), "a+")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise cli.UsageError("%s is in use by another train.py (%s); wait for it to end "
                         "or use another --train_dir" % (run_dir, holder))
  handle.seek(0)
  handle.truncate()
  handle.write("pid %d" % os.getpid())
  handle.flush()
  return handle


def prepare(run_dir, cfg, start_new_model):
  """Makes run_dir ready for training: wipes it first with start_new_model, writes
  model_flags.json into a new one, and checks a resumed one was trained with cfg.

  Raises:
    UsageError when resuming a run whose recorded model flags differ from cfg's.
  """
  if start_new_model and tf.io.gfile.exists(run_dir):
    print("--start_new_model: removing %s" % run_dir)
    file_io.remove_tree(run_dir)
  tf.io.gfile.makedirs(run_dir)
  recorded = read_recorded(run_dir)
  if recorded is None:
    file_io.write_json(flags_path(run_dir), cfg.to_json())
    return
  # Read back through GraphConfig: fields an older version did not record compare as
  # the defaults they had.
  recorded = config.from_json(recorded, flags_path(run_dir)).to_json()
  found = conflicts(recorded, cfg.to_json())
  if found:
    raise cli.UsageError(
        "%s was trained with other model flags (%s); resume with the same flags or "
        "pass --start_new_model=True" % (run_dir, "; ".join(found)))


def cache_identity(record):
  """What identifies the teacher cache of a model_flags.json record (its teacher_cache)
  for a resume: the digest of the teacher, --bf16, files and dtype (not where the
  teacher lives). Records of caches written before fingerprints had a format compare
  by what they share with today's: preprocessing, number of files and dtype."""
  if not record:
    return None
  if "format" in record:
    return record["digest"]
  return (record.get("preprocessing"), record.get("num_files"), record.get("dtype"))


def conflicts(recorded, current):
  """Fields whose values differ between two model_flags.json dicts ('--x: old -> new')."""
  found = []
  for name in sorted(set(recorded) | set(current)):
    if name in config.INFORMATION_ONLY:
      continue
    if name == "teacher_cache":
      old, new = recorded.get(name), current.get(name)
      if old and new and "format" not in old:  # written by an earlier version
        new = {k: v for k, v in new.items() if k != "format"}
      if cache_identity(old) != cache_identity(new):
        # A cache of another fingerprint format than the run's (built again by a
        # later version) is named so: the run needs the cache it recorded.
        formats = old and new and old.get("format") != new.get("format")

        def spell(record):
          if not record:
            return "none (online)"
          return "digest %s%s" % (record.get("digest"), " (fingerprint format %s)"
                                  % record.get("format") if formats else "")
        found.append("--teacher_cache: %s -> %s" % (spell(old), spell(new)))
      continue
    if name == "teacher_model" and recorded.get(name) and current.get(name):
      found.extend("--teacher_model: %s %r -> %r" % (key, recorded[name].get(key),
                                                     current[name].get(key))
                   for key in config.MODEL_FIELDS
                   if recorded[name].get(key) != current[name].get(key))
      continue
    if recorded.get(name) != current.get(name):
      found.append("--%s: %r -> %r" % (name, recorded.get(name), current.get(name)))
  return found


def flags_path(run_dir):
  """<run_dir>/model_flags.json."""
  return os.path.join(run_dir, MODEL_FLAGS_FILE)


def read_recorded(run_dir):
  """The raw model_flags.json dict of run_dir, or None when it has none."""
  path = flags_path(run_dir)
  return file_io.read_json(path) if tf.io.gfile.exists(path) else None


def load(run_dir, flag_name="--train_dir"):
  """The GraphConfig run_dir was trained with.

  Raises:
    UsageError naming the flag when the directory or its model_flags.json is missing
    or holds something this version cannot build.
  """
  if not tf.io.gfile.isdir(run_dir):
    raise cli.UsageError("%s=%s does not exist" % (flag_name, run_dir))
  recorded = read_recorded(run_dir)
  if recorded is None:
    raise cli.UsageError(
        "%s=%s has no %s: pass a run directory written by train.py (<train_dir>_teacher, "
        "<train_dir>_student_k_<k> or <train_dir>_KD_k_<k>)"
        % (flag_name, run_dir, MODEL_FLAGS_FILE))
  return config.from_json(recorded, flags_path(run_dir))


def checkpoint_exists(prefix):
  """True when the checkpoint `prefix` (model.ckpt-N) has its index file."""
  return tf.io.gfile.exists(prefix + ".index")


def checkpoint_complete(prefix, names=None):
  """True when checkpoint `prefix` has its .index and every .data-K-of-N shard.

  names: the file names of the prefix's directory, when already listed. Each file is
  also asked for by name: ram:// can list a name that is only the prefix of another
  file's (a temporary one's).
  """
  directory, base = os.path.split(prefix)
  if names is None:
    try:
      names = tf.io.gfile.listdir(directory)
    except tf.errors.NotFoundError:
      return False
  totals = set()
  shards = []
  for name in names:
    match = _DATA_SHARD.match(name[len(base):]) if name.startswith(base) else None
    if match:
      totals.add(int(match.group(2)))
      shards.append(name)
  if len(totals) != 1 or base + ".index" not in names:
    return False
  total = totals.pop()
  wanted = {"%s.data-%05d-of-%05d" % (base, i, total) for i in range(total)}
  if not wanted <= set(shards):
    return False
  return all(tf.io.gfile.exists(os.path.join(directory, name))
             for name in [base + ".index"] + sorted(wanted))


def complete_checkpoints(run_dir):
  """The complete `model.ckpt-N` checkpoint prefixes directly in run_dir, oldest
  (lowest global step N) first."""
  try:
    names = tf.io.gfile.listdir(run_dir)
  except tf.errors.NotFoundError:
    return []
  pattern = re.compile(r"^%s-(\d+)\.index$" % re.escape(CHECKPOINT_BASENAME))
  steps = sorted(int(m.group(1)) for m in map(pattern.match, names) if m)
  prefixes = [os.path.join(run_dir, "%s-%d" % (CHECKPOINT_BASENAME, step))
              for step in steps]
  return [prefix for prefix in prefixes if checkpoint_complete(prefix, names)]


def _state(run_dir):
  """(the checkpoint run_dir's state file names, every checkpoint it lists), relative
  paths joined to run_dir; None without a state file; ("", []) for one that names none
  or cannot be parsed."""
  try:
    state = tf1.train.get_checkpoint_state(run_dir)
  except ValueError:  # a state file without model_checkpoint_path
    return "", []
  if state is None:
    return ("", []) if tf.io.gfile.exists(os.path.join(run_dir, STATE_FILE)) else None
  return state.model_checkpoint_path, list(state.all_model_checkpoint_paths)


def resolve_checkpoint(run_dir):
  """(the checkpoint prefix to restore from run_dir or None, a note line or None).

  The checkpoint the `checkpoint` state file names, taken in run_dir. When the state
  file names checkpoints that are not there (absolute paths written by an earlier
  version, before the directory moved or was copied), the newest complete
  `model.ckpt-N` in run_dir (highest N, its .index and every data shard present), and
  a note saying so. No state file: no checkpoint (as TensorFlow's latest_checkpoint).
  """
  state = _state(run_dir)
  if state is None:
    return None, None
  recorded = state[0]
  if recorded:
    here = os.path.join(run_dir, os.path.basename(recorded))
    # The path as recorded must be there too: a copy whose state file names the
    # original's checkpoints (still in place) reads its own copies of them.
    if ((recorded == here or checkpoint_exists(recorded)) and
        checkpoint_complete(here)):
      return here, None
  kept = complete_checkpoints(run_dir)
  if not kept:
    return None, None
  return kept[-1], (
      "note: %s names checkpoints that are not there (moved or copied?); using %s, "
      "the newest complete one in %s" % (os.path.join(run_dir, STATE_FILE),
                                         os.path.basename(kept[-1]), run_dir))


def find_checkpoint(run_dir):
  """The checkpoint to restore from run_dir (see resolve_checkpoint), or None when it
  has none. A fallback from a state file naming checkpoints that are not there is
  said in one line on stdout."""
  checkpoint, note = resolve_checkpoint(run_dir)
  if note:
    print(note, flush=True)
  return checkpoint


def recorded_checkpoints(run_dir, checkpoint):
  """The checkpoints of run_dir's state file that are complete in run_dir (taken by
  name, wherever the file says they were), oldest first, ending with `checkpoint`:
  what a resumed Saver keeps managing (Saver.recover_last_checkpoints), so its
  max_to_keep deletes the oldest of them as training goes on."""
  names = tf.io.gfile.listdir(run_dir)
  kept = []
  for path in (_state(run_dir) or ("", []))[1]:
    here = os.path.join(run_dir, os.path.basename(path))
    if here != checkpoint and here not in kept and checkpoint_complete(here, names):
      kept.append(here)
  return kept + [checkpoint]


def latest_checkpoint(run_dir, flag_name="--train_dir"):
  """The checkpoint to restore from run_dir (find_checkpoint); UsageError when there is
  none."""
  checkpoint = find_checkpoint(run_dir)
  if not checkpoint:
    raise cli.UsageError("%s=%s has no checkpoint yet" % (flag_name, run_dir))
  return checkpoint


def chosen_checkpoint(run_dir, checkpoint="", flag_name="--train_dir"):
  """`checkpoint` (--checkpoint) when given and present, else run_dir's latest."""
  if not checkpoint:
    return latest_checkpoint(run_dir, flag_name)
  if not checkpoint_exists(checkpoint):
    raise cli.UsageError("--checkpoint=%s does not exist" % checkpoint)
  return checkpoint


def checkpoint_reader(checkpoint):
  """A reader of the checkpoint prefix `checkpoint` (model.ckpt-N).

  Unlike tf.train.list_variables and load_variable, it never takes the prefix for a
  directory: ram:// says that of any prefix of a file name (model.ckpt-N of
  model.ckpt-N.index).
  """
  return tf1.train.NewCheckpointReader(checkpoint)


def checkpoint_variables(checkpoint):
  """{variable name: shape} of a checkpoint prefix."""
  return checkpoint_reader(checkpoint).get_variable_to_shape_map()


def checkpoint_step(checkpoint):
  """The global step stored in a checkpoint (0 when it has none)."""
  try:
    return int(checkpoint_reader(checkpoint).get_tensor("global_step"))
  except (tf.errors.NotFoundError, ValueError):
    return 0


def check_checkpoint_matches(variables, checkpoint, what):
  """Raises UsageError naming missing or mismatched variables of `checkpoint`.

  Args:
    variables: graph variables to be restored by name, or {name in the checkpoint:
      graph variable} (a Saver's var_list).
    checkpoint: checkpoint prefix path.
    what: how to call the checkpoint in the message (e.g. "--teacher_checkpoint").
  """
  try:
    stored = checkpoint_variables(checkpoint)
  except (tf.errors.OpError, ValueError) as e:
    raise cli.UsageError("%s %s cannot be read: %s" % (what, checkpoint,
                                                       str(e).splitlines()[0]))
  if not isinstance(variables, dict):
    variables = {v.op.name: v for v in variables}
  missing = [name for name in variables if name not in stored]
  mismatched = ["%s %s in the graph vs %s stored" % (name, v.shape.as_list(),
                                                     stored[name])
                for name, v in variables.items()
                if name in stored and v.shape.as_list() != list(stored[name])]
  if mismatched:
    raise cli.UsageError("%s %s was written for another model config: %d variables "
                         "differ in shape, e.g. %s" % (
                               what, checkpoint, len(mismatched),
                               "; ".join(mismatched[:3])))
  if missing:
    raise cli.UsageError("%s %s lacks %d variables of this graph, e.g. %s" % (
        what, checkpoint, len(missing), ", ".join(missing[:3])))


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
    raise cli.UsageError(
        "checkpoint %s was deleted while being read (a running training "
        "keeps only its newest checkpoints); try again" % checkpoint)


def teacher_checkpoint(flag_value, teacher_dir, max_frames):
  """The checkpoint prefix a serial-KD student learns from.

  flag_value: --teacher_checkpoint (a prefix or a run directory), or empty for the
  latest checkpoint of teacher_dir (<train_dir>_teacher). max_frames: the k of the
  teacher command the message suggests (None: video level, no k).
  Raises:
    UsageError naming the flag or directory when there is no usable checkpoint.
  """
  if not flag_value:
    checkpoint = find_checkpoint(teacher_dir)
    if not checkpoint:
      raise cli.UsageError(
          "KD needs a trained teacher: no checkpoint in %s (train it first with "
          "--model_type=teacher%s, or pass --teacher_checkpoint)"
          % (teacher_dir, " --k_frame=%d" % max_frames if max_frames else ""))
    return checkpoint
  # A prefix first: ram:// calls any prefix of a file name (model.ckpt-N) a directory.
  if checkpoint_exists(flag_value):
    return flag_value
  if not tf.io.gfile.isdir(flag_value):
    raise cli.UsageError("--teacher_checkpoint=%s does not exist" % flag_value)
  checkpoint = find_checkpoint(flag_value)
  if not checkpoint:
    raise cli.UsageError("--teacher_checkpoint=%s: no checkpoint in that directory"
                         % flag_value)
  return checkpoint


# What teacher and student must share: one reader feeds both, and L_pred compares
# their classes.
SHARED_INPUTS = ("frame_features", "feature_names", "feature_sizes", "max_frames",
                 "num_classes")


def teacher_of(checkpoint, cfg):
  """The teacher a KD run (cfg, from the command line) distils from `checkpoint`.

  Its model is the one its run directory's model_flags.json records (the model that
  run trained: its teacher, or its student for a baseline or KD run); a checkpoint
  without one is built from the KD command's model flags.
  Returns:
    (kd_model.Teacher, its ModelConfig, a note line for the console or None).
  Raises:
    UsageError when the teacher read other inputs or predicts another class space.
  """
  directory = os.path.dirname(checkpoint)
  recorded = read_recorded(directory)
  if recorded is None:
    return (kd_model.Teacher(checkpoint), cfg.model_only(),
            "note: %s has no %s: the teacher is built from this command's model "
            "flags (%s)" % (directory, MODEL_FLAGS_FILE, cfg.model))
  taught = config.from_json(recorded, flags_path(directory))
  for name in SHARED_INPUTS:
    theirs, ours = getattr(taught, name), getattr(cfg, name)
    if theirs != ours:
      spell = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else v
      if name == "num_classes":
        raise cli.UsageError(
            "the teacher %s predicts %d classes but --num_classes=%d: L_pred compares "
            "the two models' class probabilities, so they need the same class space"
            % (checkpoint, theirs, ours))
      raise cli.UsageError(
          "the teacher %s was trained with --%s=%s, this run reads --%s=%s: teacher "
          "and student read the same records" % (checkpoint, name, spell(theirs), name,
                                                 spell(ours)))
  role = taught.role()
  return kd_model.Teacher(checkpoint, scope=role), taught.model_config(role), None
