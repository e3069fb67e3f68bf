"""Parsing frame-level records as segments of frames (--segment_labels, the 2019 task).

The rules of valid segment ratings are record_checks' RATING_*; a batch that breaks
one fails before it is decoded, as with the frame reader this one extends.
"""

import tensorflow as tf

import record_checks
from record_checks import RATING_COUNTS, RATING_RULES
from record_parsing import YT8MFrameFeatureReader, label_id_values, graph_checks


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
  in the batch of records; make_dataset uses it to join a record's teacher-cache
  entry and drops it). S differs from batch to batch: make_dataset regroups the
  segments into batches of batch_size.
  """

  emits_segments = True
  reads_labels = False  # (video-level labels)

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

  def _context_rules(self, context, num_frames):
    """The frame reader's, plus (rated) the rules of the records' segment ratings."""
    rules = super(YT8MSegmentReader, self)._context_rules(context, num_frames)
    return rules + (self._rating_rules(context, num_frames) if self.rated else [])

  def _rating_rules(self, context, num_frames):
    """[(rule, values)] of the segment ratings of a batch of records."""
    batch_size = tf.shape(num_frames)[0]
    starts, labels = context["segment_start_times"], context["segment_labels"]
    scores = context["segment_scores"]
    labels_count, starts_count, scores_count = [
        tf.math.bincount(tf.cast(field.indices[:, 0], tf.int32),
                         minlength=batch_size, maxlength=batch_size)
        for field in (labels, starts, scores)]
    frames = tf.gather(num_frames, tf.cast(starts.indices[:, 0], tf.int32))
    values = dict(label_id_values(labels.values, self.num_classes),
                  labels=labels_count, starts=starts_count, scores=scores_count,
                  start=starts.values, score=scores.values,
                  frames=tf.cast(frames, tf.int64), segment_size=self.segment_size)
    return [(rule, values) for rule in (RATING_COUNTS,) + RATING_RULES]

  def decode_segments(self, context, frames, lengths):
    """parse_records' output -> the batch dict of the records' segments."""
    frame_bytes, num_frames, rules = self._frame_rules(frames, lengths)
    checks = graph_checks(rules + self._context_rules(context, num_frames))
    if self.rated:
      rows, starts, labels, weights = self._ratings(context, num_frames)
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
      label_weights [S, C]).
    """
    starts, labels = context["segment_start_times"], context["segment_labels"]
    scores = context["segment_scores"]
    rating_rows = tf.cast(starts.indices[:, 0], tf.int32)
    start_values = starts.values
    # Ratings of one record in order; a (record, start) pair names a segment. Values
    # are made safe to index with: a bad batch fails its checks (_rating_rules).
    safe_starts = tf.clip_by_value(start_values, 0, self.max_frames - 1)
    keys = tf.cast(rating_rows, tf.int64) * (self.max_frames + 1) + safe_starts
    unique_keys, segment_of = tf.unique(keys, out_idx=tf.int32)
    rows = tf.cast(unique_keys // (self.max_frames + 1), tf.int32)
    segment_starts = tf.cast(unique_keys % (self.max_frames + 1), tf.int32)
    shape = tf.stack([tf.shape(unique_keys)[0], self.num_classes])
    usable = record_checks.all_hold(self._rating_rules(context, num_frames))
    n = tf.where(usable, tf.shape(labels.values)[0], 0)  # all ratings, or none
    indices = tf.stack([segment_of[:n], tf.cast(labels.values[:n], tf.int32)], axis=1)
    dense_labels = tf.tensor_scatter_nd_max(tf.zeros(shape), indices, scores.values[:n])
    weights = tf.minimum(tf.scatter_nd(indices, tf.ones([n]), shape), 1.0)
    return rows, segment_starts, dense_labels, weights
