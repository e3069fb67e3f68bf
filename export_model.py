"""Exports a run's model as a TensorFlow SavedModel for serving.

The serving signature ("serving_default") takes serialized frame-level
`tf.train.SequenceExample` records (video-level `tf.train.Example` records for a
video-level model) and returns, per record:
  video_id       [B] string
  class_indexes  [B, 20] int32, the top classes by descending score
  predictions    [B, 20] float32, their scores
A run trained with --segment_labels serves every --segment_size-frame segment of the
records instead (one row per segment, B = the segments of the records), and adds
  segment_start_time  [B] int32, the segment's first frame
It loads with tf.compat.v1.saved_model.load (graph mode) and tf.saved_model.load (TF2).

--tflite=float32|dynamic|int8 also writes <output_dir>/model.tflite and its sidecar
model.tflite.json (see tflite_export.py): the role's model from the reader's frames to
its class probabilities, for serving on CPUs. They appear with the SavedModel, at once.

  python export_model.py --train_dir=<run dir> --output_dir=<saved model dir>
"""

import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

import tensorflow as tf  # noqa: E402

import cli  # noqa: E402
import config  # noqa: E402,F401  (the graph flags: --role, ...)
import file_io  # noqa: E402
import inference_graph  # noqa: E402
import kd_model  # noqa: E402
import readers  # noqa: E402
import run_dir  # noqa: E402
import tflite_export  # noqa: E402

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS

flags.DEFINE_string("train_dir", "", "The run directory to export (written by train.py).")
flags.DEFINE_string("checkpoint", "", "Export this checkpoint instead of the latest.")
flags.DEFINE_string("output_dir", "", "Where to write the SavedModel (replaced atomically "
                    "on a local disk if it exists).")
flags.DEFINE_enum("tflite", "", ("",) + tflite_export.MODES,
                  "Also write <output_dir>/model.tflite (TensorFlow Lite) and its "
                  "sidecar model.tflite.json: float32; dynamic (int8 weights, float "
                  "activations); int8 (int8 weights and activations, calibrated on "
                  "--calibration_data_pattern). Empty: no file.")
flags.DEFINE_string("calibration_data_pattern", "",
                    "--tflite=int8: training records to calibrate the activations on "
                    "(never the ones the model is evaluated on).")
flags.DEFINE_integer("calibration_batches", 8, "--tflite=int8: batches of "
                     "--batch_size records to calibrate on.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "--tflite=int8: records per calibration batch.",
                     lower_bound=1)

SIGNATURE_INPUT = "examples"
SAVED_MODEL_FILE = "saved_model.pb"
SERVING_TOP_K = 20


def build_serving_outputs(cfg, serialized, role, top_k=SERVING_TOP_K):
  """The run's model in inference mode on serialized records [B] string.

  Returns:
    dict video_id [B] string, class_indexes [B, k] int32, predictions [B, k] float32.
  """
  reader = readers.get_reader(cfg, dequantize=False, require_labels=False,
                              student_only=role == kd_model.STUDENT)
  outputs = inference_graph.top_k_outputs(cfg, reader.parse_batch(serialized), role,
                                          top_k, with_labels=False)
  served = {"video_id": tf.identity(outputs["video_ids"], name="video_id"),
            "class_indexes": tf.identity(outputs["top_indices"], name="class_indexes"),
            "predictions": tf.identity(outputs["top_scores"], name="predictions")}
  if "segment_start_times" in outputs:
    served["segment_start_time"] = tf.identity(outputs["segment_start_times"],
                                               name="segment_start_time")
  return served


def export(model_dir, cfg, checkpoint, output_dir, role, tflite=None):
  """Writes the SavedModel of `checkpoint` to output_dir, replacing what is there.

  The model is written to a staging directory next to output_dir and moved into place
  only when complete (see replace_directory for what that means where).
  tflite: None, or the keyword arguments of tflite_export.export besides cfg, role,
    checkpoint and output_dir (mode=...): model.tflite and its sidecar are then written
    into the staging directory too, so they appear with the SavedModel.
  """
  graph = tf.Graph()
  with graph.as_default():
    serialized = tf1.placeholder(tf.string, [None], name="serialized_examples")
    outputs = build_serving_outputs(cfg, serialized, role)
    variables = tf1.global_variables()
    saver = tf1.train.Saver(variables)
    parent = os.path.dirname(file_io.absolute(output_dir))
    tf.io.gfile.makedirs(parent)
    # Checked before the staging directory exists, so a bad checkpoint leaves nothing.
    run_dir.check_checkpoint_matches(variables, checkpoint, "checkpoint")
    staging = _staging_directory(output_dir, "")
    try:
      with tf1.Session() as sess:
        run_dir.restore_checkpoint(saver, sess, checkpoint)
        builder = tf1.saved_model.Builder(os.path.join(staging, "model"))
        signature = tf1.saved_model.predict_signature_def(
            inputs={SIGNATURE_INPUT: serialized}, outputs=outputs)
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.tag_constants.SERVING],
            signature_def_map={"serving_default": signature},
            saver=tf1.train.Saver(variables, sharded=True))
        builder.save()
      extra = os.path.join(staging, "model", "assets.extra")
      tf.io.gfile.makedirs(extra)
      file_io.copy_file(run_dir.flags_path(model_dir),
                        os.path.join(extra, run_dir.MODEL_FLAGS_FILE))
      if tflite:
        tflite_export.export(cfg, role, checkpoint, os.path.join(staging, "model"),
                             **tflite)
      replace_directory(os.path.join(staging, "model"), output_dir)
    finally:
      _remove_quietly(staging)


def _staging_directory(target, kind):
  """A new hidden directory next to `target`: .<name>.<kind><random>."""
  parent = os.path.dirname(file_io.absolute(target))
  prefix = "." + os.path.basename(target) + "." + kind
  if file_io.is_local(target):
    return tempfile.mkdtemp(prefix=prefix, dir=parent)
  staging = file_io.temporary_name(os.path.join(parent, prefix), suffix="")
  tf.io.gfile.makedirs(staging)
  return staging


def _remove_quietly(directory):
  """Deletes a staging directory if it is there (nothing to report if not)."""
  try:
    file_io.remove_tree(directory)
  except (OSError, tf.errors.OpError):
    pass


def replace_directory(source, target):
  """Moves directory `source` to `target`, replacing an existing target.

  On a local disk, at every moment `target` is either the old complete directory,
  absent for the instant between two renames, or the new complete one. Elsewhere
  (gs://) directories cannot be renamed at once: see move_tree.
  """
  if not (file_io.is_local(source) and file_io.is_local(target)):
    _replace_remote_directory(source, target)
    return
  old = None
  if os.path.exists(target):
    old = _staging_directory(target, "old.")
    os.rename(target, os.path.join(old, "previous"))
  os.rename(source, target)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def _replace_remote_directory(source, target):
  """replace_directory off the local disk: file by file, saved_model.pb (what a loader
  looks for first) leaving the old model first and joining the new one last. So
  whenever `target` holds a saved_model.pb, every file it needs is there; between the
  moves a reader can find an incomplete directory without one."""
  old = None
  if tf.io.gfile.exists(target):
    old = _staging_directory(target, "old.")
    move_tree(target, os.path.join(old, "previous"), SAVED_MODEL_FILE)
  move_tree(source, target, last=SAVED_MODEL_FILE)
  if old:
    _remove_quietly(old)


def move_tree(source, target, first=None, last=None):
  """Moves every file under directory `source` to the same place under `target`, one
  file at a time (object stores rename objects, not directories); the file named
  `first` (relative to source) moves before the others, `last` after them."""
  files = sorted(os.path.join(directory, name)[len(source):].lstrip("/")
                 for directory, _, names in tf.io.gfile.walk(source) for name in names)
  files.sort(key=lambda name: (name != first, name == last))
  for name in files:
    destination = os.path.join(target, name)
    tf.io.gfile.makedirs(os.path.dirname(destination))
    file_io.replace_file(os.path.join(source, name), destination)
  _remove_quietly(source)


def main(unused_argv):
  if not FLAGS.train_dir:
    raise cli.UsageError("--train_dir is required (a run directory of train.py)")
  if not FLAGS.output_dir:
    raise cli.UsageError("--output_dir is required (where the SavedModel goes)")
  file_io.check_file_systems({"--train_dir": FLAGS.train_dir,
                              "--checkpoint": FLAGS.checkpoint,
                              "--output_dir": FLAGS.output_dir,
                              "--calibration_data_pattern":
                                  FLAGS.calibration_data_pattern})
  cfg = run_dir.load(FLAGS.train_dir)
  role = cfg.role(FLAGS.role)
  checkpoint = run_dir.chosen_checkpoint(FLAGS.train_dir, FLAGS.checkpoint)
  tflite = None
  if FLAGS.tflite:
    # Refusals come before anything is written.
    tflite_export.check_exportable(cfg, role, FLAGS.tflite,
                                   FLAGS.calibration_data_pattern)
    tflite = dict(mode=FLAGS.tflite,
                  calibration_pattern=FLAGS.calibration_data_pattern,
                  calibration_batches_wanted=FLAGS.calibration_batches,
                  batch_size=FLAGS.batch_size)
  export(FLAGS.train_dir, cfg, checkpoint, FLAGS.output_dir, role, tflite)
  print("Exported the %s of %s (%s) to %s%s" % (
      role, FLAGS.train_dir, os.path.basename(checkpoint), FLAGS.output_dir,
      " with %s (%s)" % (tflite_export.TFLITE_FILE, FLAGS.tflite) if tflite else ""))
  return 0


if __name__ == "__main__":
  tf1.disable_eager_execution()
  cli.run_main(main)
