"""Evaluation metrics of the YouTube-8M starter code (Hit@1, PERR, GAP, per-class AP),
computed exactly and vectorized with numpy.

Definitions (SPEC section 7):
  Hit@1  fraction of videos whose top-scoring class is a true label.
  PERR   for a video with n true labels, the fraction of its n top-scoring classes that are
         true labels and score > 0; averaged over videos (a video without labels counts 0).
  GAP    each video contributes its top_k (score, class) pairs; all videos' pairs are pooled
         and sorted by descending score; GAP = (1/P) * sum over positive pairs at rank r of
         (positives within the first r) / r, where P counts all true labels of all videos,
         also those outside every top_k.
  AP     per class, the same sum over the pooled pairs of that class (pairs that made a
         video's top_k), divided by the class's total number of true labels (AP 0 for a
         class without one). Two mAPs are in use, and get() returns both:
           map_all_classes       the mean AP over all num_class classes, so classes without
                                 a true label count 0 (the original KD / NeXtVLAD code);
           map_labelled_classes  the mean AP over classes with at least one true label
                                 (today's starter code).
         With top_n, only a class's first top_n pairs count and the divisor becomes
         min(true labels, top_n) (the starter's AP@n).

Tie rules (deterministic, nothing is shuffled):
  1. Within a video, equal scores rank by ascending class index. This decides which pairs make
     the top_k, the top-scoring class of Hit@1 and the n top classes of PERR. It is the order
     of tf.math.top_k(sorted=True).
  2. In the pooled sorts (GAP and per-class AP), equal scores keep accumulation order: earlier
     video first (earlier batch, then earlier row), then the within-video rank. This is a
     stable sort by descending score.
  -0.0 counts as equal to 0.0. NaN scores raise ValueError.

Inputs: scores are compared as float32 (predictions are converted; the stored pairs are
float32). Labels are 0/1; any nonzero entry is a true label.

Usage: EvaluationMetrics.accumulate() takes dense [B, C] predictions and labels. Callers
that already ran tf.math.top_k(predictions, K, sorted=True) in the graph can pass its output
to accumulate_top_k() (same get() numbers, much less work); top_k_inputs() computes those
arguments from dense numpy arrays.

Memory: EvaluationMetrics keeps only each video's top_k pairs (float32 score, int16 or int32
class, bool label: 7 bytes per pair below 32768 classes), never dense predictions. While it
runs, get() needs about 10 more bytes per stored pair, plus up to 4 for its merge sort.

Speed: no per-pair Python. A dense batch costs one pass over [B, C] to find candidates plus
small sorts; get() does one merge sort of the stored pairs' 64-bit keys and a blockwise pass.
"""

import numpy as np

# Pending batches are concatenated into one stored chunk once they hold this many pairs, so
# tiny batches do not leave millions of small arrays behind.
_CHUNK_PAIRS = 1 << 16
# get() walks the pooled pairs in blocks of this many (small enough to stay in cache).
_BLOCK = 1 << 15
_POSITION_LIMIT = 1 << 31


# --- input checking ---------------------------------------------------------------------

def _as_dense(predictions, labels, num_class=None):
  """Validates dense inputs.

  Args:
    predictions: [B, C] scores (any real dtype).
    labels: [B, C] 0/1 (any dtype; nonzero = true label).
    num_class: expected C, or None.
  Returns:
    (predictions as C-contiguous float32 [B, C], labels as an array [B, C]).
  """
  predictions = np.ascontiguousarray(predictions, dtype=np.float32)
  labels = np.asarray(labels)
  if predictions.ndim != 2 or labels.shape != predictions.shape:
    raise ValueError("predictions and labels must both be [batch, num_classes]; got %s and %s"
                     % (predictions.shape, labels.shape))
  if num_class is not None and predictions.shape[1] != num_class:
    raise ValueError("expected %d classes, got predictions of shape %s"
                     % (num_class, predictions.shape))
  if np.isnan(predictions).any():
    raise ValueError("predictions contain NaN")
  return predictions, labels


def _label_counts(labels):
  """True labels per video [B] and per class [C] (int64) of dense [B, C] labels."""
  num_rows, num_classes = labels.shape
  # flatnonzero of a bool mask is several times faster than of a float array.
  rows, cols = np.divmod(np.flatnonzero(labels != 0), num_classes)
  return (np.bincount(rows, minlength=num_rows),
          np.bincount(cols, minlength=num_classes))


# --- top-k selection on dense scores ----------------------------------------------------

def _sorted_top_k(predictions, k):
  """[B, k] indices of a full stable sort: descending score, ties by ascending class."""
  return np.argsort(-predictions, axis=1, kind="stable")[:, :k]


def _candidate_threshold(predictions, k):
  """[B] threshold t such that every row has at least k entries >= t, usually few more.

  The classes are split into 4k strided groups {j, j + 4k, j + 8k, ...}; the k-th largest
  group maximum is such a t, because those k maxima are k distinct entries >= t. Each
  strided group samples the whole class range (YouTube-8M class indices follow class
  frequency, so contiguous groups would differ systematically). Needs 4k <= C.
  """
  num_rows, num_classes = predictions.shape
  groups = 4 * k
  depth = num_classes // groups
  maxima = predictions[:, :depth * groups].reshape(num_rows, depth, groups).max(axis=1)
  return np.partition(maxima, groups - k, axis=1)[:, groups - k]


def _top_k_indices(predictions, k):
  """Each row's k top classes in rank order (tie rule 1).

  Args:
    predictions: [B, C] float32 without NaN.
    k: 1 <= k <= C.
  Returns:
    [B, k] int64 class indices, by descending score, equal scores by ascending class.
  """
  num_rows, num_classes = predictions.shape
  if 4 * k > num_classes:
    return _sorted_top_k(predictions, k)
  # Exactness: all entries >= threshold are candidates, so every entry tied with the k-th
  # score is among them, and the stable sort below (candidates are in class order) applies
  # the tie rule. Rows with very many candidates (mass ties such as all-zero rows) take the
  # full sort instead of widening the padded matrix for every row.
  threshold = _candidate_threshold(predictions, k)
  flat = np.flatnonzero(predictions >= threshold[:, None])
  rows, cols = np.divmod(flat, num_classes)
  counts = np.bincount(rows, minlength=num_rows)
  top = np.empty((num_rows, k), np.int64)
  crowded = counts > 16 * k
  if crowded.any():
    top[crowded] = _sorted_top_k(predictions[crowded], k)
    keep = ~crowded[rows]
    flat, rows, cols = flat[keep], rows[keep], cols[keep]
    counts[crowded] = 0
  if flat.size:
    slots = np.arange(flat.size) - (np.cumsum(counts) - counts)[rows]
    width = counts.max()
    # Padding (-inf, placed after the real candidates) never reaches the first k: each row
    # has at least k real candidates and the sort is stable.
    scores = np.full((num_rows, width), -np.inf, np.float32)
    classes = np.zeros((num_rows, width), np.int64)
    scores[rows, slots] = predictions.ravel()[flat]
    classes[rows, slots] = cols
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    light = ~crowded
    top[light] = np.take_along_axis(classes, order, axis=1)[light]
  return top


def _top_pairs(predictions, labels, k):
  """Top-k pairs of dense inputs.

  Args:
    predictions: [B, C] float32 without NaN; labels: [B, C]; k: 1 <= k <= C.
  Returns:
    (top_scores [B, k] float32, top_indices [B, k] int64, top_is_positive [B, k] bool),
    rows in rank order (tie rule 1).
  """
  top_indices = _top_k_indices(predictions, k)
  top_scores = np.take_along_axis(predictions, top_indices, axis=1)
  top_is_positive = np.take_along_axis(labels, top_indices, axis=1) != 0
  return top_scores, top_indices, top_is_positive


def top_k_inputs(predictions, labels, k):
  """The arguments of EvaluationMetrics.accumulate_top_k, computed from dense arrays.

  Args:
    predictions: [B, C] scores. labels: [B, C] 0/1.
    k: number of top classes per video; clipped to C.
  Returns:
    top_scores [B, K] float32 (K = min(k, C)), each row descending;
    top_indices [B, K] int64 class indices, equal scores by ascending class (tie rule 1);
    top_is_positive [B, K] bool;
    num_positives [B] int64, true labels per video;
    class_positive_counts [C] int64, true labels per class.
  """
  predictions, labels = _as_dense(predictions, labels)
  num_positives, class_positive_counts = _label_counts(labels)
  k = min(int(k), predictions.shape[1])
  if k < 1:
    raise ValueError("k must be >= 1, got %r" % k)
  return _top_pairs(predictions, labels, k) + (num_positives, class_positive_counts)


# --- per-video metrics on top-k pairs ---------------------------------------------------

def _hits(top_is_positive):
  """[B] bool: the top-ranked class is a true label."""
  return top_is_positive[:, 0]


def _perr_per_video(top_scores, top_is_positive, num_positives):
  """[B] PERR of each video from its top K >= n pairs (n = num_positives, [B])."""
  ranks = np.arange(top_scores.shape[1])
  counted = top_is_positive & (top_scores > 0) & (ranks < num_positives[:, None])
  return np.divide(counted.sum(axis=1), num_positives, out=np.zeros(len(num_positives)),
                   where=num_positives > 0)


# --- pooled average precision -----------------------------------------------------------

def _pool_batch(top_scores, top_indices, top_is_positive, class_dtype):
  """Flattens one batch's top pairs and sorts them in pooled order (tie rule 2).

  Args:
    top_scores, top_indices, top_is_positive: [B, k] in rank order.
  Returns:
    (scores [B*k] float32, classes [B*k] class_dtype, positives [B*k] bool), by descending
    score; equal scores in (row, rank) order.
  """
  # Adding +0.0 turns -0.0 into +0.0, so the bit-level keys see them as equal.
  scores = top_scores.reshape(-1) + np.float32(0.0)
  # Sorting unique (score key, flat index) integers is a stable sort by descending score,
  # about twice as fast as np.argsort(-scores, kind="stable").
  keys = _descending_key32(scores).astype(np.uint64) << np.uint64(32)
  keys |= np.arange(len(scores), dtype=np.uint64)
  keys.sort()
  order = (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)
  return (scores[order], top_indices.reshape(-1)[order].astype(class_dtype),
          top_is_positive.reshape(-1)[order])


def _average_precision(positive_ranks, num_positives):
  """(1/P) * sum_i i / r_i for the 1-based ranks r_1 < r_2 < ... of the positive pairs."""
  if num_positives <= 0 or positive_ranks.size == 0:
    return 0.0
  hits = np.arange(1, positive_ranks.size + 1, dtype=np.float64)
  return float(np.sum(hits / positive_ranks) / num_positives)


def _descending_key32(scores):
  """uint32 keys whose ascending order is the descending order of float32 `scores`.

  Needs canonical zeros (no -0.0) and no NaN.
  """
  bits = scores.view(np.uint32)
  negative = bits >= np.uint32(0x80000000)
  return np.where(negative, bits, ~bits & np.uint32(0x7FFFFFFF))


def _pooled_keys(chunks):
  """Sorted uint64 keys, one per stored pair, in pooled order (tie rule 2).

  Key = descending-score key (32 bits) | stored position (31 bits) | is-positive (1 bit).
  Among equal scores, stored order equals accumulation order (each batch was stored stably
  sorted), so the position settles ties as rule 2 requires, and keys are unique.

  Args:
    chunks: list of (scores, classes, positives) 1-D arrays.
  Returns:
    [N] uint64, ascending.
  """
  total = sum(len(scores) for scores, _, _ in chunks)
  if total >= _POSITION_LIMIT:
    raise ValueError("too many stored pairs for get(): %d >= 2**31" % total)
  keys = np.empty(total, np.uint64)
  start = 0
  for scores, _, positives in chunks:
    stop = start + len(scores)
    part = keys[start:stop]
    np.left_shift(_descending_key32(scores).astype(np.uint64), np.uint64(32), out=part)
    part |= np.arange(start, stop, dtype=np.uint64) << np.uint64(1)
    part |= positives
    start = stop
  # The keys are a sequence of sorted runs (one per batch), which the stable sort (timsort)
  # merges about twice as fast as the default sort orders them from scratch.
  keys.sort(kind="stable")
  return keys


def _earlier_same(values, num_values):
  """For each entry, how many earlier entries hold the same value.

  Args:
    values: [n] ints in [0, num_values).
  Returns:
    (earlier [n] int64, counts [num_values] int64 of each value).
  """
  order = np.argsort(values, kind="stable")
  counts = np.bincount(values, minlength=num_values)
  earlier = np.empty(len(values), np.int64)
  earlier[order] = np.arange(len(values)) - np.repeat(np.cumsum(counts) - counts, counts)
  return earlier, counts


def _pooled_sums(keys, classes, num_class, top_n):
  """Walks the pooled order once and sums the AP terms of every positive pair.

  Works in blocks: a stable argsort of a block of classes stays in cache and is several
  times faster per pair than grouping all pairs by class at once.

  Args:
    keys: [N] sorted keys of _pooled_keys. classes: [N] stored classes (stored order).
    top_n: None, or only each class's first top_n pairs count.
  Returns:
    gap_sum: sum over positive pairs of (positives so far) / (pooled rank).
    class_sums: [C] float64, per class the sum over its positive pairs of
      (positives of the class so far) / (rank among the pairs of the class).
  """
  pairs_before = np.zeros(num_class, np.int64)  # per class, in earlier blocks
  positives_before = np.zeros(num_class, np.int64)
  class_sums = np.zeros(num_class)
  gap_sum, seen = 0.0, 0
  for start in range(0, len(keys), _BLOCK):
    block = keys[start:start + _BLOCK]
    at = np.flatnonzero(block & np.uint64(1))
    positions = block >> np.uint64(1)
    positions &= np.uint64(_POSITION_LIMIT - 1)
    block_classes = classes[positions]
    gap_sum += float(np.sum(np.arange(seen + 1, seen + at.size + 1) / (start + at + 1.0)))
    seen += at.size
    earlier, counts = _earlier_same(block_classes, num_class)
    hit_classes = block_classes[at]
    earlier_hits, hit_counts = _earlier_same(hit_classes, num_class)
    ranks = pairs_before[hit_classes] + earlier[at] + 1
    terms = (positives_before[hit_classes] + earlier_hits + 1) / ranks
    if top_n is not None:
      terms[ranks > top_n] = 0.0
    class_sums += np.bincount(hit_classes, weights=terms, minlength=num_class)
    pairs_before += counts
    positives_before += hit_counts
  return gap_sum, class_sums


# --- starter-style batch functions ------------------------------------------------------

def calculate_hit_at_one(predictions, actuals):
  """Hit@1 of a batch: predictions, actuals [B, C] -> float (0.0 for B = 0)."""
  predictions, actuals = _as_dense(predictions, actuals)
  if predictions.shape[0] == 0:
    return 0.0
  top = np.argmax(predictions, axis=1)  # first maximum = lowest class among ties
  return float(np.mean(actuals[np.arange(len(top)), top] != 0))


def calculate_precision_at_equal_recall_rate(predictions, actuals):
  """Mean PERR of a batch: predictions, actuals [B, C] -> float (0.0 for B = 0)."""
  predictions, actuals = _as_dense(predictions, actuals)
  if predictions.shape[0] == 0:
    return 0.0
  num_positives, _ = _label_counts(actuals)
  k = max(1, int(num_positives.max()))
  top_scores, _, top_is_positive = _top_pairs(predictions, actuals, k)
  return float(np.mean(_perr_per_video(top_scores, top_is_positive, num_positives)))


def calculate_gap(predictions, actuals, top_k=20):
  """GAP of one batch: predictions, actuals [B, C] -> float (0.0 without true labels)."""
  predictions, actuals = _as_dense(predictions, actuals)
  if top_k < 1:
    raise ValueError("top_k must be >= 1, got %r" % top_k)
  if predictions.shape[0] == 0:
    return 0.0
  k = min(int(top_k), predictions.shape[1])
  top_scores, top_indices, top_is_positive = _top_pairs(predictions, actuals, k)
  _, _, positives = _pool_batch(top_scores, top_indices, top_is_positive, np.int32)
  return _average_precision(np.flatnonzero(positives) + 1, np.count_nonzero(actuals != 0))


# --- accumulation over batches ----------------------------------------------------------

def _mean_loss(loss):
  """A batch's loss as one float: a scalar as it is, an array of per-video losses averaged
  (the starter documents the array and its callers pass the scalar; both are accepted)."""
  values = np.asarray(loss, np.float64)
  if values.size == 0:
    return 0.0
  return float(values.mean())


class EvaluationMetrics(object):
  """Accumulates Hit@1, PERR, loss, GAP and per-class AP over batches of videos.

  Averages are per video (a batch weighs by its size). GAP and APs are exact over all pairs
  accumulated so far, not averages of per-batch values.
  """

  def __init__(self, num_class, top_k, top_n=None):
    """num_class: C. top_k: pairs per video for GAP/AP (20). top_n: None or AP@top_n."""
    if num_class < 1 or top_k < 1 or (top_n is not None and top_n < 1):
      raise ValueError("num_class, top_k and top_n must be >= 1; got %r, %r, %r"
                       % (num_class, top_k, top_n))
    self.num_class = int(num_class)
    self.top_k = int(top_k)
    self.top_n = None if top_n is None else int(top_n)
    self._class_dtype = np.int16 if self.num_class <= 1 << 15 else np.int32
    self.clear()

  def clear(self):
    """Forgets everything accumulated."""
    self.num_examples = 0
    self._sum_hits = 0
    self._sum_perr = 0.0
    self._sum_loss = 0.0
    self._num_positives = 0
    self._class_totals = np.zeros(self.num_class, np.int64)
    self._chunks = []
    self._pending = []
    self._pending_pairs = 0

  def accumulate(self, predictions, labels, loss):
    """Adds a batch of dense scores.

    Args:
      predictions: [B, num_class] scores. labels: [B, num_class] 0/1.
      loss: the batch's loss: a scalar (its mean) or an array of per-video losses, whose
        mean is taken (the starter's documented form).
    Returns:
      dict of this batch alone: hit_at_one, perr, gap (with this metric's top_k), loss.
    """
    predictions, labels = _as_dense(predictions, labels, self.num_class)
    num_positives, class_counts = _label_counts(labels)
    # PERR needs each video's n top classes, which may be more than top_k.
    k = min(self.num_class, max(self.top_k, int(num_positives.max(initial=0))))
    return self._add(*_top_pairs(predictions, labels, k), num_positives, class_counts, loss)

  def accumulate_top_k(self, top_scores, top_indices, top_is_positive, num_positives,
                       class_positive_counts, loss):
    """Adds a batch whose top classes were already selected (fast path).

    Meant for tf.math.top_k(predictions, K, sorted=True) in the graph, with K >= top_k
    and K >= the most labels a video can have: it returns rows by descending score with
    equal scores in ascending class order, exactly tie rule 1. The counts are
    reduce_sum(labels, 1) and reduce_sum(labels, 0). Gives the same get() numbers as
    accumulate() on the dense batch; columns beyond top_k only serve PERR.

    Args:
      top_scores: [B, K] float, each row descending.
      top_indices: [B, K] int class indices (equal scores: ascending class).
      top_is_positive: [B, K] 0/1, whether each top class is a true label.
      num_positives: [B] int, true labels of each video (also those outside the top K).
      class_positive_counts: [num_class] int, true labels of each class in this batch.
      loss: the batch's loss: a scalar (its mean) or an array of per-video losses.
    Returns:
      dict of this batch alone: hit_at_one, perr, gap, loss.
    Raises:
      ValueError on inconsistent inputs, K < min(top_k, num_class), or a video with more
      true labels than K (its PERR would need more columns).
    """
    top_scores = np.asarray(top_scores, np.float32)
    top_indices = np.asarray(top_indices).astype(np.int64, copy=False)
    top_is_positive = np.asarray(top_is_positive) != 0
    num_positives = np.asarray(num_positives).astype(np.int64, copy=False)
    class_positive_counts = np.asarray(class_positive_counts).astype(np.int64, copy=False)
    self._check_top_k(top_scores, top_indices, top_is_positive, num_positives,
                      class_positive_counts)
    return self._add(top_scores, top_indices, top_is_positive, num_positives,
                     class_positive_counts, loss)

  def _check_top_k(self, top_scores, top_indices, top_is_positive, num_positives,
                   class_positive_counts):
    """Raises ValueError unless the accumulate_top_k arguments are consistent."""
    if (top_scores.ndim != 2 or top_indices.shape != top_scores.shape
        or top_is_positive.shape != top_scores.shape
        or num_positives.shape != top_scores.shape[:1]):
      raise ValueError("top_scores, top_indices, top_is_positive must be [B, K] and "
                       "num_positives [B]; got %s, %s, %s, %s" % (
                           top_scores.shape, top_indices.shape, top_is_positive.shape,
                           num_positives.shape))
    if class_positive_counts.shape != (self.num_class,):
      raise ValueError("class_positive_counts must be [%d], got %s"
                       % (self.num_class, class_positive_counts.shape))
    width = top_scores.shape[1]
    if width < min(self.top_k, self.num_class):
      raise ValueError("got %d top classes per video, need at least top_k=%d"
                       % (width, min(self.top_k, self.num_class)))
    if len(num_positives) and num_positives.max() > width:
      video = int(np.argmax(num_positives))
      raise ValueError(
          "video %d of the batch has %d true labels but only %d top classes were given; "
          "PERR needs each video's n top classes: select K >= max(top_k, labels per video) "
          "columns" % (video, num_positives[video], width))
    if np.isnan(top_scores).any():
      raise ValueError("top_scores contain NaN")
    if top_indices.size and (top_indices.min() < 0 or top_indices.max() >= self.num_class):
      raise ValueError("top_indices must be in [0, %d)" % self.num_class)
    step = np.diff(top_scores, axis=1)
    if np.any((step > 0) | ((step == 0) & (np.diff(top_indices, axis=1) <= 0))):
      raise ValueError("each row of top_scores must be descending, equal scores in "
                       "ascending class order (as tf.math.top_k(sorted=True) returns)")
    if (num_positives.min(initial=0) < 0 or class_positive_counts.min(initial=0) < 0
        or num_positives.sum() != class_positive_counts.sum()):
      raise ValueError("num_positives and class_positive_counts must be >= 0 and count the "
                       "same labels (sums %d and %d)" % (num_positives.sum(),
                                                         class_positive_counts.sum()))
    if np.any(top_is_positive.sum(axis=1) > num_positives):
      raise ValueError("a video has more positive top classes than num_positives")

  def _add(self, top_scores, top_indices, top_is_positive, num_positives, class_counts,
           loss):
    """Accumulates validated top pairs ([B, K], rank order); returns the batch's dict."""
    num_videos = top_scores.shape[0]
    loss = _mean_loss(loss)
    if num_videos == 0:
      return {"hit_at_one": 0.0, "perr": 0.0, "gap": 0.0, "loss": loss}
    hits = _hits(top_is_positive)
    perr = _perr_per_video(top_scores, top_is_positive, num_positives)
    width = min(self.top_k, top_scores.shape[1])
    chunk = _pool_batch(top_scores[:, :width], top_indices[:, :width],
                        top_is_positive[:, :width], self._class_dtype)
    batch_positives = int(num_positives.sum())
    self._store(chunk)
    self.num_examples += num_videos
    self._sum_hits += int(hits.sum())
    self._sum_perr += float(perr.sum())
    self._sum_loss += loss * num_videos
    self._num_positives += batch_positives
    self._class_totals += class_counts
    return {"hit_at_one": float(hits.mean()), "perr": float(perr.mean()),
            "gap": _average_precision(np.flatnonzero(chunk[2]) + 1, batch_positives),
            "loss": loss}

  def _store(self, chunk):
    self._pending.append(chunk)
    self._pending_pairs += len(chunk[0])
    if self._pending_pairs >= _CHUNK_PAIRS:
      self._flush()

  def _flush(self):
    """Moves pending batches into one stored chunk (still a list of sorted runs)."""
    if len(self._pending) == 1:
      self._chunks.append(self._pending[0])
    elif self._pending:
      self._chunks.append(tuple(np.concatenate(parts) for parts in zip(*self._pending)))
    self._pending = []
    self._pending_pairs = 0

  def get(self):
    """Metrics over everything accumulated since the last clear().

    Returns:
      dict: avg_hit_at_one, avg_perr, avg_loss (per video), gap, map_all_classes,
      map_labelled_classes (see the module docstring), aps (list of num_class floats),
      num_examples.
    Raises:
      ValueError if nothing was accumulated.
    """
    if self.num_examples <= 0:
      raise ValueError("EvaluationMetrics.get(): no videos accumulated")
    self._flush()
    keys = _pooled_keys(self._chunks)
    classes = np.concatenate([c for _, c, _ in self._chunks])
    gap_sum, class_sums = _pooled_sums(keys, classes, self.num_class, self.top_n)
    del keys, classes
    gap = gap_sum / self._num_positives if self._num_positives else 0.0
    divisor = self._class_totals.astype(np.float64)
    if self.top_n is not None:
      divisor = np.minimum(divisor, self.top_n)
    aps = np.divide(class_sums, divisor, out=np.zeros(self.num_class), where=divisor > 0)
    labelled = self._class_totals > 0
    return {
        "avg_hit_at_one": self._sum_hits / self.num_examples,
        "avg_perr": self._sum_perr / self.num_examples,
        "avg_loss": self._sum_loss / self.num_examples,
        "gap": gap,
        "map_all_classes": float(aps.mean()),
        "map_labelled_classes": float(aps[labelled].mean()) if labelled.any() else 0.0,
        "aps": aps.tolist(),
        "num_examples": self.num_examples,
    }
