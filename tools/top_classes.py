"""Prints videos' top classes with their names, from a predictions CSV or from a run.

  python tools/top_classes.py --predictions=predictions.csv [--video_id=XwFj] [--top=5]
  python tools/top_classes.py --train_dir=<run dir> --input_data_pattern=<records>
      [--video_id=XwFj] [--top=5] [--vocabulary=vocabulary.csv]

From a run, its model predicts the records as inference.py does, and the true labels of
labelled records are marked with `*` and listed. Names come from --vocabulary (the
repository's YouTube-8M vocabulary.csv by default).
"""

import argparse
import csv
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cli  # noqa: E402
import vocabulary  # noqa: E402


def from_csv(path, top):
  """[(video id, [(class, score)], None)] of a Kaggle predictions CSV."""
  if not os.path.exists(path):
    raise cli.UsageError("--predictions=%s does not exist" % path)
  with open(path, newline="") as f:
    rows = list(csv.reader(f))[1:]
  videos = []
  for video_id, pairs in rows:
    values = pairs.split()
    videos.append((video_id, [(int(c), float(s)) for c, s in
                              zip(values[0::2], values[1::2])][:top], None))
  return videos


def from_run(run, pattern, top):
  """[(video id, [(class, score)], true labels or None)] of a run's model on records."""
  import tensorflow as tf
  tf.compat.v1.disable_eager_execution()
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  import inference_graph
  import readers
  import run_dir
  tf.compat.v1.flags.FLAGS(["top_classes"])
  cfg = run_dir.load(run)
  files = readers.list_data_files(pattern, "--input_data_pattern")
  model = inference_graph.InferenceGraph(cfg, cfg.role(), files, 64, 1, top,
                                         with_labels=False)
  proto = tf.train.SequenceExample if cfg.frame_features else tf.train.Example
  truth = {}
  for path in files.paths:
    for record in tf.compat.v1.io.tf_record_iterator(path):
      parsed = proto.FromString(record)
      feature = (parsed.context.feature if cfg.frame_features else
                 parsed.features.feature)
      truth[feature["id"].bytes_list.value[0].decode()] = set(
          feature["labels"].int64_list.value)
  videos = []
  with model.session(run_dir.latest_checkpoint(run)) as sess:
    while True:
      try:
        ids, classes, scores = sess.run([model.fetches[k] for k in
                                         ("video_ids", "top_indices", "top_scores")])
      except tf.errors.OutOfRangeError:
        break
      for video_id, row_classes, row_scores in zip(ids, classes, scores):
        video_id = video_id.decode()
        videos.append((video_id, list(zip(row_classes.tolist(), row_scores.tolist())),
                       truth.get(video_id) or None))
  return videos


def show(videos, names):
  """The lines printed for each video."""
  lines = []
  for video_id, ranked, truth in videos:
    if truth is not None:
      lines.append("%s  true: %s" % (video_id, ", ".join(
          names.get(c, "class %d" % c) for c in sorted(truth))))
    else:
      lines.append(video_id)
    for rank, (label, score) in enumerate(ranked, 1):
      mark = " *" if truth and label in truth else ""
      lines.append("  %2d. %-40s %.3f%s" % (rank, names.get(label, "class %d" % label),
                                            score, mark))
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--predictions", default="", help="a predictions CSV")
  parser.add_argument("--train_dir", default="", help="a run directory")
  parser.add_argument("--input_data_pattern", default="",
                      help="records for --train_dir's model")
  parser.add_argument("--video_id", default="", help="only this video")
  parser.add_argument("--top", type=int, default=5)
  parser.add_argument("--vocabulary", default=vocabulary.DEFAULT)
  args = parser.parse_args(argv)
  try:
    if bool(args.predictions) == bool(args.train_dir):
      raise cli.UsageError("give --predictions or --train_dir (with "
                           "--input_data_pattern)")
    names = vocabulary.load(args.vocabulary)
    videos = (from_csv(args.predictions, args.top) if args.predictions else
              from_run(args.train_dir, args.input_data_pattern, args.top))
    if args.video_id:
      videos = [v for v in videos if v[0] == args.video_id]
      if not videos:
        raise cli.UsageError("--video_id=%s is not among the videos" % args.video_id)
  except cli.UsageError as e:
    print("top_classes.py: error: %s" % e, file=sys.stderr)
    return 2
  print("\n".join(show(videos, names)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
