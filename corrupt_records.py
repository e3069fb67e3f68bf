"""Corrupt records: skipped and counted (--skip_corrupt_records), or named in one line.

SkippedRecords drops the records a reader's `record_is_valid` refuses. Without it a
bad record fails the pipeline, and `data_errors_named` turns the failure into one line
naming the file, the record and the problem: `find_bad_record` scans the files in
Python and applies the same rules (record_checks) to numpy values of each record.
"""

import contextlib
import sys

import numpy as np
import tensorflow as tf

import cli
import input_pipeline
import record_checks
import record_parsing
from input_pipeline import traced
from record_checks import (FRAME_BYTES, HAS_FRAMES, HAS_LABELS, LABEL_ID, RATING_COUNTS,
                           RATING_RULES, SEGMENT_FIELDS, VALUE_COUNT)

tf1 = tf.compat.v1


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

    # (Through the module: tests count the files opened by patching it.)
    records = input_pipeline.record_dataset(path).ignore_errors()
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
    # A record that does not even parse fails record_is_valid: ignore_errors drops it.
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
def data_errors_named(reader, files):
  """Turns an input-pipeline failure inside the block into a one-line UsageError that
  names the bad file and record (see data_error); the one translation every CLI uses.

  files: the DataFiles the pipeline reads.
  """
  try:
    yield
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
    raise data_error(e, reader, files)


def data_error(error, reader, files):
  """Turns an input-pipeline error into a UsageError naming the bad file and record.

  Scans `files` (a DataFiles) in Python (only after a failure, so the reading path
  pays nothing for it).
  """
  problem = find_bad_record(reader, files.paths)
  if problem:
    return cli.UsageError(problem)
  return cli.UsageError("reading %s=%s failed: %s" % (files.flag_name, files.pattern,
                                                      str(error).splitlines()[0]))


def find_bad_record(reader, files):
  """Scans `files` (paths) record by record in Python and describes the first bad one.

  Used after the graph pipeline failed, to turn a TensorFlow error into one line that
  names the file and the record index. Returns None when every record is well formed.
  """
  frame_level = isinstance(reader, record_parsing.YT8MFrameFeatureReader)
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


def _parse_record(reader, serialized, proto_class):
  """(proto, None) or (None, problem): decoding, the id and the labels."""
  try:
    record = proto_class.FromString(serialized)
  except Exception:  # protobuf raises its own DecodeError type
    return None, "not a tf.train.%s" % proto_class.__name__
  context = (record.context.feature if proto_class is tf.train.SequenceExample
             else record.features.feature)
  if "id" not in context:
    return None, "no 'id' feature"
  if not getattr(reader, "reads_labels", True):
    return record, None
  if "labels" not in context:
    return record, "no 'labels' feature" if reader.require_labels else None
  labels = list(context["labels"].int64_list.value)
  rules = [HAS_LABELS] if reader.require_labels else []
  return record, (record_checks.first_problem(rules, {"labels": len(labels)}) or
                  record_checks.first_problem([LABEL_ID], dict(
                      label=labels, num_classes=reader.num_classes,
                      last_class=reader.num_classes - 1)))


def _frame_record_problem(reader, serialized):
  example, problem = _parse_record(reader, serialized, tf.train.SequenceExample)
  if problem:
    return problem
  lists = example.feature_lists.feature_list
  for name, size in zip(reader.feature_names, reader.feature_sizes):
    if name not in lists:
      return "no '%s' feature list (--feature_names)" % name
    frames = lists[name].feature[:reader.max_frames]
    # A frame is one bytes value (0 bytes: none, or more than one).
    problem = (record_checks.first_problem([HAS_FRAMES], {"frames": len(frames),
                                                          "name": name}) or
               record_checks.first_problem([FRAME_BYTES], {
                   "bytes": [len(f.bytes_list.value[0]) if len(f.bytes_list.value) == 1
                             else 0 for f in frames],
                   "is_real": True, "name": name, "size": size}))
    if problem:
      return problem
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
  return (record_checks.first_problem([RATING_COUNTS], {
      "labels": len(labels), "starts": len(starts), "scores": len(scores)}) or
          record_checks.first_problem(list(RATING_RULES), {
              "label": np.array(labels, np.int64), "start": np.array(starts, np.int64),
              "score": np.array(scores, np.float64), "frames": frames,
              "segment_size": reader.segment_size, "num_classes": reader.num_classes,
              "last_class": reader.num_classes - 1}))


def _video_record_problem(reader, serialized):
  example, problem = _parse_record(reader, serialized, tf.train.Example)
  if problem:
    return problem
  features = example.features.feature
  for name, size in zip(reader.feature_names, reader.feature_sizes):
    if name not in features:
      return "no '%s' feature (--feature_names)" % name
    problem = record_checks.first_problem([VALUE_COUNT], {
        "values": len(features[name].float_list.value), "name": name, "size": size})
    if problem:
      return problem
  return None
