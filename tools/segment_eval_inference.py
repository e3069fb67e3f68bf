"""Scores a 2019 segment submission (`Class,Segments` CSV) against rated shards.

  python tools/segment_eval_inference.py --eval_data_pattern='validate*.tfrecord' \
      --submission_file=segments.csv [--top_n=100000]

The starter's definition (its segment_eval_inference.py). The rated shards' context
carries, per video, `segment_labels`, `segment_start_times` and `segment_scores` (1.0
positive, 0.0 negative): segment `<id>:<start time>` is rated for that class. For each
class of the CSV, its ranked segment ids are cut to the first --top_n (0: all), those
not rated for that class are dropped, and what remains is scored by the average
precision over the class's rated positives in the shards:

  AP = (1 / P) * sum over ranks i (1-based) holding a positive of (positives in 1..i) / i

with P the number of positive ratings of the class. The result is the mean AP over the
CSV's classes (Kaggle 2019 scored with --top_n=100000). One difference: a class of the
CSV without any positive rating in the shards is left out of the mean, with a note
(the starter's tool stops with a KeyError there).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import cli  # noqa: E402

tf1 = tf.compat.v1


def video_ratings(example):
  """(video id, segment_labels, segment_start_times, segment_scores) of a parsed
  tf.train.SequenceExample: str and three lists."""
  context = example.context.feature
  return (context["id"].bytes_list.value[0].decode(),
          list(context["segment_labels"].int64_list.value),
          list(context["segment_start_times"].int64_list.value),
          list(context["segment_scores"].float_list.value))


def rated_segments(data_pattern, num_classes=3862, segment_size=5):
  """{(segment id "<video id>:<start>", class): score} of every rated segment in the
  shards matching the comma-separated globs `data_pattern`. Raises UsageError naming
  the file and video of a bad rating: unequal numbers of labels, start times and
  scores, a score other than 0 or 1, a class outside [0, num_classes), or a segment
  of `segment_size` frames that does not lie inside the video's frames."""
  paths = [p for pattern in data_pattern.split(",") if pattern.strip()
           for p in sorted(tf.io.gfile.glob(pattern.strip()))]
  if not paths:
    raise cli.UsageError("--eval_data_pattern=%s matches no file" % data_pattern)
  rated = {}
  for path in paths:
    for serialized in tf1.io.tf_record_iterator(path):
      example = tf.train.SequenceExample.FromString(serialized)
      video_id, labels, starts, scores = video_ratings(example)
      lists = example.feature_lists.feature_list
      frames = min((len(lists[name].feature) for name in lists), default=0)
      if not len(labels) == len(starts) == len(scores):
        raise cli.UsageError(
            "%s: video %s has %d segment_labels, %d segment_start_times and %d "
            "segment_scores; they must be as many" % (path, video_id, len(labels),
                                                       len(starts), len(scores)))
      for label, start, score in zip(labels, starts, scores):
        if score not in (0.0, 1.0):
          raise cli.UsageError("%s: video %s rates class %d at %d with score %g; "
                               "segment_scores must be 0 or 1"
                               % (path, video_id, label, start, score))
        if not 0 <= label < num_classes:
          raise cli.UsageError("%s: video %s rates class %d, outside the %d classes "
                               "(--num_classes)" % (path, video_id, label, num_classes))
        if not 0 <= start <= frames - segment_size:
          raise cli.UsageError(
              "%s: video %s rates the segment at %d, but its %d frames hold %d-frame "
              "segments from 0 to %d" % (path, video_id, start, frames, segment_size,
                                         frames - segment_size))
        rated[("%s:%d" % (video_id, start), label)] = score
  return rated


def submission_rankings(path, rated, top_n=0):
  """{class: [segment ids]} of the CSV at `path`: each class's ranked segments, the
  first top_n (0: all), only those rated for that class."""
  if not tf.io.gfile.exists(path):
    raise cli.UsageError("--submission_file=%s does not exist" % path)
  rankings = {}
  with tf.io.gfile.GFile(path) as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line or (number == 1 and line.startswith("Class,")):
        continue
      fields = line.split(",")
      if len(fields) != 2 or not fields[0].strip().isdigit():
        raise cli.UsageError("%s line %d: expected '<class>,<segment id> <segment id> "
                             "...', got %r" % (path, number, line[:80]))
      label = int(fields[0])
      if label in rankings:
        raise cli.UsageError("%s line %d: class %d appears twice" % (path, number,
                                                                        label))
      segments = fields[1].split()
      if top_n:
        segments = segments[:top_n]
      rankings[label] = [s for s in segments if (s, label) in rated]
  return rankings


def average_precision(ratings, num_positives):
  """AP of a ranked list of ratings (1.0 positive, 0.0 negative) over num_positives."""
  hits, total = 0, 0.0
  for rank, rating in enumerate(ratings, 1):
    if rating > 0:
      hits += 1
      total += hits / rank
  return total / num_positives


def segment_map(rankings, rated):
  """(mean AP, {class: AP}, [classes left out: no positive rating])."""
  positives = {}
  for (_, label), score in rated.items():
    if score > 0:
      positives[label] = positives.get(label, 0) + 1
  per_class, left_out = {}, []
  for label in sorted(rankings):
    if label not in positives:
      left_out.append(label)
      continue
    per_class[label] = average_precision(
        [rated[(segment, label)] for segment in rankings[label]], positives[label])
  mean = sum(per_class.values()) / len(per_class) if per_class else 0.0
  return mean, per_class, left_out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--eval_data_pattern", required=True,
                      help="rated shards (comma-separated globs)")
  parser.add_argument("--submission_file", required=True, help="a Class,Segments CSV")
  parser.add_argument("--num_classes", type=int, default=3862,
                      help="the class space the ratings must lie in")
  parser.add_argument("--segment_size", type=int, default=5,
                      help="frames per rated segment")
  parser.add_argument("--top_n", type=int, default=0,
                      help="segments per class scored (0: all; Kaggle 2019: 100000)")
  args = parser.parse_args(argv)
  tf1.logging.set_verbosity(tf1.logging.ERROR)  # no deprecation chatter
  try:
    if args.top_n < 0:
      raise cli.UsageError("--top_n must be >= 0, got %d" % args.top_n)
    rated = rated_segments(args.eval_data_pattern, args.num_classes, args.segment_size)
    rankings = submission_rankings(args.submission_file, rated, args.top_n)
  except cli.UsageError as e:
    print("segment_eval_inference.py: error: %s" % e, file=sys.stderr)
    return 2
  mean, per_class, left_out = segment_map(rankings, rated)
  print("rated segments: %d; classes scored: %d" % (len(rated), len(per_class)))
  if left_out:
    print("note: %d classes of the CSV have no positive rating in the shards and are "
          "left out of the mean (e.g. %d)" % (len(left_out), left_out[0]))
  print("mAP@%s: %.6f" % (args.top_n or "all", mean))
  return 0


if __name__ == "__main__":
  sys.exit(main())
