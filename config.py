"""The description of a graph, resolved once: flags (or model_flags.json) -> GraphConfig.

The flags are defined in graph_flags.py; the entry points (train.py, eval.py,
inference.py, export_model.py, tools, bench) turn the parsed flags into one frozen
GraphConfig with `from_flags()` and pass it down.
Models, layers, readers and losses take plain arguments and never read flags.
model_flags.json is `GraphConfig.to_json()`: one key per field below (flag names, so
files written before this module existed read back unchanged).
"""

import copy
import dataclasses

import tensorflow as tf

import cli
import frame_level_models
import graph_flags
import kd_options
import preprocessing
import registry
import utils
import video_level_models

flags = tf.compat.v1.flags
FLAGS = flags.FLAGS

TEACHER, STUDENT = graph_flags.TEACHER, graph_flags.STUDENT
MODEL_TYPES, KD_MODES = graph_flags.MODEL_TYPES, graph_flags.KD_MODES
HYPERPARAMETERS = graph_flags.HYPERPARAMETERS


class _ModelMethods(object):
  """What a ModelConfig does (its fields are the registered models' flags)."""

  def model_class(self, frame_features):
    """The --model class, from the registry of the feature kind in use."""
    models = (frame_level_models.MODELS if frame_features
              else video_level_models.MODELS)
    if self.model not in models and not frame_features:
      raise cli.UsageError("--model=%s is not a video-level model (choose from: %s); "
                           "for frame-level models set --frame_features"
                           % (self.model, ", ".join(models.names())))
    return models.get(self.model)

  def hyperparameters(self):
    """The Hyperparameters create_model gets: the model's, then its classifier's."""
    model = registry.model_class(self.model)
    found = list(model.hyperparameters)
    if model in frame_level_models.MODELS.classes():
      found += video_level_models.CLASSIFIERS.get(
          self.video_level_classifier_model).hyperparameters
    return found

  def create_kwargs(self, feature_sizes, frame_packing):
    """The keyword arguments of model_class().create_model besides the inputs."""
    kwargs = dict(feature_sizes=feature_sizes, frame_packing=frame_packing,
                  classifier=self.video_level_classifier_model)
    for hyperparameter in self.hyperparameters():
      kwargs[hyperparameter.keyword()] = getattr(self, hyperparameter.flag)
    return kwargs

  def model_only(self):
    """This config as a plain ModelConfig (a GraphConfig is one plus its run)."""
    return ModelConfig(**self.model_json())

  def model_json(self):
    """{flag name: value} of the model fields (what model_flags.json records of a
    KD run's teacher)."""
    return {name: getattr(self, name) for name in MODEL_FIELDS}

  def describe(self):
    """A short description for log lines: the model and the settings it uses."""
    kwargs = self.create_kwargs((), "auto")
    return "%s(%s)" % (self.model, ", ".join(
        "%s=%s" % (k, v) for k, v in sorted(kwargs.items())
        if k not in ("feature_sizes", "frame_packing")))


# One model: its architecture (--model), classifier and the hyperparameters of every
# registered model (field names are the flag names, all recorded in model_flags.json).
# In KD each role has its own: the KD command's flags describe the student, and the
# teacher's come from its own run directory (GraphConfig.teacher_model). Layers and
# models never see flags, only `create_kwargs()`.
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    [("model", str), ("video_level_classifier_model", str)] +
    [(h.flag, type(h.default)) for h in HYPERPARAMETERS.values()],
    bases=(_ModelMethods,), frozen=True)
MODEL_FIELDS = tuple(field.name for field in dataclasses.fields(ModelConfig))


@dataclasses.dataclass(frozen=True)
class GraphConfig(ModelConfig):
  """Everything that shapes a run's graph: the trained model's ModelConfig (the
  student's in KD) plus the inputs, the roles and the losses. Field names are the flag
  names.

  feature_names / feature_sizes are tuples here and comma-separated strings in
  model_flags.json (as the flags spell them). `preprocessing` is the resolved
  preprocessing.Preprocessing (model_flags.json records its kind). bf16 and
  frame_packing change speed, not results or variables: recorded for information,
  never a conflict, and a CLI's own flags choose them when it rebuilds a run.
  teacher_model: in KD, the teacher's ModelConfig as a dict (model_json()), from the
  teacher's own run directory; empty: the teacher is built like the student (KD runs
  written before roles had models of their own, parallel KD). teacher_cache describes
  the teacher cache an offline KD run reads its teacher's outputs from
  (TeacherCache.record(); empty otherwise): such a run's graph has no teacher.
  """
  feature_names: tuple
  feature_sizes: tuple
  frame_features: bool
  num_classes: int
  max_frames: int
  segment_labels: bool
  segment_size: int
  preprocessing: preprocessing.Preprocessing
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
  kd_temperature: float
  kd_rep_loss: str
  kd_weights: str
  kd_shares: str
  regularization_penalty: float
  frame_packing: str
  bf16: bool
  teacher_model: dict = dataclasses.field(default_factory=dict)
  teacher_cache: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    # One spelling of the shares ("0.50" and ".5" alike), so a resume compares values.
    object.__setattr__(self, "kd_shares",
                       ",".join(repr(share) for share in self.kd_share_values()))
    self._validate()

  def kd_share_values(self):
    """(L_CE, L_pred, L_rep) shares of --kd_shares (kd_options.shares)."""
    return kd_options.shares(self.kd_shares)

  def _validate(self):
    """Cross-field checks; UsageError naming the flag (absl checks single flags)."""
    if len(self.feature_names) != len(self.feature_sizes) or not self.feature_names:
      utils.GetListOfFeatureNamesAndSizes(",".join(self.feature_names),
                                          ",".join(map(str, self.feature_sizes)))
    if not 1 <= self.k_frame <= self.max_frames:
      raise cli.UsageError("--k_frame must be in 1..%d (--max_frames), got %d"
                           % (self.max_frames, self.k_frame))
    if self.segment_labels:
      if not self.frame_features:
        raise cli.UsageError("--segment_labels needs frame features "
                             "(--frame_features): segments are frames of a video")
      if self.segment_size > self.max_frames:
        raise cli.UsageError("--segment_size=%d exceeds --max_frames=%d"
                             % (self.segment_size, self.max_frames))
      if self.model_type != "teacher" and self.k_frame > self.segment_size:
        raise cli.UsageError(
            "--k_frame=%d: with --segment_labels the student sees k of a segment's "
            "--segment_size=%d frames" % (self.k_frame, self.segment_size))
    for role in self.roles():
      model = self.model_config(role)
      model.model_class(self.frame_features)
      if (model.model == "MixNeXtVladModel" and model.video_level_classifier_model
          not in LOGIT_CLASSIFIERS):
        raise cli.UsageError(
            "--model=MixNeXtVladModel mixes its branches' logits: it needs "
            "--video_level_classifier_model=%s, not %s" % (
                " or ".join(LOGIT_CLASSIFIERS), model.video_level_classifier_model))
    kd_options.check(self)
    if not isinstance(self.preprocessing, preprocessing.Preprocessing):
      raise cli.UsageError("unknown preprocessing %r" % (self.preprocessing,))

  def replace(self, **changes):
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)

  # --- roles ----------------------------------------------------------------------------

  def model_config(self, role):
    """The ModelConfig of `role`: the KD teacher's own, else this run's model."""
    if role == TEACHER and self.model_type == "KD" and self.teacher_model:
      return ModelConfig(**self.teacher_model)
    return self.model_only()

  def example_frames(self):
    """Frames of one example: a segment's (--segment_size) with --segment_labels, else a
    video's (--max_frames)."""
    return self.segment_size if self.segment_labels else self.max_frames

  def frames_seen(self, role):
    """How many frames `role` sees: k_frame for the student, all for the teacher."""
    return self.k_frame if role == STUDENT else self.example_frames()

  def single_model_role(self):
    """The scope a teacher/student-type run trains: teacher only when it sees all
    frames.

    Video-level features have no frames (k_frame stays at its default, max_frames):
    --model_type=teacher trains its model under teacher/, --model_type=student under
    student/, where a video-level KD run's student lives, so that a student trained
    alone and one distilled start from the same weights (seeded by name)."""
    if self.model_type == "teacher" and self.k_frame >= self.example_frames():
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

  def distils_representation(self):
    """Whether a KD run's loss has L_rep: a weight (or --kd_shares share), an L_rep
    (--kd_rep_loss), and frame-level models.

    A video-level model's representation is its input (video_level_models): teacher
    and student read the same record, so L_rep is identically zero there and is left
    out of the graph (kd_model.loss_scale_note says so when the run starts)."""
    rep = (self.kd_share_values()[2] if self.kd_weights == "balanced"
           else self.kd_rep_weight)
    return (self.model_type == "KD" and bool(rep) and self.kd_rep_loss != "none" and
            self.frame_features)

  def role(self, requested=""):
    """The role eval/inference/export use: `requested` (--role), or the model the run
    trained (the student of a KD run)."""
    if not requested:
      return STUDENT if self.model_type == "KD" else self.single_model_role()
    if requested not in self.roles():
      raise cli.UsageError("--role=%s: this run (model_type %s) has only %s"
                           % (requested, self.model_type, " and ".join(self.roles())))
    return requested

  def run_dir_suffix(self):
    """`_teacher`, `_student_k_<k>` or `_KD_k_<k>`: the original's run directory names;
    at video level (no frames, no k) `_teacher`, `_student` or `_KD`."""
    if not self.frame_features and self.model_type != "teacher":
      return "_" + self.model_type
    if self.model_type == "KD":
      return "_KD_k_%d" % self.k_frame
    if self.single_model_role() == TEACHER:
      return "_teacher"
    return "_student_k_%d" % self.k_frame

  # --- model_flags.json -----------------------------------------------------------------

  def to_json(self):
    """The dict model_flags.json holds."""
    recorded = {field.name: getattr(self, field.name)
                for field in dataclasses.fields(self)}
    recorded["feature_names"] = ",".join(self.feature_names)
    recorded["feature_sizes"] = ",".join(str(s) for s in self.feature_sizes)
    recorded["preprocessing"] = self.preprocessing.kind
    recorded["teacher_model"] = dict(self.teacher_model)
    recorded["teacher_cache"] = dict(self.teacher_cache)
    return recorded


# Classifiers that define logits (MixNeXtVladModel mixes them).
LOGIT_CLASSIFIERS = ("LogisticModel", "StarterLogisticModel")
INFORMATION_ONLY = ("bf16", "frame_packing")
FIELDS = tuple(field.name for field in dataclasses.fields(GraphConfig))
# Fields no flag holds: train.py resolves them (--pca_eigenvals, the teacher's run
# directory, --teacher_cache).
RESOLVED = ("preprocessing", "teacher_model", "teacher_cache")
# The flags config.py defines (the graph's); private_flags() copies them.
GRAPH_FLAGS = tuple(name for name in FIELDS if name not in RESOLVED) + (
    "pca_eigenvals", "skip_corrupt_records", "role")


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
    raise cli.UsageError("%s--%s=%s: %s" % (source + ": " if source else "", name,
                                            value, e))


def from_flags(flag_values=FLAGS):
  """The GraphConfig the flags describe, with --pca_eigenvals resolved (and loaded).

  Values are checked by the flags' parsers again, so values set in code (tests, tools)
  meet the same checks as the command line's. The teacher of a KD run is built like
  the student until train.py has read the teacher's run directory (teacher_model).
  Raises:
    UsageError naming the flag at fault.
  """
  values = {name: _checked(flag_values, name, flag_values[name].value)
            for name in FIELDS if name not in RESOLVED}
  if not values["frame_features"]:
    graph_flags.refuse_frame_level_flags(flag_values)
  values["preprocessing"] = preprocessing_from_flags(flag_values)
  return _from_values(values)


def private_flags(argv, names=GRAPH_FLAGS):
  """The flags `names` (default: the graph's) of a command line (`argv` without the
  program name), parsed into a FlagValues of their own: the process's flags stay
  untouched. Other flags in argv are ignored. For benchmarks and tools that build a
  documented command's graph."""
  private = flags.FlagValues()
  for name in names:
    private[name] = copy.deepcopy(FLAGS[name])
  private(["private"] + list(argv), known_only=True)
  return private


def defaults():
  """The GraphConfig of every flag at its default (for tests and tools)."""
  return from_flags(private_flags([]))


def preprocessing_from_flags(flag_values=FLAGS):
  """PCA scaling (loaded from --pca_eigenvals) when the path is set and the features
  are frame-level rgb (1024) first, else none.

  The default path simply does not apply to other features, while a path given for
  them is a UsageError.
  """
  path = flag_values.pca_eigenvals
  if not path:
    return preprocessing.Preprocessing()
  names, sizes = utils.GetListOfFeatureNamesAndSizes(flag_values.feature_names,
                                                     flag_values.feature_sizes)
  if preprocessing.scales(flag_values.frame_features, names, sizes):
    return preprocessing.Preprocessing.from_eigenvalues(path)
  if path != preprocessing.DEFAULT_EIGENVALS:
    raise cli.UsageError(
        "--pca_eigenvals=%s scales frame-level rgb features (--frame_features with "
        "--feature_names starting with rgb of size 1024); these features are %s"
        % (path, "video-level" if not flag_values.frame_features
           else "%s of size %d" % (names[0], sizes[0])))
  return preprocessing.Preprocessing()


def model_from_json(recorded, source, flag_values=FLAGS):
  """The ModelConfig of a dict of model fields (model_flags.json, or its teacher_model),
  checked with the flags' parsers; fields it lacks take their flag defaults."""
  return ModelConfig(**{
      name: (_checked(flag_values, name, recorded[name], source) if name in recorded
             else flag_values[name].default) for name in MODEL_FIELDS})


def from_json(recorded, source, flag_values=FLAGS):
  """The GraphConfig of a model_flags.json dict, checked with the flags' own parsers.

  Fields the file lacks (written by an older version) take their flag defaults;
  bf16 and frame_packing come from this process's flags. Unknown names are an error
  naming `source`. The preprocessing has no scale: its values are in the checkpoint.
  """
  unknown = sorted(set(recorded) - set(FIELDS))
  if unknown:
    raise cli.UsageError("%s records an unknown flag --%s" % (source, unknown[0]))
  values = {}
  for name in FIELDS:
    if name == "preprocessing":
      values[name] = preprocessing.Preprocessing(
          recorded.get(name, preprocessing.NONE), source=source)
    elif name == "teacher_model":
      # A KD run written before roles had models of their own built its teacher like
      # its student.
      teacher = recorded.get(name) or (
          {k: recorded[k] for k in MODEL_FIELDS if k in recorded}
          if recorded.get("model_type") == "KD" else {})
      values[name] = (model_from_json(teacher, source + " (teacher_model)",
                                      flag_values).model_json() if teacher else {})
    elif name == "teacher_cache":
      values[name] = dict(recorded.get(name) or {})
    elif name in INFORMATION_ONLY or name not in recorded:
      values[name] = (flag_values[name].value if name in INFORMATION_ONLY
                      else flag_values[name].default)
    else:
      values[name] = _checked(flag_values, name, recorded[name], source)
  return _from_values(values)


def with_command_segments(cfg, flag_values=FLAGS):
  """A recorded run's GraphConfig in the segment mode of this command (eval.py,
  inference.py): --segment_labels and --segment_size when given on its command line,
  else those the run recorded. A video-level model can so rank segments (the 2019
  starter's baseline), and a segment model score whole videos."""
  given = {name: _checked(flag_values, name, flag_values[name].value)
           for name in ("segment_labels", "segment_size") if flag_values[name].present}
  return cfg.replace(**given) if given else cfg


@dataclasses.dataclass(frozen=True)
class TrainConfig(object):
  """How train.py trains (not what): resolved once from its flags in main and passed
  down; the defaults are the starter's flags' defaults. Nothing below the entry points
  reads flags, so benchmarks and tests build one directly."""
  train_data_pattern: str = ""
  eval_data_pattern: str = ""
  batch_size: int = 1024
  base_learning_rate: float = 0.01
  learning_rate_decay: float = 0.95
  learning_rate_decay_examples: float = 4000000
  num_epochs: int = 5
  max_steps: int = None
  export_model_steps: int = 1000
  num_readers: int = 8
  optimizer: str = "AdamOptimizer"
  clip_gradient_norm: float = 1.0
  seed: int = None
  log_every_n_steps: int = 10
  skip_corrupt_records: bool = False
  log_device_placement: bool = False
  num_gpu: int = 1

  def __post_init__(self):
    if self.batch_size <= 0:
      raise cli.UsageError("--batch_size must be positive, got %d" % self.batch_size)
    if not isinstance(getattr(tf.compat.v1.train, self.optimizer, None), type):
      raise cli.UsageError("--optimizer=%s is not a tf.compat.v1.train optimizer "
                           "(e.g. AdamOptimizer)" % self.optimizer)

  def replace(self, **changes):
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)
