"""The description of a graph, resolved once: flags (or model_flags.json) -> GraphConfig.

Every flag that shapes a graph is defined here, with absl enums and bounds, and nowhere
else; the entry points (train.py, eval.py, inference.py, export_model.py, tools, bench)
turn the parsed flags into one frozen GraphConfig with `from_flags()` and pass it down.
Models, layers, readers and losses take plain arguments and never read flags.
model_flags.json is `GraphConfig.to_json()`: one key per field below (flag names, so
files written before this module existed read back unchanged).
"""

import dataclasses

import tensorflow as tf

import frame_level_models
import frame_selection
import losses
from kd_model import STUDENT, TEACHER
import model_utils
import preprocessing
import utils
import video_level_models

flags = tf.compat.v1.flags
FLAGS = flags.FLAGS

MODEL_TYPES = ("teacher", "student", "KD")
KD_MODES = ("serial", "parallel")

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
flags.DEFINE_enum("role", "", ["", TEACHER, STUDENT], "eval.py, inference.py, "
                  "export_model.py: which model of the run to use: empty for the model it "
                  "trained (the student of a KD run), or teacher / student.")

# --- models -----------------------------------------------------------------------------
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
flags.DEFINE_integer("moe_num_mixtures", video_level_models.NUM_MIXTURES,
                     "The number of mixtures (excluding the dummy 'expert') used for "
                     "MoeModel.", lower_bound=1)
flags.DEFINE_float("l2_penalty", video_level_models.L2_PENALTY,
                   "L2 penalty on the classifier weights.", lower_bound=0.0)
flags.DEFINE_integer("nextvlad_cluster_size", 64,
                     "Number of units in the NeXtVLAD cluster layer.", lower_bound=1)
flags.DEFINE_integer("nextvlad_hidden_size", 1024,
                     "Number of units in the NeXtVLAD hidden layer.", lower_bound=1)
flags.DEFINE_integer("groups", 8, "number of groups in VLAD encoding", lower_bound=1)
flags.DEFINE_float("drop_rate", 0.5, "dropout ratio after VLAD encoding",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("expansion", 2, "expansion ratio in Group NetVlad", lower_bound=1)
flags.DEFINE_integer("gating_reduction", 8, "reduction factor in se context gating",
                     lower_bound=1)
flags.DEFINE_integer("iterations", 30, "Frames DbofModel samples per video (0: all "
                     "real frames).", lower_bound=0)
flags.DEFINE_bool("dbof_add_batch_norm", True, "Adds batch normalization to the DBoF "
                  "model.")
flags.DEFINE_bool("sample_random_frames", True, "DbofModel samples --iterations random "
                  "frames if True, uniformly spread frames if False.")
flags.DEFINE_integer("dbof_cluster_size", 8192, "Number of units in the DBoF cluster "
                     "layer.", lower_bound=1)
flags.DEFINE_integer("dbof_hidden_size", 1024, "Number of units in the DBoF hidden "
                     "layer.", lower_bound=1)
flags.DEFINE_enum("dbof_pooling_method", "max", frame_level_models.POOLING_METHODS,
                  "Pooling of the DBoF cluster layer over frames.")
flags.DEFINE_integer("lstm_cells", 1024, "Number of LSTM cells.", lower_bound=1)
flags.DEFINE_integer("lstm_layers", 2, "Number of LSTM layers.", lower_bound=1)
flags.DEFINE_integer("netvlad_cluster_size", 64, "Number of NetVLAD clusters of the "
                     "first modality (the others get half).", lower_bound=1)
flags.DEFINE_integer("netvlad_hidden_size", 1024, "Number of units in the NetVLAD "
                     "hidden layer.", lower_bound=1)
flags.DEFINE_bool("netvlad_add_batch_norm", True, "Adds batch normalization to the "
                  "NetVLAD model.")
flags.DEFINE_bool("gating", True, "Context gating after the NetVLAD hidden layer.")
flags.DEFINE_integer("hrnn_cells", 1024, "Number of LSTM cells of both HRNN levels.",
                     lower_bound=1)
flags.DEFINE_integer("hrnn_block_size", 15, "Consecutive frames per HRNN block.",
                     lower_bound=1)
flags.DEFINE_enum("label_loss", "CrossEntropyLoss", losses.LABEL_LOSSES.names(),
                  "Which loss function to use for training the model "
                  "(CrossEntropyLoss: epsilon 1e-8 as the original KD code; "
                  "StarterCrossEntropyLoss: 1e-5 as today's starter).")

# --- teacher, student, distillation ----------------------------------------------------
flags.DEFINE_enum("model_type", "teacher", MODEL_TYPES,
                  "teacher: train one model on --k_frame frames (all frames: the teacher; "
                  "fewer: the k-frame student baseline); student: the k-frame baseline; "
                  "KD: distil the teacher into a k-frame student.")
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
                   "representations).")
flags.DEFINE_enum("kd_reduction", "sum", losses.REDUCTIONS,
                  "How L_pred and L_rep combine the examples of a tower batch: sum (the "
                  "documented recipe) or mean.")
flags.DEFINE_enum("kd_pred_loss", "mse", losses.PREDICTION_LOSSES,
                  "L_pred: mse (squared error) or kl.")
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


@dataclasses.dataclass(frozen=True)
class GraphConfig(object):
  """Everything that shapes a role's graph. Field names are the flag names.

  feature_names / feature_sizes are tuples here and comma-separated strings in
  model_flags.json (as the flags spell them). `preprocessing` is what --pca_eigenvals
  resolved to (preprocessing.PCA or NONE). bf16 and frame_packing change speed, not
  results or variables: recorded for information, never a conflict, and a CLI's own
  flags choose them when it rebuilds a run. teacher_cache describes the teacher cache
  an offline KD run reads its teacher's outputs from (TeacherCache.record(); empty
  otherwise): such a run's graph has no teacher.
  """
  feature_names: tuple
  feature_sizes: tuple
  frame_features: bool
  num_classes: int
  max_frames: int
  preprocessing: str
  model: str
  video_level_classifier_model: str
  l2_penalty: float
  moe_num_mixtures: int
  nextvlad_cluster_size: int
  nextvlad_hidden_size: int
  groups: int
  drop_rate: float
  expansion: int
  gating_reduction: int
  iterations: int
  dbof_add_batch_norm: bool
  sample_random_frames: bool
  dbof_cluster_size: int
  dbof_hidden_size: int
  dbof_pooling_method: str
  lstm_cells: int
  lstm_layers: int
  netvlad_cluster_size: int
  netvlad_hidden_size: int
  netvlad_add_batch_norm: bool
  gating: bool
  hrnn_cells: int
  hrnn_block_size: int
  label_loss: str
  model_type: str
  k_frame: int
  frame_sampling: str
  kd_mode: str
  kd_ce_weight: float
  kd_pred_weight: float
  kd_rep_weight: float
  kd_reduction: str
  kd_pred_loss: str
  regularization_penalty: float
  frame_packing: str
  bf16: bool
  teacher_cache: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self._validate()

  def _validate(self):
    """Cross-field checks; UsageError naming the flag (absl checks single flags)."""
    if len(self.feature_names) != len(self.feature_sizes) or not self.feature_names:
      utils.GetListOfFeatureNamesAndSizes(",".join(self.feature_names),
                                          ",".join(map(str, self.feature_sizes)))
    if not 1 <= self.k_frame <= self.max_frames:
      raise utils.UsageError("--k_frame must be in 1..%d (--max_frames), got %d"
                             % (self.max_frames, self.k_frame))
    if self.model_type != "teacher" and not self.frame_features:
      raise utils.UsageError("--model_type=%s needs frame features (--frame_features)"
                             % self.model_type)
    self.model_class()
    if self.preprocessing not in (preprocessing.PCA, preprocessing.NONE):
      raise utils.UsageError("unknown preprocessing %r" % self.preprocessing)

  def replace(self, **changes):
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)

  # --- the model ------------------------------------------------------------------------

  def model_class(self):
    """The --model class, from the registry of the feature kind in use."""
    registry = (frame_level_models.MODELS if self.frame_features
                else video_level_models.MODELS)
    if self.model not in registry and not self.frame_features:
      raise utils.UsageError("--model=%s is not a video-level model (choose from: %s); "
                             "for frame-level models set --frame_features"
                             % (self.model, ", ".join(registry.names())))
    return registry.get(self.model)

  def model_kwargs(self):
    """The keyword arguments of model_class().create_model besides the inputs."""
    kwargs = dict(feature_sizes=self.feature_sizes,
                  classifier=self.video_level_classifier_model,
                  l2_penalty=self.l2_penalty, num_mixtures=self.moe_num_mixtures)
    if self.model == "NeXtVLADModel":
      kwargs.update(cluster_size=self.nextvlad_cluster_size,
                    hidden_size=self.nextvlad_hidden_size, groups=self.groups,
                    expansion=self.expansion, gating_reduction=self.gating_reduction,
                    drop_rate=self.drop_rate, frame_packing=self.frame_packing)
    elif self.model == "DbofModel":
      kwargs.update(iterations=self.iterations,
                    sample_random_frames=self.sample_random_frames,
                    add_batch_norm=self.dbof_add_batch_norm,
                    cluster_size=self.dbof_cluster_size,
                    hidden_size=self.dbof_hidden_size,
                    pooling_method=self.dbof_pooling_method,
                    frame_packing=self.frame_packing)
    elif self.model == "LstmModel":
      kwargs.update(cells=self.lstm_cells, layers=self.lstm_layers)
    elif self.model == "NetVLADModel":
      kwargs.update(cluster_size=self.netvlad_cluster_size,
                    hidden_size=self.netvlad_hidden_size,
                    add_batch_norm=self.netvlad_add_batch_norm, gating=self.gating,
                    frame_packing=self.frame_packing)
    elif self.model == "HRNNModel":
      kwargs.update(cells=self.hrnn_cells, block_size=self.hrnn_block_size)
    return kwargs

  # --- roles ----------------------------------------------------------------------------

  def single_model_role(self):
    """The scope a teacher/student-type run trains: teacher only when it sees all frames."""
    if self.model_type == "teacher" and self.k_frame >= self.max_frames:
      return TEACHER
    return STUDENT

  def roles(self):
    """The model scopes this run builds, teacher first (none in offline KD)."""
    if self.model_type != "KD":
      return (self.single_model_role(),)
    return (STUDENT,) if self.teacher_cache else (TEACHER, STUDENT)

  def trained_roles(self):
    """The scopes whose variables get gradients."""
    if self.model_type == "KD":
      return (TEACHER, STUDENT) if self.kd_mode == "parallel" else (STUDENT,)
    return self.roles()

  def role(self, requested=""):
    """The role eval/inference/export use: `requested` (--role), or the model the run
    trained (the student of a KD run)."""
    if not requested:
      return STUDENT if self.model_type == "KD" else self.single_model_role()
    if requested not in self.roles():
      raise utils.UsageError("--role=%s: this run (model_type %s) has only %s"
                             % (requested, self.model_type, " and ".join(self.roles())))
    return requested

  def run_dir_suffix(self):
    """`_teacher`, `_student_k_<k>` or `_KD_k_<k>`: the original's run directory names."""
    if self.model_type == "KD":
      return "_KD_k_%d" % self.k_frame
    if self.single_model_role() == TEACHER:
      return "_teacher"
    return "_student_k_%d" % self.k_frame

  # --- model_flags.json -----------------------------------------------------------------

  def to_json(self):
    """The dict model_flags.json holds."""
    recorded = dataclasses.asdict(self)
    recorded["feature_names"] = ",".join(self.feature_names)
    recorded["feature_sizes"] = ",".join(str(s) for s in self.feature_sizes)
    return recorded


INFORMATION_ONLY = ("bf16", "frame_packing")
FIELDS = tuple(field.name for field in dataclasses.fields(GraphConfig))
# Fields no flag holds: train.py resolves them (--pca_eigenvals, --teacher_cache).
RESOLVED = ("preprocessing", "teacher_cache")


def _from_values(values):
  """GraphConfig from flag-spelled values (feature lists as strings)."""
  names, sizes = utils.GetListOfFeatureNamesAndSizes(values["feature_names"],
                                                     values["feature_sizes"])
  values = dict(values, feature_names=tuple(names), feature_sizes=tuple(sizes))
  return GraphConfig(**values)


def _checked(flag_values, name, value, source=None):
  """value, checked by the flag's own absl parser (enum choices, bounds)."""
  try:
    return flag_values[name].parser.parse(value)
  except (ValueError, TypeError) as e:
    raise utils.UsageError("%s--%s=%s: %s" % (source + ": " if source else "", name,
                                              value, e))


def from_flags(flag_values=FLAGS):
  """The GraphConfig the flags describe (with --pca_eigenvals resolved).

  Values are checked by the flags' parsers again, so values set in code (tests, tools)
  meet the same checks as the command line's.
  Raises:
    UsageError naming the flag at fault.
  """
  values = {name: _checked(flag_values, name, flag_values[name].value)
            for name in FIELDS if name not in RESOLVED}
  values["preprocessing"] = preprocessing_from_flags(flag_values)
  return _from_values(values)


def defaults():
  """The GraphConfig of every flag at its default (for tests and tools)."""
  values = {name: FLAGS[name].default for name in FIELDS if name not in RESOLVED}
  values["preprocessing"] = preprocessing.PCA if preprocessing.scales(
      values["frame_features"], values["feature_names"].split(","),
      [int(s) for s in values["feature_sizes"].split(",")]) else preprocessing.NONE
  return _from_values(values)


def preprocessing_from_flags(flag_values=FLAGS):
  """PCA when --pca_eigenvals is set and the features are frame-level rgb (1024) first.

  The default path simply does not apply to other features, while a path given for
  them is a UsageError.
  """
  path = flag_values.pca_eigenvals
  if not path:
    return preprocessing.NONE
  names, sizes = utils.GetListOfFeatureNamesAndSizes(flag_values.feature_names,
                                                     flag_values.feature_sizes)
  if preprocessing.scales(flag_values.frame_features, names, sizes):
    return preprocessing.PCA
  if path != preprocessing.DEFAULT_EIGENVALS:
    raise utils.UsageError(
        "--pca_eigenvals=%s scales frame-level rgb features (--frame_features with "
        "--feature_names starting with rgb of size 1024); these features are %s"
        % (path, "video-level" if not flag_values.frame_features
           else "%s of size %d" % (names[0], sizes[0])))
  return preprocessing.NONE


def from_json(recorded, source, flag_values=FLAGS):
  """The GraphConfig of a model_flags.json dict, checked with the flags' own parsers.

  Fields the file lacks (written by an older version) take their flag defaults;
  bf16 and frame_packing come from this process's flags. Unknown names are an error
  naming `source`.
  """
  unknown = sorted(set(recorded) - set(FIELDS))
  if unknown:
    raise utils.UsageError("%s records an unknown flag --%s" % (source, unknown[0]))
  values = {}
  for name in FIELDS:
    if name == "preprocessing":
      values[name] = recorded.get(name, preprocessing.NONE)
    elif name == "teacher_cache":
      values[name] = dict(recorded.get(name) or {})
    elif name in INFORMATION_ONLY or name not in recorded:
      values[name] = (flag_values[name].value if name in INFORMATION_ONLY
                      else flag_values[name].default)
    else:
      values[name] = _checked(flag_values, name, recorded[name], source)
  return _from_values(values)


def _compared(name, value):
  """What of a model_flags.json value decides a conflict: a teacher cache by its digest
  (what the cache holds), not by the teacher checkpoint's path it also records, which
  changes when the teacher's run directory moves."""
  if name == "teacher_cache":
    return (value or {}).get("digest")
  return value


def conflicts(recorded, current):
  """Fields whose values differ between two model_flags.json dicts ('--x: old -> new')."""
  found = []
  for name in sorted(set(recorded) | set(current)):
    if name in INFORMATION_ONLY:
      continue
    if _compared(name, recorded.get(name)) != _compared(name, current.get(name)):
      found.append("--%s: %r -> %r" % (name, recorded.get(name), current.get(name)))
  return found
