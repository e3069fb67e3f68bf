"""The training graph: input, towers, gradients, the update and its checks, built once.

train.py's loop runs what TrainGraph builds; benchmarks build the same graph with an
input function of their own. Everything comes in as arguments: the GraphConfig (what
is trained), the TrainConfig (how), the kd_model task (inputs, models and losses),
the tower devices and the cluster task.
"""

import tensorflow as tf

import cluster
import gradients
import inference_graph
import readers
import run_dir

tf1 = tf.compat.v1
VALIDATION_TOP_K = 20  # eval.py's --top_k default
# First value the non-finite checks print: TensorFlow's error text names neither the
# Assert op nor its scope, so this string is how a diverged step is recognised.
NON_FINITE_MARKER = "finite_loss_check: loss or gradient not finite"


class TrainGraph(object):
  """Every tensor and op the training loop runs, built once (then finalized by the
  MonitoredSession).

  Attributes: graph, global_step, train_op, step_after_update, loss_terms (tower
  means), learning_rate, predictions and labels of the global batch, weights_finite,
  saver, init_fn (the teacher's restore at a fresh start, or None), validation (a
  ValidationGraph or None), skipped (a readers.SkippedRecords or None),
  examples_per_step, loss_scale_note.
  """

  def __init__(self, cfg, train_cfg, task, devices, cluster_task=None, input_fn=None,
               start_step=0, train_files=None, eval_files=None):
    """
    Args:
      cfg: the GraphConfig.
      train_cfg: the config.TrainConfig.
      task: the kd_model task (kd_model.training_task).
      devices: tower device names.
      cluster_task: this process's cluster.Task (None: a lone process).
      input_fn: callable(global batch size) -> batch dict; default: task.input_batch
        over train_files (benchmarks pass in-graph random input).
      start_step: the global step the run resumes at (see task.input_batch); a
        distributed run's workers read on their own and do not skip.
      train_files: the readers.DataFiles of --train_data_pattern (without input_fn).
      eval_files: the readers.DataFiles of --eval_data_pattern to validate on every
        --export_model_steps steps, or None.
    """
    cluster_task = cluster_task or cluster.Task({})
    self.cfg = cfg
    self.train_cfg = train_cfg
    self.task = task
    self.train_files = train_files
    self.start_step = 0 if cluster_task.distributed else start_step
    self.graph = tf.Graph()
    self.num_towers = len(devices)
    self.examples_per_step = train_cfg.batch_size * self.num_towers
    with self.graph.as_default():
      if train_cfg.seed is not None:
        tf1.set_random_seed(train_cfg.seed)
      setter = cluster_task.device_setter()
      with tf1.device(setter):
        self.global_step = tf1.train.get_or_create_global_step()
        batch = self._input(input_fn)
        optimizer, loss_scaling = self._optimizer(devices)
        towers = self._towers(devices, batch, distributed=setter is not None)
        train_vars = task.trained_variables()
        grads, grad_norm = self._gradients(devices, towers, optimizer, train_vars)
        self._summarize(towers)
        self._train_op(optimizer, grads, grad_norm, loss_scaling)
        self._finite_weights(train_vars)
        # Relative names in the `checkpoint` state file: a run directory can move.
        self.saver = tf1.train.Saver(max_to_keep=5, save_relative_paths=True)
        self.init_fn = self._teacher_restore()
        self.validation = (ValidationGraph(cfg, train_cfg, eval_files)
                           if eval_files else None)

  def _input(self, input_fn):
    """The global batch: input_fn's, or the task's reader batches (with skip counters)."""
    self.skipped = None
    with tf.name_scope("train_input"):
      if input_fn:
        batch = input_fn(self.examples_per_step)
      else:
        self.skipped = (readers.SkippedRecords() if self.train_cfg.skip_corrupt_records
                        else None)
        batch = self.task.input_batch(self.train_cfg, self.train_files,
                                      self.examples_per_step, self.skipped,
                                      self.start_step)
    self.labels = batch["labels"]
    self.label_weights = batch.get("label_weights")
    return batch

  def _optimizer(self, devices):
    """(--optimizer at the decayed learning rate, whether it scales the loss)."""
    train_cfg = self.train_cfg
    self.learning_rate = tf1.train.exponential_decay(
        train_cfg.base_learning_rate,
        tf.cast(self.global_step, tf.float32) * self.examples_per_step,
        train_cfg.learning_rate_decay_examples, train_cfg.learning_rate_decay,
        staircase=True)
    optimizer = getattr(tf1.train, train_cfg.optimizer)(self.learning_rate)
    # --bf16 on GPUs is float16: it needs dynamic loss scaling, and the wrapper skips the
    # steps whose scaled gradients overflow (so those are not a divergence).
    loss_scaling = self.cfg.bf16 and devices[0].startswith("/gpu")
    if loss_scaling:
      optimizer = tf1.mixed_precision.enable_mixed_precision_graph_rewrite(optimizer)
    return optimizer, loss_scaling

  def _towers(self, devices, batch, distributed):
    """One task.tower per device on its slice of the batch; their term dicts."""
    tower_batches = [dict(zip(batch, values)) for values in zip(
        *[tf.split(tensor, self.num_towers) for tensor in batch.values()])]
    towers = []
    for i, (device, tower_batch) in enumerate(zip(devices, tower_batches)):
      with tf1.device(cluster.tower_placement(device, devices, distributed)), \
          tf.name_scope("tower_%d" % i):
        towers.append(self.task.tower(tower_batch, reuse=i > 0,
                                      seed=self.train_cfg.seed))
    return towers

  def _gradients(self, devices, towers, optimizer, train_vars):
    """Tower gradients averaged and clipped per tensor; (grads, a finite-iff norm)."""
    tower_grads = []
    for device, terms in zip(devices, towers):
      with tf1.device(device):
        tower_grads.append(optimizer.compute_gradients(
            terms["total"], var_list=train_vars, colocate_gradients_with_ops=True))
    grads = gradients.combine_gradients(tower_grads)
    if self.train_cfg.clip_gradient_norm > 0:
      grads, norms = gradients.clip_gradient_norms(grads,
                                                   self.train_cfg.clip_gradient_norm)
      return grads, tf.add_n(norms)  # sum of per-tensor norms: finite iff every one is
    return grads, tf.linalg.global_norm([g for g, _ in grads])

  def _summarize(self, towers):
    """loss_terms (tower means), predictions of the global batch, the loss-scale note."""
    self.loss_scale_note = self.task.loss_scale_note(self.train_cfg.batch_size)
    self.loss_terms = {}
    for name in towers[0]:
      if name != "predictions":
        self.loss_terms[name] = tf.add_n([t[name] for t in towers]) / self.num_towers
    self.predictions = tf.concat([t["predictions"] for t in towers], axis=0)
    if self.label_weights is not None:  # --segment_labels: only rated classes count
      self.predictions *= self.label_weights

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

  def _teacher_restore(self):
    """The Scaffold init_fn restoring the teacher from its checkpoint, or None."""
    restore = self.task.restore_teacher()
    if restore is None:
      return None
    init_fn, var_list, checkpoint = restore
    # Checked here so that a teacher of another config is one line before training.
    run_dir.check_checkpoint_matches(var_list, checkpoint, "the teacher checkpoint")
    return init_fn


class ValidationGraph(object):
  """An inference-mode copy of the trained model over --eval_data_pattern, built by the
  same inference_graph.top_k_outputs as eval.py's."""

  def __init__(self, cfg, train_cfg, eval_files):
    """eval_files: the readers.DataFiles validated on."""
    self.cfg = cfg
    with tf.name_scope("validation"):
      self.skipped = (readers.SkippedRecords() if train_cfg.skip_corrupt_records
                      else None)
      _, self.initializer, batch = inference_graph.input_batches(
          cfg, cfg.role(), eval_files, train_cfg.batch_size, train_cfg.num_readers, skipped=self.skipped)
      self.fetches = inference_graph.top_k_outputs(cfg, batch, cfg.role(),
                                                   VALIDATION_TOP_K, with_labels=True,
                                                   reuse=True)

  def run(self, session):
    """Evaluates every validation video once; returns the metrics dict (or None)."""
    return inference_graph.evaluate(session, self.fetches, self.cfg.num_classes,
                                    VALIDATION_TOP_K, initializer=self.initializer,
                                    skipped=self.skipped)
