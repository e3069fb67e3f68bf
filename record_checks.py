"""The rules a YouTube-8M record must follow, each stated once.

A rule is a predicate over the values a record holds (label ids, frames, bytes per
frame, segment ratings), written with the operators numpy arrays and tf tensors share
(<, >, &, |), plus its two messages. From that one definition come:
  - the graph check a reader puts before decoding a batch (`Rule.graph_check`, its
    `summary` message),
  - the per-record filter of --skip_corrupt_records (`all_hold`),
  - the one-line diagnosis of a failed pipeline, in Python on numpy values
    (`first_problem`, its `detail` message naming the value at fault).
Which feature a record must have at all is stated by the readers' parse specs (a
missing one fails the parse); corrupt_records names it.
"""

import collections

import numpy as np
import tensorflow as tf


def outside(values, low, high):
  """Elementwise: values < low or values > high (numpy arrays or tensors alike)."""
  return (values < low) | (values > high)


class Rule(collections.namedtuple("Rule", "summary detail bad")):
  """One rule of a valid record.

  summary: the graph check's message (str.format fields: the plain values given).
  detail: the diagnosis's message, str.format fields: the values at the first item
    that breaks the rule, its `index`, and the plain values; or a function of them.
  bad: function(values dict) -> bool array, True where an item breaks the rule.
  """

  def broken(self, values):
    """Scalar bool tensor: some item of `values` breaks the rule."""
    return tf.reduce_any(self.bad(values))

  def graph_check(self, values):
    """An assertion op that fails with `summary` when an item breaks the rule."""
    return tf.debugging.Assert(tf.logical_not(self.broken(values)),
                               [self.summary.format(**_plain(values))])

  def describe(self, fields):
    """The one-line diagnosis from the fields of the item at fault."""
    if callable(self.detail):
      return self.detail(**fields)
    return self.detail.format(**fields)


def _plain(values):
  return {k: v for k, v in values.items() if isinstance(v, (int, float, str))}


def all_hold(checks):
  """Scalar bool tensor: every (rule, values) of `checks` holds (a record filter)."""
  return tf.logical_not(tf.reduce_any(tf.stack([rule.broken(values)
                                                for rule, values in checks])))


def first_problem(rules, values):
  """The diagnosis of the first item (in order) that breaks one of `rules`, or None.

  values: {name: a plain value (int, float, str), or a sequence with one entry per
  item}. At an item that breaks several rules, the first of `rules` is named.
  """
  values = {k: v if isinstance(v, (int, float, str)) else np.asarray(v)
            for k, v in values.items()}
  found = []
  for position, rule in enumerate(rules):
    broken = np.flatnonzero(np.asarray(rule.bad(values), bool).ravel())
    if broken.size:
      found.append((int(broken[0]), position))
  if not found:
    return None
  index, position = min(found)
  fields = {k: v[index].item() if isinstance(v, np.ndarray) else v
            for k, v in values.items()}
  return rules[position].describe(dict(fields, index=index))


# Labels (the video-level `labels` of a record; segment readers do not read them).
LABEL_ID = Rule(
    summary="label id outside 0..num_classes-1 (--num_classes)",
    detail="label id {label} outside 0..{last_class} (--num_classes={num_classes})",
    bad=lambda v: outside(v["label"], 0, v["num_classes"] - 1))
HAS_LABELS = Rule(  # when labels are required (train, eval)
    summary="video without labels",
    detail="empty 'labels' list",
    bad=lambda v: v["labels"] < 1)

# Features.
VALUE_COUNT = Rule(  # video level: floats of a feature
    summary="feature '{name}' does not have {size} values (--feature_sizes)",
    detail="'{name}' has {values} values, expected {size} (--feature_sizes)",
    bad=lambda v: outside(v["values"], v["size"], v["size"]))
HAS_FRAMES = Rule(  # frame level: frames of a feature
    summary="video with 0 frames",
    detail="video with 0 frames in '{name}'",
    bad=lambda v: v["frames"] < 1)
FRAME_BYTES = Rule(  # frame level: bytes of each of the first max_frames frames
    summary="frame of feature '{name}' does not have {size} bytes (--feature_sizes)",
    detail="frame {index} of '{name}' has {bytes} bytes, expected {size} "
           "(--feature_sizes)",
    bad=lambda v: outside(v["bytes"], v["size"], v["size"]) & v["is_real"])

# Segment ratings (--segment_labels): the fields, as many of each per record.
SEGMENT_FIELDS = ("segment_labels", "segment_start_times", "segment_scores")
RATING_COUNTS = Rule(
    summary="a video's segment_labels, segment_start_times and segment_scores differ "
            "in number",
    detail="{labels} segment_labels, {starts} segment_start_times and {scores} "
           "segment_scores; they must be as many",
    bad=lambda v: (outside(v["labels"], v["starts"], v["starts"])
                   | outside(v["labels"], v["scores"], v["scores"])))
# Each rating: its score, its class, and where its segment lies. A rule reads only
# its own fields: with unequal counts they differ in length.
RATING_SCORE = Rule(
    summary="a segment_scores value is not 0 or 1",
    detail="segment_scores {score:g} for class {label} at {start}; they must be 0 or 1",
    bad=lambda v: outside(v["score"], 0.0, 0.0) & outside(v["score"], 1.0, 1.0))
RATING_LABEL = Rule(
    summary="a segment_labels id is outside 0..num_classes-1 (--num_classes)",
    detail="segment_labels id {label} outside 0..{last_class} "
           "(--num_classes={num_classes})",
    bad=lambda v: outside(v["label"], 0, v["num_classes"] - 1))
RATING_START = Rule(
    summary="a rated segment (segment_start_times + --segment_size) lies outside its "
            "video's frames",
    detail=lambda start, frames, segment_size, **_: (
        "the segment rated at %d lies outside the video's %d frames (rated %d-frame "
        "segments start at 0..%d; --segment_size, --max_frames)"
        % (start, frames, segment_size, frames - segment_size)),
    bad=lambda v: (v["start"] < 0) | (v["start"] + v["segment_size"] > v["frames"]))
RATING_RULES = (RATING_SCORE, RATING_LABEL, RATING_START)
