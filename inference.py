"""Writes a Kaggle-style CSV of the top predictions of every video.

  VideoId,LabelConfidencePairs
  XwFj,123 0.986 4 0.42 ...

With --segment_labels (or a run trained with it), the 2019 challenge's CSV instead:
every --segment_size-frame segment of every video is scored, and each rated class
(--segment_label_ids_file) lists its best --segment_max_pred segments, best first:

  Class,Segments
  3,XwFj:35 Ab12:0 ...

The model comes from one of: --train_dir (its latest checkpoint), --input_model_tgz (a
tarball written by --output_model_tgz, unpacked into --untar_model_dir),
--saved_model (a directory written by export_model.py) or --tflite_model (a file
written by export_model.py --tflite, float32 or quantized, with its sidecar). The CSV is written to a
temporary file and renamed to --output_file only when every video is in it.
"""

import contextlib
import csv
import io
import os
import pathlib
import posixpath
import shutil
import tarfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

import tensorflow as tf  # noqa: E402

import cli  # noqa: E402
import config  # noqa: E402,F401  (the graph flags: --role, --bf16, ...)
import file_io  # noqa: E402
import inference_graph  # noqa: E402
import progress  # noqa: E402
import readers  # noqa: E402
import run_dir  # noqa: E402
import segment_ranking  # noqa: E402
import sessions  # noqa: E402
import tflite_model  # noqa: E402
import vocabulary  # noqa: E402

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS

flags.DEFINE_string("train_dir", "", "The run directory (written by train.py) whose latest "
                    "checkpoint to use.")
flags.DEFINE_string("input_model_tgz", "", "A model tarball written by "
                    "--output_model_tgz, used instead of --train_dir.")
flags.DEFINE_string("untar_model_dir", "/tmp/yt8m-model", "Where --input_model_tgz is "
                    "unpacked.")
flags.DEFINE_string("saved_model", "", "A SavedModel directory written by "
                    "export_model.py, used instead of --train_dir.")
flags.DEFINE_string("output_model_tgz", "", "Also pack the model (checkpoint and "
                    "model_flags.json) into this tarball for inference elsewhere.")
flags.DEFINE_string("output_file", "", "The CSV file to write.")
flags.DEFINE_string("vocabulary", "", "Also write the predictions with class names, to "
                    "<output_file without .csv>.names.csv, from this vocabulary CSV (the "
                    "repository ships YouTube-8M's as vocabulary.csv); the Kaggle CSV is "
                    "unchanged.")
flags.DEFINE_string("input_data_pattern", "", "File glob of the records to predict.")
flags.DEFINE_integer("batch_size", 128, "Videos per batch.", lower_bound=1)
flags.DEFINE_integer("num_readers", 1, "How many files to read in parallel.",
                     lower_bound=1)
flags.DEFINE_integer("top_k", 20, "How many predictions to output per video.",
                     lower_bound=1)
flags.DEFINE_integer("progress_every_secs", 30, "Seconds between progress lines (videos "
                     "done, videos/s, share of the total and ETA).", lower_bound=1)

flags.DEFINE_integer("segment_max_pred", 100000, "With --segment_labels: segments "
                     "listed per class in the Class,Segments CSV (Kaggle 2019 scored the "
                     "first 100,000; the starter's default is 25,000).", lower_bound=1)
flags.DEFINE_string("segment_label_ids_file", "segment_label_ids.csv", "With "
                    "--segment_labels: the rated classes, one id per line after a header "
                    "(the 2019 release's 1,000). A relative path is looked up in the "
                    "current directory, then in this repository (which ships the file).")

PACKED_DIR = "model"


class PredictionWriter(object):
  """Writes the Kaggle CSV and, with a vocabulary, the same predictions with names."""

  def __init__(self, output, names_output=None, names=None):
    """output, names_output: open text files; names: {class index: name} or None."""
    self.output = output
    self.names_output = names_output
    self.names = names
    output.write("VideoId,LabelConfidencePairs\n")
    if names_output:
      names_output.write("VideoId,TopClasses\n")

  def write(self, video_ids, class_indexes, scores):
    """One row per video: [B] ids, [B, k] top classes and their scores."""
    self.output.write("".join(csv_rows(video_ids, class_indexes, scores)))
    if self.names_output:
      writer = csv.writer(self.names_output, lineterminator="\n")
      for video_id, labels, values in zip(video_ids, class_indexes, scores):
        writer.writerow([video_id.decode("utf-8"),
                         vocabulary.describe(labels, values, self.names)])


def names_path(output_file):
  """Where --vocabulary's readable predictions go: predictions.csv -> predictions.names.csv."""
  root, extension = os.path.splitext(output_file)
  return root + ".names" + (extension or ".csv")


def csv_rows(video_ids, class_indexes, scores):
  """Kaggle rows 'id,label score label score ...' for [B] ids and [B, k] top classes.

  Written by the csv module: an id holding a comma, a quote or a line break is quoted
  (so it reads back whole); every other row is exactly 'id,pairs'.
  """
  rows = io.StringIO()
  writer = csv.writer(rows, lineterminator="\n")
  for video_id, labels, values in zip(video_ids, class_indexes, scores):
    pairs = " ".join("%d %g" % (label, value) for label, value in zip(labels, values))
    writer.writerow([video_id.decode("utf-8"), pairs])
  return [rows.getvalue()]


def model_to_serve(model_dir, checkpoint=None, served=None):
  """(cfg, role, checkpoint, served, what): the run's model (checkpoint: the one to use,
  default model_dir's latest), or `served`'s (a tflite_model.TFLiteModel: checkpoint
  None); `what` names it for the console."""
  if served:
    return (served.cfg, served.role, None, served,
            "%s in %s" % (served.describe(), FLAGS.tflite_model))
  cfg = config.with_command_segments(run_dir.load(model_dir, flag_name=model_flag_name()))
  role = cfg.role(FLAGS.role)
  checkpoint = checkpoint or run_dir.latest_checkpoint(model_dir, model_flag_name())
  return (cfg, role, checkpoint, None,
          "the %s of %s (%s)" % (role, model_dir, os.path.basename(checkpoint)))


def predict_from_checkpoint(model_dir, files, output, checkpoint=None, served=None):
  """Runs the run's model (or `served`, --tflite_model's) over `files` (the
  readers.DataFiles of --input_data_pattern); writes rows to `output` (a
  PredictionWriter). checkpoint: the one to use, default model_dir's latest."""
  cfg, role, checkpoint, served, what = model_to_serve(model_dir, checkpoint, served)
  model = inference_graph.InferenceGraph(
      cfg, role, files, FLAGS.batch_size, FLAGS.num_readers, FLAGS.top_k,
      with_labels=False, served=served)
  print("Predicting with %s" % what, flush=True)
  fetches = [model.fetches[key] for key in ("video_ids", "top_indices", "top_scores")]
  with model.session(checkpoint, FLAGS.bf16) as sess:
    with readers.data_errors_named(model.reader, files):
      return write_rows(sess, fetches, output, files)


def rank_segments_from_checkpoint(model_dir, files, output_file, checkpoint=None,
                                  served=None):
  """--segment_labels: runs the run's model over every segment of every video of
  `files` (--input_data_pattern's DataFiles) and writes the Class,Segments CSV to
  output_file (atomically).

  Each segment competes for its --top_k best rated classes; each class lists its
  --segment_max_pred best segments (segment_ranking). Memory is bounded by the
  ranking's, whatever the number of videos. Returns the number of segments.
  """
  cfg, role, checkpoint, served, what = model_to_serve(model_dir, checkpoint, served)
  try:
    classes = segment_ranking.read_rated_classes(file_io.shipped_path(
        FLAGS.segment_label_ids_file))
  except cli.UsageError as e:
    raise cli.UsageError("--segment_label_ids_file: %s" % e)
  if classes[-1] >= cfg.num_classes:
    raise cli.UsageError("--segment_label_ids_file=%s names class %d, but the model "
                         "predicts %d classes (--num_classes)"
                         % (FLAGS.segment_label_ids_file, classes[-1], cfg.num_classes))
  model = inference_graph.InferenceGraph(
      cfg, role, files, FLAGS.batch_size, FLAGS.num_readers, FLAGS.top_k,
      with_labels=False, classes=classes, served=served)
  print("Ranking the %d-frame segments of every video per rated class (%d classes, at "
        "most %d segments each) with %s" % (cfg.segment_size, len(classes),
                                              FLAGS.segment_max_pred, what), flush=True)
  ranking = segment_ranking.SegmentRanking(classes, FLAGS.segment_max_pred, FLAGS.top_k)
  fetches = [model.fetches[key] for key in ("video_ids", "segment_start_times",
                                            "top_indices", "top_scores")]
  counter = progress.Progress(FLAGS.progress_every_secs, what="segments")
  with model.session(checkpoint, FLAGS.bf16) as sess:
    with readers.data_errors_named(model.reader, files):
      while True:
        try:
          video_ids, starts, indexes, scores = sess.run(fetches)
        except tf.errors.OutOfRangeError:
          break
        ranking.add_top(segment_ranking.segment_ids(video_ids, starts), indexes, scores)
        counter.add(len(video_ids))
  print("%d segments, %.1f segments/s; writing %s" % (counter.done, counter.rate(),
                                                     output_file), flush=True)
  with file_io.atomic_output(output_file) as output:
    ranking.write(output)
  return counter.done


def predict_from_saved_model(export_dir, files, output):
  """Runs a SavedModel's serving signature over `files` (the readers.DataFiles of
  --input_data_pattern)."""
  if not tf.io.gfile.isdir(export_dir):
    raise cli.UsageError("--saved_model=%s does not exist" % export_dir)
  graph = tf.Graph()
  with graph.as_default():
    records = tf.data.Dataset.from_tensor_slices(list(files.paths)).flat_map(
        readers.traced(readers.record_dataset))
    records = records.batch(FLAGS.batch_size).prefetch(2)
    serialized = tf1.data.make_one_shot_iterator(records).get_next()
    with tf1.Session(graph=graph, config=sessions.session_config(FLAGS.bf16)) as sess:
      try:
        meta_graph = tf1.saved_model.load(sess, [tf1.saved_model.tag_constants.SERVING],
                                          export_dir)
      except (IOError, RuntimeError, tf.errors.OpError) as e:
        raise cli.UsageError("--saved_model=%s cannot be loaded: %s"
                             % (export_dir, str(e).splitlines()[0]))
      signature = meta_graph.signature_def["serving_default"]
      input_name = list(signature.inputs.values())[0].name
      fetches = [graph.get_tensor_by_name(signature.outputs[key].name)
                 for key in ("video_id", "class_indexes", "predictions")]
      print("Predicting with the SavedModel %s" % export_dir, flush=True)
      # Records are parsed inside the SavedModel: a bad one is named by scanning the
      # files as a (label-free) reader of the features it records would read them.
      extra = os.path.join(export_dir, "assets.extra", run_dir.MODEL_FLAGS_FILE)
      cfg = (config.from_json(file_io.read_json(extra), extra)
             if tf.io.gfile.exists(extra) else config.from_flags())
      reader = readers.get_reader(cfg, require_labels=False)
      with readers.data_errors_named(reader, files):
        return write_rows(sess, fetches, output, files, feed=(serialized, input_name))


def write_rows(sess, fetches, output, files, feed=None):
  """Writes one CSV row per video until the data ends; returns the number of videos.

  fetches: [video ids [B], top classes [B, K], their scores [B, K]] (K >= --top_k).
  files: the DataFiles read (their records are the progress lines' total).
  feed: (tensor of serialized records, name of the model input to feed them to), for
  a SavedModel whose graph was imported without our reader.
  """
  counter = progress.Progress(
      FLAGS.progress_every_secs,
      readers.count_records(files.paths))
  while True:
    try:
      if feed is None:
        video_ids, indexes, scores = sess.run(fetches)
      else:
        records = sess.run(feed[0])
        video_ids, indexes, scores = sess.run(fetches, {feed[1]: records})
    except tf.errors.OutOfRangeError:
      break
    output.write(video_ids, indexes[:, :FLAGS.top_k], scores[:, :FLAGS.top_k])
    counter.add(len(video_ids))
  print("%d videos, %.1f videos/s" % (counter.done, counter.rate()), flush=True)
  return counter.done


def model_flag_name():
  return "--input_model_tgz" if FLAGS.input_model_tgz else "--train_dir"


def pack_model(model_dir, tgz_path, checkpoint=None):
  """Packs a checkpoint (default: the latest) and model_flags.json of model_dir into
  tgz_path.

  The tarball holds one directory, `model/`, with model_flags.json, a `checkpoint`
  state file naming the packed checkpoint (relative to it), and its .index/.data files.
  """
  checkpoint = checkpoint or run_dir.latest_checkpoint(model_dir)
  prefix = os.path.basename(checkpoint)
  with file_io.atomic_output(tgz_path, "wb") as raw, \
      tarfile.open(fileobj=raw, mode="w:gz") as tar:
    _add_file(tar, run_dir.flags_path(model_dir),
              "%s/%s" % (PACKED_DIR, run_dir.MODEL_FLAGS_FILE))
    for name in sorted(tf.io.gfile.listdir(model_dir)):
      if name.startswith(prefix + ".") and not name.endswith(".meta"):
        _add_file(tar, os.path.join(model_dir, name), "%s/%s" % (PACKED_DIR, name))
    state = ('model_checkpoint_path: "%s"\nall_model_checkpoint_paths: "%s"\n'
             % (prefix, prefix)).encode("utf-8")
    info = tarfile.TarInfo("%s/checkpoint" % PACKED_DIR)
    info.size = len(state)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(state))
  print("Packed %s (%s) into %s" % (model_dir, prefix, tgz_path), flush=True)


def _add_file(tar, path, arcname):
  """Adds file `path` (on any TensorFlow file system) to `tar` as a 0644 member."""
  info = tarfile.TarInfo(arcname)
  info.size = tf.io.gfile.stat(path).length
  info.mtime = int(time.time())
  info.mode = 0o644
  with tf.io.gfile.GFile(path, "rb") as source:
    tar.addfile(info, source)


def safe_untar(tgz_path, target_dir):
  """Unpacks a model tarball into target_dir; returns the directory with the model.

  Every member is checked before anything is written: absolute paths, `..`, links,
  devices and anything else that would land outside target_dir are refused. Both paths
  may be on any TensorFlow file system (object stores have no links to follow).
  """
  raw = tf.io.gfile.GFile(tgz_path, "rb")
  try:
    tar = tarfile.open(fileobj=raw, mode="r:*")
  except (OSError, tarfile.TarError, tf.errors.OpError) as e:
    raw.close()
    raise cli.UsageError("--input_model_tgz=%s cannot be opened: %s"
                         % (tgz_path, str(e).splitlines()[0] if str(e) else e))
  with raw, tar:
    members = tar.getmembers()
    root = _real_path(target_dir)
    for member in members:
      path = pathlib.PurePosixPath(member.name)
      if path.is_absolute() or ".." in path.parts or member.name.startswith("\\"):
        raise cli.UsageError("--input_model_tgz=%s: member %r would land outside "
                             "--untar_model_dir; refused" % (tgz_path, member.name))
      if not (member.isfile() or member.isdir()):
        raise cli.UsageError("--input_model_tgz=%s: member %r is a link or special "
                             "file; refused" % (tgz_path, member.name))
      destination = _real_path(os.path.join(root, *path.parts))
      if destination != root and not destination.startswith(root + "/"):
        raise cli.UsageError("--input_model_tgz=%s: member %r would land outside "
                             "--untar_model_dir; refused" % (tgz_path, member.name))
    tf.io.gfile.makedirs(root)
    for member in members:
      destination = os.path.join(root, *pathlib.PurePosixPath(member.name).parts)
      if member.isdir():
        tf.io.gfile.makedirs(destination)
        continue
      tf.io.gfile.makedirs(os.path.dirname(destination))
      with tar.extractfile(member) as source, \
          tf.io.gfile.GFile(destination, "wb") as sink:
        shutil.copyfileobj(source, sink)
  model_dirs = [d for d, _, files in tf.io.gfile.walk(root)
                if run_dir.MODEL_FLAGS_FILE in files]
  if len(model_dirs) != 1:
    raise cli.UsageError("--input_model_tgz=%s holds %d model directories (with %s); "
                         "expected one" % (tgz_path, len(model_dirs),
                                           run_dir.MODEL_FLAGS_FILE))
  return model_dirs[0]


def _real_path(path):
  """A local path with every link resolved; a URL normalised (no links there)."""
  if file_io.is_local(path):
    return os.path.realpath(path)
  scheme, rest = path.split("://", 1)
  return scheme + "://" + posixpath.normpath(rest)


def ranks_segments(model_dir, served=None):
  """Whether this command writes the Class,Segments CSV: --segment_labels when given,
  else the mode the run (or the served file) recorded."""
  if FLAGS["segment_labels"].present:
    return FLAGS.segment_labels
  if served:
    return served.cfg.segment_labels
  return bool(model_dir) and run_dir.load(model_dir, model_flag_name()).segment_labels


def validate_flags():
  """Checks the flags before any graph is built; raises UsageError naming one."""
  sources = [name for name in ("train_dir", "input_model_tgz", "saved_model",
                               "tflite_model") if FLAGS[name].value]
  if len(sources) != 1:
    raise cli.UsageError("give exactly one of --train_dir, --input_model_tgz, "
                         "--saved_model, --tflite_model (got %s)"
                         % (", ".join("--" + s for s in sources) or "none"))
  if FLAGS.output_model_tgz and (FLAGS.saved_model or FLAGS.tflite_model):
    raise cli.UsageError("--output_model_tgz packs a checkpoint: use it with "
                         "--train_dir or --input_model_tgz")
  if FLAGS.bf16 and FLAGS.tflite_model:
    raise cli.UsageError("--bf16 is TensorFlow's rewrite of a checkpoint's graph; "
                         "--tflite_model runs the file's own precision")
  if not FLAGS.output_file and not FLAGS.output_model_tgz:
    raise cli.UsageError("--output_file is required")
  if FLAGS.output_file and not FLAGS.input_data_pattern:
    raise cli.UsageError("--input_data_pattern is required with --output_file")
  if FLAGS.skip_corrupt_records:
    raise cli.UsageError("--skip_corrupt_records is for train.py and eval.py: "
                         "inference never drops a video")
  file_io.check_file_systems({
      "--train_dir": FLAGS.train_dir, "--input_model_tgz": FLAGS.input_model_tgz,
      "--untar_model_dir": FLAGS.untar_model_dir, "--saved_model": FLAGS.saved_model,
      "--tflite_model": FLAGS.tflite_model,
      "--output_model_tgz": FLAGS.output_model_tgz, "--output_file": FLAGS.output_file,
      "--vocabulary": FLAGS.vocabulary, "--input_data_pattern": FLAGS.input_data_pattern})
  if FLAGS.segment_labels and FLAGS.saved_model:
    raise cli.UsageError("--segment_labels ranks segments per rated class: use "
                         "--train_dir or --input_model_tgz (a SavedModel serves each "
                         "segment's top classes over all classes)")
  if FLAGS.segment_labels and FLAGS.vocabulary:
    raise cli.UsageError("--vocabulary names a video's classes; the Class,Segments "
                         "CSV of --segment_labels lists segments per class")
  tgz = FLAGS.input_model_tgz
  if tgz and (not tf.io.gfile.exists(tgz) or tf.io.gfile.isdir(tgz)):
    raise cli.UsageError("--input_model_tgz=%s does not exist" % FLAGS.input_model_tgz)


def main(unused_argv):
  validate_flags()
  names = vocabulary.load(FLAGS.vocabulary) if FLAGS.vocabulary else None
  model_dir = FLAGS.train_dir
  if FLAGS.input_model_tgz:
    model_dir = safe_untar(FLAGS.input_model_tgz, FLAGS.untar_model_dir)
  checkpoint = None  # looked up once: a moved run's note is said once
  if FLAGS.output_model_tgz:
    run_dir.load(model_dir, model_flag_name())
    checkpoint = run_dir.latest_checkpoint(model_dir, model_flag_name())
    pack_model(model_dir, FLAGS.output_model_tgz, checkpoint)
  if not FLAGS.output_file:
    return 0
  files = readers.list_data_files(FLAGS.input_data_pattern, "--input_data_pattern")
  served = None
  if FLAGS.tflite_model:
    served = tflite_model.TFLiteModel(FLAGS.tflite_model, FLAGS.tflite_threads)
    served.check_command(FLAGS)
  if ranks_segments(model_dir, served):
    count = rank_segments_from_checkpoint(model_dir, files, FLAGS.output_file,
                                          checkpoint, served)
    print("Wrote the Class,Segments CSV of %d segments to %s" % (count,
                                                                 FLAGS.output_file))
    return 0
  with contextlib.ExitStack() as outputs:
    output = outputs.enter_context(file_io.atomic_output(FLAGS.output_file))
    names_output = (outputs.enter_context(
        file_io.atomic_output(names_path(FLAGS.output_file))) if names else None)
    writer = PredictionWriter(output, names_output, names)
    if FLAGS.saved_model:
      count = predict_from_saved_model(FLAGS.saved_model, files, writer)
    else:
      count = predict_from_checkpoint(model_dir, files, writer, checkpoint, served)
  print("Wrote %d videos to %s%s" % (count, FLAGS.output_file,
                                     " and " + names_path(FLAGS.output_file)
                                     if names else ""))
  return 0


if __name__ == "__main__":
  tf1.disable_eager_execution()
  cli.run_main(main)
