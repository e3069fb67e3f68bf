"""Teacher and student in one graph: each role's inputs and model, and the training
task that owns a run's inputs, models and losses.

Variable layout (stable, so checkpoints move between run kinds):
  teacher/tower/...   the model that sees all frames
  student/tower/...   the model that sees k frames (--k_frame, --frame_sampling); at
                      video level (no frames) both roles read the same record
  student/tower/rep_projection/...   KD only, when the student's representation is
                      narrower or wider than the teacher's: the learned linear map that
                      L_rep compares through (never part of an inference graph)
  input_preprocessing/rgb_scale   (only with PCA preprocessing)
Each role builds its own model (GraphConfig.model_config): in KD the teacher's comes
from its own run directory, the student's from the command line.

`training_task(cfg, teacher, cache)` is the one place a run's task is chosen:
  ModelTraining  a teacher, or a k-frame student baseline, trained alone on labels
  Distillation   KD: serial (frozen teacher restored from its checkpoint), parallel
                 (both trained from scratch) or offline (the teacher's outputs read
                 from a teacher cache next to each record)
Each task builds the training input batch, one tower's losses, and says which
variables train and how the teacher is restored.
"""

import dataclasses

import tensorflow as tf

from config import STUDENT, TEACHER  # noqa: F401  (kd_model.TEACHER, as callers spell it)
import frame_selection
import losses
import model_utils
import readers

tf1 = tf.compat.v1
PROJECTION_SCOPE = "rep_projection"


def model_inputs(cfg, role, batch, seed=None, is_training=True):
  """The frames a role sees, dequantized and preprocessed (cfg.preprocessing).

  Args:
    cfg: the GraphConfig.
    role: TEACHER (all frames) or STUDENT (k_frame frames by frame_sampling).
    batch: reader output; video_matrix uint8 [B, T, F] or float32, num_frames [B]. For
      the student, T may already be the k' frames the reader picked (get_reader's
      student_only).
    seed: op seed of random frame sampling.
    is_training: False picks `random` frames as a fixed set per video id.
  Returns:
    (model_input [B, T', F] float32, num_frames [B] int32); video-level features pass
    through unchanged.
  """
  frames, num_frames = batch["video_matrix"], batch["num_frames"]
  if not cfg.frame_features:
    return frames, num_frames
  length = cfg.example_frames()
  picked_by_reader = frames.shape[1] == frame_selection.selected_length(
      cfg.k_frame, cfg.frame_sampling, length) != length
  if role == STUDENT and cfg.k_frame < length and not picked_by_reader:
    frames, num_frames = frame_selection.select_frames(
        frames, num_frames, cfg.k_frame, cfg.frame_sampling, seed=seed,
        video_ids=None if is_training else batch["video_ids"])
  if frames.dtype == tf.uint8:
    frames = readers.dequantize_frames(frames, num_frames)
  frames = cfg.preprocessing.apply(frames, num_frames, rgb_size=cfg.feature_sizes[0])
  return frames, num_frames


def _frozen_getter(getter, *args, **kwargs):
  kwargs["trainable"] = False
  return getter(*args, **kwargs)


def create_role_model(cfg, role, model_input, num_frames, is_training, reuse,
                      frozen=False, class_ids=None):
  """Builds the role's model (cfg.model_config(role)) under `<role>/tower`.

  frozen: the variables are created non-trainable (the serial-KD teacher).
  class_ids: None, or a list of the classes the predictions are computed for (see
    video_level_models); the variables are the same either way.
  Returns:
    the model's output dict (model_utils.BaseModel).
  """
  model = cfg.model_config(role)
  kwargs = model.create_kwargs(cfg.feature_sizes, cfg.frame_packing)
  if class_ids is not None:
    kwargs["class_ids"] = class_ids
  with tf1.variable_scope(role, custom_getter=_frozen_getter if frozen else None):
    with tf1.variable_scope("tower", reuse=reuse):
      return model.model_class(cfg.frame_features)().create_model(
          model_input=model_input, vocab_size=cfg.num_classes, num_frames=num_frames,
          is_training=is_training, **kwargs)


def inference_outputs(cfg, batch, role, reuse=False, class_ids=None):
  """One role's model in inference mode -> its output dict (see create_role_model)."""
  inputs, num_frames = model_inputs(cfg, role, batch, is_training=False)
  return create_role_model(cfg, role, inputs, num_frames, is_training=False, reuse=reuse,
                           class_ids=class_ids)


def regularization_loss(role):
  """Sum of the regularization terms of the variables under `role/`."""
  terms = tf1.losses.get_regularization_losses(scope=role + "/")
  return tf.add_n(terms) if terms else tf.constant(0.0)


def model_losses(outputs, labels, label_loss, role, label_weights=None):
  """A model's label and regularization losses under the starter's contract.

  label: outputs["loss"] when the model gives one, else label_loss on its
    predictions; plus label_loss on every outputs["aux_predictions"]. label_weights
    [B, C] (--segment_labels: 1 on each example's rated classes) weigh each class's
    label term.
  regularization: the L2 terms of the variables under `role/`, plus
    outputs["regularization_loss"] when the model gives one.
  Returns:
    (label loss, regularization) scalar tensors.
  """
  if "loss" in outputs:
    label = outputs["loss"]
  else:
    label = label_loss.calculate_loss(outputs["predictions"], labels,
                                      label_weights=label_weights)
  for aux in outputs.get("aux_predictions", ()):
    label += label_loss.calculate_loss(aux, labels, label_weights=label_weights)
  regularization = regularization_loss(role)
  if "regularization_loss" in outputs:
    regularization += outputs["regularization_loss"]
  return label, regularization


def teacher_variables():
  """Every global variable under teacher/ (weights and batch-norm statistics)."""
  return [v for v in tf1.global_variables() if v.op.name.startswith(TEACHER + "/")]


@dataclasses.dataclass(frozen=True)
class Teacher(object):
  """A serial-KD teacher: its checkpoint and the scope its variables have there.

  scope is `teacher` for a teacher run; a run that trained its student (a baseline, or
  a distilled student) can teach too, its `student/` variables restored into the KD
  graph's `teacher/`.
  """
  checkpoint: str
  scope: str = TEACHER

  def var_list(self, variables):
    """{name in the checkpoint: graph variable} for the KD graph's teacher/ variables."""
    return {self.scope + v.op.name[len(TEACHER):]: v for v in variables}


class ModelTraining(object):
  """One model trained alone on labels: the teacher (all frames) or a k-frame student
  baseline (cfg.single_model_role())."""

  def __init__(self, cfg):
    self.cfg = cfg
    self.label_loss = losses.get_label_loss(cfg.label_loss)

  def student_only(self):
    """Whether only the k-frame student reads the batches, so the reader may decode
    its frames alone (never for `random` training draws, made in the model graph so
    that --seed reproduces them)."""
    return self.cfg.roles() == (STUDENT,) and self.cfg.frame_sampling != "random"

  def input_batch(self, train_cfg, train_files, global_batch, skipped=None,
                  start_step=0):
    """Shuffled training batches of train_files (a readers.DataFiles; uint8 frames).

    With a seed the record order is fixed, and a run resumed at start_step skips the
    batches its first start_step steps read, so it sees the batches an uninterrupted
    run would have seen.
    """
    return readers.get_input_data_tensors(
        readers.get_reader(self.cfg, dequantize=False, student_only=self.student_only()),
        train_files, global_batch, train_cfg.num_readers, train_cfg.num_epochs,
        shuffle=True, seed=train_cfg.seed, skipped=skipped,
        skip_batches=start_step if train_cfg.seed is not None else 0,
        teacher_cache=self._teacher_cache())

  def _teacher_cache(self):
    """The TeacherCache the batches are read beside (offline KD), or None."""
    return None

  def tower(self, batch, reuse, seed=None):
    """One training tower on its slice of the batch.

    Returns:
      dict of scalar tensors `total` (the loss to minimise), `label_loss`,
      `regularization` (and per task more terms), and `predictions` [B, C] of the
      trained model (the student in KD).
    """
    cfg = self.cfg
    role = cfg.single_model_role()
    inputs, num_frames = model_inputs(cfg, role, batch, seed)
    outputs = create_role_model(cfg, role, inputs, num_frames, True, reuse)
    label, regularization = model_losses(outputs, batch["labels"], self.label_loss, role,
                                         batch.get("label_weights"))
    return {"label_loss": label, "regularization": regularization,
            "total": label + cfg.regularization_penalty * regularization,
            "predictions": outputs["predictions"]}

  def trained_variables(self):
    """The variables that get gradients (those of cfg.trained_roles())."""
    return [v for role in self.cfg.trained_roles()
            for v in tf1.trainable_variables(scope=role + "/")]

  def restore_teacher(self):
    """(Scaffold init_fn restoring the teacher at a fresh start, the variables it
    restores, its checkpoint), or None when there is none to restore."""
    return None

  def loss_scale_note(self, batch_size):
    """A line when summed KD terms meet other sizes than the recipe's, else None."""
    return None


class Distillation(ModelTraining):
  """Knowledge distillation of the teacher into the k-frame student.

  Modes: serial (a frozen teacher in inference mode, restored from `teacher`),
  parallel (teacher and student trained together from scratch, the teacher on its
  labels only) and offline (no teacher in the graph: its outputs come from `cache`
  with each record). Per tower:
    total = kd_ce_weight * L_CE + kd_pred_weight * L_pred + kd_rep_weight * L_rep
            + regularization_penalty * regularization
  where L_CE and the regularization are the student's (model_losses), L_pred compares
  class probabilities or logits (--kd_pred_loss) and L_rep representations
  (--kd_rep_loss; through the student's projection when their widths differ). A term
  whose weight is 0 is left out of the graph, and so is L_rep at video level: a
  video-level model's representation is its input, the same record for teacher and
  student, so L_rep would be identically zero there (GraphConfig.distils_representation).
  With --kd_weights=balanced the three weights are set at the first step (see _weights).
  """

  def __init__(self, cfg, teacher=None, cache=None):
    super(Distillation, self).__init__(cfg)
    self.teacher = teacher
    self.cache = cache
    self.mode = "offline" if cache is not None else cfg.kd_mode
    self.rep_width = None

  def _teacher_cache(self):
    """Offline, the cache whose entries the batches carry: teacher_predictions [B, C]
    and teacher_representation [B, H] (TeacherCache.joined)."""
    return self.cache

  def _teacher_outputs(self, batch, reuse, seed):
    if self.mode == "offline":
      return {"predictions": batch["teacher_predictions"],
              "representation": batch["teacher_representation"],
              "logits": batch.get("teacher_logits")}
    parallel = self.mode == "parallel"
    inputs, num_frames = model_inputs(self.cfg, TEACHER, batch, seed)
    return create_role_model(self.cfg, TEACHER, inputs, num_frames,
                             is_training=parallel, reuse=reuse, frozen=not parallel)

  def _projected(self, representation, width, reuse):
    """The student's representation [B, Hs] as L_rep compares it: itself when the
    teacher's is as wide, else through a learned linear map to [B, width] under
    student/tower/rep_projection (as FitNets regress a teacher's hint).

    The map starts at zero: L_rep then first trains the map to regress the teacher's
    representation, and reaches the student only as the map learns. From random
    weights it pushed the student's representation towards whatever a random map
    needed, and a quarter-width student distilled worse than trained alone (GAP 0.576
    against 0.603 on the demo's data; 0.632 from zero).
    """
    if int(representation.shape[-1]) == width:
      return representation
    with tf1.variable_scope(STUDENT), tf1.variable_scope("tower", reuse=reuse):
      return model_utils.fully_connected(representation, width, PROJECTION_SCOPE,
                                         stddev=0.0)

  def tower(self, batch, reuse, seed=None):
    """One KD tower; terms as ModelTraining's plus `pred_loss` and `rep_loss` (when
    they count), in parallel mode `teacher_label_loss`, and with
    --kd_weights=balanced the weights `ce_weight`, `pred_weight`, `rep_weight`."""
    cfg = self.cfg
    labels = batch["labels"]
    teacher = self._teacher_outputs(batch, reuse, seed)
    inputs, num_frames = model_inputs(cfg, STUDENT, batch, seed)
    student = create_role_model(cfg, STUDENT, inputs, num_frames, True, reuse)
    terms = {}
    terms["label_loss"], terms["regularization"] = model_losses(
        student, labels, self.label_loss, STUDENT, batch.get("label_weights"))
    counted = kd_terms(cfg)
    if "pred_loss" in counted:
      terms["pred_loss"] = self._prediction_loss(teacher, student)
    if "rep_loss" in counted:
      target = tf.stop_gradient(teacher["representation"])
      self.rep_width = int(target.shape[-1])
      terms["rep_loss"] = losses.representation_loss(
          target, self._projected(student["representation"], self.rep_width, reuse),
          cfg.kd_reduction, cfg.kd_rep_loss)
    weights = self._weights(terms, reuse)
    total = weights["label_loss"] * terms["label_loss"]
    for name in ("pred_loss", "rep_loss"):
      if name in terms:
        total += weights[name] * terms[name]
    total += cfg.regularization_penalty * terms["regularization"]
    if self.mode == "parallel":
      terms["teacher_label_loss"], teacher_regularization = model_losses(
          teacher, labels, self.label_loss, TEACHER, batch.get("label_weights"))
      total += (terms["teacher_label_loss"] +
                cfg.regularization_penalty * teacher_regularization)
    terms["total"] = total
    terms["predictions"] = student["predictions"]
    return terms

  def _prediction_loss(self, teacher, student):
    """L_pred of the tower (--kd_pred_loss), the teacher's side without gradient."""
    cfg = self.cfg
    if cfg.kd_pred_loss == "logits_kl":
      return losses.logits_kl(tf.stop_gradient(losses.logits_of(teacher)),
                              losses.logits_of(student), cfg.kd_temperature,
                              cfg.kd_reduction)
    return losses.prediction_loss(tf.stop_gradient(teacher["predictions"]),
                                  student["predictions"], cfg.kd_pred_loss,
                                  cfg.kd_reduction)

  def _weights(self, terms, reuse):
    """{term: its weight in the total}: the recipe's flags, or with
    --kd_weights=balanced scalar tensors read from the checkpointed variable
    `kd_weights/values` [4] (the three weights, then 1 once they are set).

    Until set, the weights are those that give the first tower's unweighted terms the
    shares s of --kd_shares in a total equal to its L_CE: w_CE = s_CE and
    w_x = s_x * L_CE / L_x (0 where L_x is 0). The first training step uses and stores
    them (an UPDATE_OPS op); later steps and a resumed run read them back.
    """
    cfg = self.cfg
    if cfg.kd_weights == "recipe":
      return {"label_loss": cfg.kd_ce_weight, "pred_loss": cfg.kd_pred_weight,
              "rep_loss": cfg.kd_rep_weight}
    with tf1.variable_scope(WEIGHTS_SCOPE, reuse=reuse):
      stored = tf1.get_variable("values", [4], tf.float32, trainable=False,
                                initializer=tf1.zeros_initializer(), use_resource=True)
    if not reuse:  # the first tower: the weights its terms ask for
      label = tf.stop_gradient(terms["label_loss"])
      asked = []
      for name, share in zip(WEIGHTED_TERMS, cfg.kd_share_values()):
        value = tf.stop_gradient(terms[name]) if name in terms else None
        if name == "label_loss":
          asked.append(tf.constant(share))
        elif value is None:
          asked.append(tf.constant(0.0))
        else:
          asked.append(tf.where(value > 0, share * label / value, 0.0))
      self._asked_weights = tf.stack(asked)
    # One read of [w_CE, w_pred, w_rep, set]: a tower reading before or after the
    # first step's assignment gets the same weights.
    current = stored.read_value()
    weights = tf.where(current[3] > 0, current[:3], self._asked_weights)
    if not reuse:
      tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, stored.assign(
          tf.concat([weights, [1.0]], axis=0)))
    weights = dict(zip(WEIGHTED_TERMS, tf.unstack(weights)))
    for name, short in zip(WEIGHTED_TERMS, ("ce", "pred", "rep")):
      if name in terms:
        terms[short + "_weight"] = weights[name]
    return weights

  def restore_teacher(self):
    """The serial teacher's restore at a fresh start (see ModelTraining)."""
    if self.mode != "serial" or self.teacher is None:
      return None
    var_list = self.teacher.var_list(teacher_variables())
    saver = tf1.train.Saver(var_list=var_list)
    checkpoint = self.teacher.checkpoint
    return (lambda scaffold, sess: saver.restore(sess, checkpoint)), var_list, checkpoint

  def loss_scale_note(self, batch_size):
    """With --kd_reduction=sum, L_rep grows with batch x representation width and
    L_pred with the batch, while L_CE is a batch mean; the documented weights (0.01,
    0.001) are tuned for batch 80 per tower and width 2048. Returns None when they
    apply as they are, else one line with the weights that keep the recipe's balance.
    """
    return loss_scale_note(self.cfg, batch_size, self.rep_width or RECIPE_WIDTH)


RECIPE_BATCH, RECIPE_WIDTH = 80, 2048
# --kd_weights=balanced: the variable scope of the weights, and their order there.
WEIGHTS_SCOPE = "kd_weights"
WEIGHTED_TERMS = ("label_loss", "pred_loss", "rep_loss")


def kd_terms(cfg):
  """The distillation terms a KD tower computes, of "pred_loss" and "rep_loss": L_pred
  with a nonzero weight (--kd_weights=recipe) or share (balanced), L_rep where
  GraphConfig.distils_representation holds (the same test for its weight or share)."""
  pred = (cfg.kd_share_values()[1] if cfg.kd_weights == "balanced"
          else cfg.kd_pred_weight)
  return tuple(name for name, counts in (("pred_loss", pred),
                                         ("rep_loss", cfg.distils_representation()))
               if counts)


def needs_teacher_logits(cfg):
  """Whether a KD run compares the teacher's logits (--kd_pred_loss=logits_kl)."""
  return (cfg.model_type == "KD" and cfg.kd_pred_loss == "logits_kl" and
          "pred_loss" in kd_terms(cfg))


def loss_scale_note(cfg, batch_size, representation_width):
  """See Distillation.loss_scale_note; representation_width: what L_rep compares (the
  teacher's width). At video level the line always says that L_rep is left out (and,
  summed at another batch than the recipe's, L_pred's balanced weight)."""
  if cfg.model_type != "KD":
    return None
  if not cfg.frame_features:
    note = ("note: video-level models' representation is their input (the same "
            "record for teacher and student), so L_rep is identically zero: it is left "
            "out and the student distils through L_pred (--kd_pred_weight)")
    if cfg.kd_reduction == "sum" and batch_size != RECIPE_BATCH and (
        cfg.kd_weights == "recipe"):
      pred = cfg.kd_pred_weight * RECIPE_BATCH / batch_size
      note += ("; L_pred is summed over the batch (--kd_reduction=sum) with a weight "
               "tuned for batch %d: at batch %d the recipe's balance is "
               "--kd_pred_weight=%.4g" % (RECIPE_BATCH, batch_size, pred))
    return note
  # Balanced weights are measured, and cosine (or no) L_rep does not grow with width.
  if (cfg.kd_reduction != "sum" or cfg.kd_weights != "recipe" or
      cfg.kd_rep_loss in ("cosine", "none")):
    return None
  if (batch_size, representation_width) == (RECIPE_BATCH, RECIPE_WIDTH):
    return None
  rep = cfg.kd_rep_weight * RECIPE_BATCH * RECIPE_WIDTH / (batch_size *
                                                          representation_width)
  pred = cfg.kd_pred_weight * RECIPE_BATCH / batch_size
  return ("note: L_rep and L_pred are summed over the batch (--kd_reduction=sum) with "
          "weights tuned for batch %d and a %d-wide representation; at batch %d and width "
          "%d the recipe's balance is --kd_rep_weight=%.4g --kd_pred_weight=%.4g"
          % (RECIPE_BATCH, RECIPE_WIDTH, batch_size, representation_width, rep, pred))


def training_task(cfg, teacher=None, cache=None):
  """The task a run trains: Distillation for --model_type=KD (offline with a teacher
  cache, else cfg.kd_mode), else ModelTraining.

  teacher: the serial teacher to restore at a fresh start (None when resuming, or
    offline); cache: the TeacherCache of an offline run (cfg.teacher_cache).
  """
  if cfg.model_type != "KD":
    return ModelTraining(cfg)
  return Distillation(cfg, teacher=teacher, cache=cache)
