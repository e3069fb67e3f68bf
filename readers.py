"""YouTube-8M readers as tf.data pipelines (graph mode).

Every reader turns a batch of serialized records into a dict of tensors:
  video_ids    [B] string
  video_matrix [B, max_frames, F] float32 (frame level) or [B, F] (video level)
  num_frames   [B] int32 (frames before padding, at most max_frames; 1 for video level)
  labels       [B, num_classes] float32, 0/1
Frame-level features are concatenated in `feature_names` order. Records are parsed a
whole batch at a time (one `parse_sequence_example` call), which is what lets the
reader keep up with the model on two cores. A k-frame student's reader does not parse
the frames at all: record_layout finds its k frames in the serialized records.
"""

import contextlib
import os
import sys

import tensorflow as tf

import frame_selection
import record_layout
import utils

# With this environment variable set to 1 when a graph is built, a k-frame reader fails
# a batch it would parse whole instead of finding its frames in place. Results are the
# same either way, so only this shows which path records take: the tests set it to prove
# that real YouTube-8M records take the in-place one (tests/test_real_frames.py).
REQUIRE_IN_PLACE_ENV = "YT8M_REQUIRE_IN_PLACE"

tf1 = tf.compat.v1


def _labels_to_dense(sparse_labels, num_classes):
  """[B, ?] SparseTensor of class ids -> [B, num_classes] float32 0/1 (duplicates ok)."""
  batch_size = tf.cast(sparse_labels.dense_shape[0], tf.int32)
  ids = tf.cast(sparse_labels.values, tf.int32)
  rows = tf.cast(sparse_labels.indices[:, 0], tf.int32)
  check = tf.debugging.assert_less(
      ids, num_classes, message="label id >= num_classes (--num_classes)")
  check_nonneg = tf.debugging.assert_non_negative(ids, message="negative label id")
  with tf.control_dependencies([check, check_nonneg]):
    indices = tf.stack([rows, ids], axis=1)
  dense = tf.scatter_nd(indices, tf.ones_like(ids, tf.float32),
                        tf.stack([batch_size, num_classes]))
  return tf.minimum(dense, 1.0)


def _labels_are_valid(label_ids, num_classes, require_labels):
  """Scalar bool: every id in 0..num_classes-1 (and at least one if required)."""
  in_range = tf.reduce_all(tf.logical_and(label_ids >= 0, label_ids < num_classes))
  if require_labels:
    return tf.logical_and(in_range, tf.size(label_ids) > 0)
  return in_range


class YT8MAggregatedFeatureReader(object):
  """Reads video-level `tf.train.Example` records (`mean_rgb`, `mean_audio`)."""

  def __init__(self, num_classes=3862, feature_sizes=[1024, 128],
               feature_names=["mean_rgb", "mean_audio"], require_labels=True):
    """
    Args:
      num_classes: size of the dense label vector.
      feature_sizes, feature_names: lists of equal length; float features per video.
      require_labels: every record must have at least one label (train/eval); set
        False for the unlabeled test partition.
    """
    if len(feature_names) != len(feature_sizes):
      raise utils.UsageError(
          "--feature_names has %d entries but --feature_sizes has %d"
          % (len(feature_names), len(feature_sizes)))
    self.num_classes = num_classes
    self.feature_names = list(feature_names)
    self.feature_sizes = list(feature_sizes)
    self.require_labels = require_labels

  def record_is_valid(self, serialized):
    """Scalar bool: this serialized Example would parse cleanly in parse_batch."""
    spec = {"id": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "labels": tf.io.VarLenFeature(tf.int64)}
    for name in self.feature_names:
      spec[name] = tf.io.VarLenFeature(tf.float32)
    features = tf.io.parse_single_example(serialized, spec)
    checks = [_labels_are_valid(features["labels"].values, self.num_classes,
                                self.require_labels)]
    for name, size in zip(self.feature_names, self.feature_sizes):
      checks.append(tf.equal(tf.size(features[name].values), size))
    return tf.reduce_all(tf.stack(checks))

  def parse_stages(self):
    """The functions make_dataset maps over batches of serialized records, in order."""
    return [self.parse_batch]

  def parse_batch(self, serialized):
    """[B] serialized Examples -> batch dict (video_matrix [B, sum(feature_sizes)])."""
    spec = {"id": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.VarLenFeature(tf.int64)}
    for name, size in zip(self.feature_names, self.feature_sizes):
      spec[name] = tf.io.FixedLenFeature([size], tf.float32)
    features = tf.io.parse_example(serialized, spec)
    labels = features["labels"]
    checks = []
    if self.require_labels:
      counts = tf.math.bincount(tf.cast(labels.indices[:, 0], tf.int32),
                                minlength=tf.shape(serialized)[0])
      checks.append(tf.debugging.assert_positive(counts, message="video without labels"))
    with tf.control_dependencies(checks):
      video_matrix = tf.concat([features[n] for n in self.feature_names], axis=1)
    batch_size = tf.shape(video_matrix)[0]
    return {
        "video_ids": features["id"],
        "video_matrix": video_matrix,
        "num_frames": tf.ones([batch_size], tf.int32),
        "labels": _labels_to_dense(labels, self.num_classes),
    }


class YT8MFrameFeatureReader(object):
  """Reads frame-level `tf.train.SequenceExample` records (one byte string per frame)."""

  def __init__(self, num_classes=3862, feature_sizes=[1024, 128],
               feature_names=["rgb", "audio"], max_frames=300, dequantize=True,
               require_labels=True, selected_frames=None):
    """
    Args:
      num_classes: size of the dense label vector.
      feature_sizes, feature_names: lists of equal length; uint8 values per frame.
      max_frames: frames kept per video; longer videos are truncated, shorter padded.
      dequantize: True gives float32 features (padding 0.0). False gives the raw uint8
        buckets (padding 0) so a k-frame model can dequantize only the frames it uses
        (see `dequantize_frames`).
      require_labels: every record must have at least one label (train/eval); set
        False for the unlabeled test partition.
      selected_frames: None, or (k, strategy) of frame_selection: decode only the
        frames that select_frames would keep (a student running alone). video_matrix
        is then [B, k', F] with the new num_frames, equal to select_frames applied to
        the full matrix (`random` as at inference: a fixed set per video).
    """
    if len(feature_names) != len(feature_sizes):
      raise utils.UsageError(
          "--feature_names has %d entries but --feature_sizes has %d"
          % (len(feature_names), len(feature_sizes)))
    self.num_classes = num_classes
    self.feature_names = list(feature_names)
    self.feature_sizes = list(feature_sizes)
    self.max_frames = max_frames
    self.dequantize = dequantize
    self.require_labels = require_labels
    self.selected_frames = selected_frames

  def record_is_valid(self, serialized):
    """Scalar bool: this serialized SequenceExample would parse cleanly in parse_batch."""
    context, lists = tf.io.parse_single_sequence_example(
        serialized,
        context_features={"id": tf.io.FixedLenFeature([], tf.string, default_value=""),
                          "labels": tf.io.VarLenFeature(tf.int64)},
        sequence_features={name: tf.io.FixedLenSequenceFeature([], tf.string,
                                                               allow_missing=True)
                           for name in self.feature_names})
    checks = [_labels_are_valid(context["labels"].values, self.num_classes,
                                self.require_labels)]
    for name, size in zip(self.feature_names, self.feature_sizes):
      frames = lists[name][:self.max_frames]
      checks.append(tf.size(frames) > 0)
      checks.append(tf.reduce_all(tf.equal(tf.strings.length(frames), size)))
    return tf.reduce_all(tf.stack(checks))

  def parse_batch(self, serialized):
    """[B] serialized SequenceExamples -> batch dict.

    video_matrix is [B, max_frames, sum(feature_sizes)] (with selected_frames: [B, k',
    ...]), float32 or uint8 (see `dequantize`). Malformed records (wrong bytes per
    frame, no frames, label id out of range, missing labels) fail the batch with
    InvalidArgumentError; `find_bad_record` then names the file and record.
    """
    if self.selected_frames:
      return self.parse_selected(serialized)
    return self.decode_parsed(*self.parse_records(serialized))

  def parse_stages(self):
    """parse_batch as functions for tf.data to pipeline, one map stage each.

    Decoding every frame is a stage of its own, so that the decoding of one batch
    overlaps the parsing of the next.
    """
    if self.selected_frames:
      return [self.parse_selected]
    return [self.parse_records, self.decode_parsed]

  def parse_records(self, serialized):
    """[B] serialized SequenceExamples -> (context, frame byte strings, lengths)."""
    return tf.io.parse_sequence_example(
        serialized,
        context_features=self._context_features(),
        sequence_features={name: tf.io.FixedLenSequenceFeature([], tf.string)
                           for name in self.feature_names})

  def _context_features(self):
    return {"id": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.VarLenFeature(tf.int64)}

  def decode_parsed(self, context, frames, lengths):
    """parse_records' output -> the batch dict of parse_batch, every frame decoded."""
    frame_bytes, num_frames, checks = self._checked_frames(frames, lengths)
    with tf.control_dependencies(checks + self._context_checks(context, num_frames)):
      video_matrix = self._decode_all(frame_bytes)
    return self._batch(context, video_matrix, num_frames)

  def parse_selected(self, serialized):
    """[B] serialized SequenceExamples -> the batch dict of the `selected_frames` only.

    When every record of the batch has the layout serializers write (nearly always),
    record_layout finds the picked frames in place and only those are copied out;
    otherwise the batch is parsed whole, with the same result.
    """
    context, _, _ = tf.io.parse_sequence_example(
        serialized, context_features=self._context_features())
    located, starts, counts = record_layout.locate_frames(serialized, self.feature_names,
                                                          self.feature_sizes)

    def frames_in_place():
      lengths = {name: tf.cast(counts[name], tf.int32) for name in self.feature_names}
      num_frames = self._num_frames(lengths)
      indices, new_num_frames, is_real = self._selection(num_frames, context["id"])
      picked = [record_layout.frames_at(serialized, starts[name], indices, is_real, size)
                for name, size in zip(self.feature_names, self.feature_sizes)]
      return [num_frames, new_num_frames] + picked

    def frames_parsed():
      _, frames, lengths = self.parse_records(serialized)
      frame_bytes, num_frames, checks = self._checked_frames(frames, lengths)
      indices, new_num_frames, is_real = self._selection(num_frames, context["id"])
      picked = []  # (a batch of videos without frames must fail the check, not gather)
      with tf.control_dependencies(checks + self._context_checks(context, num_frames)):
        for name in self.feature_names:
          width = tf.shape(frame_bytes[name])[1]
          picked.append(tf.where(is_real, tf.gather(frame_bytes[name],
                                                    tf.minimum(indices, width - 1),
                                                    batch_dims=1), ""))
      return [num_frames, new_num_frames] + picked

    in_place = tf.reduce_all(located, name="frames_in_place")
    if os.environ.get(REQUIRE_IN_PLACE_ENV) == "1":
      def frames_parsed(parse=frames_parsed):
        check = tf.debugging.Assert(in_place, [
            "%s=1: a batch has records that are not in the layout record_layout finds "
            "frames in" % REQUIRE_IN_PLACE_ENV])
        with tf.control_dependencies([check]):
          return [tf.identity(t) for t in parse()]
    num_frames, new_num_frames, *picked = tf.cond(in_place, frames_in_place,
                                                  frames_parsed)
    with tf.control_dependencies(self._context_checks(context, num_frames)):
      matrices = [tf.io.decode_raw(frames, tf.uint8, fixed_length=size)
                  for frames, size in zip(picked, self.feature_sizes)]
    video_matrix = tf.concat(matrices, axis=2) if len(matrices) > 1 else matrices[0]
    k, strategy = self.selected_frames
    video_matrix.set_shape([None, frame_selection.selected_length(k, strategy,
                                                                  self.max_frames),
                            sum(self.feature_sizes)])
    return self._batch(context, video_matrix, new_num_frames)

  def _num_frames(self, lengths):
    """{feature: [B] frames in the record} -> [B] int32 frames used (at most max_frames)."""
    counts = [tf.minimum(tf.cast(lengths[name], tf.int32), self.max_frames)
              for name in self.feature_names]
    return tf.reduce_min(tf.stack(counts), axis=0)

  def _checked_frames(self, frames, lengths):
    """Parsed frame strings -> ({feature: [B, W] bytes, W <= max_frames}, num_frames [B],
    checks that every real frame has its feature's byte count)."""
    frame_bytes = {name: frames[name][:, :self.max_frames] for name in self.feature_names}
    num_frames = self._num_frames(lengths)
    checks = []
    for name, size in zip(self.feature_names, self.feature_sizes):
      # Padding entries are b"", real frames must have exactly `size` bytes.
      byte_counts = tf.strings.length(frame_bytes[name])
      length = tf.minimum(tf.cast(lengths[name], tf.int32), self.max_frames)
      is_real = tf.sequence_mask(length, tf.shape(frame_bytes[name])[1])
      checks.append(tf.debugging.assert_equal(
          tf.logical_or(tf.equal(byte_counts, size), tf.logical_not(is_real)), True,
          message="frame of feature '%s' does not have %d bytes (--feature_sizes)"
          % (name, size)))
    return frame_bytes, num_frames, checks

  def _context_checks(self, context, num_frames):
    """Checks that every video has frames and, if required, labels."""
    checks = [tf.debugging.assert_positive(num_frames, message="video with 0 frames")]
    if self.require_labels:
      label_counts = tf.math.bincount(tf.cast(context["labels"].indices[:, 0], tf.int32),
                                      minlength=tf.shape(context["id"])[0])
      checks.append(tf.debugging.assert_positive(label_counts,
                                                 message="video without labels"))
    return checks

  def _selection(self, num_frames, video_ids):
    """The frames select_frames keeps -> (indices [B, k'] int32, new num_frames [B],
    is_real [B, k'] bool: False for the padding frames only padded_stride picks)."""
    k, strategy = self.selected_frames
    indices, new_num_frames = frame_selection.frame_indices(
        num_frames, k, strategy, self.max_frames, video_ids=video_ids)
    return indices, new_num_frames, indices < num_frames[:, None]

  def _batch(self, context, video_matrix, num_frames, labels=None):
    """The batch dict from the parsed context and the uint8 frames (labels: dense
    [B, C], default the context's `labels`)."""
    if self.dequantize:
      video_matrix = dequantize_frames(video_matrix, num_frames)
    return {
        "video_ids": context["id"],
        "video_matrix": video_matrix,
        "num_frames": num_frames,
        "labels": (_labels_to_dense(context["labels"], self.num_classes)
                   if labels is None else labels),
    }

  def _decode_all(self, frame_bytes):
    """{feature: [B, W] frame bytes} -> uint8 [B, max_frames, F], zero-padded."""
    matrices = [tf.io.decode_raw(frame_bytes[name], tf.uint8, fixed_length=size)
                for name, size in zip(self.feature_names, self.feature_sizes)]
    padding = self.max_frames - tf.shape(matrices[0])[1]
    # Pad copies even by 0 frames; most batches hold a video of max_frames frames.
    matrices = [tf.cond(padding > 0,
                        lambda m=m: tf.pad(m, [[0, 0], [0, padding], [0, 0]]),
                        lambda m=m: m) for m in matrices]
    video_matrix = tf.concat(matrices, axis=2) if len(matrices) > 1 else matrices[0]
    video_matrix.set_shape([None, self.max_frames, sum(self.feature_sizes)])
    return video_matrix


SEGMENT_FIELDS = ("segment_labels", "segment_start_times", "segment_scores")


class YT8MSegmentReader(YT8MFrameFeatureReader):
  """Reads frame-level records as segments of `segment_size` frames (--segment_labels).

  rated=True (train, eval): one example per distinct rated start time of a video, from
    the 2019 release's context `segment_labels`, `segment_start_times` (int64) and
    `segment_scores` (1.0 positive, 0.0 negative), as the starter reads them. labels
    [S, C] hold the scores of the segment's rated classes (0 elsewhere) and
    label_weights [S, C] are 1 on its rated classes, 0 elsewhere. A video without
    ratings gives no example; video-level `labels` are not read.
  rated=False (inference): every segment of a video, from frame 0 in steps of
    segment_size, the last one shorter when the frames run out (the starter's
    get_segments); labels are zeros.
  The batch dict is the frame reader's, one row per segment: video_ids [S] (the
  video's id), video_matrix [S, segment_size, F], num_frames [S], labels [S, C] (and
  label_weights), plus segment_start_times [S] int32, segment_rank [S] int32 (its
  position among its video's segments) and record_index [S] int32 (its record's row
  in the batch of records; make_dataset uses it to join a record's companion and
  drops it). S differs from batch to batch: make_dataset regroups the segments into
  batches of batch_size.
  """

  emits_segments = True

  def __init__(self, segment_size=5, rated=True, **frame_reader_args):
    """segment_size: frames per segment; rated: see the class docstring; the other
    arguments are YT8MFrameFeatureReader's (selected_frames is not supported: the
    student's frames are picked from each segment by the model input)."""
    frame_reader_args.update(require_labels=False, selected_frames=None)
    super(YT8MSegmentReader, self).__init__(**frame_reader_args)
    self.segment_size = segment_size
    self.rated = rated

  def _context_features(self):
    features = {"id": tf.io.FixedLenFeature([], tf.string)}
    if self.rated:
      features.update(segment_labels=tf.io.VarLenFeature(tf.int64),
                      segment_start_times=tf.io.VarLenFeature(tf.int64),
                      segment_scores=tf.io.VarLenFeature(tf.float32))
    return features

  def parse_stages(self):
    return [self.parse_records, self.decode_segments]

  def parse_batch(self, serialized):
    """[B] serialized SequenceExamples -> the batch dict of their segments."""
    return self.decode_segments(*self.parse_records(serialized))

  def record_is_valid(self, serialized):
    """Scalar bool: the record's frames parse and, if rated, its ratings are valid."""
    frames_ok = super(YT8MSegmentReader, self).record_is_valid(serialized)
    if not self.rated:
      return frames_ok
    context, _, lengths = tf.io.parse_sequence_example(
        serialized[None], context_features=self._context_features(),
        sequence_features={name: tf.io.FixedLenSequenceFeature([], tf.string)
                           for name in self.feature_names})
    _, _, _, _, problems = self._ratings(context, self._num_frames(lengths))
    return tf.logical_and(frames_ok, tf.logical_not(tf.reduce_any(problems)))

  def decode_segments(self, context, frames, lengths):
    """parse_records' output -> the batch dict of the records' segments."""
    frame_bytes, num_frames, checks = self._checked_frames(frames, lengths)
    checks += self._context_checks(context, num_frames)
    if self.rated:
      rows, starts, labels, weights, problems = self._ratings(context, num_frames)
      for problem, message in zip(tf.unstack(problems), RATING_PROBLEMS):
        checks.append(tf.debugging.Assert(tf.logical_not(problem), [message]))
    else:
      rows, starts = self._all_segments(num_frames)
      labels = tf.zeros([tf.shape(rows)[0], self.num_classes])
    with tf.control_dependencies(checks):
      video_matrix = self._decode_all(frame_bytes)
    size = self.segment_size
    positions = tf.minimum(starts[:, None] + tf.range(size)[None, :], self.max_frames - 1)
    segment_rows = tf.broadcast_to(rows[:, None], tf.shape(positions))
    segments = tf.gather_nd(video_matrix, tf.stack([segment_rows, positions], axis=2))
    segments.set_shape([None, size, sum(self.feature_sizes)])
    segment_frames = tf.minimum(tf.gather(num_frames, rows) - starts, size)
    batch = self._batch({"id": tf.gather(context["id"], rows)}, segments, segment_frames,
                        labels)
    if self.rated:
      batch["label_weights"] = weights
    batch.update(segment_start_times=starts,
                 segment_rank=tf.range(tf.shape(rows)[0]) - tf.searchsorted(rows, rows),
                 record_index=rows)
    return batch

  def _all_segments(self, num_frames):
    """Every segment of every video: (record rows [S], start frames [S]), int32."""
    per_video = -(-self.max_frames // self.segment_size)
    grid = tf.range(per_video) * self.segment_size
    where = tf.where(grid[None, :] < num_frames[:, None])
    return (tf.cast(where[:, 0], tf.int32),
            tf.gather(grid, tf.cast(where[:, 1], tf.int32)))

  def _ratings(self, context, num_frames):
    """The rated segments of a batch of records.

    Returns:
      (record rows [S] int32, start frames [S] int32, labels [S, C] float32 scores,
      label_weights [S, C], problems [len(RATING_PROBLEMS)] bool: which of the
      RATING_PROBLEMS a record of the batch has).
    """
    batch_size = tf.shape(num_frames)[0]
    starts, labels = context["segment_start_times"], context["segment_labels"]
    scores = context["segment_scores"]
    counts = [tf.math.bincount(tf.cast(field.indices[:, 0], tf.int32),
                               minlength=batch_size, maxlength=batch_size)
              for field in (starts, labels, scores)]
    unequal = tf.reduce_any(tf.logical_or(tf.not_equal(counts[0], counts[1]),
                                          tf.not_equal(counts[0], counts[2])))
    rating_rows = tf.cast(starts.indices[:, 0], tf.int32)
    start_values = starts.values
    frames = tf.cast(tf.gather(num_frames, rating_rows), tf.int64)
    beyond = tf.reduce_any(tf.logical_or(start_values < 0,
                                         start_values + self.segment_size > frames))
    bad_score = tf.reduce_any(tf.logical_and(tf.not_equal(scores.values, 0.0),
                                             tf.not_equal(scores.values, 1.0)))
    bad_label = tf.reduce_any(tf.logical_or(labels.values < 0,
                                            labels.values >= self.num_classes))
    problems = tf.stack([unequal, beyond, bad_score, bad_label])
    # Ratings of one record in order; a (record, start) pair names a segment. Values
    # are made safe to index with: a bad batch fails on `problems`.
    safe_starts = tf.clip_by_value(start_values, 0, self.max_frames - 1)
    keys = tf.cast(rating_rows, tf.int64) * (self.max_frames + 1) + safe_starts
    unique_keys, segment_of = tf.unique(keys, out_idx=tf.int32)
    rows = tf.cast(unique_keys // (self.max_frames + 1), tf.int32)
    segment_starts = tf.cast(unique_keys % (self.max_frames + 1), tf.int32)
    shape = tf.stack([tf.shape(unique_keys)[0], self.num_classes])
    usable = tf.logical_not(tf.reduce_any(problems))
    n = tf.where(usable, tf.shape(labels.values)[0], 0)  # all ratings, or none
    indices = tf.stack([segment_of[:n], tf.cast(labels.values[:n], tf.int32)], axis=1)
    dense_labels = tf.tensor_scatter_nd_max(tf.zeros(shape), indices, scores.values[:n])
    weights = tf.minimum(tf.scatter_nd(indices, tf.ones([n]), shape), 1.0)
    return rows, segment_starts, dense_labels, weights, problems


RATING_PROBLEMS = (
    "a video's segment_labels, segment_start_times and segment_scores differ in number",
    "a rated segment (segment_start_times + --segment_size) lies outside its video's "
    "frames",
    "a segment_scores value is not 0 or 1",
    "a segment_labels id is outside 0..num_classes-1 (--num_classes)")


def get_reader(config, require_labels=True, dequantize=True, student_only=False):
  """The reader a GraphConfig describes (frame or video level, features, classes,
  max_frames; with segment_labels, a YT8MSegmentReader: rated segments when labels are
  required, every segment of a video otherwise).

  require_labels: every record must have at least one label (train/eval); False for
    the unlabeled test partition. dequantize: see YT8MFrameFeatureReader.
  student_only: only the k-frame student reads the batches (no teacher), so decode
    only its frames (see YT8MFrameFeatureReader's selected_frames).
  """
  if config.frame_features and config.segment_labels:
    return YT8MSegmentReader(segment_size=config.segment_size, rated=require_labels,
                             num_classes=config.num_classes,
                             feature_sizes=list(config.feature_sizes),
                             feature_names=list(config.feature_names),
                             max_frames=config.max_frames, dequantize=dequantize)
  if config.frame_features:
    selected = None
    if student_only and config.k_frame < config.max_frames:
      selected = (config.k_frame, config.frame_sampling)
    return YT8MFrameFeatureReader(num_classes=config.num_classes,
                                  feature_sizes=list(config.feature_sizes),
                                  feature_names=list(config.feature_names),
                                  max_frames=config.max_frames, dequantize=dequantize,
                                  require_labels=require_labels,
                                  selected_frames=selected)
  return YT8MAggregatedFeatureReader(num_classes=config.num_classes,
                                     feature_sizes=list(config.feature_sizes),
                                     feature_names=list(config.feature_names),
                                     require_labels=require_labels)


def dequantize_frames(quantized, num_frames):
  """uint8 buckets [B, T, F] -> float32 features [B, T, F]; frames >= num_frames are 0."""
  mask = tf.sequence_mask(num_frames, tf.shape(quantized)[1], dtype=tf.float32)
  return utils.Dequantize(tf.cast(quantized, tf.float32)) * mask[:, :, None]


def list_data_files(data_pattern, flag_name="data pattern"):
  """Sorted files matching a comma-separated list of glob patterns.

  Raises:
    UsageError naming the flag and the pattern when nothing matches.
  """
  files = []
  for pattern in [p for p in data_pattern.split(",") if p.strip()]:
    files.extend(tf.io.gfile.glob(pattern.strip()))
  files = sorted(set(files))
  if not files:
    raise utils.UsageError("%s %r matches no file" % (flag_name, data_pattern))
  return files


def count_records(files):
  """Records in TFRecord files, counted from their framing (a 12-byte header read per
  record, the data skipped), through tf.io.gfile. A file cut short counts the records
  that are whole."""
  total = 0
  for path in files:
    with tf.io.gfile.GFile(path, "rb") as f:
      size, offset = f.size(), 0
      while offset + 12 <= size:
        f.seek(offset)
        length = int.from_bytes(f.read(8), "little")
        offset += 16 + length
        if offset > size:
          break
        total += 1
  return total


def get_input_data_tensors(reader, data_pattern, batch_size=1024, num_readers=1,
                           num_epochs=None, shuffle=True, seed=None,
                           drop_remainder=None, flag_name="data pattern", skipped=None,
                           skip_batches=0, companions=None):
  """Builds the tf.data pipeline over `data_pattern` and returns one batch of tensors.

  Args:
    reader: a YT8MFrameFeatureReader or YT8MAggregatedFeatureReader.
    data_pattern: glob (or comma-separated globs) of TFRecord files.
    batch_size: videos per batch.
    num_readers: files read in parallel (interleaved).
    num_epochs: passes over the data; None repeats forever.
    shuffle: shuffle files and records (training). False reads every record exactly
      once per epoch in a deterministic order (eval, inference).
    seed: shuffling seed; with a seed the order of records is reproducible (None:
      nondeterministic, and faster: parallel reads deliver whatever is ready first).
    drop_remainder: drop a final partial batch; default: True when shuffling (training
      needs fixed batches to split across towers), False otherwise.
    skipped: a SkippedRecords (--skip_corrupt_records), see make_dataset. Its
      iterator is then initialized with the tables (TABLE_INITIALIZERS), which a
      MonitoredSession's local_init_op runs.
    skip_batches: leave out the first this many batches (read but not parsed); with a
      seed, a resumed training continues the record order where it stopped.
  Returns:
    dict of batch tensors (see the module docstring).
  """
  dataset = make_dataset(reader, data_pattern, batch_size, num_readers, num_epochs,
                         shuffle, seed, drop_remainder, flag_name, skipped, skip_batches,
                         companions)
  if skipped is None:
    return tf1.data.make_one_shot_iterator(dataset).get_next()
  # A pipeline that counts into variables cannot be a one-shot iterator.
  iterator = tf1.data.make_initializable_iterator(dataset)
  tf1.add_to_collection(tf1.GraphKeys.TABLE_INITIALIZERS, iterator.initializer)
  return iterator.get_next()


def traced(function):
  """`function` as a tf.data stage traced as written: it is graph code already (tf.cond,
  no Python branches on tensors), so AutoGraph's conversion would only cost time (about
  1.5 s of every command's start-up)."""
  return tf.autograph.experimental.do_not_convert(function)


def record_dataset(path):
  """tf.data.TFRecordDataset of the serialized records of one file (`path`: a string
  or a scalar string tensor).

  A file on the local disk (no scheme://, the rule of utils.is_local) is read
  unbuffered: a record then goes from the page cache into its tensor in one copy
  instead of two through TensorFlow's 256 KB read buffer (a full-length video's record
  is ~350 KB): reading the records alone measured 0.14 CPU s per 1000 videos against
  0.16 (docs/performance.md, "Reader"). Other file systems keep TensorFlow's default
  buffer, which saves requests to a remote store.
  """
  remote = tf.strings.regex_full_match(path, ".*://.*")
  # -1: TensorFlow's default for the file system; 0: no buffer.
  buffer_size = tf.where(remote, tf.constant(-1, tf.int64), tf.constant(0, tf.int64))
  return tf.data.TFRecordDataset(path, buffer_size=buffer_size)


def make_dataset(reader, data_pattern, batch_size=1024, num_readers=1, num_epochs=None,
                 shuffle=True, seed=None, drop_remainder=None, flag_name="data pattern",
                 skipped=None, skip_batches=0, companions=None):
  """The tf.data.Dataset behind `get_input_data_tensors` (same arguments).

  skipped: a SkippedRecords to drop and count corrupt records instead of failing
    (--skip_corrupt_records; each record is then also validated on its own, which costs
    a second parse).
  companions: {data file (absolute path): a TFRecord file with one record per (valid)
    record of it, in the same order} (a teacher cache). Each record travels with its companion through
    shuffling and batching; the batch dict gets them as `companion` [B] string ("" for
    a record beyond the end of its companion file).
  """
  if batch_size <= 0:
    raise utils.UsageError("--batch_size must be positive, got %d" % batch_size)
  files = list_data_files(data_pattern, flag_name)
  num_readers = max(1, min(num_readers, len(files)))
  if drop_remainder is None:
    drop_remainder = shuffle
  deterministic = not shuffle or seed is not None
  columns = [files]
  if skipped is None:
    read_records = lambda path, *rest: record_dataset(path)
  else:
    columns.append(tf.constant([tf.io.gfile.stat(f).length for f in files], tf.int64))
    read_records = lambda path, size, *rest: skipped.valid_records(reader, path, size)
  if companions is None:
    read_file = read_records
  else:
    columns.append([companions[utils.absolute(f)] for f in files])

    def read_file(*column_values):
      endless = record_dataset(column_values[-1]).concatenate(
          tf.data.Dataset.from_tensors(tf.constant("")).repeat())
      return tf.data.Dataset.zip((read_records(*column_values), endless))
  dataset = tf.data.Dataset.from_tensor_slices(
      tuple(columns) if len(columns) > 1 else columns[0])
  if shuffle:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.repeat(num_epochs)
  dataset = dataset.interleave(traced(read_file), cycle_length=num_readers,
                               block_length=1,
                               num_parallel_calls=num_readers,
                               deterministic=deterministic)
  if shuffle:
    dataset = dataset.shuffle(max(5 * batch_size, 256), seed=seed)
  segments = getattr(reader, "emits_segments", False)
  if segments:
    # Segments are regrouped into batches of batch_size after parsing (below). Their
    # records are parsed in batches of about as many frames as that (a 300-frame video
    # holds 60 segments): in flight, a batch of batch_size records would hold 60 times
    # the frames (memory) for no gain in speed.
    dataset = dataset.batch(max(1, -(-batch_size * reader.segment_size //
                                     reader.max_frames)))
  else:
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  if skip_batches and not segments:
    dataset = dataset.skip(skip_batches)
  for stage in reader.parse_stages():
    if companions is None:
      dataset = dataset.map(traced(stage), num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=deterministic)
    else:
      dataset = dataset.map(traced(
          lambda values, companion, stage=stage: (
              stage(*values) if isinstance(values, tuple) else stage(values), companion)),
          num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if companions is not None:
    dataset = dataset.map(traced(_join_companion))
  if segments:
    dataset = dataset.map(traced(_without_record_index)).unbatch()
    if shuffle:
      dataset = dataset.shuffle(max(4 * batch_size, 256), seed=seed)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if skip_batches:
      dataset = dataset.skip(skip_batches)
  return dataset.prefetch(2)


def _join_companion(batch, companion):
  """The batch dict with each row's companion record (a segment's: its record's)."""
  if "record_index" in batch:
    companion = tf.gather(companion, batch["record_index"])
  return dict(batch, companion=companion)


def _without_record_index(batch):
  return {key: value for key, value in batch.items() if key != "record_index"}


class SkippedRecords(object):
  """Drops corrupt records from a pipeline and counts them (--skip_corrupt_records).

  A record that is not a valid YouTube-8M record for the reader (undecodable, missing
  features, wrong bytes per frame, no frames, bad labels) is dropped and counted. A
  shard whose TFRecord framing is corrupt is read up to the damage; the rest of it is
  unreadable, which is counted as a cut shard and reported on stderr with its name.
  The counters are local variables (not checkpointed): run `report(session)` at the end.
  """

  def __init__(self):
    collections = [tf1.GraphKeys.LOCAL_VARIABLES]
    with tf1.variable_scope(None, default_name="skipped_records"):
      self.read = tf1.get_variable("read", [], tf.int64, tf1.zeros_initializer(),
                                   trainable=False, collections=collections)
      self.kept = tf1.get_variable("kept", [], tf.int64, tf1.zeros_initializer(),
                                   trainable=False, collections=collections)
      self.cut_shards = tf1.get_variable("cut_shards", [], tf.int64,
                                         tf1.zeros_initializer(), trainable=False,
                                         collections=collections)
    self.reset = tf.group(*[tf1.assign(v, 0) for v in (self.read, self.kept,
                                                        self.cut_shards)])

  def valid_records(self, reader, path, size):
    """Dataset of the valid serialized records of one file (path, size: tensors)."""
    def count_read(record):
      with tf.control_dependencies([tf1.assign_add(self.read, 1)]):
        return tf.identity(record)

    def count_kept(record):
      with tf.control_dependencies([tf1.assign_add(self.kept, 1)]):
        return tf.identity(record)

    records = record_dataset(path).ignore_errors()
    # Bytes of a record in the file: 8 length + 4 CRC + data + 4 CRC. A shard ends short
    # of its size when ignore_errors stopped at damaged framing.
    marked = records.map(traced(lambda r: (r, False))).concatenate(
        tf.data.Dataset.from_tensors((tf.constant(""), True)))

    def add_bytes(consumed, element):
      record, is_end = element
      consumed += tf.where(is_end, tf.constant(0, tf.int64),
                           tf.cast(tf.strings.length(record), tf.int64) + 16)
      return consumed, (record, is_end, consumed)

    def check_end(record, is_end, consumed):
      cut = tf.logical_and(is_end, consumed < size)
      warn = tf.cond(cut, lambda: _warn_cut(path, consumed, self.cut_shards),
                     lambda: tf.constant(0, tf.int64))
      with tf.control_dependencies([warn]):
        return tf.identity(record), is_end

    records = marked.scan(tf.constant(0, tf.int64), traced(add_bytes)).map(
        traced(check_end))
    records = records.filter(traced(lambda record, is_end: tf.logical_not(is_end)))
    records = records.map(traced(lambda record, is_end: count_read(record)))
    records = records.map(traced(lambda r: (r, reader.record_is_valid(r))))
    records = records.ignore_errors()
    return records.filter(traced(lambda r, ok: ok)).map(
        traced(lambda r, ok: count_kept(r)))

  def report(self, session):
    """(records skipped, shards cut short) so far."""
    read, kept, cut = session.run([self.read, self.kept, self.cut_shards])
    return int(read - kept), int(cut)


def _warn_cut(path, consumed, counter):
  printed = tf.print("warning: --skip_corrupt_records:", path,
                     ": damaged TFRecord framing after byte", consumed,
                     "; the rest of this shard is skipped", output_stream=sys.stderr)
  with tf.control_dependencies([printed]):
    return tf1.assign_add(counter, 1)


@contextlib.contextmanager
def data_errors_named(reader, data_pattern, flag_name):
  """Turns an input-pipeline failure inside the block into a one-line UsageError that
  names the bad file and record (see data_error); the one translation every CLI uses."""
  try:
    yield
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
    raise data_error(e, reader, data_pattern, flag_name)


def data_error(error, reader, data_pattern, flag_name):
  """Turns an input-pipeline error into a UsageError naming the bad file and record.

  Scans the files of `data_pattern` in Python (only after a failure, so the reading
  path pays nothing for it).
  """
  problem = find_bad_record(reader, list_data_files(data_pattern, flag_name))
  if problem:
    return utils.UsageError(problem)
  return utils.UsageError("reading %s=%s failed: %s" % (flag_name, data_pattern,
                                                        str(error).splitlines()[0]))


def find_bad_record(reader, files):
  """Scans `files` record by record in Python and describes the first bad one.

  Used after the graph pipeline failed, to turn a TensorFlow error into one line that
  names the file and the record index. Returns None when every record is well formed.
  """
  frame_level = isinstance(reader, YT8MFrameFeatureReader)
  for path in files:
    index = -1
    try:
      for index, serialized in enumerate(tf1.io.tf_record_iterator(path)):
        problem = (_frame_record_problem(reader, serialized) if frame_level
                   else _video_record_problem(reader, serialized))
        if problem:
          return "%s: record %d: %s" % (path, index, problem)
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
      return "%s: record %d: truncated or corrupted TFRecord (%s)" % (
          path, index + 1, str(e).splitlines()[0])
    except tf.errors.NotFoundError:
      return "%s: file not found" % path
  return None


def _label_problem(reader, labels_feature, present):
  if not present:
    return "no 'labels' feature" if reader.require_labels else None
  labels = list(labels_feature.int64_list.value)
  if reader.require_labels and not labels:
    return "empty 'labels' list"
  bad = [l for l in labels if not 0 <= l < reader.num_classes]
  if bad:
    return "label id %d outside 0..%d (--num_classes=%d)" % (
        bad[0], reader.num_classes - 1, reader.num_classes)
  return None


def _parse_record(reader, serialized, proto_class):
  """(proto, None) or (None, problem) for the common checks: decoding, id, labels."""
  try:
    record = proto_class.FromString(serialized)
  except Exception:  # protobuf raises its own DecodeError type
    return None, "not a tf.train.%s" % proto_class.__name__
  context = (record.context.feature if proto_class is tf.train.SequenceExample
             else record.features.feature)
  if "id" not in context:
    return None, "no 'id' feature"
  return record, _label_problem(reader, context.get("labels"), "labels" in context)


def _frame_record_problem(reader, serialized):
  example, problem = _parse_record(reader, serialized, tf.train.SequenceExample)
  if problem:
    return problem
  lists = example.feature_lists.feature_list
  for name, size in zip(reader.feature_names, reader.feature_sizes):
    if name not in lists:
      return "no '%s' feature list (--feature_names)" % name
    frames = lists[name].feature
    if not frames:
      return "video with 0 frames in '%s'" % name
    for i, frame in enumerate(frames):
      values = frame.bytes_list.value
      if len(values) != 1 or len(values[0]) != size:
        return "frame %d of '%s' has %d bytes, expected %d (--feature_sizes)" % (
            i, name, len(values[0]) if values else 0, size)
  if getattr(reader, "rated", False):
    frames = min(min(len(lists[name].feature) for name in reader.feature_names),
                 reader.max_frames)
    return _rating_problem(reader, example.context.feature, frames)
  return None


def _rating_problem(reader, context, frames):
  """What is wrong with a record's segment ratings (--segment_labels), or None."""
  labels, starts, scores = (
      list(context[name].int64_list.value or context[name].float_list.value)
      if name in context else [] for name in SEGMENT_FIELDS)
  if not len(labels) == len(starts) == len(scores):
    return ("%d segment_labels, %d segment_start_times and %d segment_scores; they must "
            "be as many" % (len(labels), len(starts), len(scores)))
  for label, start, score in zip(labels, starts, scores):
    if score not in (0.0, 1.0):
      return ("segment_scores %g for class %d at %d; they must be 0 or 1"
              % (score, label, start))
    if not 0 <= label < reader.num_classes:
      return ("segment_labels id %d outside 0..%d (--num_classes=%d)"
              % (label, reader.num_classes - 1, reader.num_classes))
    if not 0 <= start <= frames - reader.segment_size:
      return ("the segment rated at %d lies outside the video's %d frames (rated "
              "%d-frame segments start at 0..%d; --segment_size, --max_frames)"
              % (start, frames, reader.segment_size, frames - reader.segment_size))
  return None


def _video_record_problem(reader, serialized):
  example, problem = _parse_record(reader, serialized, tf.train.Example)
  if problem:
    return problem
  features = example.features.feature
  for name, size in zip(reader.feature_names, reader.feature_sizes):
    if name not in features:
      return "no '%s' feature (--feature_names)" % name
    found = len(features[name].float_list.value)
    if found != size:
      return "'%s' has %d values, expected %d (--feature_sizes)" % (name, found, size)
  return None
