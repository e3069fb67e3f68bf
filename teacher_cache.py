"""Offline distillation: the frozen teacher's outputs computed once per video.

The serial-KD teacher runs in inference mode, so its predictions and representation of
a video never change; a cache holds them, and KD students of every k and every frame
sampling read them next to each record instead of running the teacher at every step.

Layout of a cache directory:
  fingerprint.json   what the cache was built from (teacher checkpoint, its model and
                     preprocessing, the training files, dtype); a cache serves only runs
                     with the same fingerprint. Beside it, `logits`: whether the entries
                     hold the teacher's logits (false: its model defines none; absent:
                     built before caches stored logits)
  teacher-00000.tfrecord ...  one shard per training file (in sorted file order), its
                     records in the same order as the file's (valid) records; each is a
                     tf.train.Example with `id` (the video id), `predictions` [C],
                     `representation` [H] and, when stored, `logits` [C] as raw float16
                     or float32 bytes. With --segment_labels, one value per rated
                     segment of the video, in the reader's order: `predictions`,
                     `representation` and `logits` are lists of such bytes, with
                     `segment_start_times` (int64) beside them
A shard appears under its final name only when complete (written to a hidden temporary
file, then renamed), so a killed build resumes with the shards still missing; what a
killed build leaves behind is a hidden `.teacher-NNNNN.tfrecord.<random>.tmp`, safe to
delete. The directory may be on any TensorFlow file system (gs://, ...).
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

import cli
import file_io
import inference_graph
import kd_model
import progress
import readers

tf1 = tf.compat.v1
FINGERPRINT_FILE = "fingerprint.json"
DTYPES = {"float16": np.float16, "float32": np.float32}  # --teacher_cache_dtype
# Version of the fingerprint's layout: caches of another one are built again.
FORMAT = 2
# Where the teacher and the files are, recorded for information: a cache stays valid
# when its teacher's run directory moves (it is identified by its checkpoint's digest).
LOCATION_FIELDS = ("teacher_checkpoint",)
NO_ENTRY_MARKER = "teacher cache: a training record has no cached entry"
# TeacherCache.logits of a cache built before entries could hold logits.
UNRECORDED = "unrecorded"


def fingerprint(cfg, teacher, files, dtype):
  """What a cache of these inputs holds, as a JSON-able dict: the teacher alone (its
  model, inputs, preprocessing and checkpoint), the training files and the dtype, so
  that students of every model, size, k and frame sampling share one cache.

  cfg: the KD run's GraphConfig (cfg.model_config(TEACHER) is the teacher's model);
  teacher: the kd_model.Teacher. The checkpoint is identified by its .index file,
  which holds every tensor's checksum; the files by path, size and modification time.
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
      "files": [[file_io.absolute(f)] + list(file_io.file_signature(f)) for f in files],
      "dtype": dtype,
  }


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
    return "from other data files (--train_data_pattern, or files changed since)"
  if stored.get("dtype") != wanted["dtype"]:
    return "in %s, not %s (--teacher_cache_dtype)" % (stored.get("dtype"), wanted["dtype"])
  return None


@dataclasses.dataclass
class TeacherCache(object):
  """A cache directory for one fingerprint; teacher: the kd_model.Teacher that builds
  it (None for a cache only read)."""
  directory: str
  fingerprint: dict
  teacher: kd_model.Teacher = None
  representation_width: int = 0
  # Whether the entries hold the teacher's logits: True; False (its model defines
  # none); UNRECORDED (built before caches stored logits); None (not built yet: the
  # build stores them when the teacher defines them).
  logits: object = None
  _index_of: dict = dataclasses.field(default=None, repr=False, compare=False)

  def record(self):
    """What a KD run's model_flags.json records of its cache (GraphConfig.teacher_cache):
    the digest, and the teacher, preprocessing and files it stands for (see
    run_dir.cache_identity for what a resume compares)."""
    return {"format": FORMAT, "digest": digest(self.fingerprint),
            "teacher_checkpoint": self.fingerprint["teacher_checkpoint"],
            "preprocessing": self.fingerprint["teacher"]["preprocessing"],
            "num_files": len(self.fingerprint["files"]),
            "dtype": self.fingerprint["dtype"]}

  def shard(self, index):
    """The cache shard of the index-th training file (sorted order)."""
    return os.path.join(self.directory, "teacher-%05d.tfrecord" % index)

  def shard_of(self, path):
    """The cache shard of a training file (as fingerprinted: absolute path)."""
    if self._index_of is None:  # once: the pipeline asks for every file
      self._index_of = {listed: i for i, (listed, _, _) in
                        enumerate(self.fingerprint["files"])}
    return self.shard(self._index_of[file_io.absolute(path)])

  def missing_shards(self):
    """Indexes of the training files whose shard is not complete yet."""
    return [i for i in range(len(self.fingerprint["files"]))
            if not tf.io.gfile.exists(self.shard(i))]

  def claim(self):
    """Checks the directory holds a cache of this fingerprint (or none yet, and then
    makes it one); reads the stored representation width.

    Raises:
      UsageError naming --teacher_cache when it was built from other inputs.
    """
    path = os.path.join(self.directory, FINGERPRINT_FILE)
    if tf.io.gfile.exists(path):
      stored = file_io.read_json(path)
      problem = _mismatch(stored.get("fingerprint", {}), self.fingerprint)
      if problem:
        raise cli.UsageError("--teacher_cache=%s holds teacher outputs computed %s; "
                             "use another directory or delete it"
                             % (self.directory, problem))
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
                           "(--kd_pred_loss=logits_kl needs them); build it again in "
                           "another directory" % self.directory)

  def build(self, cfg, batch_size, skip_corrupt_records, bf16, progress_every_secs=30):
    """Runs the teacher over every training file without a complete shard.

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
    files = [path for path, _, _ in self.fingerprint["files"]]
    dtype = DTYPES[self.fingerprint["dtype"]]
    # Records without labels fail (or are skipped) here as in training, so that each
    # shard holds an entry for exactly the records training reads.
    model = inference_graph.InferenceGraph(
        cfg, kd_model.TEACHER, None, batch_size, 1,
        require_labels=True, skip_corrupt_records=skip_corrupt_records,
        teacher=self.teacher)
    self.representation_width = int(model.fetches["representation"].shape[-1])
    if self.logits is None:  # a new cache (shards of an old one stay without)
      self.logits = "logits" in model.fetches
    stored = {"fingerprint": self.fingerprint, "digest": digest(self.fingerprint),
              "representation_width": self.representation_width, "bf16": bool(bf16)}
    if self.logits != UNRECORDED:
      stored["logits"] = self.logits
    file_io.write_json(os.path.join(self.directory, FINGERPRINT_FILE), stored)
    print("Teacher cache: computing %d of %d shards into %s"
          % (len(missing), len(files), self.directory), flush=True)
    count = progress.Progress(progress_every_secs)
    with model.session(self.teacher.checkpoint, bf16, "the teacher checkpoint") as sess:
      for done, index in enumerate(missing):
        final = self.shard(index)
        # A name of its own: two students starting together may build the same shard.
        temporary = file_io.temporary_name(final)
        model.start_file(sess, files[index], self.fingerprint["files"][index][1])
        count.prefix = "Teacher cache: shard %d of %d, " % (done + 1, len(missing))
        one_file = readers.DataFiles(files[index], "--train_data_pattern",
                                     (files[index],))
        with readers.data_errors_named(model.reader, one_file), \
            tf.io.TFRecordWriter(temporary) as writer:
          for out in model.batches(sess):
            for entry in _entries(out, dtype, logits=self.logits is True):
              writer.write(entry)
            count.add(len(out.get("record_ids", out["video_ids"])))
        file_io.replace_file(temporary, final)
    print("Teacher cache: %d videos in %d shards, %.1f videos/s"
          % (count.done, len(missing), count.rate()), flush=True)

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
