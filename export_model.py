"""Exports a run's model as a TensorFlow SavedModel for serving.

The serving signature ("serving_default") takes serialized frame-level
`tf.train.SequenceExample` records (video-level `tf.train.Example` records for a
video-level model) and returns, per record:
  video_id       [B] string
  class_indexes  [B, 20] int32, the top classes by descending score
  predictions    [B, 20] float32, their scores
It loads with tf.compat.v1.saved_model.load (graph mode) and tf.saved_model.load (TF2).

  python export_model.py --train_dir=<run dir> --output_dir=<saved model dir>
"""

import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

import tensorflow as tf  # noqa: E402

import config  # noqa: E402,F401  (the graph flags: --role, ...)
import inference_graph  # noqa: E402
import kd_model  # noqa: E402
import readers  # noqa: E402
import run_dir  # noqa: E402
import utils  # noqa: E402

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS

flags.DEFINE_string("train_dir", "", "The run directory to export (written by train.py).")
flags.DEFINE_string("checkpoint", "", "Export this checkpoint instead of the latest.")
flags.DEFINE_string("output_dir", "", "Where to write the SavedModel (replaced atomically "
                    "if it exists).")

SIGNATURE_INPUT = "examples"
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
  return {"video_id": tf.identity(outputs["video_ids"], name="video_id"),
          "class_indexes": tf.identity(outputs["top_indices"], name="class_indexes"),
          "predictions": tf.identity(outputs["top_scores"], name="predictions")}


def export(model_dir, cfg, checkpoint, output_dir, role):
  """Writes the SavedModel of `checkpoint` to output_dir, replacing it atomically.

  The model is written to a temporary directory next to output_dir and renamed into
  place only when complete, so output_dir never holds a half-written model.
  """
  graph = tf.Graph()
  with graph.as_default():
    serialized = tf1.placeholder(tf.string, [None], name="serialized_examples")
    outputs = build_serving_outputs(cfg, serialized, role)
    variables = tf1.global_variables()
    saver = tf1.train.Saver(variables)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    # Checked before the staging directory exists, so a bad checkpoint leaves nothing.
    run_dir.check_checkpoint_matches(variables, checkpoint, "checkpoint")
    staging = tempfile.mkdtemp(prefix="." + os.path.basename(output_dir) + ".", dir=parent)
    try:
      with tf1.Session() as sess:
        utils.restore_checkpoint(saver, sess, checkpoint)
        builder = tf1.saved_model.Builder(os.path.join(staging, "model"))
        signature = tf1.saved_model.predict_signature_def(
            inputs={SIGNATURE_INPUT: serialized}, outputs=outputs)
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.tag_constants.SERVING],
            signature_def_map={"serving_default": signature},
            saver=tf1.train.Saver(variables, sharded=True))
        builder.save()
      extra = os.path.join(staging, "model", "assets.extra")
      os.makedirs(extra, exist_ok=True)
      shutil.copy(run_dir.flags_path(model_dir), extra)
      replace_directory(os.path.join(staging, "model"), output_dir)
    finally:
      shutil.rmtree(staging, ignore_errors=True)


def replace_directory(source, target):
  """Moves directory `source` to `target`, replacing an existing target.

  At every moment `target` is either the old complete directory, absent for the
  instant between two renames, or the new complete one.
  """
  old = None
  if os.path.exists(target):
    old = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".old.",
                           dir=os.path.dirname(os.path.abspath(target)))
    os.rename(target, os.path.join(old, "previous"))
  os.rename(source, target)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def main(unused_argv):
  if not FLAGS.train_dir:
    raise utils.UsageError("--train_dir is required (a run directory of train.py)")
  if not FLAGS.output_dir:
    raise utils.UsageError("--output_dir is required (where the SavedModel goes)")
  cfg = run_dir.load(FLAGS.train_dir)
  role = cfg.role(FLAGS.role)
  checkpoint = run_dir.chosen_checkpoint(FLAGS.train_dir, FLAGS.checkpoint)
  export(FLAGS.train_dir, cfg, checkpoint, FLAGS.output_dir, role)
  print("Exported the %s of %s (%s) to %s" % (role, FLAGS.train_dir,
                                               os.path.basename(checkpoint),
                                               FLAGS.output_dir))
  return 0


if __name__ == "__main__":
  tf1.disable_eager_execution()
  utils.run_main(main)
