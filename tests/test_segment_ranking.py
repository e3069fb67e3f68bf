"""segment_ranking: the 2019 `Class,Segments` ranking on a hand-worked case, against a
plain per-class sort on random data (many compactions, ties, ids of several widths),
add_top against add, bounded memory, and one-line errors for bad arguments and
segment_label_ids files."""
import io
import os
import re

import numpy as np
import pytest

import cli
import segment_ranking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 6 classes, of which 1, 3 and 4 are rated; top_k=2, max_pred=2.
IDS = ["a:0", "b:5", "cc:10", "d:15", "eeee:20"]
PREDICTIONS = np.array([
    # 0    1    2    3    4     5
    [.9, .1, .0, .8, .3, .2],   # a:0      rated 1 .1, 3 .8, 4 .3  -> 3 .8, 4 .3
    [.0, .7, .9, .6, .2, .9],   # b:5      rated 1 .7, 3 .6, 4 .2  -> 1 .7, 3 .6
    [.5, .2, .5, .4, .9, .0],   # cc:10    rated 1 .2, 3 .4, 4 .9  -> 4 .9, 3 .4
    [.0, .7, .0, .1, .05, .0],  # d:15     rated 1 .7, 3 .1, 4 .05 -> 1 .7, 3 .1
    [.0, .8, .0, .8, .0, .0],   # eeee:20  rated 1 .8, 3 .8, 4 0   -> 1 .8, 3 .8
], dtype=np.float32)
# By hand. Class 1: eeee:20 .8, b:5 .7, d:15 .7 -> the best 2, d:15 losing the tie at
# .7 to the earlier b:5. Class 3: a:0 .8, eeee:20 .8, b:5 .6, ... -> a:0 before eeee:20
# (tie, a:0 first). Class 4: cc:10 .9, a:0 .3. The unrated classes (0, 2, 5; class 5
# scores .9 for b:5) never appear.
EXPECTED = """Class,Segments
1,eeee:20 b:5
3,a:0 eeee:20
4,cc:10 a:0
"""


def csv_of(ranking):
  output = io.StringIO()
  lines = ranking.write(output)
  return output.getvalue(), lines


@pytest.mark.parametrize("batches,compact_every", [((5,), 1 << 20), ((2, 3), 1),
                                                   ((1, 1, 1, 1, 1), 3)])
def test_hand_worked_case(batches, compact_every):
  ranking = segment_ranking.SegmentRanking([4, 1, 3], max_pred=2, top_k=2,
                                           compact_every=compact_every)
  start = 0
  for size in batches:
    ranking.add(IDS[start:start + size], PREDICTIONS[start:start + size])
    start += size
  assert ranking.num_segments() == 5
  assert csv_of(ranking) == (EXPECTED, 3)


def reference_csv(rated, max_pred, top_k, batches):
  """The ranking by a plain sort: every segment's top_k rated classes, then per class
  the max_pred best by (descending score, arrival)."""
  candidates = {}
  arrival = 0
  for ids, predictions in batches:
    for segment_id, row in zip(ids, predictions):
      if isinstance(segment_id, bytes):
        segment_id = segment_id.decode("utf-8")
      best = sorted(rated, key=lambda c: -row[c])[:top_k]
      for class_id in best:
        candidates.setdefault(class_id, []).append((-row[class_id], arrival, segment_id))
      arrival += 1
  lines = ["Class,Segments\n"]
  for class_id in sorted(candidates):
    ranked = sorted(candidates[class_id])[:max_pred]
    lines.append("%d,%s\n" % (class_id, " ".join(entry[2] for entry in ranked)))
  return "".join(lines), len(candidates)


def random_batches(rng, num_classes, sizes):
  """Batches of (ids, [S, num_classes] float32): every row a permutation of
  {0, 1/num_classes, ...}, so scores tie across segments but never within a row (the
  top_k cut is then unambiguous). Ids of 1 to 12 characters, as str, bytes, an object
  array or an 'S' array."""
  batches = []
  for number, size in enumerate(sizes):
    ids = ["%s:%d" % ("v" * rng.integers(1, 12), 5 * (len(batches) * 100 + i))
           for i in range(size)]
    form = number % 4
    if form == 1:
      ids = [i.encode() for i in ids]
    elif form == 2:
      ids = np.array([i.encode() for i in ids], dtype=object)
    elif form == 3:
      ids = np.array(ids, dtype="S")
    predictions = rng.permuted(np.tile(np.arange(num_classes), (size, 1)), axis=1)
    batches.append((ids, (predictions / num_classes).astype(np.float32)))
  return batches


@pytest.mark.parametrize("max_pred,top_k,compact_every", [
    (7, 5, 13),       # classes fill up: the floor drops entries, compactions cut
    (1, 3, 1),        # one segment per class, a compaction after every add
    (1000, 50, 40),   # top_k capped at the 25 rated classes, nothing cut
    (3, 1, 1 << 20),  # a single compaction, in write()
])
def test_matches_a_plain_sort(max_pred, top_k, compact_every):
  rng = np.random.default_rng(max_pred * 1000 + top_k)
  num_classes = 40
  rated = sorted(rng.choice(num_classes, 25, replace=False).tolist())
  batches = random_batches(rng, num_classes, [17, 0, 1, 33, 8, 25, 40, 3])
  ranking = segment_ranking.SegmentRanking(rated, max_pred, top_k, compact_every)
  for ids, predictions in batches:
    ranking.add(ids, predictions)
  assert ranking.num_segments() == 127
  assert csv_of(ranking) == reference_csv(rated, max_pred, top_k, batches)


def test_long_ids_after_short_ones_keep_their_bytes():
  ranking = segment_ranking.SegmentRanking([0], max_pred=3, top_k=1, compact_every=1)
  ranking.add([b"a:0"], np.array([[.5]], np.float32))
  ranking.add(["a_much_longer_video_id:15", "é:5"], np.array([[.9], [.7]], np.float32))
  assert csv_of(ranking) == ("Class,Segments\n0,a_much_longer_video_id:15 é:5 a:0\n", 1)


def test_classes_without_candidates_are_absent():
  ranking = segment_ranking.SegmentRanking([0, 1, 2, 3], max_pred=5, top_k=1)
  ranking.add(["x:0", "y:0", "z:0"], np.array([[.9, .1, .2, .3],
                                               [.1, .2, .3, .8],
                                               [.6, .1, .4, .3]], np.float32))
  assert csv_of(ranking) == ("Class,Segments\n0,x:0 z:0\n3,y:0\n", 2)
  assert csv_of(segment_ranking.SegmentRanking([0, 1])) == ("Class,Segments\n", 0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(rated_classes=[]), "segment_label_ids names no class to rank"),
    (dict(rated_classes=[3, 1, 3]), "segment_label_ids names class 3 more than once"),
    (dict(rated_classes=[1, -2]), "rated classes must be non-negative int class ids"),
    (dict(rated_classes=[1], max_pred=0), "max_pred must be at least 1, got 0"),
    (dict(rated_classes=[1], top_k=0), "top_k must be at least 1, got 0"),
    (dict(rated_classes=[1], compact_every=0), "compact_every must be at least 1, got 0"),
])
def test_bad_arguments(kwargs, message):
  with pytest.raises(cli.UsageError, match="^" + message):
    segment_ranking.SegmentRanking(**kwargs)


@pytest.mark.parametrize("ids,predictions,message", [
    (["a:0"], np.zeros((1, 4), np.float32),
     r"predictions have 4 classes but segment_label_ids names class 4$"),
    (["a:0", "a:5"], np.zeros((3, 6), np.float32),
     r"predictions have 3 rows for 2 segment ids$"),
    (["a:0"], np.zeros(6, np.float32), r"predictions must be \[segments, classes\]"),
    (["a:0", "a:5"], np.array([[0] * 6, [0, 0, np.nan, 0, 0, 0]], np.float32),
     r"predictions hold NaN \(segment a:5\)$"),
    ([1, 2], np.zeros((2, 6), np.float32), r"segment ids must be bytes or str"),
])
def test_bad_batches(ids, predictions, message):
  ranking = segment_ranking.SegmentRanking([2, 4])
  with pytest.raises(cli.UsageError, match=message):
    ranking.add(ids, predictions)
  assert ranking.num_segments() == 0


def test_the_shipped_segment_label_ids():
  classes = segment_ranking.read_rated_classes(os.path.join(ROOT,
                                                            "segment_label_ids.csv"))
  assert len(classes) == 1000 and len(set(classes)) == 1000
  assert classes == sorted(classes) and all(type(c) is int for c in classes)
  assert classes[:4] == [3, 7, 8, 11] and 0 <= classes[0] and classes[-1] < 3862


@pytest.mark.parametrize("text,message", [
    ("Index\n3\nx7\n", r"line 3: 'x7' is not a class id \(a non-negative integer\)$"),
    ("Index\n3\n-7\n", r"line 3: '-7' is not a class id"),
    ("Index\n8\n3\n\n8\n", r"line 5: class 8 is listed twice \(also line 2\)$"),
    ("Index\n", r"names no classes$"),
])
def test_bad_segment_label_ids(tmp_path, text, message):
  path = tmp_path / "ids.csv"
  path.write_text(text)
  with pytest.raises(cli.UsageError, match="^%s %s" % (re.escape(str(path)), message)):
    segment_ranking.read_rated_classes(str(path))


def test_segment_label_ids_without_header_or_missing(tmp_path):
  path = tmp_path / "ids.csv"
  path.write_text("11\n3\n")
  assert segment_ranking.read_rated_classes(str(path)) == [3, 11]
  missing = str(tmp_path / "nowhere.csv")
  with pytest.raises(cli.UsageError, match="^%s does not exist$" % re.escape(missing)):
    segment_ranking.read_rated_classes(missing)


def held(ranking):
  """Entries held, kept and pending (memory is proportional to it)."""
  return len(ranking._kept[0]) + ranking._pending_count


def test_memory_is_bounded_by_classes_max_pred_and_compact_every():
  rng = np.random.default_rng(0)
  ranking = segment_ranking.SegmentRanking([1, 2, 5], max_pred=4, top_k=2,
                                           compact_every=50)
  for batch in range(100):
    ranking.add(["s%d:%d" % (batch, i) for i in range(16)],
                rng.random((16, 6), dtype=np.float32))
    assert held(ranking) <= 3 * 4 + 50 + 16 * 2
  assert ranking.num_segments() == 1600
  assert csv_of(ranking)[1] == 3 and held(ranking) == 3 * 4


def test_entries_that_cannot_enter_a_full_class_are_dropped_on_arrival():
  ranking = segment_ranking.SegmentRanking([0, 1], max_pred=2, top_k=1,
                                           compact_every=1)
  ranking.add(["a:0", "b:0"], np.array([[.9, .1], [.5, .1]], np.float32))
  assert held(ranking) == 2  # class 0 is full, its floor .5; class 1 has none
  ranking.add(["c:0", "d:0"], np.array([[.5, .1], [.2, .3]], np.float32))
  # c:0 ties the floor of class 0 and would lose to the older b:0; d:0 goes to class 1
  assert ranking._pending_count == 1
  assert csv_of(ranking) == ("Class,Segments\n0,a:0 b:0\n1,d:0\n", 2)


def test_any_float_ranks_in_numeric_order():
  scores = [-np.inf, -3, -0.0, 0.0, 1e-30, -1e-30, .5, np.inf, 3, -0.0]
  ranking = segment_ranking.SegmentRanking([0], max_pred=10, top_k=1)
  ranking.add(["s:%d" % i for i in range(10)], np.array(scores, np.float32)[:, None])
  # -0.0 and 0.0 are equal scores: arrival order (s:2, s:3, s:9).
  assert csv_of(ranking) == (
      "Class,Segments\n0,s:7 s:8 s:6 s:4 s:2 s:3 s:9 s:5 s:1 s:0\n", 1)


def test_add_top_ranks_as_add_does():
  rng = np.random.default_rng(7)
  rated = [1, 4, 6, 9, 11, 12]
  by_add = segment_ranking.SegmentRanking(rated, max_pred=4, top_k=3, compact_every=5)
  by_top = segment_ranking.SegmentRanking(rated, max_pred=4, top_k=3, compact_every=5)
  for ids, predictions in random_batches(rng, 14, [6, 0, 9, 4]):
    by_add.add(ids, predictions)
    # The top 3 rated classes, best first, as InferenceGraph's top_indices.
    order = np.argsort(-predictions[:, rated], axis=1, kind="stable")[:, :3]
    class_ids = np.array(rated)[order]
    by_top.add_top(ids, class_ids, np.take_along_axis(predictions, class_ids, axis=1))
  assert by_top.num_segments() == by_add.num_segments() == 19
  assert csv_of(by_top) == csv_of(by_add)
  # 19 segments * 3 candidates for 6 classes: every class is cut to max_pred=4.
  rows = csv_of(by_top)[0].splitlines()[1:]
  assert [len(row.split(",")[1].split()) for row in rows] == [4] * 6


@pytest.mark.parametrize("class_ids,scores,message", [
    ([[4, 2]], [[.5, .4]], r"class 2 is not among the 3 rated classes$"),
    ([[4, 13]], [[.5, .4]], r"class 13 is not among the 3 rated classes$"),
    ([[4, 4]], [[.5, .4]], r"a segment lists the same class twice$"),
    ([[4, 1, 6]], [[.5, .4, .3]], r"3 classes per segment, more than top_k=2$"),
    ([[4, 1]], [[.5]], r"class ids \(1, 2\) and scores \(1, 1\) must be"),
    ([[4, 1], [1, 6]], [[.5, .4], [.1, .2]], r"class ids have 2 rows for 1 segment ids$"),
    ([[4, 1]], [[.5, np.nan]], r"predictions hold NaN \(segment a:0\)$"),
])
def test_bad_top_classes(class_ids, scores, message):
  ranking = segment_ranking.SegmentRanking([1, 4, 6], top_k=2)
  with pytest.raises(cli.UsageError, match=message):
    ranking.add_top(["a:0"], np.array(class_ids), np.array(scores, np.float32))
  assert ranking.num_segments() == 0


def test_nan_among_many_rated_classes_is_caught():
  predictions = np.full((3, 8), .5, np.float32)
  predictions[2, 5] = np.nan
  ranking = segment_ranking.SegmentRanking(list(range(8)), top_k=2)
  with pytest.raises(cli.UsageError, match=r"NaN \(segment c:10\)$"):
    ranking.add(["a:0", "b:5", "c:10"], predictions)


def test_segment_ids():
  ids = segment_ranking.segment_ids(np.array([b"Ab1d", b"x"], dtype=object),
                                    np.array([35, 0], np.int32))
  assert ids.tolist() == [b"Ab1d:35", b"x:0"]
  assert segment_ranking.segment_ids(["é"], [295]).tolist() == ["é:295".encode()]
  with pytest.raises(cli.UsageError, match="start times"):
    segment_ranking.segment_ids([b"a", b"b"], [0])
