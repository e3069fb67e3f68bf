"""Parsing YouTube-8M records into batches of tensors, and which records are valid.

Every reader turns a batch of serialized records into a dict of tensors:
  video_ids    [B] string
  video_matrix [B, max_frames, F] float32 (frame level) or [B, F] (video level)
  num_frames   [B] int32 (frames before padding, at most max_frames; 1 for video level)
  labels       [B, num_classes] float32, 0/1
Frame-level features are concatenated in `feature_names` order. Records are parsed a
whole batch at a time (one `parse_sequence_example` call), which is what lets the
reader keep up with the model on two cores. A k-frame student's reader does not parse
the frames at all: record_layout finds its k frames in the serialized records.

A batch with a record that breaks a rule of record_checks fails before it is decoded;
`record_is_valid` applies the same rules to one record (--skip_corrupt_records). The
segment reader (--segment_labels) extends the frame reader in segment_parsing.
"""

import os

import tensorflow as tf

import cli
import frame_selection
import record_checks
import record_layout
import utils
from record_checks import FRAME_BYTES, HAS_FRAMES, HAS_LABELS, LABEL_ID, VALUE_COUNT

# With this environment variable set to 1 when a graph is built, a k-frame reader fails
# a batch it would parse whole instead of finding its frames in place. Results are the
# same either way, so only this shows which path records take: the tests set it to prove
# that real YouTube-8M records take the in-place one (tests/test_real_frames.py).
REQUIRE_IN_PLACE_ENV = "YT8M_REQUIRE_IN_PLACE"


def graph_checks(rules):
  """[(rule, values)] -> the assertion ops that fail a batch breaking one of them."""
  return [rule.graph_check(values) for rule, values in rules]


def label_id_values(ids, num_classes):
  """LABEL_ID's values for label ids (any shape)."""
  return {"label": ids, "num_classes": num_classes, "last_class": num_classes - 1}


def _label_counts(labels, batch_size):
  """HAS_LABELS's values: labels per record of a [B, ?] SparseTensor."""
  return {"labels": tf.math.bincount(tf.cast(labels.indices[:, 0], tf.int32),
                                     minlength=batch_size)}


def _labels_to_dense(sparse_labels, num_classes):
  """[B, ?] SparseTensor of class ids -> [B, num_classes] float32 0/1 (duplicates ok)."""
  batch_size = tf.cast(sparse_labels.dense_shape[0], tf.int32)
  ids = tf.cast(sparse_labels.values, tf.int32)
  rows = tf.cast(sparse_labels.indices[:, 0], tf.int32)
  check = LABEL_ID.graph_check(label_id_values(ids, num_classes))
  with tf.control_dependencies([check]):
    indices = tf.stack([rows, ids], axis=1)
  dense = tf.scatter_nd(indices, tf.ones_like(ids, tf.float32),
                        tf.stack([batch_size, num_classes]))
  return tf.minimum(dense, 1.0)


def _check_feature_lists(feature_names, feature_sizes):
  if len(feature_names) != len(feature_sizes):
    raise cli.UsageError("--feature_names has %d entries but --feature_sizes has %d"
                         % (len(feature_names), len(feature_sizes)))


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
    _check_feature_lists(feature_names, feature_sizes)
    self.num_classes = num_classes
    self.feature_names = list(feature_names)
    self.feature_sizes = list(feature_sizes)
    self.require_labels = require_labels

  def record_is_valid(self, serialized):
    """Scalar bool: this serialized Example would parse cleanly in parse_batch (one
    that cannot be parsed at all fails the op instead)."""
    spec = {"id": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.VarLenFeature(tf.int64)}
    for name in self.feature_names:
      spec[name] = tf.io.VarLenFeature(tf.float32)
    features = tf.io.parse_example(serialized[None], spec)
    rules = [(LABEL_ID, label_id_values(features["labels"].values, self.num_classes))]
    if self.require_labels:
      rules.append((HAS_LABELS, _label_counts(features["labels"], 1)))
    for name, size in zip(self.feature_names, self.feature_sizes):
      rules.append((VALUE_COUNT, {"values": tf.size(features[name].values),
                                  "name": name, "size": size}))
    return record_checks.all_hold(rules)

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
      checks.append(HAS_LABELS.graph_check(_label_counts(labels,
                                                         tf.shape(serialized)[0])))
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
    _check_feature_lists(feature_names, feature_sizes)
    self.num_classes = num_classes
    self.feature_names = list(feature_names)
    self.feature_sizes = list(feature_sizes)
    self.max_frames = max_frames
    self.dequantize = dequantize
    self.require_labels = require_labels
    self.selected_frames = selected_frames

  def record_is_valid(self, serialized):
    """Scalar bool: this serialized SequenceExample would parse cleanly in parse_batch
    (one without a feature parse_batch needs fails the op instead)."""
    context, frames, lengths = self.parse_records(serialized[None])
    _, num_frames, rules = self._frame_rules(frames, lengths)
    rules += self._context_rules(context, num_frames)
    if "labels" in context:
      rules.append((LABEL_ID, label_id_values(context["labels"].values,
                                              self.num_classes)))
    return record_checks.all_hold(rules)

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
    frame_bytes, num_frames, rules = self._frame_rules(frames, lengths)
    rules += self._context_rules(context, num_frames)
    with tf.control_dependencies(graph_checks(rules)):
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
      frame_bytes, num_frames, rules = self._frame_rules(frames, lengths)
      rules += self._context_rules(context, num_frames)
      indices, new_num_frames, is_real = self._selection(num_frames, context["id"])
      picked = []  # (a batch of videos without frames must fail the check, not gather)
      with tf.control_dependencies(graph_checks(rules)):
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
    checks = graph_checks(self._context_rules(context, num_frames))
    with tf.control_dependencies(checks):
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

  def _frame_rules(self, frames, lengths):
    """Parsed frame strings -> ({feature: [B, W] bytes, W <= max_frames}, num_frames [B],
    [(FRAME_BYTES, values)]: every real frame has its feature's byte count)."""
    frame_bytes = {name: frames[name][:, :self.max_frames] for name in self.feature_names}
    rules = []
    for name, size in zip(self.feature_names, self.feature_sizes):
      # Padding entries are b"", real frames must have exactly `size` bytes.
      length = tf.minimum(tf.cast(lengths[name], tf.int32), self.max_frames)
      rules.append((FRAME_BYTES, {
          "bytes": tf.strings.length(frame_bytes[name]),
          "is_real": tf.sequence_mask(length, tf.shape(frame_bytes[name])[1]),
          "name": name, "size": size}))
    return frame_bytes, self._num_frames(lengths), rules

  def _context_rules(self, context, num_frames):
    """[(rule, values)]: every video has frames and, if required, labels."""
    rules = [(HAS_FRAMES, {"frames": num_frames})]
    if self.require_labels:
      rules.append((HAS_LABELS, _label_counts(context["labels"],
                                              tf.shape(context["id"])[0])))
    return rules

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


def dequantize_frames(quantized, num_frames):
  """uint8 buckets [B, T, F] -> float32 features [B, T, F]; frames >= num_frames are 0."""
  mask = tf.sequence_mask(num_frames, tf.shape(quantized)[1], dtype=tf.float32)
  return utils.Dequantize(tf.cast(quantized, tf.float32)) * mask[:, :, None]
