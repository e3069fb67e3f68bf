"""Offline distillation: the frozen teacher's outputs computed once per video.

The serial-KD teacher runs in inference mode, so its predictions and representation of
a video never change; a cache holds them, and KD students of every k and every frame
sampling read them next to each record instead of running the teacher at every step.

Layout of a cache directory:
  fingerprint.json   what the cache was built from (teacher checkpoint, its model and
                     preprocessing, --bf16, the training files, dtype); a cache serves
                     only runs with the same fingerprint. The files are named by their
                     paths relative to the deepest directory holding them all, with
                     their sizes: the same files seen elsewhere (another mount point, a
                     copy, a gs:// bucket against a local mirror) are the same data.
                     Beside it, `logits`: whether the entries hold the teacher's logits
                     (false: its model defines none; absent: not stored, as a cache
                     built for runs that compare no logits)
  teacher-00000.tfrecord ...  one shard per training file (in sorted file order), its
                     records in the same order as the file's (valid) records; each is a
                     tf.train.Example with `id` (the video id), `predictions` [C],
                     `representation` [H] and, when stored, `logits` [C] as raw float16
                     or float32 bytes. With --segment_labels, one value per rated
                     segment of the video, in the reader's order: `predictions`,
                     `representation` and `logits` are lists of such bytes, with
                     `segment_start_times` (int64) beside them
  .lease-00000.json  while a builder computes shard 00000: its claim (holder, expiry)
A shard appears under its final name only when complete (written to a hidden temporary
file, then renamed): a killed build resumes with the shards still missing, and leaves a
hidden `.teacher-NNNNN.tfrecord.<random>.tmp`, safe to delete. Any TensorFlow file
system (gs://, ...) may hold the directory.

Several builders (processes, machines, the workers of a TF_CONFIG cluster) may build
one directory at once: each takes a shard with a lease (shard_leases: renewed while it
computes the shard), and skips shards that are complete or leased by another builder.
A shard is computed twice only after its lease expired (its builder died or stalled),
or on an object store in a race (no atomic create-if-absent there); the atomic rename
of the final shard makes the duplicate harmless. A builder that finds every remaining
shard leased by others waits for those shards or for their leases to expire.
"""

import dataclasses
import hashlib
import json
import os
import time

import numpy as np
import tensorflow as tf

import cli
import file_io
import inference_graph
import kd_model
import progress
import readers
import shard_leases

tf1 = tf.compat.v1
FINGERPRINT_FILE = "fingerprint.json"
DTYPES = {"float16": np.float16, "float32": np.float32}  # --teacher_cache_dtype
# Version of the fingerprint's layout: 3 names the files by relative path and size and
# holds --bf16. Caches of format 2 (absolute paths, sizes and modification times, --bf16
# beside) are still served when those match; caches of other formats are built again.
FORMAT = 3
LEGACY_FORMAT = 2
# Where the teacher and the files are, recorded for information: a cache stays valid
# when its teacher's run directory moves (it is identified by its checkpoint's digest).
LOCATION_FIELDS = ("teacher_checkpoint",)
NO_ENTRY_MARKER = "teacher cache: a training record has no cached entry"
# TeacherCache.logits of a cache built before entries could hold logits.
UNRECORDED = "unrecorded"
# Testing aid: seconds each builder sleeps after each batch (a slow teacher).
BATCH_DELAY_ENV = "YT8M_CACHE_BATCH_DELAY"


def data_names(paths):
  """Each file's path relative to the deepest directory holding them all (its base name
  when they share one directory): what a cache calls the file, wherever it is."""
  split = [file_io.absolute(path).split("/") for path in paths]
  common, shortest = 0, min(len(parts) for parts in split) - 1
  while common < shortest and all(parts[common] == split[0][common] for parts in split):
    common += 1
  return ["/".join(parts[common:]) for parts in split]


def fingerprint(cfg, teacher, files, dtype):
  """What a cache of these inputs holds, as a JSON-able dict: the teacher alone (its
  model, inputs, preprocessing, checkpoint and --bf16), the training files and the
  dtype, so that students of every model, size, k and frame sampling share one cache.

  cfg: the KD run's GraphConfig (cfg.model_config(TEACHER) is the teacher's model);
  teacher: the kd_model.Teacher; files: the training files, sorted. The checkpoint is
  identified by its .index file, which holds every tensor's checksum; the files by
  data_names and size (their records by the video-id check of every batch: decode).
  """
  described = cfg.model_config(kd_model.TEACHER).model_json()
  described.update(
      feature_names=",".join(cfg.feature_names),
      feature_sizes=",".join(str(s) for s in cfg.feature_sizes),
      frame_features=cfg.frame_features, num_classes=cfg.num_classes,
      max_frames=cfg.max_frames, preprocessing=cfg.preprocessing.kind)
  if cfg.segment_labels:  # (absent otherwise: video caches keep their digests)
    described.update(segment_labels=True, segment_size=cfg.segment_size)
  return {
      "format": FORMAT,
      "teacher_checkpoint": file_io.absolute(teacher.checkpoint),
      "teacher_checkpoint_sha256": file_io.sha256(teacher.checkpoint + ".index"),
      "teacher_scope": teacher.scope,
      "teacher": described,
      "rgb_scale_sha256": cfg.preprocessing.scale_sha256,
      "bf16": bool(cfg.bf16),
      "files": [[name, file_io.file_signature(path)[0]]
                for name, path in zip(data_names(files), files)],
      "dtype": dtype,
  }


def legacy_fingerprint(fingerprint_dict, files):
  """The fingerprint an earlier version (format 2) gave the same inputs: files by
  absolute path, size and modification time, --bf16 not in it."""
  legacy = {k: v for k, v in fingerprint_dict.items() if k != "bf16"}
  legacy.update(format=LEGACY_FORMAT, files=[
      [file_io.absolute(path)] + list(file_io.file_signature(path)) for path in files])
  return legacy


def digest(fingerprint_dict):
  """A short stable name of a fingerprint (recorded in the KD run's model_flags.json);
  where the teacher's checkpoint lives is not part of it."""
  identity = {k: v for k, v in fingerprint_dict.items() if k not in LOCATION_FIELDS}
  text = json.dumps(identity, sort_keys=True).encode("utf-8")
  return hashlib.sha256(text).hexdigest()[:16]


def _mismatch(stored, wanted):
  """One phrase saying how a stored fingerprint differs from the wanted one, or None."""
  if stored.get("format") != wanted["format"]:
    return "by an earlier version of this code (its fingerprint format differs)"
  stored_teacher = stored.get("teacher", {})
  if (stored.get("rgb_scale_sha256") != wanted["rgb_scale_sha256"] or
      stored_teacher.get("preprocessing") != wanted["teacher"]["preprocessing"]):
    return "with another preprocessing"
  if stored_teacher != wanted["teacher"]:
    changed = sorted(k for k in set(stored_teacher) | set(wanted["teacher"])
                     if stored_teacher.get(k) != wanted["teacher"].get(k))
    return "for another teacher model or feature config (--%s differs)" % changed[0]
  if (stored.get("teacher_checkpoint_sha256") != wanted["teacher_checkpoint_sha256"] or
      stored.get("teacher_scope") != wanted["teacher_scope"]):
    return "from another teacher checkpoint (%s)" % stored.get("teacher_checkpoint")
  if stored.get("files") != wanted["files"]:
    return "from other data files (%s)" % _files_differ(
        stored.get("files") or [], wanted["files"], wanted["format"] == LEGACY_FORMAT)
  if stored.get("dtype") != wanted["dtype"]:
    return "in %s, not %s (--teacher_cache_dtype)" % (stored.get("dtype"), wanted["dtype"])
  if bool(stored.get("bf16")) != bool(wanted.get("bf16")):
    return "%s --bf16, this run %s it" % (("with", "without") if stored.get("bf16")
                                          else ("without", "with"))
  return None


def _files_differ(stored, wanted, legacy):
  """How the files a cache records differ from --train_data_pattern's, in a phrase;
  legacy: a cache of format 2."""
  if legacy:
    return ("an earlier version of this code named them by absolute path and "
            "modification time: moved, copied or changed since? build the cache again "
            "in another directory")
  if len(stored) != len(wanted):
    return "%d files, --train_data_pattern has %d" % (len(stored), len(wanted))
  for old, new in zip(stored, wanted):
    if old[0] != new[0]:
      return "%s where --train_data_pattern has %s" % (old[0], new[0])
    if old != new:
      return "%s had %s bytes, now %s" % (old[0], old[1], new[1])
  return "--train_data_pattern"


@dataclasses.dataclass
class TeacherCache(object):
  """A cache directory for one fingerprint; teacher: the kd_model.Teacher that builds
  it (None for a cache only read); data_files: the local paths of the fingerprint's
  files, in its order (needed to build, and to claim a cache of format 2; without them
  shard_of finds a file by its name)."""
  directory: str
  fingerprint: dict
  teacher: kd_model.Teacher = None
  representation_width: int = 0
  # Whether entries hold the teacher's logits: True; False (its model defines none);
  # UNRECORDED (not stored: built for runs comparing no logits, or by older code);
  # None (not built yet: the build stores them if its run compares logits).
  logits: object = None
  data_files: tuple = None
  _index_of: dict = dataclasses.field(default=None, repr=False, compare=False)

  def record(self):
    """What a KD run's model_flags.json records of its cache (GraphConfig.teacher_cache):
    the digest, and the teacher, preprocessing and files it stands for (see
    run_dir.cache_identity for what a resume compares)."""
    return {"format": self.fingerprint["format"], "digest": digest(self.fingerprint),
            "teacher_checkpoint": self.fingerprint["teacher_checkpoint"],
            "preprocessing": self.fingerprint["teacher"]["preprocessing"],
            "num_files": len(self.fingerprint["files"]),
            "dtype": self.fingerprint["dtype"]}

  def shard(self, index):
    """The cache shard of the index-th training file (sorted order)."""
    return os.path.join(self.directory, "teacher-%05d.tfrecord" % index)

  def shard_of(self, path):
    """The cache shard of a training file: by its local path when data_files are
    known, else by its name as fingerprinted (data_names; format 2: absolute path)."""
    if self._index_of is None:  # once: the pipeline asks for every file
      listed = ([file_io.absolute(f) for f in self.data_files] if self.data_files
                else [entry[0] for entry in self.fingerprint["files"]])
      self._index_of = {name: i for i, name in enumerate(listed)}
    path = file_io.absolute(path)
    if self.data_files or self.fingerprint["format"] == LEGACY_FORMAT:
      return self.shard(self._index_of[path])
    parts = path.split("/")
    for start in range(len(parts)):  # the longest name the path ends with
      index = self._index_of.get("/".join(parts[start:]))
      if index is not None:
        return self.shard(index)
    raise KeyError(path)

  def missing_shards(self):
    """Indexes of the training files whose shard is not complete yet (one listing of
    the directory: on an object store one request per 1000 shards, not one each)."""
    try:
      names = set(tf.io.gfile.listdir(self.directory))
    except tf.errors.NotFoundError:
      names = set()
    return [i for i in range(len(self.fingerprint["files"]))
            if os.path.basename(self.shard(i)) not in names]

  def claim(self):
    """Checks the directory holds a cache of this fingerprint (or none yet, and then
    makes it one); reads the stored representation width. A cache of format 2 is
    compared under its own layout (the same files at the same absolute paths, with the
    same sizes and times, and the --bf16 it recorded), and then served with its own
    fingerprint: runs that recorded its digest resume.

    Raises:
      UsageError naming --teacher_cache when it was built from other inputs.
    """
    path = os.path.join(self.directory, FINGERPRINT_FILE)
    if tf.io.gfile.exists(path):
      stored = file_io.read_json(path)
      found = stored.get("fingerprint", {})
      wanted = self.fingerprint
      if (found.get("format") == LEGACY_FORMAT and self.data_files is not None and
          wanted["format"] != LEGACY_FORMAT):
        # Compared as that version compared, with the --bf16 it kept beside.
        wanted = legacy_fingerprint(self.fingerprint, self.data_files)
        problem = _mismatch(dict(found, bf16=stored.get("bf16", False)),
                            dict(wanted, bf16=self.fingerprint["bf16"]))
      else:
        problem = _mismatch(found, wanted)
      if problem:
        raise cli.UsageError("--teacher_cache=%s holds teacher outputs computed %s; "
                             "use another directory or delete it"
                             % (self.directory, problem))
      if wanted is not self.fingerprint:
        self.fingerprint, self._index_of = wanted, None
      self.representation_width = stored["representation_width"]
      self.logits = stored.get("logits", UNRECORDED)
      return
    if tf.io.gfile.isdir(self.directory) and any(
        not n.startswith(".") for n in tf.io.gfile.listdir(self.directory)):
      raise cli.UsageError("--teacher_cache=%s is not empty and holds no %s: not a "
                           "teacher cache" % (self.directory, FINGERPRINT_FILE))
    self.representation_width = 0

  def check_logits(self):
    """For an option that compares the teacher's logits (--kd_pred_loss=logits_kl).

    Raises:
      UsageError naming --teacher_cache when the cache was built without them.
    """
    if self.logits == UNRECORDED:
      raise cli.UsageError("--teacher_cache=%s was built without the teacher's logits "
                           "(--kd_pred_loss=logits_kl needs them; a cache stores them "
                           "when the run that builds it compares them); build it again "
                           "in another directory" % self.directory)

  def _fingerprint_json(self):
    """fingerprint.json's contents for this cache."""
    stored = {"fingerprint": self.fingerprint, "digest": digest(self.fingerprint),
              "representation_width": self.representation_width}
    if self.logits != UNRECORDED:
      stored["logits"] = self.logits
    return stored

  def _write_fingerprint(self):
    """Writes fingerprint.json unless another builder did; theirs must match."""
    path = os.path.join(self.directory, FINGERPRINT_FILE)
    text = json.dumps(self._fingerprint_json(), indent=2, sort_keys=True) + "\n"
    if not shard_leases.create(path, text):
      width = self.representation_width
      self.claim()
      self.representation_width = width

  def build(self, cfg, batch_size, skip_corrupt_records, bf16, progress_every_secs=30):
    """Runs the teacher over every training file without a complete shard, sharing
    the work with any other builder of this directory (shard_leases; the module docstring);
    returns when every shard is complete.

    The teacher (cfg.model_config(TEACHER), restored from self.teacher) runs in
    inference mode on all frames, with cfg.preprocessing, through the inference graph
    eval and inference use, one file at a time; memory stays that of one batch
    whatever the number of videos. Each shard is written under a temporary name and
    renamed when complete.
    """
    missing = self.missing_shards()
    if not missing:
      return
    tf.io.gfile.makedirs(self.directory)
    files = self.data_files  # (a cache only read has none)
    dtype = DTYPES[self.fingerprint["dtype"]]
    # Records without labels fail (or are skipped) here as in training, so that each
    # shard holds an entry for exactly the records training reads.
    model = inference_graph.InferenceGraph(
        cfg, kd_model.TEACHER, None, batch_size, 1,
        require_labels=True, skip_corrupt_records=skip_corrupt_records,
        teacher=self.teacher, with_logits=self.logits is None and
        kd_model.needs_teacher_logits(cfg))
    self.representation_width = int(model.fetches["representation"].shape[-1])
    if self.logits is None:  # a new cache: logits only if its run compares them
      self.logits = (("logits" in model.fetches) if kd_model.needs_teacher_logits(cfg)
                     else UNRECORDED)
    self._write_fingerprint()
    leases = shard_leases.Leases(self.directory)
    print("Teacher cache: computing %d of %d shards into %s (builder %s, sharing them "
          "with any other builder of it)" % (len(missing), len(files), self.directory,
                                             leases.holder), flush=True)
    count = progress.Progress(progress_every_secs)
    delay = float(os.environ.get(BATCH_DELAY_ENV) or 0)
    built, busy = 0, 0.0  # shards this builder computed, and the seconds it took
    with model.session(self.teacher.checkpoint, bf16, "the teacher checkpoint") as sess:
      for index, left in self._scheduled(missing, leases):
        start = time.time()
        final = self.shard(index)
        # A name of its own: a builder whose lease expired may be writing it too.
        temporary = file_io.temporary_name(final)
        model.start_file(sess, files[index], self.fingerprint["files"][index][1])
        count.prefix = "Teacher cache: shard %d (%d left), " % (index, left)
        one_file = readers.DataFiles(files[index], "--train_data_pattern",
                                     (files[index],))
        with leases.held(index):
          with readers.data_errors_named(model.reader, one_file), \
              tf.io.TFRecordWriter(temporary) as writer:
            for out in model.batches(sess):
              for entry in _entries(out, dtype, logits=self.logits is True):
                writer.write(entry)
              count.add(len(out.get("record_ids", out["video_ids"])))
              if delay:
                time.sleep(delay)
          file_io.replace_file(temporary, final)
        built, busy = built + 1, busy + time.time() - start
        print("Teacher cache: built %s as %s" % (os.path.basename(final),
                                                 leases.holder), flush=True)
    print("Teacher cache: %d videos in %d shards, %.1f videos/s"
          % (count.done, built, count.done / max(busy, 1e-9)), flush=True)

  def _scheduled(self, missing, leases):
    """Yields (index, shards not complete yet) of each shard this builder takes, until
    every shard of `missing` is complete (by this builder or others); waits while the
    remaining ones are leased by other builders."""
    pending = list(missing)
    poll = min(leases.seconds / 4, 15.0)
    waiting = None
    while pending:
      pending = sorted(set(pending) & set(self.missing_shards()))
      taken = None
      for index in pending:
        previous = leases.take(index)
        if previous is None:
          continue
        if tf.io.gfile.exists(self.shard(index)):  # completed since the listing
          leases.release(index)
          continue
        if previous:
          print("Teacher cache: the lease of shard %d by %s expired; taking it over"
                % (index, previous), flush=True)
        taken = index
        break
      if taken is not None:
        pending.remove(taken)
        yield taken, len(pending) + 1
        waiting = None
      elif pending:
        if waiting != len(pending):
          waiting = len(pending)
          print("Teacher cache: waiting for %d shards other builders hold (or for "
                "their leases to expire)" % waiting, flush=True)
        time.sleep(poll)

  def joined(self, batch):
    """A training batch read beside this cache (readers.make_dataset's teacher_cache)
    with its entries decoded: teacher_cache_entry [B] becomes teacher_predictions
    [B, C], teacher_representation [B, H] and, when stored, teacher_logits [B, C]
    float32, each checked to be its row's."""
    batch = dict(batch)
    decoded = self.decode(batch.pop("teacher_cache_entry"), batch["video_ids"],
                          batch.get("segment_rank"), batch.get("segment_start_times"))
    for name, value in decoded.items():
      batch["teacher_" + name] = value
    return batch

  def _stored(self):
    """The names of the float outputs each entry holds, and their widths."""
    widths = {"predictions": self.fingerprint["teacher"]["num_classes"],
              "representation": self.representation_width}
    if self.logits is True:
      widths["logits"] = widths["predictions"]
    return widths

  def decode(self, entries, video_ids, segment_rank=None, segment_start_times=None):
    """Cache records joined to a batch -> {predictions [B, C], representation [B, H],
    logits [B, C] when stored} float32, after checking that each entry belongs to its
    record's video.

    entries: [B] serialized cache records ("" where a record had none).
    segment_rank, segment_start_times: [B] int32, for a batch of segments (a segment
      cache): which of its video's entry values is each row's, and the start the entry
      must record there.
    """
    if self.fingerprint["teacher"].get("segment_labels"):
      return self._decode_segments(entries, video_ids, segment_rank, segment_start_times)
    widths = self._stored()
    features = {name: tf.io.FixedLenFeature([], tf.string, default_value="")
                for name in widths}
    features["id"] = tf.io.FixedLenFeature([], tf.string, default_value="")
    parsed = tf.io.parse_example(entries, features)
    joined = tf.debugging.Assert(tf.reduce_all(tf.equal(parsed["id"], video_ids)),
                                 [NO_ENTRY_MARKER, video_ids, parsed["id"]],
                                 summarize=4)
    return self._decoded(parsed, widths, joined)

  def _decoded(self, values, widths, joined):
    """{name: [B, width] float32} of the raw bytes values[name], after `joined`."""
    dtype = tf.as_dtype(self.fingerprint["dtype"])
    with tf.control_dependencies([joined]):
      return {name: tf.cast(tf.reshape(tf.io.decode_raw(values[name], dtype),
                                       [-1, width]), tf.float32)
              for name, width in widths.items()}

  def _decode_segments(self, entries, video_ids, segment_rank, segment_start_times):
    """decode() for a segment cache: each row's value of its video's entry."""
    widths = self._stored()
    features = {name: tf.io.VarLenFeature(tf.string) for name in widths}
    features["id"] = tf.io.FixedLenFeature([], tf.string, default_value="")
    features["segment_start_times"] = tf.io.VarLenFeature(tf.int64)
    parsed = tf.io.parse_example(entries, features)
    def value_at_rank(field, missing):
      """Each row's value of `field` at its rank; `missing` past the entry's end."""
      dense = tf.sparse.to_dense(parsed[field], default_value=missing)
      dense = tf.concat([dense, tf.fill([tf.shape(dense)[0], 1], missing)], axis=1)
      rank = tf.minimum(segment_rank, tf.shape(dense)[1] - 1)[:, None]
      return tf.gather(dense, rank, batch_dims=1)[:, 0]
    values = {name: value_at_rank(name, "") for name in widths}
    recorded_start = value_at_rank("segment_start_times", tf.constant(-1, tf.int64))
    joined = tf.debugging.Assert(
        tf.reduce_all(tf.logical_and(
            tf.equal(parsed["id"], video_ids),
            tf.equal(recorded_start, tf.cast(segment_start_times, tf.int64)))),
        [NO_ENTRY_MARKER, video_ids, parsed["id"]], summarize=4)
    return self._decoded(values, widths, joined)


def _entries(out, dtype, logits=False):
  """The cache records of one batch of role_outputs: one per video, or with segments
  one per record holding each of its segments' values; logits: the records hold
  out["logits"] too."""
  names = ("predictions", "representation") + (("logits",) if logits else ())
  if "record_ids" not in out:
    return [_entry(video_id, {name: out[name][row].astype(dtype) for name in names})
            for row, video_id in enumerate(out["video_ids"])]
  entries = []
  for row, video_id in enumerate(out["record_ids"]):
    mine = out["record_index"] == row
    entries.append(_entry(video_id, {name: out[name][mine].astype(dtype)
                                     for name in names},
                          out["segment_start_times"][mine]))
  return entries


def _entry(video_id, outputs, segment_start_times=None):
  """A cache record: one video's teacher outputs ({name: [C] or [H]}: predictions,
  representation, logits when stored), or with segment_start_times [S] its S
  segments' ([S, C] and [S, H])."""
  rows = lambda array: [array.tobytes()] if segment_start_times is None else [
      row.tobytes() for row in array]
  feature = {"id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[video_id]))}
  for name, array in outputs.items():
    feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=rows(array)))
  if segment_start_times is not None:
    feature["segment_start_times"] = tf.train.Feature(int64_list=tf.train.Int64List(
        value=[int(start) for start in segment_start_times]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
