"""Teacher and student in one graph: inputs per role, role models, tower losses.

Variable layout (stable, so checkpoints move between run kinds):
  teacher/tower/...   the model that sees all frames
  student/tower/...   the model that sees k frames (--k_frame, --frame_sampling)
  input_preprocessing/rgb_scale   (only with PCA preprocessing)
A `--model_type=teacher` run with k_frame >= max_frames trains `teacher/`; a
teacher-type run with fewer frames, or `--model_type=student`, trains `student/` alone
(the k-frame baseline); `--model_type=KD` builds both and trains `student/` against the
teacher restored from its checkpoint (serial) or trains both from scratch (parallel).
"""

import tensorflow as tf

import frame_selection
import losses
import preprocessing
import readers

tf1 = tf.compat.v1
TEACHER, STUDENT = "teacher", "student"


def model_inputs(cfg, role, batch, training_scale=None, seed=None, is_training=True):
  """The frames a role sees, dequantized and preprocessed.

  Args:
    cfg: the GraphConfig.
    role: TEACHER (all frames) or STUDENT (k_frame frames by frame_sampling).
    batch: reader output; video_matrix uint8 [B, T, F] or float32, num_frames [B]. For
      the student, T may already be the k' frames the reader picked (get_reader's
      student_only).
    training_scale: numpy [1024] PCA scale when training (see preprocessing.preprocess).
    seed: op seed of random frame sampling.
    is_training: False picks `random` frames as a fixed set per video id.
  Returns:
    (model_input [B, T', F] float32, num_frames [B] int32); video-level features pass
    through unchanged.
  """
  frames, num_frames = batch["video_matrix"], batch["num_frames"]
  if not cfg.frame_features:
    return frames, num_frames
  picked_by_reader = frames.shape[1] == frame_selection.selected_length(
      cfg.k_frame, cfg.frame_sampling, cfg.max_frames) != cfg.max_frames
  if role == STUDENT and cfg.k_frame < cfg.max_frames and not picked_by_reader:
    frames, num_frames = frame_selection.select_frames(
        frames, num_frames, cfg.k_frame, cfg.frame_sampling, seed=seed,
        video_ids=None if is_training else batch["video_ids"])
  if frames.dtype == tf.uint8:
    frames = readers.dequantize_frames(frames, num_frames)
  frames = preprocessing.preprocess(frames, num_frames, cfg.preprocessing,
                                    rgb_size=cfg.feature_sizes[0],
                                    training_scale=training_scale)
  return frames, num_frames


def _frozen_getter(getter, *args, **kwargs):
  kwargs["trainable"] = False
  return getter(*args, **kwargs)


def create_role_model(cfg, role, model_input, num_frames, is_training, reuse,
                      frozen=False):
  """Builds cfg's model under `<role>/tower` and returns its output dict.

  frozen: the variables are created non-trainable (the serial-KD teacher).
  """
  with tf1.variable_scope(role, custom_getter=_frozen_getter if frozen else None):
    with tf1.variable_scope("tower", reuse=reuse):
      return cfg.model_class()().create_model(
          model_input=model_input, vocab_size=cfg.num_classes, num_frames=num_frames,
          is_training=is_training, **cfg.model_kwargs())


def regularization_loss(role):
  """Sum of the regularization terms of the variables under `role/`."""
  terms = tf1.losses.get_regularization_losses(scope=role + "/")
  return tf.add_n(terms) if terms else tf.constant(0.0)


def tower_loss(cfg, batch, reuse, training_scale=None, seed=None):
  """Builds one training tower.

  Returns:
    dict with `total` (the loss to minimise), `label_loss` (L_CE of the trained model
    or the student), `rep_loss` and `pred_loss` (KD only), `regularization`,
    `predictions` [B, C] of the trained model (the student in KD) and, in KD, the
    student's `representation` [B, H]. An offline KD batch (cfg.teacher_cache) brings
    the teacher's outputs as teacher_predictions [B, C] and teacher_representation
    [B, H].
  """
  label_loss = losses.get_label_loss(cfg.label_loss)
  labels = batch["labels"]
  terms = {}
  if cfg.model_type != "KD":
    role = cfg.single_model_role()
    inputs, num_frames = model_inputs(cfg, role, batch, training_scale, seed)
    outputs = create_role_model(cfg, role, inputs, num_frames, True, reuse)
    terms["label_loss"] = label_loss.calculate_loss(outputs["predictions"], labels)
    terms["regularization"] = regularization_loss(role)
    terms["total"] = (terms["label_loss"] +
                      cfg.regularization_penalty * terms["regularization"])
    terms["predictions"] = outputs["predictions"]
    return terms

  parallel = cfg.kd_mode == "parallel"
  if cfg.teacher_cache:  # offline: the frozen teacher's outputs come with the batch
    teacher = {"predictions": batch["teacher_predictions"],
               "representation": batch["teacher_representation"]}
  else:
    t_inputs, t_frames = model_inputs(cfg, TEACHER, batch, training_scale, seed)
    teacher = create_role_model(cfg, TEACHER, t_inputs, t_frames, is_training=parallel,
                                reuse=reuse, frozen=not parallel)
  s_inputs, s_frames = model_inputs(cfg, STUDENT, batch, training_scale, seed)
  student = create_role_model(cfg, STUDENT, s_inputs, s_frames, True, reuse)
  teacher_predictions = tf.stop_gradient(teacher["predictions"])
  teacher_representation = tf.stop_gradient(teacher["representation"])
  terms["label_loss"] = label_loss.calculate_loss(student["predictions"], labels)
  terms["pred_loss"] = losses.prediction_loss(teacher_predictions,
                                              student["predictions"],
                                              cfg.kd_pred_loss, cfg.kd_reduction)
  terms["rep_loss"] = losses.representation_loss(teacher_representation,
                                                 student["representation"],
                                                 cfg.kd_reduction)
  terms["regularization"] = regularization_loss(STUDENT)
  total = (cfg.kd_ce_weight * terms["label_loss"] +
           cfg.kd_pred_weight * terms["pred_loss"] +
           cfg.kd_rep_weight * terms["rep_loss"] +
           cfg.regularization_penalty * terms["regularization"])
  if parallel:
    terms["teacher_label_loss"] = label_loss.calculate_loss(teacher["predictions"],
                                                            labels)
    total += (terms["teacher_label_loss"] +
              cfg.regularization_penalty * regularization_loss(TEACHER))
  terms["total"] = total
  terms["predictions"] = student["predictions"]
  terms["representation"] = student["representation"]
  return terms


RECIPE_BATCH, RECIPE_WIDTH = 80, 2048


def loss_scale_note(cfg, batch_size, representation_width):
  """A note when summed KD terms meet another batch/width than the recipe tuned for.

  With --kd_reduction=sum, L_rep grows with batch x representation width and L_pred
  with the batch, while L_CE is a batch mean; the documented weights (0.01, 0.001)
  are tuned for batch 80 per tower and width 2048. Returns None when they apply as
  they are, else one line with the weights that keep the recipe's balance.
  """
  if cfg.model_type != "KD" or cfg.kd_reduction != "sum":
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


def inference_outputs(cfg, batch, role, reuse=False):
  """One role's model in inference mode -> its output dict (see create_role_model)."""
  inputs, num_frames = model_inputs(cfg, role, batch, is_training=False)
  return create_role_model(cfg, role, inputs, num_frames, is_training=False, reuse=reuse)


def teacher_variables():
  """Every global variable under teacher/ (weights and batch-norm statistics)."""
  return [v for v in tf1.global_variables() if v.op.name.startswith(TEACHER + "/")]
