"""Trains a teacher, a k-frame student baseline, or a distilled k-frame student.

The documented recipe is three runs of the same command:
  --model_type=teacher --k_frame=300   -> <train_dir>_teacher
  --model_type=teacher --k_frame=6     -> <train_dir>_student_k_6   (baseline; or
                                          --model_type=student)
  --model_type=KD      --k_frame=30    -> <train_dir>_KD_k_30, student distilled from
                                          the latest checkpoint of <train_dir>_teacher
Towers: one per visible GPU up to --num_gpu (on the CPU: one tower). Distributed
training follows TF_CONFIG (ps / master / worker), as the starter code did.
"""

import contextlib
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import config  # noqa: E402
import eval_util  # noqa: E402
import inference_graph  # noqa: E402
import kd_model  # noqa: E402
import preprocessing  # noqa: E402
import readers  # noqa: E402
import run_dir  # noqa: E402
import teacher_cache  # noqa: E402
import utils  # noqa: E402

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
                    "or directory). Default: latest checkpoint of <train_dir>_teacher.")
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

# Testing aid: run N towers on N logical CPU devices (no GPU needed).
CPU_TOWERS_ENV = "YT8M_CPU_TOWERS"
VALIDATION_FILE = "validation.jsonl"
VALIDATION_TOP_K = 20  # eval.py's --top_k default
PCA_VARIABLE = "input_preprocessing/rgb_scale"
# First value the non-finite checks print: TensorFlow's error text names neither the
# Assert op nor its scope, so this string is how a diverged step is recognised.
NON_FINITE_MARKER = "finite_loss_check: loss or gradient not finite"


def resolve_train_dir(cfg):
  """The run directory of this run: --train_dir plus the run-kind suffix."""
  base = FLAGS.train_dir.rstrip("/") or "."
  return base + cfg.run_dir_suffix()


def max_steps():
  """--max_steps or --max_step (they must agree when both are given); None: no cap."""
  if (FLAGS.max_steps is not None and FLAGS.max_step is not None and
      FLAGS.max_steps != FLAGS.max_step):
    raise utils.UsageError("--max_steps=%d and --max_step=%d disagree; give one"
                           % (FLAGS.max_steps, FLAGS.max_step))
  return FLAGS.max_steps if FLAGS.max_steps is not None else FLAGS.max_step


def validate_flags():
  """Every check that needs no graph and no data (absl checked each flag on its own).

  Returns:
    the GraphConfig of the flags.
  Raises:
    UsageError naming a flag.
  """
  if not FLAGS.train_data_pattern:
    raise utils.UsageError("--train_data_pattern is required")
  utils.check_file_systems({
      "--train_dir": FLAGS.train_dir, "--train_data_pattern": FLAGS.train_data_pattern,
      "--eval_data_pattern": FLAGS.eval_data_pattern,
      "--teacher_checkpoint": FLAGS.teacher_checkpoint,
      "--teacher_cache": FLAGS.teacher_cache, "--pca_eigenvals": FLAGS.pca_eigenvals})
  max_steps()
  if not isinstance(getattr(tf1.train, FLAGS.optimizer, None), type):
    raise utils.UsageError("--optimizer=%s is not a tf.compat.v1.train optimizer "
                           "(e.g. AdamOptimizer)" % FLAGS.optimizer)
  cfg = config.from_flags()
  if FLAGS.teacher_cache and cfg.model_type != "KD":
    raise utils.UsageError("--teacher_cache holds a teacher's outputs for KD: it needs "
                           "--model_type=KD")
  if FLAGS.teacher_cache and cfg.kd_mode == "parallel":
    raise utils.UsageError("--teacher_cache cannot serve --kd_mode=parallel: there the "
                           "teacher trains, so its outputs change at every step")
  if FLAGS.build_teacher_cache_only and not FLAGS.teacher_cache:
    raise utils.UsageError("--build_teacher_cache_only needs --teacher_cache")
  readers.list_data_files(FLAGS.train_data_pattern, "--train_data_pattern")
  if FLAGS.eval_data_pattern:
    readers.list_data_files(FLAGS.eval_data_pattern, "--eval_data_pattern")
  return cfg


class Task(object):
  """This process's role in TF_CONFIG (or a lone master when it is not set)."""

  def __init__(self):
    try:
      config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    except ValueError as e:
      raise utils.UsageError("TF_CONFIG is not valid JSON: %s" % e)
    task = config.get("task") or {"type": "master", "index": 0}
    self.type = task.get("type", "master")
    self.index = int(task.get("index", 0))
    cluster = config.get("cluster")
    self.cluster = tf1.train.ClusterSpec(cluster) if cluster else None
    if self.cluster and self.type not in self.cluster.jobs:
      raise utils.UsageError("TF_CONFIG task type %r is not a job of its cluster %s"
                             % (self.type, self.cluster.jobs))
    has_master = self.cluster is not None and "master" in self.cluster.jobs
    self.is_chief = self.index == 0 and (
        self.type == "master" or (self.type == "worker" and not has_master))

  def start_server(self):
    """Starts this task's tf.train.Server (distributed runs only)."""
    return tf1.train.Server(self.cluster, job_name=self.type, task_index=self.index)


def tower_devices():
  """(device names of the towers, session config) for this machine."""
  cpu_towers = int(os.environ.get(CPU_TOWERS_ENV, "0") or 0)
  session_config = utils.session_config(FLAGS.bf16,
                                        log_device_placement=FLAGS.log_device_placement)
  if cpu_towers > 0:
    session_config.device_count["CPU"] = cpu_towers
    print("Testing aid %s=%d: %d towers on logical CPU devices."
          % (CPU_TOWERS_ENV, cpu_towers, cpu_towers))
    return ["/cpu:%d" % i for i in range(cpu_towers)], session_config
  gpus = tf.config.list_physical_devices("GPU")
  if not gpus:
    print("No GPU found: training on the CPU with one tower.")
    return ["/cpu:0"], session_config
  count = max(1, min(FLAGS.num_gpu, len(gpus)))
  print("Training with %d GPU towers (of %d visible)." % (count, len(gpus)))
  return ["/gpu:%d" % i for i in range(count)], session_config


_VARIABLE_OPS = frozenset(["Variable", "VariableV2", "VarHandleOp", "AutoReloadVariable"])


def _tower_device_fn(compute_device, variable_device):
  """Places variables on `variable_device` (shared by towers), other ops on the tower."""
  def device_fn(op):
    if op.device:
      return op.device
    return variable_device if op.type in _VARIABLE_OPS else compute_device
  return device_fn


def prepare_run_dir(cfg, train_dir, is_chief, cache=None):
  """Wipes (--start_new_model) or checks a resumed run dir; writes model_flags.json.

  cache: the TeacherCache of an offline KD run, or None.
  Raises:
    UsageError when resuming a run whose recorded model flags differ from these.
  """
  if not is_chief:
    return
  if FLAGS.start_new_model and tf.io.gfile.exists(train_dir):
    print("--start_new_model: removing %s" % train_dir)
    utils.remove_tree(train_dir)
  tf.io.gfile.makedirs(train_dir)
  recorded = run_dir.read_recorded(train_dir)
  if recorded is None:
    utils.write_json(run_dir.flags_path(train_dir), cfg.to_json())
    return
  # Read back through GraphConfig: fields an older version did not record compare as
  # the defaults they had.
  recorded = config.from_json(recorded, run_dir.flags_path(train_dir)).to_json()
  if cache and named_by_earlier_digest(recorded["teacher_cache"], cache):
    recorded["teacher_cache"] = cfg.teacher_cache
  conflicts = config.conflicts(recorded, cfg.to_json())
  if conflicts:
    raise utils.UsageError(
        "%s was trained with other model flags (%s); resume with the same flags or "
        "pass --start_new_model=True" % (train_dir, "; ".join(conflicts)))


def named_by_earlier_digest(record, cache):
  """Whether `record` (the teacher_cache of a run's model_flags.json) names `cache` by
  the digest an earlier version gave it, which hashed the teacher checkpoint's path
  (the one the record holds) too; today's leaves the path out."""
  return bool(record and record.get("teacher_checkpoint")) and (
      record.get("digest") == teacher_cache.digest(cache.fingerprint,
                                                   record["teacher_checkpoint"]))


def resolve_teacher_checkpoint():
  """The checkpoint prefix the KD student learns from (serial mode).

  Raises:
    UsageError naming the flag or directory when there is no usable checkpoint.
  """
  path = FLAGS.teacher_checkpoint
  if not path:
    directory = FLAGS.train_dir.rstrip("/") + "_teacher"
    checkpoint = run_dir.find_checkpoint(directory)
    if not checkpoint:
      raise utils.UsageError(
          "KD needs a trained teacher: no checkpoint in %s (train it first with "
          "--model_type=teacher --k_frame=%d, or pass --teacher_checkpoint)"
          % (directory, FLAGS.max_frames))
    return checkpoint
  # A prefix first: ram:// calls any prefix of a file name (model.ckpt-N) a directory.
  if run_dir.checkpoint_exists(path):
    return path
  if not tf.io.gfile.isdir(path):
    raise utils.UsageError("--teacher_checkpoint=%s does not exist" % path)
  checkpoint = run_dir.find_checkpoint(path)
  if not checkpoint:
    raise utils.UsageError("--teacher_checkpoint=%s: no checkpoint in that directory"
                           % path)
  return checkpoint


def resolve_preprocessing(cfg, train_dir, teacher_checkpoint):
  """cfg with its preprocessing settled when the command line leaves --pca_eigenvals at
  its default.

  PCA scaling became the default after runs had been written without it. So that those
  keep working with the command that made them, a resumed run keeps the preprocessing
  its model_flags.json records, and a fresh serial-KD run follows its teacher's
  checkpoint. A --pca_eigenvals given on the command line is taken as it is (and a
  mismatch is refused later, naming both).
  """
  if FLAGS["pca_eigenvals"].present or cfg.preprocessing != preprocessing.PCA:
    return cfg
  recorded = None if FLAGS.start_new_model else run_dir.read_recorded(train_dir)
  if recorded is not None:
    source = "as recorded in " + run_dir.flags_path(train_dir)
    scaled = recorded.get("preprocessing") == preprocessing.PCA
  elif teacher_checkpoint:
    source = "as the teacher %s was trained" % teacher_checkpoint
    scaled = PCA_VARIABLE in run_dir.checkpoint_variables(teacher_checkpoint)
  else:
    return cfg
  if scaled:
    return cfg
  print("Preprocessing: none (no PCA scaling), %s; pass --pca_eigenvals to choose"
        % source, flush=True)
  return cfg.replace(preprocessing=preprocessing.NONE)


def check_teacher_preprocessing(checkpoint, rgb_scale):
  """The teacher must have been trained on the same preprocessed inputs."""
  stored = run_dir.checkpoint_variables(checkpoint)
  name = PCA_VARIABLE
  if (name in stored) != (rgb_scale is not None):
    raise utils.UsageError(
        "the teacher %s was trained %s --pca_eigenvals but this run is %s it"
        % (checkpoint, "with" if name in stored else "without",
           "with" if rgb_scale is not None else "without"))
  if rgb_scale is not None:
    if not np.allclose(run_dir.checkpoint_reader(checkpoint).get_tensor(name),
                       rgb_scale):
      raise utils.UsageError("the teacher %s was trained with other --pca_eigenvals "
                             "values than %s" % (checkpoint, FLAGS.pca_eigenvals))


def reader_input(cfg, global_batch, skipped=None, start_step=0, cache=None):
  """Shuffled training batches of --train_data_pattern (uint8 frames).

  With --seed the record order is fixed, and a run resumed at start_step skips the
  batches its first start_step steps read, so it sees the batches an uninterrupted run
  would have seen. With a teacher cache each record comes with its video's cached
  teacher outputs (teacher_predictions, teacher_representation). When the student
  trains alone (baseline, or KD from a cache), only its frames are decoded, except for
  --frame_sampling=random, whose training draws (per step, from the graph seed) are
  made in the model.
  """
  student_only = (cfg.roles() == (kd_model.STUDENT,)
                  and cfg.frame_sampling != "random")
  batch = readers.get_input_data_tensors(
      readers.get_reader(cfg, dequantize=False, student_only=student_only),
      FLAGS.train_data_pattern, global_batch,
      FLAGS.num_readers, FLAGS.num_epochs, shuffle=True, seed=FLAGS.seed,
      flag_name="--train_data_pattern", skipped=skipped,
      skip_batches=start_step if FLAGS.seed is not None else 0,
      companions=cache.paths_by_file() if cache else None)
  if cache:
    batch["teacher_predictions"], batch["teacher_representation"] = cache.decode(
        batch.pop("companion"), batch["video_ids"])
  return batch


class TrainGraph(object):
  """Every tensor and op the training loop runs, built once and then finalized."""

  def __init__(self, cfg, devices, task, rgb_scale, teacher_checkpoint, input_fn=None,
               start_step=0, cache=None):
    """
    Args:
      cfg: the GraphConfig.
      devices: tower device names.
      task: this process's Task.
      rgb_scale: PCA scale (numpy [1024]) or None.
      teacher_checkpoint: prefix to restore teacher/ from at a fresh start, or None.
      input_fn: callable(global batch size) -> batch dict; default: the reader over
        --train_data_pattern (benchmarks pass in-graph random input).
      start_step: the global step the run resumes at (see reader_input); a
        distributed run's workers read on their own and do not skip.
      cache: the TeacherCache of an offline KD run (cfg.teacher_cache), or None.
    """
    self.cache = cache
    self.start_step = 0 if task.cluster is not None else start_step
    self.cfg = cfg
    self.graph = tf.Graph()
    self.num_towers = len(devices)
    self.examples_per_step = FLAGS.batch_size * self.num_towers
    with self.graph.as_default():
      if FLAGS.seed is not None:
        tf1.set_random_seed(FLAGS.seed)
      setter = None
      if task.cluster is not None:
        setter = tf1.train.replica_device_setter(
            ps_tasks=len(task.cluster.job_tasks("ps")) if "ps" in task.cluster.jobs
            else 0, worker_device="/job:%s/task:%d" % (task.type, task.index),
            cluster=task.cluster)
      with tf1.device(setter):
        self.global_step = tf1.train.get_or_create_global_step()
        batch = self._input(input_fn)
        optimizer, loss_scaling = self._optimizer(devices)
        towers = self._towers(devices, batch, rgb_scale, distributed=setter is not None)
        train_vars = [v for role in cfg.trained_roles()
                      for v in tf1.trainable_variables(scope=role + "/")]
        grads, grad_norm = self._gradients(devices, towers, optimizer, train_vars)
        self._summarize(towers)
        self._train_op(optimizer, grads, grad_norm, loss_scaling)
        self._finite_weights(train_vars)
        # Relative paths in the state file: the run directory can move (README).
        self.saver = tf1.train.Saver(max_to_keep=5, save_relative_paths=True)
        self.init_fn = self._teacher_restore(teacher_checkpoint)
        self.validation = (ValidationGraph(cfg) if FLAGS.eval_data_pattern else None)

  def _input(self, input_fn):
    """The global batch: input_fn's, or shuffled reader batches (with skip counters)."""
    self.skipped = None
    with tf.name_scope("train_input"):
      if input_fn:
        batch = input_fn(self.examples_per_step)
      else:
        self.skipped = readers.SkippedRecords() if FLAGS.skip_corrupt_records else None
        batch = reader_input(self.cfg, self.examples_per_step, self.skipped,
                             self.start_step, self.cache)
    self.labels = batch["labels"]
    return batch

  def _optimizer(self, devices):
    """(--optimizer at the decayed learning rate, whether it scales the loss)."""
    self.learning_rate = tf1.train.exponential_decay(
        FLAGS.base_learning_rate,
        tf.cast(self.global_step, tf.float32) * self.examples_per_step,
        FLAGS.learning_rate_decay_examples, FLAGS.learning_rate_decay, staircase=True)
    optimizer = getattr(tf1.train, FLAGS.optimizer)(self.learning_rate)
    # --bf16 on GPUs is float16: it needs dynamic loss scaling, and the wrapper skips the
    # steps whose scaled gradients overflow (so those are not a divergence).
    loss_scaling = FLAGS.bf16 and devices[0].startswith("/gpu")
    if loss_scaling:
      optimizer = tf1.mixed_precision.enable_mixed_precision_graph_rewrite(optimizer)
    return optimizer, loss_scaling

  def _towers(self, devices, batch, rgb_scale, distributed):
    """One kd_model.tower_loss per device on its slice of the batch; their term dicts."""
    tower_batches = [dict(zip(batch, values)) for values in zip(
        *[tf.split(tensor, self.num_towers) for tensor in batch.values()])]
    # Variables live with the single tower, or on the CPU shared by several towers.
    variable_device = devices[0] if self.num_towers == 1 else "/cpu:0"
    towers = []
    for i, (device, tower_batch) in enumerate(zip(devices, tower_batches)):
      placement = device if distributed else _tower_device_fn(device, variable_device)
      with tf1.device(placement), tf.name_scope("tower_%d" % i):
        towers.append(kd_model.tower_loss(self.cfg, tower_batch, reuse=i > 0,
                                          training_scale=rgb_scale, seed=FLAGS.seed))
    return towers

  def _gradients(self, devices, towers, optimizer, train_vars):
    """Tower gradients averaged and clipped per tensor; (grads, a finite-iff norm)."""
    tower_grads = []
    for device, terms in zip(devices, towers):
      with tf1.device(device):
        tower_grads.append(optimizer.compute_gradients(
            terms["total"], var_list=train_vars, colocate_gradients_with_ops=True))
    grads = utils.combine_gradients(tower_grads)
    if FLAGS.clip_gradient_norm > 0:
      grads, norms = utils.clip_gradient_norms(grads, FLAGS.clip_gradient_norm)
      return grads, tf.add_n(norms)  # sum of per-tensor norms: finite iff every one is
    return grads, tf.linalg.global_norm([g for g, _ in grads])

  def _summarize(self, towers):
    """loss_terms (tower means), predictions of the global batch, the loss-scale note."""
    self.loss_scale_note = None
    if "representation" in towers[0]:  # KD
      self.loss_scale_note = kd_model.loss_scale_note(
          self.cfg, FLAGS.batch_size, int(towers[0]["representation"].shape[-1]))
    self.loss_terms = {}
    for name in towers[0]:
      if name not in ("predictions", "representation"):
        self.loss_terms[name] = tf.add_n([t[name] for t in towers]) / self.num_towers
    self.predictions = tf.concat([t["predictions"] for t in towers], axis=0)

  def _train_op(self, optimizer, grads, grad_norm, loss_scaling):
    """train_op: a finite-loss check, then the update and the batch-norm updates."""
    # A diverged step fails here, before any weight changes, so the last checkpoint
    # stays good and training stops with a message naming the step.
    finite = tf.math.is_finite(self.loss_terms["total"])
    if not loss_scaling:
      finite = tf.logical_and(finite, tf.math.is_finite(grad_norm))
    finite = tf.debugging.Assert(
        finite, [NON_FINITE_MARKER, self.loss_terms["total"], grad_norm],
        name="finite_loss_check")
    with tf.control_dependencies([finite]):
      grads = [(tf.identity(g), v) for g, v in grads]
      updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
      apply = optimizer.apply_gradients(grads, global_step=self.global_step)
      self.train_op = tf.group(apply, *updates)
    with tf.control_dependencies([self.train_op]):
      self.step_after_update = tf.identity(self.global_step.read_value())

  def _finite_weights(self, train_vars):
    """weights_finite: whether every trained variable is finite (checked before saves).

    An update can overflow even from a finite gradient (a huge learning rate). Each
    check runs where its variable lives (a parameter server sends one bool).
    """
    finite_vars = []
    for v in train_vars:
      with tf1.colocate_with(v):
        finite_vars.append(tf.reduce_all(tf.math.is_finite(v)))
    self.weights_finite = tf.reduce_all(finite_vars)

  def _teacher_restore(self, teacher_checkpoint):
    """The Scaffold init_fn restoring teacher/ from its checkpoint (serial KD), or None."""
    if not teacher_checkpoint:
      return None
    teacher_vars = kd_model.teacher_variables()
    run_dir.check_checkpoint_matches(teacher_vars, teacher_checkpoint,
                                     "the teacher checkpoint")
    teacher_saver = tf1.train.Saver(var_list={v.op.name: v for v in teacher_vars})
    return lambda scaffold, sess: teacher_saver.restore(sess, teacher_checkpoint)


class ValidationGraph(object):
  """An inference-mode copy of the trained model over --eval_data_pattern, built by the
  same inference_graph.top_k_outputs as eval.py's."""

  def __init__(self, cfg):
    self.cfg = cfg
    with tf.name_scope("validation"):
      self.skipped = readers.SkippedRecords() if FLAGS.skip_corrupt_records else None
      _, self.initializer, batch = inference_graph.input_batches(
          cfg, cfg.role(), FLAGS.eval_data_pattern, FLAGS.batch_size, FLAGS.num_readers,
          "--eval_data_pattern", skipped=self.skipped)
      self.fetches = inference_graph.top_k_outputs(cfg, batch, cfg.role(),
                                                   VALIDATION_TOP_K, with_labels=True,
                                                   reuse=True)

  def run(self, session):
    """Evaluates every validation video once; returns the metrics dict (or None)."""
    return inference_graph.evaluate(session, self.fetches, self.cfg.num_classes,
                                    VALIDATION_TOP_K, initializer=self.initializer,
                                    skipped=self.skipped)


class PromptWorkerSessionCreator(tf1.train.WorkerSessionCreator):
  """A worker that looks every second (not every 30 s) whether the chief has
  initialized the variables, so it starts training right after the chief."""

  def _get_session_manager(self):
    if not self._session_manager:
      self._session_manager = tf1.train.SessionManager(
          local_init_op=self._scaffold.local_init_op,
          local_init_feed_dict=self._scaffold.local_init_feed_dict,
          ready_op=self._scaffold.ready_op,
          ready_for_local_init_op=self._scaffold.ready_for_local_init_op,
          graph=tf1.get_default_graph(), recovery_wait_secs=1)
    return self._session_manager


class FiniteWeightsBeforeSave(tf1.train.CheckpointSaverListener):
  """Refuses to checkpoint weights that are not finite; training stops instead."""

  def __init__(self, weights_finite, train_dir):
    self.weights_finite = weights_finite
    self.train_dir = train_dir

  def before_save(self, session, global_step_value):
    if not session.run(self.weights_finite):
      raise utils.UsageError(
          "training stopped at step %d: the updated weights are not finite (diverged); "
          "the last good checkpoint in %s is kept" % (global_step_value, self.train_dir))


class StepLogger(object):
  """Console lines and TensorBoard scalars every --log_every_n_steps steps."""

  def __init__(self, train_dir, examples_per_step, steps_cap, is_chief):
    # The writer the checkpoint hook uses too: two writers opened in the same second
    # would share one events file name and corrupt it.
    self.writer = tf1.summary.FileWriterCache.get(train_dir) if is_chief else None
    self.train_dir = train_dir
    self.examples_per_step = examples_per_step
    self.steps_cap = steps_cap
    self.last_time = None
    self.last_step = None

  def start(self, step):
    """Marks the start of the loop at `step` (for the examples/s rate)."""
    self.last_time, self.last_step = time.time(), step

  def log(self, step, values, predictions, labels):
    """Writes one console line and the summaries for `step` (after a training step)."""
    now = time.time()
    rate = (step - self.last_step) * self.examples_per_step / max(now - self.last_time,
                                                                  1e-9)
    self.last_time, self.last_step = now, step
    scalars = {"losses/" + k: float(v) for k, v in values["loss_terms"].items()}
    scalars["learning_rate"] = float(values["learning_rate"])
    scalars["examples_per_second"] = rate
    scalars["training/hit_at_one"] = eval_util.calculate_hit_at_one(predictions, labels)
    scalars["training/gap"] = eval_util.calculate_gap(predictions, labels)
    line = "step %d | loss %.4f" % (step, values["loss_terms"]["total"])
    for name in ("label_loss", "pred_loss", "rep_loss"):
      if name in values["loss_terms"]:
        line += " | %s %.4f" % (name, values["loss_terms"][name])
    line += " | hit@1 %.3f | gap %.3f | %.1f examples/s" % (
        scalars["training/hit_at_one"], scalars["training/gap"], rate)
    if self.steps_cap and rate > 0:
      left = (self.steps_cap - step) * self.examples_per_step / rate
      line += " | %s left" % time.strftime("%H:%M:%S", time.gmtime(max(left, 0)))
    print(line, flush=True)
    if self.writer:
      utils.AddScalarSummaries(self.writer, scalars, step)

  def log_validation(self, step, metrics):
    """The validation record: console, TensorBoard (validation/<metric>) and
    validation.jsonl, written as eval.py writes its own."""
    if not self.writer:
      return
    if metrics is None:
      print("validation: --eval_data_pattern=%s holds no records"
            % FLAGS.eval_data_pattern, flush=True)
      return
    inference_graph.report_metrics("validation", step, metrics, self.writer,
                                   os.path.join(self.train_dir, VALIDATION_FILE))

  def close(self):
    if self.writer:
      self.writer.flush()


def train(cfg, train_dir, task, server, rgb_scale, teacher_checkpoint, cache=None,
          resume_from=None):
  """Builds the graph and runs the training loop until max steps or end of data.

  teacher_checkpoint: where a fresh serial-KD run restores teacher/ from (else None).
  cache: the TeacherCache an offline KD run reads (else None).
  resume_from: the checkpoint of train_dir the run resumes from
    (run_dir.find_checkpoint), or None for a fresh start.
  """
  devices, session_config = tower_devices()
  if task.cluster is not None:
    # Talk only to the parameter servers and ourselves: a worker must not wait for
    # other workers (a finished chief would otherwise block a late worker forever).
    session_config.device_filters.extend(["/job:ps", "/job:%s/task:%d"
                                          % (task.type, task.index)])
  start_step = run_dir.checkpoint_step(resume_from) if resume_from else 0
  model = TrainGraph(cfg, devices, task, rgb_scale, teacher_checkpoint,
                     start_step=start_step, cache=cache)
  if model.loss_scale_note:
    print(model.loss_scale_note, flush=True)
  steps_cap = max_steps()

  with model.graph.as_default():
    scaffold = tf1.train.Scaffold(saver=model.saver, init_fn=model.init_fn)
    master = server.target if server else ""
    if task.is_chief:
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
          train_dir, save_steps=FLAGS.export_model_steps, scaffold=scaffold,
          listeners=[FiniteWeightsBeforeSave(model.weights_finite, train_dir)])]
    else:
      creator = PromptWorkerSessionCreator(scaffold=scaffold, master=master,
                                           config=session_config)
      hooks = []
    logger = StepLogger(train_dir, model.examples_per_step, steps_cap, task.is_chief)
    fetches = {"global_step": model.step_after_update,
               "loss_terms": model.loss_terms, "learning_rate": model.learning_rate}
    detail_fetches = dict(fetches, predictions=model.predictions, labels=model.labels)
    step = None
    try:
      with readers.data_errors_named(readers.get_reader(cfg), FLAGS.train_data_pattern,
                                     "--train_data_pattern"), \
          graph_failures_named(lambda: step, train_dir), \
          tf1.train.MonitoredSession(session_creator=creator, hooks=hooks) as sess:
        step = sess.run(model.global_step)
        print("Starting at step %d%s." % (step, " (resumed)" if resume_from else ""),
              flush=True)
        logger.start(step)
        try:
          while not sess.should_stop() and (steps_cap is None or step < steps_cap):
            detailed = (step + 1) % FLAGS.log_every_n_steps == 0
            values = sess.run(detail_fetches if detailed else fetches)
            step = values["global_step"]
            if detailed:
              logger.log(step, values, values["predictions"], values["labels"])
            if (model.validation and task.is_chief and
                step % FLAGS.export_model_steps == 0):
              metrics = sess.run_step_fn(
                  lambda step_context: model.validation.run(step_context.session))
              logger.log_validation(step, metrics)
        except tf.errors.OutOfRangeError as e:
          if _write_failure(e):  # a checkpoint that did not fit, not the data's end
            raise
          print("End of the training data (--num_epochs=%d)." % FLAGS.num_epochs)
        if model.skipped:
          skipped, cut = sess.run_step_fn(
              lambda step_context: model.skipped.report(step_context.session))
          print("--skip_corrupt_records: skipped %d corrupt records and the unreadable "
                "rest of %d damaged shards" % (skipped, cut), flush=True)
    finally:
      logger.close()
  print("Done training at step %s; checkpoints in %s" % (step, train_dir))


# What the operating system says when a checkpoint or event file cannot be written.
WRITE_FAILURES = ("No space left on device", "File too large", "Disk quota exceeded")


def _write_failure(error):
  """The reason a file write failed, when `error` is one; else None."""
  return next((reason for reason in WRITE_FAILURES if reason in str(error)), None)


@contextlib.contextmanager
def graph_failures_named(current_step, train_dir):
  """A failure the user can act on becomes one line: a checkpoint that could not be
  written (full disk, file-size limit) names the run directory, a non-finite loss
  (NON_FINITE_MARKER) the step, a record without a teacher-cache entry the cache."""
  try:
    yield
  except tf.errors.OpError as e:
    reason = _write_failure(e)
    if reason:
      raise utils.UsageError(
          "training stopped at step %d: cannot write to %s (%s); the last complete "
          "checkpoint there is kept" % (current_step() or 0, train_dir, reason))
    if not isinstance(e, tf.errors.InvalidArgumentError):
      raise
    if teacher_cache.NO_ENTRY_MARKER in str(e):
      raise utils.UsageError(
          "--teacher_cache=%s has no entry for a record of --train_data_pattern (the "
          "files changed after it was built?); build the cache again in another "
          "directory" % FLAGS.teacher_cache)
    if NON_FINITE_MARKER not in str(e):
      raise
    raise utils.UsageError(
        "training stopped at step %d: the loss or its gradient is not finite "
        "(diverged, or NaN/Inf in the input); the last good checkpoint in %s is "
        "kept" % ((current_step() or 0) + 1, train_dir))


def open_teacher_cache(cfg, teacher_checkpoint, rgb_scale):
  """The --teacher_cache of this teacher and these training files, built if needed.

  Raises:
    UsageError when the directory holds a cache of other inputs.
  """
  files = readers.list_data_files(FLAGS.train_data_pattern, "--train_data_pattern")
  cache = teacher_cache.TeacherCache(
      FLAGS.teacher_cache, teacher_cache.fingerprint(cfg, teacher_checkpoint, rgb_scale,
                                                     files, FLAGS.teacher_cache_dtype))
  cache.claim()
  cache.build(cfg, teacher_checkpoint, rgb_scale, FLAGS.batch_size,
              FLAGS.skip_corrupt_records, FLAGS.bf16)
  return cache


def main(unused_argv):
  cfg = validate_flags()
  if FLAGS.visible_gpu:
    os.environ["CUDA_VISIBLE_DEVICES"] = FLAGS.visible_gpu
  train_dir = resolve_train_dir(cfg)
  print("Run directory: %s" % train_dir, flush=True)
  task = Task()
  server = None
  if task.cluster is not None:
    server = task.start_server()
    if task.type == "ps":
      print("Parameter server %d serving." % task.index, flush=True)
      server.join()
      return 0
  # Resolved once: where the run resumes from, its start step and whether it needs a
  # teacher all follow from this one checkpoint (and a moved run's note says so once).
  resume_from = None if FLAGS.start_new_model else run_dir.find_checkpoint(train_dir)
  teacher_checkpoint = None
  # The teacher is resolved before the run directory is touched, so a KD run without
  # a usable teacher leaves nothing behind. Offline KD needs it to check its cache.
  if (cfg.model_type == "KD" and cfg.kd_mode == "serial" and
      (FLAGS.teacher_cache or not resume_from)):
    teacher_checkpoint = resolve_teacher_checkpoint()
    print("Teacher: %s" % teacher_checkpoint)
  cfg = resolve_preprocessing(cfg, train_dir, teacher_checkpoint)
  rgb_scale = (preprocessing.load_rgb_scale(FLAGS.pca_eigenvals)
               if cfg.preprocessing == preprocessing.PCA else None)
  if teacher_checkpoint:
    check_teacher_preprocessing(teacher_checkpoint, rgb_scale)
  cache = None
  if FLAGS.teacher_cache:
    cache = open_teacher_cache(cfg, teacher_checkpoint, rgb_scale)
    if FLAGS.build_teacher_cache_only:
      return 0
    # The training graph has no teacher: nothing to restore.
    cfg = cfg.replace(teacher_cache=cache.record())
    teacher_checkpoint = None
  # The chief writes the run directory: one chief at a time (held until exit).
  run_lock = run_dir.lock(train_dir) if task.is_chief else None  # noqa: F841
  prepare_run_dir(cfg, train_dir, task.is_chief, cache)
  train(cfg, train_dir, task, server, rgb_scale, teacher_checkpoint, cache,
        resume_from)
  return 0


if __name__ == "__main__":
  tf1.disable_eager_execution()
  utils.run_main(main)
