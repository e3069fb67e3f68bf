"""Teacher and student in one graph: model selection, inputs per role, tower losses.

Variable layout (stable, so checkpoints move between run kinds):
  teacher/tower/...   the model that sees all frames
  student/tower/...   the model that sees k frames (--k_frame, --frame_sampling)
  input_preprocessing/rgb_scale   (only with --pca_eigenvals)
A `--model_type=teacher` run with k_frame >= max_frames trains `teacher/`; a
teacher-type run with fewer frames, or `--model_type=student`, trains `student/` alone
(the k-frame baseline); `--model_type=KD` builds both and trains `student/` against the
teacher restored from its checkpoint (serial) or trains both from scratch (parallel).
"""

import os

import tensorflow as tf

import frame_level_models
import losses
import model_utils
import nextvlad
import preprocessing
import readers
import utils
import video_level_models

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS
flags.DEFINE_string("model", "NeXtVLADModel",
                    "Which architecture to use for the model (a class of "
                    "frame_level_models.py or video_level_models.py).")
flags.DEFINE_string("model_type", "teacher",
                    "teacher: train one model on --k_frame frames (all frames: the "
                    "teacher; fewer: the k-frame student baseline); student: the k-frame "
                    "baseline; KD: distil the teacher into a k-frame student.")
flags.DEFINE_integer("k_frame", 300, "Frames the student sees (1..--max_frames).")
flags.DEFINE_string("frame_sampling", "uniform",
                    "How the student's k frames are picked: " +
                    ", ".join(readers.FRAME_SELECTION_STRATEGIES))
flags.DEFINE_string("kd_mode", "serial",
                    "serial: frozen pretrained teacher; parallel: teacher and student "
                    "trained together from scratch.")
flags.DEFINE_float("kd_ce_weight", 1.0, "Weight of the student's label loss L_CE.")
flags.DEFINE_float("kd_pred_weight", 0.01, "Weight of L_pred (teacher vs student "
                   "probabilities).")
flags.DEFINE_float("kd_rep_weight", 0.001, "Weight of L_rep (teacher vs student "
                   "representations).")
flags.DEFINE_string("kd_reduction", "sum", "How L_pred and L_rep combine the examples "
                    "of a tower batch: sum (the documented recipe) or mean.")
flags.DEFINE_string("kd_pred_loss", "mse", "L_pred: mse (squared error) or kl.")
flags.DEFINE_string("role", "", "eval.py, inference.py, export_model.py: which model of "
                    "the run to use: empty for the model it trained (the student of a KD "
                    "run), or teacher / student.")
flags.DEFINE_float("regularization_penalty", 1.0,
                   "How much weight to give to the regularization loss (the label loss "
                   "has a weight of 1).")

MODEL_TYPES = ("teacher", "student", "KD")
KD_MODES = ("serial", "parallel")
TEACHER, STUDENT = "teacher", "student"
# Modules whose flags shape the graph; model_flags.json records all of them.
GRAPH_FLAG_MODULES = (readers, preprocessing, video_level_models, nextvlad,
                      frame_level_models, losses)
GRAPH_FLAGS_HERE = ("model", "model_type", "k_frame", "frame_sampling", "kd_mode",
                    "kd_ce_weight", "kd_pred_weight", "kd_rep_weight", "kd_reduction",
                    "kd_pred_loss", "regularization_penalty")
# Not the graph: a path (what it did is recorded as "preprocessing"), and which records
# a run reads.
NOT_RECORDED = ("pca_eigenvals", "skip_corrupt_records")
# Recorded for the record only: a run can resume, and be evaluated, with or without it.
INFORMATION_ONLY = ("bf16",)
MODEL_FLAGS_FILE = "model_flags.json"


def validate_flags():
  """Checks the graph flags before any graph is built; raises UsageError naming one."""
  if FLAGS.model_type not in MODEL_TYPES:
    raise utils.UsageError("--model_type must be one of %s, got %r"
                           % (", ".join(MODEL_TYPES), FLAGS.model_type))
  if FLAGS.kd_mode not in KD_MODES:
    raise utils.UsageError("--kd_mode must be serial or parallel, got %r" % FLAGS.kd_mode)
  if FLAGS.frame_sampling not in readers.FRAME_SELECTION_STRATEGIES:
    raise utils.UsageError("--frame_sampling must be one of %s, got %r" % (
        ", ".join(readers.FRAME_SELECTION_STRATEGIES), FLAGS.frame_sampling))
  if not 1 <= FLAGS.k_frame <= FLAGS.max_frames:
    raise utils.UsageError("--k_frame must be in 1..%d (--max_frames), got %d"
                           % (FLAGS.max_frames, FLAGS.k_frame))
  if FLAGS.kd_reduction not in losses.REDUCTIONS:
    raise utils.UsageError("--kd_reduction must be sum or mean, got %r"
                           % FLAGS.kd_reduction)
  if FLAGS.kd_pred_loss not in losses.PREDICTION_LOSSES:
    raise utils.UsageError("--kd_pred_loss must be mse or kl, got %r" % FLAGS.kd_pred_loss)
  if FLAGS.model_type != "teacher" and not FLAGS.frame_features:
    raise utils.UsageError("--model_type=%s needs frame features (--frame_features)"
                           % FLAGS.model_type)
  utils.GetListOfFeatureNamesAndSizes(FLAGS.feature_names, FLAGS.feature_sizes)
  get_model(FLAGS.model)
  losses.get_label_loss(FLAGS.label_loss)


def get_model(name):
  """An instance of the model class `name` (--model) for the feature kind in use."""
  if FLAGS.frame_features:
    return frame_level_models.get_frame_level_model(name)
  model = getattr(video_level_models, name, None)
  if not isinstance(model, type) or not issubclass(model, model_utils.BaseModel):
    raise utils.UsageError("--model=%s is not a video-level model (LogisticModel, "
                           "StarterLogisticModel, MoeModel); for frame-level models set "
                           "--frame_features"
                           % name)
  return model()


def single_model_role():
  """The scope a teacher/student-type run trains: teacher only when it sees all frames."""
  if FLAGS.model_type == "teacher" and FLAGS.k_frame >= FLAGS.max_frames:
    return TEACHER
  return STUDENT


def run_dir_suffix():
  """`_teacher`, `_student_k_<k>` or `_KD_k_<k>`: the original's run directory names."""
  if FLAGS.model_type == "KD":
    return "_KD_k_%d" % FLAGS.k_frame
  if single_model_role() == TEACHER:
    return "_teacher"
  return "_student_k_%d" % FLAGS.k_frame


def roles():
  """The model scopes this run builds, teacher first."""
  return (TEACHER, STUDENT) if FLAGS.model_type == "KD" else (single_model_role(),)


def trained_roles():
  """The scopes whose variables get gradients."""
  if FLAGS.model_type == "KD":
    return (TEACHER, STUDENT) if FLAGS.kd_mode == "parallel" else (STUDENT,)
  return roles()


def model_flags_dict():
  """Everything that shapes the graph, as recorded in model_flags.json."""
  recorded = {}
  for module in GRAPH_FLAG_MODULES:
    for flag in FLAGS.get_flags_for_module(module.__name__):
      recorded[flag.name] = flag.value
  for name in GRAPH_FLAGS_HERE:
    recorded[name] = FLAGS[name].value
  for name in NOT_RECORDED:
    recorded.pop(name, None)
  recorded["preprocessing"] = preprocessing.kind_from_flags()
  recorded["bf16"] = FLAGS.bf16
  return recorded


def apply_model_flags(recorded, source):
  """Sets FLAGS from a model_flags.json dict so a run's graph can be rebuilt.

  Unknown names (from another version) are an error naming `source`.
  """
  for name, value in recorded.items():
    if name == "preprocessing" or name in INFORMATION_ONLY:
      continue
    if name not in FLAGS:
      raise utils.UsageError("%s records an unknown flag --%s" % (source, name))
    FLAGS[name].value = value


def conflicting_flags(recorded, current):
  """Names whose values differ between two model_flags dicts ('x: old -> new')."""
  conflicts = []
  for name in sorted(set(recorded) | set(current)):
    if name in INFORMATION_ONLY:
      continue
    if recorded.get(name) != current.get(name):
      conflicts.append("--%s: %r -> %r" % (name, recorded.get(name), current.get(name)))
  return conflicts


def model_inputs(role, batch, preprocessing_kind, training_scale=None, seed=None):
  """The frames a role sees, dequantized and preprocessed.

  Args:
    role: TEACHER (all frames) or STUDENT (k_frame frames by --frame_sampling).
    batch: reader output; video_matrix uint8 [B, T, F] or float32, num_frames [B].
  Returns:
    (model_input [B, T', F] float32, num_frames [B] int32); video-level features pass
    through unchanged.
  """
  frames, num_frames = batch["video_matrix"], batch["num_frames"]
  if not FLAGS.frame_features:
    return frames, num_frames
  if role == STUDENT and FLAGS.k_frame < FLAGS.max_frames:
    frames, num_frames = readers.select_frames(frames, num_frames, FLAGS.k_frame,
                                               FLAGS.frame_sampling, seed=seed)
  if frames.dtype == tf.uint8:
    frames = readers.dequantize_frames(frames, num_frames)
  _, sizes = utils.GetListOfFeatureNamesAndSizes(FLAGS.feature_names, FLAGS.feature_sizes)
  frames = preprocessing.preprocess(frames, num_frames, preprocessing_kind,
                                    rgb_size=sizes[0], training_scale=training_scale)
  return frames, num_frames


def _frozen_getter(getter, *args, **kwargs):
  kwargs["trainable"] = False
  return getter(*args, **kwargs)


def create_role_model(role, model_input, num_frames, is_training, reuse, frozen=False):
  """Builds the --model under `<role>/tower` and returns its output dict.

  frozen: the variables are created non-trainable (the serial-KD teacher).
  """
  _, sizes = utils.GetListOfFeatureNamesAndSizes(FLAGS.feature_names, FLAGS.feature_sizes)
  with tf1.variable_scope(role, custom_getter=_frozen_getter if frozen else None):
    with tf1.variable_scope("tower", reuse=reuse):
      return get_model(FLAGS.model).create_model(
          model_input=model_input, vocab_size=FLAGS.num_classes, num_frames=num_frames,
          is_training=is_training, feature_sizes=sizes)


def regularization_loss(role):
  """Sum of the regularization terms of the variables under `role/`."""
  terms = tf1.losses.get_regularization_losses(scope=role + "/")
  return tf.add_n(terms) if terms else tf.constant(0.0)


def tower_loss(batch, reuse, preprocessing_kind, training_scale=None, seed=None):
  """Builds one training tower.

  Returns:
    dict with `total` (the loss to minimise), `label_loss` (L_CE of the trained model
    or the student), `rep_loss` and `pred_loss` (KD only), `regularization`,
    `predictions` [B, C] of the trained model (the student in KD) and, in KD, the
    student's `representation` [B, H].
  """
  label_loss = losses.get_label_loss(FLAGS.label_loss)
  labels = batch["labels"]
  terms = {}
  if FLAGS.model_type != "KD":
    role = single_model_role()
    inputs, num_frames = model_inputs(role, batch, preprocessing_kind, training_scale, seed)
    outputs = create_role_model(role, inputs, num_frames, True, reuse)
    terms["label_loss"] = label_loss.calculate_loss(outputs["predictions"], labels)
    terms["regularization"] = regularization_loss(role)
    terms["total"] = (terms["label_loss"] +
                      FLAGS.regularization_penalty * terms["regularization"])
    terms["predictions"] = outputs["predictions"]
    return terms

  parallel = FLAGS.kd_mode == "parallel"
  t_inputs, t_frames = model_inputs(TEACHER, batch, preprocessing_kind, training_scale,
                                    seed)
  teacher = create_role_model(TEACHER, t_inputs, t_frames, is_training=parallel,
                              reuse=reuse, frozen=not parallel)
  s_inputs, s_frames = model_inputs(STUDENT, batch, preprocessing_kind, training_scale,
                                    seed)
  student = create_role_model(STUDENT, s_inputs, s_frames, True, reuse)
  teacher_predictions = tf.stop_gradient(teacher["predictions"])
  teacher_representation = tf.stop_gradient(teacher["representation"])
  terms["label_loss"] = label_loss.calculate_loss(student["predictions"], labels)
  terms["pred_loss"] = losses.prediction_loss(teacher_predictions,
                                              student["predictions"],
                                              FLAGS.kd_pred_loss, FLAGS.kd_reduction)
  terms["rep_loss"] = losses.representation_loss(teacher_representation,
                                                 student["representation"],
                                                 FLAGS.kd_reduction)
  terms["regularization"] = regularization_loss(STUDENT)
  total = (FLAGS.kd_ce_weight * terms["label_loss"] +
           FLAGS.kd_pred_weight * terms["pred_loss"] +
           FLAGS.kd_rep_weight * terms["rep_loss"] +
           FLAGS.regularization_penalty * terms["regularization"])
  if parallel:
    terms["teacher_label_loss"] = label_loss.calculate_loss(teacher["predictions"],
                                                            labels)
    total += (terms["teacher_label_loss"] +
              FLAGS.regularization_penalty * regularization_loss(TEACHER))
  terms["total"] = total
  terms["predictions"] = student["predictions"]
  terms["representation"] = student["representation"]
  return terms


RECIPE_BATCH, RECIPE_WIDTH = 80, 2048


def loss_scale_note(batch_size, representation_width):
  """A note when summed KD terms meet another batch/width than the recipe tuned for.

  With --kd_reduction=sum, L_rep grows with batch x representation width and L_pred
  with the batch, while L_CE is a batch mean; the documented weights (0.01, 0.001)
  are tuned for batch 80 per tower and width 2048. Returns None when they apply as
  they are, else one line with the weights that keep the recipe's balance.
  """
  if FLAGS.model_type != "KD" or FLAGS.kd_reduction != "sum":
    return None
  if (batch_size, representation_width) == (RECIPE_BATCH, RECIPE_WIDTH):
    return None
  rep = FLAGS.kd_rep_weight * RECIPE_BATCH * RECIPE_WIDTH / (batch_size *
                                                            representation_width)
  pred = FLAGS.kd_pred_weight * RECIPE_BATCH / batch_size
  return ("note: L_rep and L_pred are summed over the batch (--kd_reduction=sum) with "
          "weights tuned for batch %d and a %d-wide representation; at batch %d and width "
          "%d the recipe's balance is --kd_rep_weight=%.4g --kd_pred_weight=%.4g"
          % (RECIPE_BATCH, RECIPE_WIDTH, batch_size, representation_width, rep, pred))


def inference_outputs(batch, role, preprocessing_kind, reuse=False):
  """One role's model in inference mode -> its output dict (see create_role_model)."""
  inputs, num_frames = model_inputs(role, batch, preprocessing_kind)
  return create_role_model(role, inputs, num_frames, is_training=False, reuse=reuse)


def teacher_variables():
  """Every global variable under teacher/ (weights and batch-norm statistics)."""
  return [v for v in tf1.global_variables() if v.op.name.startswith(TEACHER + "/")]


def check_checkpoint_matches(variables, checkpoint, what):
  """Raises UsageError naming missing or mismatched variables of `checkpoint`.

  Args:
    variables: graph variables to be restored by name.
    checkpoint: checkpoint prefix path.
    what: how to call the checkpoint in the message (e.g. "--teacher_checkpoint").
  """
  try:
    stored = dict(tf.train.list_variables(checkpoint))
  except (tf.errors.OpError, ValueError) as e:
    raise utils.UsageError("%s %s cannot be read: %s" % (what, checkpoint,
                                                         str(e).splitlines()[0]))
  missing = [v.op.name for v in variables if v.op.name not in stored]
  mismatched = ["%s %s in the graph vs %s stored" % (v.op.name, v.shape.as_list(),
                                                     stored[v.op.name])
                for v in variables
                if v.op.name in stored and v.shape.as_list() != list(stored[v.op.name])]
  if mismatched:
    raise utils.UsageError("%s %s was written for another model config: %d variables "
                           "differ in shape, e.g. %s" % (
                               what, checkpoint, len(mismatched),
                               "; ".join(mismatched[:3])))
  if missing:
    raise utils.UsageError("%s %s lacks %d variables of this graph, e.g. %s" % (
        what, checkpoint, len(missing), ", ".join(missing[:3])))


def load_run(run_dir, flag_name="--train_dir"):
  """Reads <run_dir>/model_flags.json and sets FLAGS to rebuild that run's graph.

  Returns:
    the recorded dict (with "preprocessing").
  Raises:
    UsageError naming the flag when the directory or its model_flags.json is missing.
  """
  if not os.path.isdir(run_dir):
    raise utils.UsageError("%s=%s does not exist" % (flag_name, run_dir))
  path = os.path.join(run_dir, MODEL_FLAGS_FILE)
  if not os.path.exists(path):
    raise utils.UsageError(
        "%s=%s has no %s: pass a run directory written by train.py (<train_dir>_teacher, "
        "<train_dir>_student_k_<k> or <train_dir>_KD_k_<k>)"
        % (flag_name, run_dir, MODEL_FLAGS_FILE))
  recorded = utils.read_json(path)
  apply_model_flags(recorded, path)
  validate_flags()
  return recorded


def checkpoint_exists(prefix):
  """True when the checkpoint `prefix` (model.ckpt-N) has its index file."""
  return tf.io.gfile.exists(prefix + ".index")


def latest_checkpoint(run_dir, flag_name="--train_dir"):
  """The newest complete checkpoint prefix of run_dir; UsageError when there is none."""
  checkpoint = tf1.train.latest_checkpoint(run_dir)
  if not checkpoint:
    raise utils.UsageError("%s=%s has no checkpoint yet" % (flag_name, run_dir))
  return checkpoint


def role_to_use():
  """The role eval/inference/export use: --role, or the model the run trained."""
  if not FLAGS.role:
    return STUDENT if FLAGS.model_type == "KD" else single_model_role()
  if FLAGS.role not in roles():
    raise utils.UsageError("--role=%s: this run (model_type %s) has only %s"
                           % (FLAGS.role, FLAGS.model_type, " and ".join(roles())))
  return FLAGS.role
