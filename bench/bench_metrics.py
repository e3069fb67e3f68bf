"""Throughput and memory of eval_util.EvaluationMetrics.

Measures in one run:
  (a) accumulate + get on dense [B, C] float32 predictions (~3 labels per video);
  (b) the floor: a bare np.argpartition(pred, -top_k, axis=1) on the same arrays;
  (c) the fast path accumulate_top_k + get, top-k inputs precomputed;
  (d) an "original"-style peer: per-pair Python heaps (written here, starter-code style);
  (e) peak memory (peak-RSS delta, in a fresh child process) of the fast path over
      --videos videos (1.1M by default, about the YouTube-8M validate set) + get, with
      synthetic top-k inputs (~2.4 of the 20 top pairs positive).

  python bench/bench_metrics.py                      # full run
  python bench/bench_metrics.py --videos=100000      # smaller memory run
"""

import argparse
import heapq
import json
import os
import time

import common
import eval_util
import numpy as np

DENSE_TARGET = 20000
FAST_TARGET = 200000


def dense_batch(rng, batch, num_class, labels_per_video, signal):
  """Random predictions [B, C] float32 and 0/1 labels [B, C] float32.

  True labels get up to `signal` added to their uniform score, so that, as with a trained
  model, many of them reach the top 20 (signal 0: GAP near 0).
  """
  labels = (rng.random((batch, num_class)) < labels_per_video / num_class).astype(np.float32)
  predictions = rng.random((batch, num_class), dtype=np.float32)
  predictions += signal * labels * rng.random((batch, num_class), dtype=np.float32)
  return predictions, labels


def synthetic_top_k(rng, batch, num_class, k, positive_rate=0.12):
  """Valid accumulate_top_k arguments without a dense array (for the 1.1M-video run).

  Rows are descending scores over k distinct classes in ascending class order (so equal
  scores already follow the tie rule); ~positive_rate of the top pairs are true labels
  and 30% of the videos have one more label outside the top k.
  """
  scores = -np.sort(-rng.random((batch, k), dtype=np.float32), axis=1)
  first = rng.integers(0, num_class, (batch, 1))
  classes = np.sort((first + np.arange(k) * (num_class // k)) % num_class, axis=1)
  is_positive = rng.random((batch, k)) < positive_rate
  outside = rng.random(batch) < 0.3
  num_positives = is_positive.sum(axis=1) + outside
  class_counts = (np.bincount(classes[is_positive], minlength=num_class)
                  + np.bincount(rng.integers(0, num_class, outside.sum()),
                                minlength=num_class))
  return scores, classes, is_positive, num_positives, class_counts


class HeapMetrics(object):
  """Starter-code-style peer: every (score, class) pair goes through Python heaps.

  Per video: numpy picks the top_k classes, a per-video heap orders them, and each pair is
  pushed into a bounded global heap (GAP) and a per-class heap (AP). get() sorts the heaps
  and sums the AP terms in Python. Equal scores are not ordered deterministically.
  """

  def __init__(self, num_class, top_k, max_pairs=10 ** 7):
    self.top_k = top_k
    self.max_pairs = max_pairs
    self.pairs = []
    self.class_pairs = [[] for _ in range(num_class)]
    self.class_totals = [0] * num_class
    self.num_positives = 0
    self.hits = 0
    self.perr = 0.0
    self.videos = 0

  def accumulate(self, predictions, labels):
    for row, label_row in zip(predictions, labels):
      truth = np.flatnonzero(label_row).tolist()
      self.hits += label_row[np.argmax(row)] > 0
      if truth:
        top_n = np.argpartition(row, -len(truth))[-len(truth):]
        self.perr += sum(1 for c in top_n if label_row[c] > 0 and row[c] > 0) / len(truth)
      video_heap = []
      for c in np.argpartition(row, -self.top_k)[-self.top_k:].tolist():
        heapq.heappush(video_heap, (float(row[c]), c))
      while video_heap:
        score, c = heapq.heappop(video_heap)
        item = (score, label_row[c] > 0)
        if len(self.pairs) < self.max_pairs:
          heapq.heappush(self.pairs, item)
        else:
          heapq.heappushpop(self.pairs, item)
        heapq.heappush(self.class_pairs[c], item)
      for c in truth:
        self.class_totals[c] += 1
      self.num_positives += len(truth)
      self.videos += 1

  @staticmethod
  def _ap(pairs, num_positives):
    if not num_positives:
      return 0.0
    seen, total = 0, 0.0
    for rank, (_, positive) in enumerate(sorted(pairs, key=lambda p: -p[0]), 1):
      if positive:
        seen += 1
        total += seen / rank
    return total / num_positives

  def get(self):
    aps = [self._ap(p, n) for p, n in zip(self.class_pairs, self.class_totals)]
    labelled = [ap for ap, n in zip(aps, self.class_totals) if n]
    return {"gap": self._ap(self.pairs, self.num_positives),
            "map_labelled_classes": sum(labelled) / max(len(labelled), 1),
            "avg_hit_at_one": self.hits / self.videos, "avg_perr": self.perr / self.videos}


def timed(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def run_dense(batches, num_class, top_k, count):
  metrics = eval_util.EvaluationMetrics(num_class, top_k)

  def work():
    for i in range(count):
      predictions, labels = batches[i % len(batches)]
      metrics.accumulate(predictions, labels, 0.0)
    return metrics.get()
  return timed(work)


def run_floor(batches, top_k, count):
  def work():
    for i in range(count):
      np.argpartition(batches[i % len(batches)][0], -top_k, axis=1)
  return timed(work)[1]


def run_fast(inputs, num_class, top_k, count):
  metrics = eval_util.EvaluationMetrics(num_class, top_k)

  def work():
    for i in range(count):
      metrics.accumulate_top_k(*inputs[i % len(inputs)], 0.0)
    return metrics.get()
  return timed(work)


def memory_child(args):
  """Fast path over args.videos synthetic videos; prints a JSON line (run in a subprocess)."""
  rng = np.random.default_rng(1)
  metrics = eval_util.EvaluationMetrics(args.classes, args.top_k)
  before = common.peak_rss_mb()
  accumulate_seconds = 0.0
  done = 0
  while done < args.videos:
    size = min(args.batch, args.videos - done)
    batch = synthetic_top_k(rng, size, args.classes, args.top_k)
    start = time.perf_counter()
    metrics.accumulate_top_k(*batch, 0.0)
    accumulate_seconds += time.perf_counter() - start
    done += size
  del batch
  after_accumulate = common.peak_rss_mb()
  result, get_seconds = timed(metrics.get)
  after = common.peak_rss_mb()
  print(json.dumps({
      "videos": done, "pairs": done * args.top_k,
      "accumulate_seconds": accumulate_seconds, "get_seconds": get_seconds,
      "accumulate_peak_mb": after_accumulate - before, "peak_mb": after - before,
      "gap": result["gap"],
      "map_labelled_classes": result["map_labelled_classes"]}))


def verdict(name, rate, target):
  return "%-32s %9.0f videos/s  target >= %d: %s" % (
      name, rate, target, "met" if rate >= target else "MISSED")


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=1024, help="videos per batch")
  parser.add_argument("--classes", type=int, default=3862)
  parser.add_argument("--top_k", type=int, default=20)
  parser.add_argument("--labels", type=float, default=3.0, help="mean labels per video")
  parser.add_argument("--signal", type=float, default=0.5,
                      help="max score added to true labels (0: pure noise)")
  parser.add_argument("--distinct", type=int, default=4,
                      help="distinct dense batches generated (then cycled)")
  parser.add_argument("--batches", type=int, default=20, help="batches for (a) and (b)")
  parser.add_argument("--fast_batches", type=int, default=200, help="batches for (c)")
  parser.add_argument("--original_videos", type=int, default=2048, help="videos for (d)")
  parser.add_argument("--videos", type=int, default=1100000, help="videos for (e)")
  parser.add_argument("--skip_memory", action="store_true", help="skip (e)")
  parser.add_argument("--memory_child", action="store_true", help=argparse.SUPPRESS)
  return parser.parse_args()


def main():
  print(common.cpu_line(), flush=True)
  args = parse_args()
  if args.memory_child:
    memory_child(args)
    return
  rng = np.random.default_rng(0)
  batches = [dense_batch(rng, args.batch, args.classes, args.labels, args.signal)
             for _ in range(args.distinct)]
  rows = []

  dense_metrics, seconds = run_dense(batches, args.classes, args.top_k, args.batches)
  dense_rate = args.batches * args.batch / seconds
  rows.append(("(a) dense accumulate+get", args.batches * args.batch, seconds, dense_rate))

  seconds = run_floor(batches, args.top_k, args.batches)
  floor_rate = args.batches * args.batch / seconds
  rows.append(("(b) floor: bare argpartition", args.batches * args.batch, seconds,
               floor_rate))

  inputs = [eval_util.top_k_inputs(p, l, args.top_k) for p, l in batches]
  same, _ = run_fast(inputs, args.classes, args.top_k, args.batches)
  _, seconds = run_fast(inputs, args.classes, args.top_k, args.fast_batches)
  fast_rate = args.fast_batches * args.batch / seconds
  rows.append(("(c) fast accumulate_top_k+get", args.fast_batches * args.batch, seconds,
               fast_rate))

  heap = HeapMetrics(args.classes, args.top_k)
  predictions = np.concatenate([p for p, _ in batches])[:args.original_videos]
  labels = np.concatenate([l for _, l in batches])[:args.original_videos]
  heap_result, seconds = timed(lambda: (heap.accumulate(predictions, labels), heap.get())[1])
  original_rate = len(predictions) / seconds
  rows.append(("(d) original-style heaps", len(predictions), seconds, original_rate))
  ours = eval_util.EvaluationMetrics(args.classes, args.top_k)
  ours.accumulate(predictions, labels, 0.0)
  ours = ours.get()

  memory = None
  if not args.skip_memory:
    memory = common.run_child(__file__, [
        "--memory_child", "--videos=%d" % args.videos, "--batch=%d" % args.batch,
        "--classes=%d" % args.classes, "--top_k=%d" % args.top_k])
    seconds = memory["accumulate_seconds"] + memory["get_seconds"]
    rows.append(("(e) fast path, memory run", memory["videos"], seconds,
                 memory["videos"] / seconds))

  print("B=%d C=%d top_k=%d, ~%.1f labels/video, numpy %s, %d CPUs"
        % (args.batch, args.classes, args.top_k, args.labels, np.__version__,
           os.cpu_count()))
  print("%-32s %10s %9s %12s" % ("measurement", "videos", "seconds", "videos/s"))
  for name, videos, seconds, rate in rows:
    print("%-32s %10d %9.3f %12.0f" % (name, videos, seconds, rate))
  print()
  print("dense / floor      %6.2fx" % (dense_rate / floor_rate))
  print("dense / original   %6.1fx" % (dense_rate / original_rate))
  print("fast / original    %6.1fx" % (fast_rate / original_rate))
  print(verdict("(a) dense", dense_rate, DENSE_TARGET))
  print(verdict("(c) fast path", fast_rate, FAST_TARGET))
  if memory:
    print(verdict("(e) fast path, %d videos" % memory["videos"],
                  memory["videos"] / (memory["accumulate_seconds"] + memory["get_seconds"]),
                  FAST_TARGET))
  print("fast path on the dense batches of (a) gives identical get(): %s"
        % (same == dense_metrics))
  print("original-style vs ours on %d videos: GAP %.6f vs %.6f, mAP %.6f vs %.6f"
        % (len(predictions), heap_result["gap"], ours["gap"], heap_result["map_labelled_classes"],
           ours["map_labelled_classes"]))
  if memory:
    pairs = memory["pairs"]
    print("(e) %d videos, %d pairs: accumulate %.2f s, get %.2f s; peak RSS +%.0f MB after "
          "accumulate, +%.0f MB including get (stored pairs: %.0f MB at 7 B/pair)"
          % (memory["videos"], pairs, memory["accumulate_seconds"], memory["get_seconds"],
             memory["accumulate_peak_mb"], memory["peak_mb"], pairs * 7 / 2.0 ** 20))


if __name__ == "__main__":
  main()
