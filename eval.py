"""Evaluates a run's checkpoints on validation shards: Hit@1, PERR, mAP, GAP, loss.

The graph is rebuilt from the run's model_flags.json (model, scope, k, frame sampling,
preprocessing); a KD run is evaluated as its student unless --role=teacher. Every
record of --eval_data_pattern counts exactly once. Results go to the console (the
starter's summary line), TensorBoard (<train_dir>/eval, tags eval/<metric>) and
<train_dir>/eval.jsonl.

With --tflite_model (a file of export_model.py --tflite) instead of --train_dir, the
file's model is evaluated once through the same reader and metrics; the line names
its quantization, and nothing is written.
"""

import os
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
import tflite_model  # noqa: E402

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS

flags.DEFINE_string("train_dir", "", "The run directory to evaluate (written by "
                    "train.py: <train_dir>_teacher, _student_k_<k> or _KD_k_<k>).")
flags.DEFINE_string("eval_data_pattern", "", "File glob defining the evaluation dataset "
                    "(comma-separated globs allowed).")
flags.DEFINE_integer("batch_size", 256, "How many examples to process per batch.",
                     lower_bound=1)
flags.DEFINE_integer("num_readers", 8, "How many files to read in parallel.",
                     lower_bound=1)
flags.DEFINE_bool("run_once", False, "Whether to run eval only once.")
flags.DEFINE_integer("top_k", 20, "How many predictions per video count for GAP.",
                     lower_bound=1)
flags.DEFINE_string("checkpoint", "", "Evaluate this checkpoint (prefix) only instead of "
                    "the run's checkpoints.")
flags.DEFINE_integer("eval_interval_secs", 60, "Without --run_once: seconds between "
                     "looks for a new checkpoint.")
flags.DEFINE_integer("progress_every_secs", 30, "Seconds between progress lines (videos "
                     "done, videos/s, share of the total and ETA).", lower_bound=1)

EVAL_FILE = "eval.jsonl"


def evaluate_checkpoint(model, cfg, checkpoint, num_records):
  """One pass over the data with `checkpoint`; returns (global step, metrics).

  num_records: how many records the data holds, for the progress lines.
  """
  counter = (progress.Progress(FLAGS.progress_every_secs, what="segments")
              if cfg.segment_labels else
             progress.Progress(FLAGS.progress_every_secs, num_records))
  with model.session(checkpoint, FLAGS.bf16) as sess:
    metrics = inference_graph.evaluate(sess, model.fetches, cfg.num_classes, FLAGS.top_k,
                                       skipped=model.skipped, progress=counter,
                                       what="checkpoint " + checkpoint)
  if metrics is None:
    raise cli.UsageError("--eval_data_pattern=%s holds no records"
                         % FLAGS.eval_data_pattern)
  return run_dir.checkpoint_step(checkpoint), metrics


def report(step, metrics, checkpoint, role, segment_labels):
  """The metrics record: console line, TensorBoard (<train_dir>/eval[_<role>], tags
  eval/<metric>) and <train_dir>/eval.jsonl."""
  summary_dir = "eval_" + FLAGS.role if FLAGS.role else "eval"
  writer = tf1.summary.FileWriterCache.get(os.path.join(FLAGS.train_dir, summary_dir))
  inference_graph.report_metrics(
      "eval", step, metrics, writer, os.path.join(FLAGS.train_dir, EVAL_FILE),
      checkpoint=os.path.basename(checkpoint), role=role, bf16=FLAGS.bf16,
      segment_labels=segment_labels,
      data=FLAGS.eval_data_pattern, time=time.time())


def checkpoints_to_evaluate():
  """Yields checkpoint prefixes: --checkpoint, the latest (--run_once), or each new one."""
  if FLAGS.checkpoint or FLAGS.run_once:
    yield run_dir.chosen_checkpoint(FLAGS.train_dir, FLAGS.checkpoint)
    return
  last, last_note = None, None
  while True:
    checkpoint, note = run_dir.resolve_checkpoint(FLAGS.train_dir)
    if note and note != last_note:  # once, not at every look
      print(note, flush=True)
    last_note = note
    if checkpoint and checkpoint != last:
      last = checkpoint
      yield checkpoint
    else:
      time.sleep(FLAGS.eval_interval_secs)


def evaluate_tflite(files):
  """--tflite_model: one pass of the file's model over `files`; prints the metrics."""
  if FLAGS.train_dir or FLAGS.checkpoint:
    raise cli.UsageError("give --tflite_model or --train_dir/--checkpoint, not both")
  if FLAGS.bf16:
    raise cli.UsageError("--bf16 is TensorFlow's rewrite of a checkpoint's graph; "
                         "--tflite_model runs the file's own precision")
  served = tflite_model.TFLiteModel(FLAGS.tflite_model, FLAGS.tflite_threads)
  served.check_command(FLAGS)
  cfg = served.cfg
  print("Evaluating %s in %s%s" % (
      served.describe(), FLAGS.tflite_model,
      " on rated %d-frame segments (only rated classes count)" % cfg.segment_size
      if cfg.segment_labels else ""), flush=True)
  model = inference_graph.InferenceGraph(
      cfg, served.role, files, FLAGS.batch_size, FLAGS.num_readers, FLAGS.top_k,
      with_labels=True, skip_corrupt_records=FLAGS.skip_corrupt_records, served=served)
  counter = progress.Progress(FLAGS.progress_every_secs,
                              None if cfg.segment_labels else
                              readers.count_records(files.paths),
                              what="segments" if cfg.segment_labels else "videos")
  with readers.data_errors_named(model.reader, files), model.session(None) as sess:
    metrics = inference_graph.evaluate(sess, model.fetches, cfg.num_classes, FLAGS.top_k,
                                       skipped=model.skipped, progress=counter,
                                       what=FLAGS.tflite_model)
  if metrics is None:
    raise cli.UsageError("--eval_data_pattern=%s holds no records"
                         % FLAGS.eval_data_pattern)
  inference_graph.report_metrics("eval (%s)" % served.quantization,
                                 served.step, metrics,
                                 None, None)
  return 0


def main(unused_argv):
  if not FLAGS.eval_data_pattern:
    raise cli.UsageError("--eval_data_pattern is required")
  if FLAGS.tflite_model:
    file_io.check_file_systems({"--tflite_model": FLAGS.tflite_model,
                                "--eval_data_pattern": FLAGS.eval_data_pattern})
    return evaluate_tflite(
        readers.list_data_files(FLAGS.eval_data_pattern, "--eval_data_pattern"))
  if not FLAGS.train_dir:
    raise cli.UsageError("--train_dir is required (a run directory of train.py), or "
                         "--tflite_model")
  file_io.check_file_systems({"--train_dir": FLAGS.train_dir,
                              "--eval_data_pattern": FLAGS.eval_data_pattern,
                              "--checkpoint": FLAGS.checkpoint})
  cfg = config.with_command_segments(run_dir.load(FLAGS.train_dir))
  role = cfg.role(FLAGS.role)
  files = readers.list_data_files(FLAGS.eval_data_pattern, "--eval_data_pattern")
  print("Evaluating the %s of %s (model_type %s, %s, %s)%s" % (
      role, FLAGS.train_dir, cfg.model_type, cfg.model_config(role).model,
      "k_frame %d" % cfg.k_frame if cfg.frame_features else "video-level features",
      " on rated %d-frame segments (only rated classes count)" % cfg.segment_size
      if cfg.segment_labels else ""), flush=True)
  model = inference_graph.InferenceGraph(
      cfg, role, files, FLAGS.batch_size, FLAGS.num_readers, FLAGS.top_k,
      with_labels=True, skip_corrupt_records=FLAGS.skip_corrupt_records)
  # The total for the progress lines (with --skip_corrupt_records, an upper bound).
  num_records = readers.count_records(files.paths)
  for checkpoint in checkpoints_to_evaluate():
    with readers.data_errors_named(model.reader, files):
      result = evaluate_newest_complete(model, cfg, checkpoint, num_records)
    if result:
      report(*result, role=role, segment_labels=cfg.segment_labels)
  return 0


def evaluate_newest_complete(model, cfg, checkpoint, num_records, attempts=5):
  """Evaluates `checkpoint`; if a running training deletes it meanwhile, moves on.

  With --run_once it retries with the then-latest checkpoint; while waiting for new
  checkpoints it returns None (the next one will come). Returns (step, metrics,
  checkpoint) or None.
  """
  for _ in range(attempts):
    try:
      step, metrics = evaluate_checkpoint(model, cfg, checkpoint, num_records)
      return step, metrics, checkpoint
    except (tf.errors.NotFoundError, cli.UsageError) as e:
      if run_dir.checkpoint_exists(checkpoint):
        raise e if isinstance(e, cli.UsageError) else cli.UsageError(
            "cannot restore %s: %s" % (checkpoint, str(e).splitlines()[0]))
      if FLAGS.checkpoint:
        raise cli.UsageError("--checkpoint=%s disappeared while being read"
                             % checkpoint)
      if not FLAGS.run_once:
        return None
      checkpoint = run_dir.latest_checkpoint(FLAGS.train_dir)
  raise cli.UsageError("checkpoints of %s kept disappearing while being read"
                       % FLAGS.train_dir)


if __name__ == "__main__":
  tf1.disable_eager_execution()
  cli.run_main(main)
