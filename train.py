"""Trains a teacher, a k-frame student baseline, or a distilled k-frame student.

The documented recipe is three runs of the same command:
  --model_type=teacher --k_frame=300   -> <train_dir>_teacher
  --model_type=teacher --k_frame=6     -> <train_dir>_student_k_6   (baseline; or
                                          --model_type=student)
  --model_type=KD      --k_frame=30    -> <train_dir>_KD_k_30, student distilled from
                                          the latest checkpoint of <train_dir>_teacher
In KD the model flags describe the student; the teacher's model is the one its run
directory records. This module is the CLI: it resolves the flags once into a
GraphConfig and a TrainConfig, the run directory, the teacher and its cache, then runs
the loop over the graph train_graph.TrainGraph builds (cluster.py: where it runs).
training_run.resolve settles the run's whole description once, before anything is
written.
"""

import contextlib
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

import tensorflow as tf  # noqa: E402

import cli  # noqa: E402
import cluster  # noqa: E402
import config  # noqa: E402
import file_io  # noqa: E402
import inference_graph  # noqa: E402
import kd_model  # noqa: E402
import progress  # noqa: E402
import readers  # noqa: E402
import run_dir  # noqa: E402
import teacher_cache  # noqa: E402
import train_graph  # noqa: E402
import training_run  # noqa: E402

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS

flags.DEFINE_string("train_dir", "/tmp/yt8m_model/",
                    "Base of the run directory: the run writes <train_dir>_teacher, "
                    "<train_dir>_student_k_<k> or <train_dir>_KD_k_<k>.")
flags.DEFINE_string("train_data_pattern", "",
                    "File glob for the training dataset (comma-separated globs allowed).")
flags.DEFINE_integer("batch_size", 1024, "How many examples to process per batch for "
                     "training (per tower).", lower_bound=1)
flags.DEFINE_float("base_learning_rate", 0.01, "Which learning rate to start with.")
flags.DEFINE_float("learning_rate_decay", 0.95, "Learning rate decay factor to be "
                   "applied every learning_rate_decay_examples.")
flags.DEFINE_float("learning_rate_decay_examples", 4000000, "Multiply current learning "
                   "rate by learning_rate_decay every learning_rate_decay_examples.",
                   lower_bound=1e-9)
flags.DEFINE_integer("num_epochs", 5, "How many passes to make over the dataset before "
                     "halting training.")
flags.DEFINE_integer("max_steps", None, "The maximum number of iterations of the "
                     "training loop.", lower_bound=1)
flags.DEFINE_integer("max_step", None, "Same as --max_steps (the spelling the KD "
                     "write-up's command uses).", lower_bound=1)
flags.DEFINE_integer("export_model_steps", 1000, "Checkpoint (and validate, with "
                     "--eval_data_pattern) every this many steps.", lower_bound=1)
flags.DEFINE_integer("num_readers", 8, "How many threads to use for reading input files.",
                     lower_bound=1)
flags.DEFINE_string("optimizer", "AdamOptimizer", "What optimizer class to use.")
flags.DEFINE_float("clip_gradient_norm", 1.0, "Norm to clip gradients to (per tensor).")
flags.DEFINE_bool("log_device_placement", False, "Whether to write the device on which "
                  "every op will run into the logs on startup.")
flags.DEFINE_bool("start_new_model", False, "If set, this will not resume from a "
                  "checkpoint and will instead create a new model instance.")
flags.DEFINE_integer("num_gpu", 1, "The maximum number of GPU devices (towers) to use.")
flags.DEFINE_string("visible_gpu", "", "CUDA_VISIBLE_DEVICES for this run, e.g. \"0,1\" "
                    "(set before TensorFlow touches a device).")
flags.DEFINE_string("teacher_checkpoint", "", "KD: the teacher checkpoint (file prefix "
                    "or run directory). Default: latest checkpoint of "
                    "<train_dir>_teacher. Its model is the one its run directory's "
                    "model_flags.json records; the model flags of a KD command describe "
                    "the student.")
flags.DEFINE_string("teacher_cache", "", "KD (serial): distil offline. The frozen "
                    "teacher's outputs for every training video are computed once into "
                    "this directory (or read from it when complete) and the student trains "
                    "on them: no teacher in the training graph. Students of every k share "
                    "one cache.")
flags.DEFINE_enum("teacher_cache_dtype", "float16", ["float16", "float32"],
                  "How --teacher_cache stores the teacher's outputs.")
flags.DEFINE_bool("build_teacher_cache_only", False, "Build --teacher_cache for this "
                  "teacher and --train_data_pattern, then stop without training.")
flags.DEFINE_string("eval_data_pattern", "", "Optional validation data: GAP/mAP every "
                    "--export_model_steps steps into TensorBoard and validation.jsonl.")
flags.DEFINE_integer("seed", None, "Graph-level random seed and data shuffling seed.")
flags.DEFINE_integer("log_every_n_steps", 10, "Console line and training summaries "
                     "(loss terms, Hit@1, GAP) every this many steps.", lower_bound=1)

VALIDATION_FILE = "validation.jsonl"


def max_steps(flag_values=FLAGS):
  """--max_steps or --max_step (they must agree when both are given); None: no cap."""
  steps, step = flag_values.max_steps, flag_values.max_step
  if steps is not None and step is not None and steps != step:
    raise cli.UsageError("--max_steps=%d and --max_step=%d disagree; give one"
                         % (steps, step))
  return steps if steps is not None else step


def train_config(flag_values=FLAGS):
  """The TrainConfig of train.py's flags."""
  names = [f.name for f in dataclasses.fields(config.TrainConfig)]
  values = {name: flag_values[name].value for name in names if name != "max_steps"}
  return config.TrainConfig(max_steps=max_steps(flag_values), **values)


def configs_of(argv):
  """(GraphConfig, TrainConfig) of a train.py command line (`argv` without the program
  name), parsed privately: the process's flags stay untouched. For benchmarks that
  build the documented command's graph."""
  names = config.GRAPH_FLAGS + tuple(
      f.name for f in dataclasses.fields(config.TrainConfig)
      if f.name not in config.GRAPH_FLAGS) + ("max_step",)
  private = config.private_flags(argv, names)
  return config.from_flags(private), train_config(private)


def validate_flags():
  """Every check that needs no graph and no data (absl checked each flag on its own).

  Returns:
    (GraphConfig, TrainConfig, the training and validation files (readers.DataFiles,
    listed here once; None without --eval_data_pattern), RunOptions).
  Raises:
    UsageError naming a flag.
  """
  if not FLAGS.train_data_pattern:
    raise cli.UsageError("--train_data_pattern is required")
  file_io.check_file_systems({
      "--train_dir": FLAGS.train_dir, "--train_data_pattern": FLAGS.train_data_pattern,
      "--eval_data_pattern": FLAGS.eval_data_pattern,
      "--teacher_checkpoint": FLAGS.teacher_checkpoint,
      "--teacher_cache": FLAGS.teacher_cache, "--pca_eigenvals": FLAGS.pca_eigenvals})
  train_cfg = train_config()
  cfg = config.from_flags()
  if FLAGS.teacher_cache and cfg.model_type != "KD":
    raise cli.UsageError("--teacher_cache holds a teacher's outputs for KD: it needs "
                         "--model_type=KD")
  if FLAGS.teacher_cache and cfg.kd_mode == "parallel":
    raise cli.UsageError("--teacher_cache cannot serve --kd_mode=parallel: there the "
                         "teacher trains, so its outputs change at every step")
  if FLAGS.build_teacher_cache_only and not FLAGS.teacher_cache:
    raise cli.UsageError("--build_teacher_cache_only needs --teacher_cache")
  train_files = readers.list_data_files(FLAGS.train_data_pattern,
                                        "--train_data_pattern")
  eval_files = (readers.list_data_files(FLAGS.eval_data_pattern, "--eval_data_pattern")
                if FLAGS.eval_data_pattern else None)
  options = training_run.RunOptions(
      train_dir=FLAGS.train_dir, teacher_checkpoint=FLAGS.teacher_checkpoint,
      teacher_cache=FLAGS.teacher_cache, teacher_cache_dtype=FLAGS.teacher_cache_dtype,
      pca_eigenvals=FLAGS.pca_eigenvals,
      pca_eigenvals_given=FLAGS["pca_eigenvals"].present,
      start_new_model=FLAGS.start_new_model)
  return cfg, train_cfg, train_files, eval_files, options


class FiniteWeightsBeforeSave(tf1.train.CheckpointSaverListener):
  """Refuses to checkpoint weights that are not finite; training stops instead."""

  def __init__(self, weights_finite, train_dir):
    self.weights_finite = weights_finite
    self.train_dir = train_dir

  def before_save(self, session, global_step_value):
    if not session.run(self.weights_finite):
      raise cli.UsageError(
          "training stopped at step %d: the updated weights are not finite (diverged); "
          "the last good checkpoint in %s is kept" % (global_step_value, self.train_dir))


def step_logger(run, examples_per_step, start_step, is_chief):
  """The StepLogger of a run: its ETA counts to --max_steps or the end of
  --num_epochs, whichever comes first (the epoch's size estimated from the files)."""
  train_cfg = run.train_cfg
  epochs_end = None
  examples = training_run.epoch_examples(run)
  if examples and train_cfg.num_epochs:
    count, estimated = examples
    # A seeded run resumed at start_step goes on with the batches it would have read;
    # without a seed it reads all its epochs again from there. A partial last batch
    # is dropped.
    first = 0 if train_cfg.seed is not None else start_step
    epochs_end = (first + count * train_cfg.num_epochs // examples_per_step,
                  estimated)
  end, estimated = progress.last_step(train_cfg.max_steps, epochs_end)
  # The writer the checkpoint hook uses too: two writers opened in the same second
  # would share one events file name and corrupt it.
  writer = tf1.summary.FileWriterCache.get(run.train_dir) if is_chief else None
  return progress.StepLogger(writer, examples_per_step, end, estimated)


def log_validation(run, logger, step, metrics):
  """The validation record: console, TensorBoard (validation/<metric>) and
  validation.jsonl, written as eval.py writes its own."""
  if not logger.writer:
    return
  if metrics is None:
    print("validation: --eval_data_pattern=%s holds no records"
          % run.train_cfg.eval_data_pattern, flush=True)
    return
  inference_graph.report_metrics("validation", step, metrics, logger.writer,
                                 os.path.join(run.train_dir, VALIDATION_FILE))


def train(run, cluster_task, server, task):
  """Builds the graph and runs the training loop until max steps or end of data.

  run: the training_run.TrainingRun; task: the kd_model task (kd_model.training_task).
  """
  cfg, train_cfg, train_dir, resume_from = (run.cfg, run.train_cfg, run.train_dir,
                                            run.resume_from)
  cache_dir = run.cache.directory if run.cache else ""
  devices, session_config = cluster.tower_devices(
      train_cfg.num_gpu, cfg.bf16, train_cfg.log_device_placement)
  cluster_task.restrict_session(session_config)
  model = train_graph.TrainGraph(
      cfg, train_cfg, task, devices, cluster_task,
      start_step=run_dir.checkpoint_step(resume_from) if resume_from else 0,
      train_files=run.train_files, eval_files=run.eval_files)
  if model.loss_scale_note:
    print(model.loss_scale_note, flush=True)
  steps_cap = train_cfg.max_steps

  with model.graph.as_default():
    scaffold = tf1.train.Scaffold(saver=model.saver, init_fn=model.init_fn)
    master = server.target if server else ""
    if cluster_task.is_chief:
      # The checkpoint resolved once (checkpoint_dir= would look again with TensorFlow's
      # latest_checkpoint, which misses a moved run's checkpoints and starts afresh).
      # The Saver goes on managing the checkpoints the state file lists, as
      # checkpoint_dir= would have had it.
      if resume_from:
        model.saver.recover_last_checkpoints(
            run_dir.recorded_checkpoints(train_dir, resume_from))
      creator = tf1.train.ChiefSessionCreator(scaffold=scaffold, master=master,
                                              config=session_config,
                                              checkpoint_filename_with_path=resume_from)
      hooks = [tf1.train.CheckpointSaverHook(
          train_dir, save_steps=train_cfg.export_model_steps, scaffold=scaffold,
          listeners=[FiniteWeightsBeforeSave(model.weights_finite, train_dir)])]
    else:
      creator = cluster.PromptWorkerSessionCreator(scaffold=scaffold, master=master,
                                                   config=session_config)
      hooks = []
    logger = step_logger(run, model.examples_per_step, model.start_step,
                         cluster_task.is_chief)
    fetches = {"global_step": model.step_after_update,
               "loss_terms": model.loss_terms, "learning_rate": model.learning_rate}
    detail_fetches = dict(fetches, predictions=model.predictions, labels=model.labels)
    step = None
    try:
      with readers.data_errors_named(readers.get_reader(cfg), run.train_files), \
          graph_failures_named(lambda: step, train_dir, cache_dir), \
          tf1.train.MonitoredSession(session_creator=creator, hooks=hooks) as sess:
        step = sess.run(model.global_step)
        print("Starting at step %d%s." % (step, " (resumed)" if resume_from else ""),
              flush=True)
        logger.start(step)
        try:
          while not sess.should_stop() and (steps_cap is None or step < steps_cap):
            detailed = (step + 1) % train_cfg.log_every_n_steps == 0
            values = sess.run(detail_fetches if detailed else fetches)
            step = values["global_step"]
            if detailed:
              logger.log(step, values, values["predictions"], values["labels"])
            if (model.validation and cluster_task.is_chief and
                step % train_cfg.export_model_steps == 0):
              metrics = sess.run_step_fn(
                  lambda step_context: model.validation.run(step_context.session))
              log_validation(run, logger, step, metrics)
        except tf.errors.OutOfRangeError as e:
          if _write_failure(e):  # a checkpoint that did not fit, not the data's end
            raise
          print("End of the training data (--num_epochs=%d)." % train_cfg.num_epochs)
        if model.skipped:
          skipped, cut = sess.run_step_fn(
              lambda step_context: model.skipped.report(step_context.session))
          print("--skip_corrupt_records: skipped %d corrupt records and the unreadable "
                "rest of %d damaged shards" % (skipped, cut), flush=True)
    finally:
      if logger.writer:
        logger.writer.flush()
  print("Done training at step %s; checkpoints in %s" % (step, train_dir))


# What the operating system says when a checkpoint or event file cannot be written.
# What the operating system says when a checkpoint or event file cannot be written.
WRITE_FAILURES = ("No space left on device", "File too large", "Disk quota exceeded")


def _write_failure(error):
  """The reason a file write failed, when `error` is one; else None."""
  return next((reason for reason in WRITE_FAILURES if reason in str(error)), None)


@contextlib.contextmanager
def graph_failures_named(current_step, train_dir, cache_dir=""):
  """A failure the user can act on becomes one line: a checkpoint that could not be
  written (full disk, file-size limit) names the run directory, a non-finite loss
  (NON_FINITE_MARKER) the step, a record without a teacher-cache entry the cache."""
  try:
    yield
  except tf.errors.OpError as e:
    reason = _write_failure(e)
    if reason:
      raise cli.UsageError(
          "training stopped at step %d: cannot write to %s (%s); the last complete "
          "checkpoint there is kept" % (current_step() or 0, train_dir, reason))
    if not isinstance(e, tf.errors.InvalidArgumentError):
      raise
    if teacher_cache.NO_ENTRY_MARKER in str(e):
      raise cli.UsageError(
          "--teacher_cache=%s has no entry for a record of --train_data_pattern (the "
          "files changed after it was built?); build the cache again in another "
          "directory" % cache_dir)
    if train_graph.NON_FINITE_MARKER not in str(e):
      raise
    raise cli.UsageError(
        "training stopped at step %d: the loss or its gradient is not finite "
        "(diverged, or NaN/Inf in the input); the last good checkpoint in %s is "
        "kept" % ((current_step() or 0) + 1, train_dir))


def main(unused_argv):
  cfg, train_cfg, train_files, eval_files, options = validate_flags()
  print("Run directory: %s" % training_run.run_directory(cfg, options), flush=True)
  if FLAGS.visible_gpu:
    os.environ["CUDA_VISIBLE_DEVICES"] = FLAGS.visible_gpu
  cluster_task = cluster.Task()
  server = None
  if cluster_task.distributed:
    server = cluster_task.start_server()
    if cluster_task.type == "ps":
      print("Parameter server %d serving." % cluster_task.index, flush=True)
      server.join()
      return 0
  # Everything is resolved before the run directory is touched, so a KD run without
  # a usable teacher or cache leaves nothing behind.
  run = training_run.resolve(cfg, train_cfg, train_files, eval_files, options)
  if run.cache:
    # Every task of a cluster (and any other train.py on the same --teacher_cache)
    # builds shards the others have not leased; each returns once all are complete.
    run.cache.build(run.cfg, train_cfg.batch_size, train_cfg.skip_corrupt_records,
                    run.cfg.bf16)
    if FLAGS.build_teacher_cache_only:
      return 0
  # The chief writes the run directory: one chief at a time (held until exit).
  run_lock = run_dir.lock(run.train_dir) if cluster_task.is_chief else None  # noqa: F841
  if cluster_task.is_chief:
    run_dir.prepare(run.train_dir, run.cfg, options.start_new_model)
  task = kd_model.training_task(run.cfg, teacher=run.teacher, cache=run.cache)
  train(run, cluster_task, server, task)
  return 0


if __name__ == "__main__":
  tf1.disable_eager_execution()
  cli.run_main(main)
