"""The flags that shape a graph, defined here and nowhere else (config.py turns them
into a GraphConfig; models, layers, readers and losses never see flags).

Each registered model's hyperparameters (registry.Hyperparameter) become flags of
their own here, so adding a model adds its flags.
"""

import tensorflow as tf

import cli
import frame_level_models
import frame_selection
import losses
import model_utils
import preprocessing
import registry
import video_level_models

flags = tf.compat.v1.flags

# The two model scopes of a KD graph (kd_model builds them).
TEACHER, STUDENT = "teacher", "student"
MODEL_TYPES = ("teacher", "student", "KD")
KD_MODES = ("serial", "parallel")
KD_WEIGHTS = ("recipe", "balanced")

# --- input ------------------------------------------------------------------------------
flags.DEFINE_string("feature_names", "rgb,audio", "Name of the feature to use for "
                    "training; several as a comma-separated list.")
flags.DEFINE_string("feature_sizes", "1024,128", "Length of the feature vectors, one per "
                    "name in --feature_names.")
flags.DEFINE_bool("frame_features", True, "If set, then --train_data_pattern must be "
                  "frame-level features. Otherwise video-level features.")
flags.DEFINE_integer("num_classes", 3862, "Number of classes (YouTube-8M 2018: 3862).",
                     lower_bound=1)
flags.DEFINE_integer("max_frames", 300, "Frames kept per video (YouTube-8M: 300).",
                     lower_bound=1)
flags.DEFINE_bool("segment_labels", False, "Read the 2019 release's segment ratings "
                  "(context segment_labels, segment_start_times, segment_scores): each "
                  "rated segment of --segment_size frames is one example, and only its "
                  "rated classes count in the loss and the metrics. inference.py then "
                  "ranks every segment of a video per rated class (the Class,Segments "
                  "CSV). eval.py and inference.py default to the mode the run recorded.")
flags.DEFINE_integer("segment_size", 5, "Frames per segment with --segment_labels "
                     "(the 2019 release: 5).", lower_bound=1)
flags.DEFINE_string("pca_eigenvals", preprocessing.DEFAULT_EIGENVALS,
                    "The YouTube-8M PCA eigenvalues (.npy, >= 1024 values). Frame-level rgb "
                    "features are scaled by sqrt(eigenvalue) + 1e-4 before the model, as in "
                    "the original KD code. A relative path is looked up in the current "
                    "directory, then in this repository (which ships the default). Empty: "
                    "no scaling.")
# Not the graph: which records a run reads (train.py, eval.py) and which model of a run
# to use (eval.py, inference.py, export_model.py).
flags.DEFINE_bool("skip_corrupt_records", False, "train.py and eval.py: drop corrupt "
                  "records (and the unreadable rest of a damaged shard) instead of "
                  "stopping; how many is reported. Validating each record costs a second "
                  "parse.")
flags.DEFINE_string("tflite_model", "", "eval.py, inference.py: a .tflite file written "
                    "by export_model.py --tflite (with its .json sidecar), used instead "
                    "of a run directory: the same reader, metrics and CSVs, the model run "
                    "by the TFLite interpreter.")
flags.DEFINE_integer("tflite_threads", 2, "Threads of the TFLite interpreter (the reader "
                     "shares the cores).", lower_bound=1)
flags.DEFINE_enum("role", "", ["", TEACHER, STUDENT], "eval.py, inference.py, "
                  "export_model.py: which model of the run to use: empty for the model it "
                  "trained (the student of a KD run), or teacher / student.")

# --- models -----------------------------------------------------------------------------
# --model and --video_level_classifier_model choose among the registered models; every
# hyperparameter a model registers (registry.Hyperparameter) is a flag of its own.
_ALL_MODELS = frame_level_models.MODELS.names() + tuple(
    n for n in video_level_models.MODELS.names() if n not in frame_level_models.MODELS)
flags.DEFINE_enum("model", "NeXtVLADModel", _ALL_MODELS,
                  "Which architecture to use for the model: frame-level %s; video-level %s."
                  % (", ".join(frame_level_models.MODELS.names()),
                     ", ".join(video_level_models.MODELS.names())))
flags.DEFINE_enum("video_level_classifier_model", "LogisticModel",
                  video_level_models.CLASSIFIERS.names(),
                  "Classifier on top of a frame-level model (LogisticModel: the original "
                  "KD code's; StarterLogisticModel: no L2 on its biases).")
HYPERPARAMETERS = registry.hyperparameters()


def _define_flag(hyperparameter):
  """The absl flag of a registered hyperparameter, typed by its default."""
  name, default, text = hyperparameter.flag, hyperparameter.default, hyperparameter.help
  bounds = dict(lower_bound=hyperparameter.lower_bound,
                upper_bound=hyperparameter.upper_bound)
  if isinstance(default, bool):
    flags.DEFINE_bool(name, default, text)
  elif isinstance(default, int):
    flags.DEFINE_integer(name, default, text, **bounds)
  elif isinstance(default, float):
    flags.DEFINE_float(name, default, text, **bounds)
  elif hyperparameter.choices:
    flags.DEFINE_enum(name, default, hyperparameter.choices, text)
  else:
    flags.DEFINE_string(name, default, text)


for _hyperparameter in HYPERPARAMETERS.values():
  _define_flag(_hyperparameter)
flags.DEFINE_enum("label_loss", "CrossEntropyLoss", losses.LABEL_LOSSES.names(),
                  "Which loss function to use for training the model "
                  "(CrossEntropyLoss: epsilon 1e-8 as the original KD code; "
                  "StarterCrossEntropyLoss: 1e-5 as today's starter).")

# --- teacher, student, distillation ----------------------------------------------------
flags.DEFINE_enum("model_type", "teacher", MODEL_TYPES,
                  "teacher: train one model on --k_frame frames (all frames: the teacher; "
                  "fewer: the k-frame student baseline); student: the k-frame baseline; "
                  "KD: distil the teacher into a k-frame student. With video-level "
                  "features (--frame_features=False, no k): teacher and student "
                  "train their model alone (into <train_dir>_teacher, _student), KD "
                  "distils a video-level teacher into a video-level student "
                  "(<train_dir>_KD) through L_CE and L_pred.")
flags.DEFINE_integer("k_frame", 300, "Frames the student sees (1..--max_frames).")
flags.DEFINE_enum("frame_sampling", "uniform", frame_selection.STRATEGIES,
                  "How the student's k frames are picked.")
flags.DEFINE_enum("kd_mode", "serial", KD_MODES,
                  "serial: frozen pretrained teacher; parallel: teacher and student "
                  "trained together from scratch.")
flags.DEFINE_float("kd_ce_weight", 1.0, "Weight of the student's label loss L_CE.")
flags.DEFINE_float("kd_pred_weight", 0.01, "Weight of L_pred (teacher vs student "
                   "probabilities).")
flags.DEFINE_float("kd_rep_weight", 0.001, "Weight of L_rep (teacher vs student "
                   "representations). Frame level only: a video-level model's "
                   "representation is its input, so there L_rep is zero and left out.")
flags.DEFINE_enum("kd_reduction", "sum", losses.REDUCTIONS,
                  "How L_pred and L_rep combine the examples of a tower batch: sum (the "
                  "documented recipe) or mean.")
flags.DEFINE_enum("kd_pred_loss", "mse", losses.PREDICTION_LOSSES,
                  "L_pred: mse (squared error of probabilities, the recipe), kl "
                  "(binary KL of probabilities) or logits_kl (binary KL of "
                  "sigmoid(logits / --kd_temperature), times T^2; a model without "
                  "logits gives the logit of its clipped probabilities).")
flags.DEFINE_float("kd_temperature", 1.0, "The temperature T of --kd_pred_loss="
                   "logits_kl (1: unsoftened); other values need logits_kl.")
flags.DEFINE_enum("kd_rep_loss", "mse", losses.REPRESENTATION_LOSSES,
                  "L_rep: mse (summed squared error, the recipe), none (no L_rep), "
                  "cosine (1 - cosine similarity per example) or standardized (squared "
                  "error "
                  "of each dimension divided by the teacher's batch standard "
                  "deviation).")
flags.DEFINE_enum("kd_weights", "recipe", KD_WEIGHTS,
                  "recipe: the --kd_ce_weight, --kd_pred_weight and --kd_rep_weight "
                  "given; balanced: set once, at the first training step, so that "
                  "L_CE, L_pred and L_rep start at the shares --kd_shares of the total "
                  "(kept in the checkpoint; the three weight flags are then unused).")
flags.DEFINE_string("kd_shares", "0.5,0.25,0.25", "--kd_weights=balanced: the shares "
                    "of L_CE, L_pred and L_rep in the first step's total (three "
                    "non-negative numbers summing to 1; a 0 leaves the term out).")
flags.DEFINE_float("regularization_penalty", 1.0,
                   "How much weight to give to the regularization loss (the label loss "
                   "has a weight of 1).")

# --- speed (same results) ---------------------------------------------------------------
flags.DEFINE_enum("frame_packing", "auto", model_utils.FRAME_PACKINGS,
                  "Per-frame layers on real frames only: always (gather the real frames "
                  "of the batch into one matrix), never (the padded [B, T] grid), auto "
                  "(pack when a video has more than %d frame slots)."
                  % model_utils.PACK_ABOVE_FRAMES)
flags.DEFINE_bool("bf16", False,
                  "Compute in reduced precision through TensorFlow's graph rewrite: "
                  "bfloat16 via oneDNN on CPUs (AVX512_BF16/AMX), the mixed-precision "
                  "rewrite on GPUs. Variables and checkpoints stay float32.")


# Flags about frames, which video-level records (--frame_features=False) do not have:
# {flag: why it means nothing there}. Given there (on the command line, or set to
# another value than the default), each is refused rather than silently ignored.
FRAME_LEVEL_FLAGS = {
    "k_frame": "a video-level student reads the whole record, as its teacher does",
    "frame_sampling": "there are no frames to pick",
    "max_frames": "there are no frames to keep",
    "segment_size": "there are no frames to cut into segments",
    "frame_packing": "there are no per-frame layers",
    "video_level_classifier_model": "--model is the video-level model itself",
}


def refuse_frame_level_flags(flag_values):
  """UsageError naming the first frame-level flag given with video-level features, or
  a nonzero --kd_rep_weight given there (L_rep is identically zero at video level)."""
  given = lambda name: (flag_values[name].present or
                        flag_values[name].value != flag_values[name].default)
  for name, why in FRAME_LEVEL_FLAGS.items():
    if given(name):
      raise cli.UsageError(
          "--%s=%s means nothing with video-level features (--frame_features=False): "
          "%s; leave it out" % (name, flag_values[name].value, why))
  if (flag_values.model_type == "KD" and given("kd_rep_weight") and
      flag_values.kd_rep_weight):
    raise cli.UsageError(
        "--kd_rep_weight=%s: a video-level model's representation is its input, so "
        "L_rep is zero with video-level features (--frame_features=False); distil "
        "with --kd_pred_weight" % flag_values.kd_rep_weight)
