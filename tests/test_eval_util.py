"""eval_util against a slow reference written from the SPEC section 7 definitions and the
tie rules of the eval_util docstring, plus hand-computed cases."""
import numpy as np
import pytest

import eval_util

TIGHT = dict(rtol=1e-12, atol=1e-15)


# --- slow reference: plain Python, straight from the definitions ----------------------

def ref_rank(row):
  """Class indices of one video by descending score, equal scores by ascending class."""
  return sorted(range(len(row)), key=lambda c: (-row[c], c))


def ref_ap(flags, num_positives):
  """(1/P) * sum over positives at 1-based rank r of (positives within first r) / r."""
  if num_positives == 0:
    return 0.0
  seen, total = 0, 0.0
  for rank, positive in enumerate(flags, 1):
    if positive:
      seen += 1
      total += seen / rank
  return total / num_positives


def ref_metrics(batches, top_k, top_n=None):
  """get()-like dict of a list of (predictions, labels, loss) batches."""
  num_class = batches[0][0].shape[1]
  pairs = []  # (score, video, rank in video, class, positive)
  hits, perr, loss_sum, total_positives, video = 0, 0.0, 0.0, 0, 0
  class_totals = [0] * num_class
  for predictions, labels, loss in batches:
    for row, label_row in zip(predictions.tolist(), labels.tolist()):
      truth = {c for c in range(num_class) if label_row[c] != 0}
      ranked = ref_rank(row)
      hits += ranked[0] in truth
      if truth:
        perr += sum(1 for c in ranked[:len(truth)] if c in truth and row[c] > 0) / len(truth)
      for rank, c in enumerate(ranked[:top_k]):
        pairs.append((row[c], video, rank, c, c in truth))
      for c in truth:
        class_totals[c] += 1
      total_positives += len(truth)
      video += 1
    loss_sum += loss * len(predictions)
  pooled = sorted(pairs, key=lambda p: (-p[0], p[1], p[2]))
  aps = []
  for c in range(num_class):
    flags = [p[4] for p in pooled if p[3] == c]
    divisor = class_totals[c]
    if top_n is not None:
      flags, divisor = flags[:top_n], min(divisor, top_n)
    aps.append(ref_ap(flags, divisor))
  labelled = [ap for ap, n in zip(aps, class_totals) if n > 0]
  return {
      "avg_hit_at_one": hits / video,
      "avg_perr": perr / video,
      "avg_loss": loss_sum / video,
      "gap": ref_ap([p[4] for p in pooled], total_positives),
      "map_all_classes": sum(aps) / num_class,
      "map_labelled_classes": sum(labelled) / len(labelled) if labelled else 0.0,
      "aps": aps,
      "num_examples": video,
  }


def assert_metrics_close(got, want):
  assert set(got) == set(want)
  assert got["num_examples"] == want["num_examples"]
  for key in ("avg_hit_at_one", "avg_perr", "avg_loss", "gap", "map_all_classes",
              "map_labelled_classes", "aps"):
    np.testing.assert_allclose(got[key], want[key], err_msg=key, **TIGHT)


def random_data(seed, num_videos=50, num_class=300, quantize=None):
  """Scores biased towards true labels, some <= 0; label counts 0..9 per video."""
  rng = np.random.default_rng(seed)
  per_video = rng.integers(0, 10, num_videos)
  labels = np.zeros((num_videos, num_class), np.float32)
  for v, n in enumerate(per_video):
    labels[v, rng.choice(num_class, n, replace=False)] = 1
  scores = rng.random((num_videos, num_class)) - 0.1 + 0.6 * labels * rng.random(labels.shape)
  if quantize:
    scores = np.round(scores * quantize) / quantize  # many ties
  return scores.astype(np.float32), labels


def split(predictions, labels, sizes, losses=None):
  """Batches (predictions, labels, loss) of the given sizes."""
  bounds = np.cumsum([0] + list(sizes))
  assert bounds[-1] == len(predictions)
  return [(predictions[a:b], labels[a:b], 0.1 * (i + 1) if losses is None else losses[i])
          for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def run(batches, top_k, top_n=None):
  metrics = eval_util.EvaluationMetrics(batches[0][0].shape[1], top_k, top_n)
  for predictions, labels, loss in batches:
    metrics.accumulate(predictions, labels, loss)
  return metrics.get()


# --- random data against the reference --------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("top_k", [20, 5])
@pytest.mark.parametrize("quantize", [None, 20])
def test_random_matches_reference(seed, top_k, quantize):
  predictions, labels = random_data(seed, quantize=quantize)
  batches = split(predictions, labels, [17, 1, 32])
  assert_metrics_close(run(batches, top_k), ref_metrics(batches, top_k))


@pytest.mark.parametrize("top_n", [1, 3])
def test_top_n_matches_reference(top_n):
  predictions, labels = random_data(5, quantize=10)
  batches = split(predictions, labels, [25, 25])
  assert_metrics_close(run(batches, 20, top_n), ref_metrics(batches, 20, top_n))


def test_batch_functions_match_reference():
  for seed in range(3):
    predictions, labels = random_data(seed, quantize=20)
    want = ref_metrics([(predictions, labels, 0.0)], 20)
    np.testing.assert_allclose(eval_util.calculate_hit_at_one(predictions, labels),
                               want["avg_hit_at_one"], **TIGHT)
    np.testing.assert_allclose(
        eval_util.calculate_precision_at_equal_recall_rate(predictions, labels),
        want["avg_perr"], **TIGHT)
    np.testing.assert_allclose(eval_util.calculate_gap(predictions, labels), want["gap"],
                               **TIGHT)
    np.testing.assert_allclose(eval_util.calculate_gap(predictions, labels, top_k=3),
                               ref_metrics([(predictions, labels, 0.0)], 3)["gap"], **TIGHT)


def test_accumulate_returns_batch_metrics():
  predictions, labels = random_data(3)
  metrics = eval_util.EvaluationMetrics(300, 20)
  metrics.accumulate(predictions[:10], labels[:10], 1.0)
  got = metrics.accumulate(predictions[10:], labels[10:], 0.25)
  want = ref_metrics([(predictions[10:], labels[10:], 0.25)], 20)
  np.testing.assert_allclose(got["hit_at_one"], want["avg_hit_at_one"], **TIGHT)
  np.testing.assert_allclose(got["perr"], want["avg_perr"], **TIGHT)
  np.testing.assert_allclose(got["gap"], want["gap"], **TIGHT)
  assert got["loss"] == 0.25


@pytest.mark.parametrize("block", [1, 7, 256])
def test_many_chunks_and_blocks_match_reference(monkeypatch, block):
  monkeypatch.setattr(eval_util, "_CHUNK_PAIRS", 30)  # several stored chunks, some merged
  monkeypatch.setattr(eval_util, "_BLOCK", block)  # get() walks the pairs in many blocks
  predictions, labels = random_data(7, quantize=20)
  batches = split(predictions, labels, [1, 1, 3, 5, 40])
  assert_metrics_close(run(batches, 20), ref_metrics(batches, 20))
  assert_metrics_close(run(batches, 20, 2), ref_metrics(batches, 20, 2))


# --- hand-computed cases -----------------------------------------------------------------

def test_hand_case_ties_and_labels_outside_top_k():
  predictions = np.array([[0.9, 0.8, 0.1, 0.0],
                          [0.2, 0.7, 0.7, 0.1]], np.float32)
  labels = np.array([[1, 0, 1, 0],
                     [0, 0, 1, 1]])
  # Video 1: classes 1 and 2 tie at 0.7; class 1 (lower index) ranks first and is wrong.
  # Hit@1 = (1 + 0) / 2. PERR: video 0 top {0, 1} -> 1/2, video 1 top {1, 2} -> 1/2.
  # Pool (top_k 2): 0.9+ (v0), 0.8- (v0), 0.7- (v1 c1), 0.7+ (v1 c2); P = 4 labels.
  # GAP = (1/1 + 2/4) / 4. AP: class 0 = 1; class 1 has no label; class 2 = (1/1) / 2
  # (its label of video 0 is outside the top 2); class 3 = 0. mAP over the labelled classes
  # 0, 2, 3 = (1 + .5 + 0) / 3; over all four classes (class 1 counts 0) = 1.5 / 4.
  want = {"avg_hit_at_one": 0.5, "avg_perr": 0.5, "avg_loss": 2.0, "gap": 0.375,
          "map_all_classes": 0.375, "map_labelled_classes": 0.5,
          "aps": [1.0, 0.0, 0.5, 0.0], "num_examples": 2}
  batches = [(predictions, labels, 2.0)]
  assert_metrics_close(run(batches, 2), want)
  assert_metrics_close(ref_metrics(batches, 2), want)
  assert eval_util.calculate_hit_at_one(predictions, labels) == 0.5
  assert eval_util.calculate_precision_at_equal_recall_rate(predictions, labels) == 0.5
  assert eval_util.calculate_gap(predictions, labels, top_k=2) == 0.375


def test_hand_case_pooled_tie_keeps_accumulation_order():
  # top_k 1: video 0 gives (0.5, class 1, wrong), video 1 gives (0.5, class 0, right).
  # Earlier video first: the positive is at rank 2, GAP = (1/2) / 2 labels.
  predictions = np.array([[0.4, 0.5, 0.1], [0.5, 0.2, 0.3]], np.float32)
  labels = np.array([[0, 0, 1], [1, 0, 0]])
  whole = run([(predictions, labels, 0.0)], 1)
  parts = run(split(predictions, labels, [1, 1]), 1)
  assert whole["gap"] == parts["gap"] == 0.25
  assert whole["aps"] == parts["aps"] == [1.0, 0.0, 0.0]
  # Swapping the videos puts the positive first: GAP = (1/1) / 2.
  assert run([(predictions[::-1], labels[::-1], 0.0)], 1)["gap"] == 0.5


def test_hand_case_negative_zero_equals_zero():
  # Video 0 scores -0.0 (right), video 1 scores +0.0 (wrong): equal, so video 0 ranks first.
  predictions = np.array([[-0.0, -1.0], [0.0, -1.0]], np.float32)
  labels = np.array([[1, 0], [0, 1]])
  assert run([(predictions, labels, 0.0)], 1)["gap"] == 0.5


def test_hand_case_zero_scores_and_unlabelled_video():
  predictions = np.array([[0.0, 0.0, 0.0],
                          [0.3, 0.2, 0.1]], np.float32)
  labels = np.array([[1, 0, 0],
                     [0, 0, 0]])
  # Video 0: all tie, class 0 ranks first and is right: a hit, but its score is not > 0 so
  # PERR 0. Video 1 has no labels: PERR 0, no hit. Pool (top_k 20 -> all 3 classes):
  # 0.3-, 0.2-, 0.1- (v1), then 0.0+ (v0 c0), 0.0-, 0.0-: the positive is at rank 4,
  # GAP = (1/4) / 1. Class 0 alone: 0.3- (v1), 0.0+ (v0): AP = (1/2) / 1, the mAP over
  # labelled classes; over all three classes it is 0.5 / 3.
  want = {"avg_hit_at_one": 0.5, "avg_perr": 0.0, "avg_loss": 0.0, "gap": 0.25,
          "map_all_classes": 0.5 / 3, "map_labelled_classes": 0.5,
          "aps": [0.5, 0.0, 0.0], "num_examples": 2}
  assert_metrics_close(run([(predictions, labels, 0.0)], 20), want)
  assert_metrics_close(ref_metrics([(predictions, labels, 0.0)], 20), want)


def test_hand_case_no_labels_at_all():
  predictions = np.array([[0.3, 0.2]], np.float32)
  got = run([(predictions, np.zeros((1, 2)), 1.5)], 20)
  assert got["gap"] == 0.0 and got["aps"] == [0.0, 0.0]
  assert got["map_all_classes"] == got["map_labelled_classes"] == 0.0
  assert got["avg_loss"] == 1.5 and got["num_examples"] == 1


# --- batching, fast path, clear ---------------------------------------------------------

@pytest.mark.parametrize("top_k", [20, 5])
def test_many_batches_equal_one_batch(top_k):
  predictions, labels = random_data(11, num_videos=60, quantize=15)
  one = run([(predictions, labels, 0.5)], top_k)
  many = run(split(predictions, labels, [1, 7, 2, 30, 20], losses=[0.5] * 5), top_k)
  assert many["gap"] == one["gap"]  # identical pooled order, not an average
  assert many["aps"] == one["aps"]
  assert many["map_all_classes"] == one["map_all_classes"]
  assert many["map_labelled_classes"] == one["map_labelled_classes"]
  assert_metrics_close(many, one)


@pytest.mark.parametrize("top_k, extra", [(20, 0), (20, 7), (5, 5)])
def test_fast_path_equals_dense(top_k, extra):
  predictions, labels = random_data(13, quantize=20)  # at most 9 labels per video
  batches = split(predictions, labels, [20, 30])
  dense = eval_util.EvaluationMetrics(300, top_k)
  fast = eval_util.EvaluationMetrics(300, top_k)
  for p, l, loss in batches:
    want = dense.accumulate(p, l, loss)
    got = fast.accumulate_top_k(*eval_util.top_k_inputs(p, l, top_k + extra), loss)
    assert got == want
  assert fast.get() == dense.get()


def test_top_k_inputs_match_sorting():
  rng = np.random.default_rng(0)
  predictions = rng.random((40, 3862), dtype=np.float32)
  predictions[::3] = np.round(predictions[::3] * 50) / 50  # ties at the top-k boundary
  predictions[1] = 0.0  # one all-equal row
  predictions[2] = np.linspace(1, 0, 3862)  # scores ordered by class index
  labels = (rng.random(predictions.shape) < 0.001).astype(np.float32)
  for k in (1, 20, 33):
    scores, indices, positive, num_positives, class_counts = eval_util.top_k_inputs(
        predictions, labels, k)
    want = np.lexsort((np.broadcast_to(np.arange(3862), predictions.shape), -predictions),
                      axis=1)[:, :k]
    np.testing.assert_array_equal(indices, want)
    np.testing.assert_array_equal(scores, np.take_along_axis(predictions, want, axis=1))
    np.testing.assert_array_equal(positive, np.take_along_axis(labels, want, axis=1) != 0)
    np.testing.assert_array_equal(num_positives, labels.sum(axis=1))
    np.testing.assert_array_equal(class_counts, labels.sum(axis=0))


def test_fast_path_rejects_bad_inputs():
  predictions, labels = random_data(17, num_videos=10)
  metrics = eval_util.EvaluationMetrics(300, 5)
  args = eval_util.top_k_inputs(predictions, labels, 5)
  assert args[3].max() > 5
  with pytest.raises(ValueError, match="true labels but only 5 top classes"):
    metrics.accumulate_top_k(*args, 0.0)
  scores, indices, positive, num_positives, class_counts = eval_util.top_k_inputs(
      predictions, labels, 12)
  with pytest.raises(ValueError, match="need at least top_k"):
    metrics.accumulate_top_k(scores[:, :4], indices[:, :4], positive[:, :4], num_positives,
                             class_counts, 0.0)
  with pytest.raises(ValueError, match="descending"):
    metrics.accumulate_top_k(scores[:, ::-1], indices[:, ::-1], positive[:, ::-1],
                             num_positives, class_counts, 0.0)
  with pytest.raises(ValueError, match="same labels"):
    metrics.accumulate_top_k(scores, indices, positive, num_positives, class_counts * 2, 0.0)
  with pytest.raises(ValueError, match="NaN"):
    metrics.accumulate(np.full((1, 300), np.nan), np.zeros((1, 300)), 0.0)
  assert metrics.num_examples == 0


def test_get_between_batches(monkeypatch):
  monkeypatch.setattr(eval_util, "_CHUNK_PAIRS", 50)
  predictions, labels = random_data(23, quantize=20)
  batches = split(predictions, labels, [4, 6, 40])
  metrics = eval_util.EvaluationMetrics(300, 20)
  for i, (p, l, loss) in enumerate(batches):
    metrics.accumulate(p, l, loss)
    assert_metrics_close(metrics.get(), ref_metrics(batches[:i + 1], 20))


def test_clear_and_empty_get():
  predictions, labels = random_data(19)
  metrics = eval_util.EvaluationMetrics(300, 20)
  with pytest.raises(ValueError, match="no videos"):
    metrics.get()
  metrics.accumulate(predictions[:25], labels[:25], 9.0)
  metrics.clear()
  with pytest.raises(ValueError, match="no videos"):
    metrics.get()
  metrics.accumulate(predictions[25:], labels[25:], 0.5)
  assert_metrics_close(metrics.get(), ref_metrics([(predictions[25:], labels[25:], 0.5)], 20))


def test_accumulate_takes_a_scalar_or_per_video_losses():
  # The starter documents `loss` as one value per video and takes its mean; its own
  # callers pass the batch mean. Both give the same avg_loss (per video, over batches).
  predictions, labels = random_data(3, num_videos=6)
  per_video = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 9.0])
  arrays = eval_util.EvaluationMetrics(labels.shape[1], 20)
  scalars = eval_util.EvaluationMetrics(labels.shape[1], 20)
  fast = eval_util.EvaluationMetrics(labels.shape[1], 20)
  for rows in (slice(0, 2), slice(2, 6)):
    batch = arrays.accumulate(predictions[rows], labels[rows], per_video[rows])
    assert batch["loss"] == per_video[rows].mean()
    scalars.accumulate(predictions[rows], labels[rows], float(per_video[rows].mean()))
    top = eval_util.top_k_inputs(predictions[rows], labels[rows], 20)
    assert fast.accumulate_top_k(*top, per_video[rows])["loss"] == batch["loss"]
  assert arrays.get()["avg_loss"] == scalars.get()["avg_loss"] == per_video.mean()
  assert fast.get()["avg_loss"] == per_video.mean()
