"""Evaluates a run's checkpoints on validation shards: Hit@1, PERR, mAP, GAP, loss.

The graph is rebuilt from the run's model_flags.json (model, scope, k, frame sampling,
preprocessing); a KD run is evaluated as its student unless --role=teacher. Every
record of --eval_data_pattern counts exactly once. Results go to the console (the
starter's summary line), TensorBoard (<train_dir>/eval) and <train_dir>/eval.jsonl.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

import tensorflow as tf  # noqa: E402

import eval_util  # noqa: E402
import kd_model  # noqa: E402
import losses  # noqa: E402
import readers  # noqa: E402
import utils  # noqa: E402

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS

flags.DEFINE_string("train_dir", "", "The run directory to evaluate (written by "
                    "train.py: <train_dir>_teacher, _student_k_<k> or _KD_k_<k>).")
flags.DEFINE_string("eval_data_pattern", "", "File glob defining the evaluation dataset "
                    "(comma-separated globs allowed).")
flags.DEFINE_integer("batch_size", 256, "How many examples to process per batch.")
flags.DEFINE_integer("num_readers", 8, "How many files to read in parallel.")
flags.DEFINE_bool("run_once", False, "Whether to run eval only once.")
flags.DEFINE_integer("top_k", 20, "How many predictions per video count for GAP.")
flags.DEFINE_string("checkpoint", "", "Evaluate this checkpoint (prefix) only instead of "
                    "the run's checkpoints.")
flags.DEFINE_integer("eval_interval_secs", 60, "Without --run_once: seconds between "
                     "looks for a new checkpoint.")

EVAL_FILE = "eval.jsonl"


class EvalGraph(object):
  """The inference-mode model over one unshuffled pass of the data, with top-k in graph."""

  def __init__(self, role, preprocessing_kind):
    self.graph = tf.Graph()
    with self.graph.as_default():
      reader = readers.get_reader(dequantize=False)
      self.skipped = readers.skipped_records_from_flags()
      dataset = readers.make_dataset(reader, FLAGS.eval_data_pattern, FLAGS.batch_size,
                                     FLAGS.num_readers, num_epochs=1, shuffle=False,
                                     flag_name="--eval_data_pattern", skipped=self.skipped)
      iterator = tf1.data.make_initializable_iterator(dataset)
      self.initializer = iterator.initializer
      batch = iterator.get_next()
      outputs = kd_model.inference_outputs(batch, role, preprocessing_kind)
      self.fetches = top_k_fetches(outputs["predictions"], batch["labels"], FLAGS.top_k)
      self.fetches["loss"] = losses.get_label_loss(FLAGS.label_loss).calculate_loss(
          outputs["predictions"], batch["labels"])
      self.variables = tf1.global_variables()
      self.saver = tf1.train.Saver(self.variables)
      self.local_init = tf1.local_variables_initializer()
      self.graph.finalize()


def top_k_fetches(predictions, labels, top_k):
  """The arguments of EvaluationMetrics.accumulate_top_k, computed in the graph.

  K = max(top_k, most labels of a video in the batch), so PERR sees every video's n
  best classes. Returns a dict of [B, K] / [B] / [C] tensors.
  """
  num_classes = tf.shape(predictions)[1]
  num_positives = tf.reduce_sum(labels, axis=1)
  k = tf.minimum(tf.maximum(top_k, tf.cast(tf.reduce_max(num_positives), tf.int32)),
                 num_classes)
  top_scores, top_indices = tf.math.top_k(predictions, k=k, sorted=True)
  return {"top_scores": top_scores, "top_indices": top_indices,
          "top_is_positive": tf.gather(labels, top_indices, batch_dims=1),
          "num_positives": num_positives,
          "class_positive_counts": tf.reduce_sum(labels, axis=0)}


def evaluate_checkpoint(model, checkpoint, config):
  """Runs one pass over the data with `checkpoint`; returns (global step, metrics)."""
  metrics = eval_util.EvaluationMetrics(FLAGS.num_classes, FLAGS.top_k)
  start = time.time()
  kd_model.check_checkpoint_matches(model.variables, checkpoint, "checkpoint")
  with tf1.Session(graph=model.graph, config=config) as sess:
    utils.restore_checkpoint(model.saver, sess, checkpoint)
    sess.run([model.local_init, model.initializer])
    while True:
      try:
        out = sess.run(model.fetches)
      except tf.errors.OutOfRangeError:
        break
      metrics.accumulate_top_k(out["top_scores"], out["top_indices"],
                               out["top_is_positive"], out["num_positives"],
                               out["class_positive_counts"], out["loss"])
    skipped = model.skipped.report(sess) if model.skipped else None
  if not metrics.num_examples:
    raise utils.UsageError("--eval_data_pattern=%s holds no records"
                           % FLAGS.eval_data_pattern)
  result = metrics.get()
  result["examples_per_second"] = result["num_examples"] / (time.time() - start)
  if skipped:
    result["skipped_records"], result["cut_shards"] = skipped
  return checkpoint_step(checkpoint), result


def checkpoint_step(checkpoint):
  """The global step stored in a checkpoint (0 when it has none)."""
  try:
    return int(tf.train.load_variable(checkpoint, "global_step"))
  except (tf.errors.NotFoundError, ValueError):
    return 0


def report(step, metrics, checkpoint, role):
  """Prints the starter's summary line; writes TensorBoard scalars and eval.jsonl."""
  print(utils.FormatEvalInfo(step, metrics, metrics["examples_per_second"]), flush=True)
  if "skipped_records" in metrics:
    print("--skip_corrupt_records: %d corrupt records and the unreadable rest of %d "
          "damaged shards are not in these metrics" % (metrics["skipped_records"],
                                                       metrics["cut_shards"]), flush=True)
  summary_dir = "eval_" + FLAGS.role if FLAGS.role else "eval"
  writer = tf1.summary.FileWriterCache.get(os.path.join(FLAGS.train_dir, summary_dir))
  utils.AddScalarSummaries(writer, {
      "Eval/GAP": metrics["gap"], "Eval/mAP_all_classes": metrics["map_all_classes"],
      "Eval/mAP_labelled_classes": metrics["map_labelled_classes"],
      "Eval/Hit@1": metrics["avg_hit_at_one"], "Eval/PERR": metrics["avg_perr"],
      "Eval/loss": metrics["avg_loss"]}, step)
  utils.append_jsonl(os.path.join(FLAGS.train_dir, EVAL_FILE), {
      "step": step, "checkpoint": os.path.basename(checkpoint), "role": role,
      "gap": float(metrics["gap"]),
      "map_all_classes": float(metrics["map_all_classes"]),
      "map_labelled_classes": float(metrics["map_labelled_classes"]),
      "hit_at_one": float(metrics["avg_hit_at_one"]),
      "perr": float(metrics["avg_perr"]), "loss": float(metrics["avg_loss"]),
      "num_examples": int(metrics["num_examples"]),
      "skipped_records": metrics.get("skipped_records"), "bf16": FLAGS.bf16,
      "data": FLAGS.eval_data_pattern, "time": time.time()})


def checkpoints_to_evaluate():
  """Yields checkpoint prefixes: --checkpoint, the latest (--run_once), or each new one."""
  if FLAGS.checkpoint:
    if not kd_model.checkpoint_exists(FLAGS.checkpoint):
      raise utils.UsageError("--checkpoint=%s does not exist" % FLAGS.checkpoint)
    yield FLAGS.checkpoint
    return
  if FLAGS.run_once:
    yield kd_model.latest_checkpoint(FLAGS.train_dir)
    return
  last = None
  while True:
    checkpoint = tf1.train.latest_checkpoint(FLAGS.train_dir)
    if checkpoint and checkpoint != last:
      last = checkpoint
      yield checkpoint
    else:
      time.sleep(FLAGS.eval_interval_secs)


def main(unused_argv):
  if not FLAGS.train_dir:
    raise utils.UsageError("--train_dir is required (a run directory of train.py)")
  if not FLAGS.eval_data_pattern:
    raise utils.UsageError("--eval_data_pattern is required")
  if FLAGS.batch_size <= 0:
    raise utils.UsageError("--batch_size must be positive, got %d" % FLAGS.batch_size)
  if FLAGS.top_k <= 0:
    raise utils.UsageError("--top_k must be positive, got %d" % FLAGS.top_k)
  recorded = kd_model.load_run(FLAGS.train_dir)
  role = kd_model.role_to_use()
  readers.list_data_files(FLAGS.eval_data_pattern, "--eval_data_pattern")
  print("Evaluating the %s of %s (model_type %s, %s, k_frame %d)" % (
      role, FLAGS.train_dir, FLAGS.model_type, FLAGS.model, FLAGS.k_frame), flush=True)
  model = EvalGraph(role, recorded["preprocessing"])
  config = utils.session_config()
  for checkpoint in checkpoints_to_evaluate():
    try:
      result = evaluate_newest_complete(model, checkpoint, config)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
      raise readers.data_error(e, readers.get_reader(), FLAGS.eval_data_pattern,
                               "--eval_data_pattern")
    if result:
      report(result[0], result[1], result[2], role)
  return 0


def evaluate_newest_complete(model, checkpoint, config, attempts=5):
  """Evaluates `checkpoint`; if a running training deletes it meanwhile, moves on.

  With --run_once it retries with the then-latest checkpoint; while waiting for new
  checkpoints it returns None (the next one will come). Returns (step, metrics,
  checkpoint) or None.
  """
  for _ in range(attempts):
    try:
      step, metrics = evaluate_checkpoint(model, checkpoint, config)
      return step, metrics, checkpoint
    except (tf.errors.NotFoundError, utils.UsageError) as e:
      if kd_model.checkpoint_exists(checkpoint):
        raise e if isinstance(e, utils.UsageError) else utils.UsageError(
            "cannot restore %s: %s" % (checkpoint, str(e).splitlines()[0]))
      if FLAGS.checkpoint:
        raise utils.UsageError("--checkpoint=%s disappeared while being read"
                               % checkpoint)
      if not FLAGS.run_once:
        return None
      checkpoint = kd_model.latest_checkpoint(FLAGS.train_dir)
  raise utils.UsageError("checkpoints of %s kept disappearing while being read"
                         % FLAGS.train_dir)


if __name__ == "__main__":
  tf1.disable_eager_execution()
  utils.run_main(main)
