"""Per-class ranking of segments for the YouTube-8M 2019 (Kaggle) segment CSV:

  Class,Segments
  3,Ab1d:35 Xy9z:120 ...

The ranking of the starter's inference.py --segment_labels: every segment is a
candidate for its top_k best-scoring rated classes (those of segment_label_ids.csv),
and every class lists its best max_pred candidates, best first. Memory stays bounded
whatever the number of segments streamed through (see SegmentRanking). Segments come
with all their class probabilities (SegmentRanking.add) or with their top classes
already chosen (add_top); segment_ids() builds the ids.
"""

import re

import numpy as np
import tensorflow as tf

import cli

HEADER = "Class,Segments\n"


class SegmentRanking(object):
  """The best `max_pred` segments of every rated class, fed batch by batch (add()).

  Order: descending score; equal scores keep the order of arrival (a segment of an
  earlier add(), or an earlier row of the same add(), first). The starter differs on
  ties only: it rounded scores to 6 digits ("%g") and let its heap of (score, id)
  compare the id strings. Which of several rated classes tied at a segment's top_k-th
  score are taken is np.argpartition's choice (deterministic, but unspecified).

  Entries (class, score, segment id) wait in a pending buffer; once more than
  `compact_every` are pending they are merged with those kept and every class is cut
  to its best max_pred. An entry that cannot enter a class already full (score not
  above its max_pred-th kept score) is dropped on arrival.

  Memory: an entry takes 6 bytes (int16 class position, float32 score) plus the id
  width W, the longest id added so far (ids are a numpy 'S' array); arrival order needs
  no field, the entries' order carries it. At most len(rated_classes) * max_pred
  entries are kept, whatever the number of segments, and at most compact_every plus
  one batch's (S * top_k) are pending. With the 1000 rated classes of
  segment_label_ids.csv, max_pred=100000 and 8-byte ids ("Ab1d:135") that is 1e8
  entries * 14 bytes = 1.4 GB at worst, plus 2**20 pending entries (15 MB). Kept
  entries are also at most top_k per segment added: the 2019 test set's 2.06 million
  segments * 20 = 41M entries, 0.58 GB. A compaction briefly needs about 2.5 times the
  bytes of the entries it merges (sort key, order and the sorted copy): 1.2 GB above
  the baseline, measured with 7-byte ids, for those 41M.
  """

  def __init__(self, rated_classes, max_pred=100000, top_k=20, compact_every=1 << 20):
    """rated_classes: sequence of int class ids (column indices of the prediction
    matrix), e.g. read_rated_classes()'s; max_pred: segments kept per class; top_k:
    classes per segment, among the rated ones (capped at their number); compact_every:
    pending entries allowed before a compaction. Raises UsageError for bad values."""
    classes = np.asarray(rated_classes)
    if classes.size == 0:
      raise cli.UsageError("segment_label_ids names no class to rank")
    if classes.ndim != 1 or classes.dtype.kind not in "iu" or classes.min() < 0:
      raise cli.UsageError("rated classes must be non-negative int class ids, got %r"
                           % (rated_classes,))
    unique, counts = np.unique(classes, return_counts=True)
    if (counts > 1).any():
      raise cli.UsageError("segment_label_ids names class %d more than once"
                           % unique[counts > 1][0])
    for name, value in (("max_pred", max_pred), ("top_k", top_k),
                        ("compact_every", compact_every)):
      if value < 1:
        raise cli.UsageError("%s must be at least 1, got %d" % (name, value))
    self.rated_classes = unique.astype(np.int64)
    self.max_pred = int(max_pred)
    self.top_k = min(int(top_k), len(unique))
    self.compact_every = int(compact_every)
    # Entries hold a class's position in rated_classes, not its id.
    self._position_type = np.int16 if len(unique) <= 1 << 15 else np.int32
    self._kept = self._no_entries()
    self._pending = []
    self._pending_count = 0
    # The max_pred-th kept score of a full class; NaN (never >=) while not full.
    self._floor = np.full(len(unique), np.nan, np.float32)
    self._segments = 0

  def add(self, segment_ids, predictions):
    """segment_ids: [S] numpy array or list of bytes (or str) ids "<video id>:<start>";
    predictions: [S, C] float32 numpy of all C classes' probabilities
    (C > max(rated_classes)). Raises UsageError for mismatched shapes or NaN scores."""
    ids = _id_array(segment_ids)
    predictions = np.asarray(predictions)
    if predictions.ndim != 2:
      raise cli.UsageError("predictions must be [segments, classes], got shape %s"
                           % (predictions.shape,))
    if predictions.shape[1] <= self.rated_classes[-1]:
      raise cli.UsageError("predictions have %d classes but segment_label_ids names "
                           "class %d" % (predictions.shape[1], self.rated_classes[-1]))
    if predictions.shape[0] != len(ids):
      raise cli.UsageError("predictions have %d rows for %d segment ids"
                           % (predictions.shape[0], len(ids)))
    scores = predictions[:, self.rated_classes].astype(np.float32, copy=False)
    if self.top_k < scores.shape[1]:
      top = np.argpartition(scores, -self.top_k, axis=1)[:, -self.top_k:]
    else:
      top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    self._append(ids, top, np.take_along_axis(scores, top, axis=1))

  def add_top(self, segment_ids, class_ids, scores):
    """Adds segments whose top classes are already chosen (InferenceGraph's
    top_indices and top_scores with classes=rated_classes): what add() does after its
    pick. segment_ids: [S] ids as for add(); class_ids: [S, K] int rated class ids
    (not positions), K <= top_k, distinct within a row; scores: [S, K] float32, their
    probabilities. Every one of the K is a candidate. Raises UsageError for mismatched
    shapes, an unrated or repeated class, or NaN scores."""
    ids = _id_array(segment_ids)
    class_ids = np.asarray(class_ids)
    scores = np.asarray(scores, np.float32)
    if class_ids.ndim != 2 or class_ids.shape != scores.shape:
      raise cli.UsageError("class ids %s and scores %s must be [segments, K] alike"
                           % (class_ids.shape, scores.shape))
    if class_ids.shape[0] != len(ids):
      raise cli.UsageError("class ids have %d rows for %d segment ids"
                           % (class_ids.shape[0], len(ids)))
    if class_ids.shape[1] > self.top_k:
      raise cli.UsageError("%d classes per segment, more than top_k=%d"
                           % (class_ids.shape[1], self.top_k))
    positions = np.searchsorted(self.rated_classes, class_ids)
    positions = np.minimum(positions, len(self.rated_classes) - 1)
    unrated = self.rated_classes[positions] != class_ids
    if unrated.any():
      raise cli.UsageError("class %d is not among the %d rated classes"
                           % (class_ids[unrated][0], len(self.rated_classes)))
    if (np.diff(np.sort(positions, axis=1), axis=1) == 0).any():
      raise cli.UsageError("a segment lists the same class twice")
    self._append(ids, positions, scores)

  def _append(self, ids, positions, scores):
    """Queues [S] ids' candidates: [S, K] class positions and float32 scores."""
    if not len(ids):
      return
    # NaN sorts last in np.argpartition, so add() has picked any NaN of a row.
    nan = np.isnan(scores)
    if nan.any():
      raise cli.UsageError("predictions hold NaN (segment %s)"
                           % ids[nan.any(axis=1)][0].decode("utf-8", "replace"))
    # Row-major flattening keeps the entries in arrival order (row by row).
    # Adding 0 turns -0.0 into 0.0, which the sort key would tell apart.
    top_scores = scores.ravel() + np.float32(0)
    classes = positions.astype(self._position_type).ravel()
    rows = np.repeat(np.arange(len(ids)), positions.shape[1])
    # A newcomer equal to a full class's floor loses the tie to the older entry.
    live = ~(top_scores <= self._floor[classes])
    self._pending.append((classes[live], top_scores[live], ids[rows[live]]))
    self._pending_count += int(live.sum())
    self._segments += len(ids)
    if self._pending_count > self.compact_every:
      self._compact()

  def num_segments(self):
    """Segments added so far (int), with or without a kept entry."""
    return self._segments

  def write(self, output):
    """Writes the CSV to the open text file `output`: the header `Class,Segments`, then
    `<class id>,<id> <id> ...` (best first) per class with a candidate, in ascending
    class id order, one write per line. Returns the number of class lines."""
    self._compact()
    positions, _, ids = self._kept
    output.write(HEADER)
    starts, ends = _runs(positions)
    for start, end in zip(starts, ends):
      output.write("%d,%s\n" % (self.rated_classes[positions[start]],
                                b" ".join(ids[start:end].tolist()).decode("utf-8")))
    return len(starts)

  def _no_entries(self):
    """Empty (class positions, scores, ids) arrays."""
    return (np.zeros(0, self._position_type), np.zeros(0, np.float32),
            np.zeros(0, "S1"))

  def _compact(self):
    """Merges the pending entries into the kept ones, each class cut to max_pred."""
    if not self._pending:
      return
    parts = [self._kept] + self._pending
    self._kept = self._no_entries()  # the old arrays go with `parts`
    self._pending, self._pending_count = [], 0
    positions = np.concatenate([part[0] for part in parts])
    scores = np.concatenate([part[1] for part in parts])
    ids = np.concatenate([part[2] for part in parts])  # widens to the longest id
    del parts
    # Kept entries come first, sorted and older than all pending ones, which follow in
    # arrival order: a stable sort on (class, descending score) alone puts equal scores
    # in arrival order, and timsort merges the kept run nearly linearly (np.lexsort on
    # class, score and an arrival number took 20 times as long on 20M entries).
    order = np.argsort(_sort_key(positions, scores), kind="stable")
    # One array at a time: the peak holds a single old copy besides the new ones.
    positions = positions[order]
    scores = scores[order]
    ids = ids[order]
    del order
    starts, ends = _runs(positions)
    full = ends - starts >= self.max_pred
    self._floor[positions[starts[full]]] = scores[starts[full] + self.max_pred - 1]
    over = ends - starts > self.max_pred
    if over.any():
      # +1 where a class's surplus begins, -1 where it ends: the running sum marks it.
      surplus = np.zeros(len(positions) + 1, np.int8)
      surplus[starts[over] + self.max_pred] = 1
      surplus[ends[over]] = -1
      keep = np.cumsum(surplus[:-1], dtype=np.int8) == 0
      del surplus
      positions = positions[keep]
      scores = scores[keep]
      ids = ids[keep]
    self._kept = (positions, scores, ids)


def segment_ids(video_ids, start_times):
  """[S] 'S' array of segment ids "<video id>:<start time>" (the starter's) for [S]
  video ids (bytes or str) and [S] int start times (frames = seconds)."""
  video_ids = _id_array(video_ids)
  start_times = np.asarray(start_times)
  if start_times.shape != video_ids.shape or (
      start_times.size and start_times.dtype.kind not in "iu"):
    raise cli.UsageError("start times %s must be ints, one per video id %s"
                         % (start_times.shape, video_ids.shape))
  return np.char.add(np.char.add(video_ids, b":"), start_times.astype("S"))


def _id_array(segment_ids):
  """[S] ids (list or array of bytes or str) as a numpy 'S' array (str as UTF-8)."""
  ids = np.asarray(segment_ids)
  if ids.ndim != 1:
    raise cli.UsageError("segment ids must be one-dimensional, got shape %s"
                         % (ids.shape,))
  if ids.size == 0:
    return np.zeros(0, "S1")
  if ids.dtype.kind == "S":
    return ids
  if ids.dtype.kind == "U":
    return np.char.encode(ids, "utf-8")
  if ids.dtype.kind == "O":
    try:
      return ids.astype("S")
    except UnicodeEncodeError:  # non-ASCII str
      return np.array([i.encode("utf-8") if isinstance(i, str) else i for i in ids],
                      dtype="S")
  raise cli.UsageError("segment ids must be bytes or str, got %s" % ids.dtype)


def _sort_key(positions, scores):
  """[N] uint64 keys ordering entries by class position, then by descending score."""
  key = positions.astype(np.uint64)
  key <<= np.uint64(32)
  bits = scores.view(np.uint32)
  # Descending float order as unsigned order: a score >= 0 keeps its sign bit and has
  # every other bit flipped, a negative one (sign bit set) is unchanged. In place,
  # for memory: flip = 0x7fffffff for >= 0, else 0.
  flip = bits >> np.uint32(31)
  flip -= np.uint32(1)
  flip &= np.uint32(0x7fffffff)
  flip ^= bits
  key |= flip
  return key


def _runs(positions):
  """Starts and ends ([R] int64 each, end exclusive) of the runs of equal values of
  the sorted [N] positions."""
  if not len(positions):
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  starts = np.flatnonzero(np.r_[True, positions[1:] != positions[:-1]])
  return starts, np.r_[starts[1:], len(positions)]


def read_rated_classes(path):
  """Sorted list of the int class ids of a segment_label_ids.csv (the repository ships
  YouTube-8M's: a header line `Index`, then one class id per line; blank lines are
  skipped). Any TensorFlow file system serves. Raises UsageError naming `path` for a
  missing file, a line that is not a class id, a class listed twice or no class."""
  try:
    if tf.io.gfile.isdir(path):
      raise cli.UsageError("%s is a directory, not a segment label ids file" % path)
    with tf.io.gfile.GFile(path, "rb") as f:
      text = f.read().decode("utf-8-sig")
  except (FileNotFoundError, tf.errors.NotFoundError):
    raise cli.UsageError("%s does not exist" % path)
  except UnicodeDecodeError:
    raise cli.UsageError("%s is not a text file of class ids" % path)
  lines = {}
  for number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if not line or (number == 1 and line == "Index"):
      continue
    if not re.fullmatch(r"[0-9]+", line):
      raise cli.UsageError("%s line %d: %r is not a class id (a non-negative integer)"
                           % (path, number, line))
    class_id = int(line)
    if class_id in lines:
      raise cli.UsageError("%s line %d: class %d is listed twice (also line %d)"
                           % (path, number, class_id, lines[class_id]))
    lines[class_id] = number
  if not lines:
    raise cli.UsageError("%s names no classes" % path)
  return sorted(lines)
