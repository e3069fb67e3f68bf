"""A training run's whole description, resolved once: `resolve()` -> TrainingRun.

train.py turns its flags into a GraphConfig, a TrainConfig, the listed training files
and RunOptions; `resolve` settles everything else a run needs before anything is
written, in one place: the run directory and the checkpoint it resumes from, the KD
teacher (its checkpoint and the model its run directory records), the preprocessing,
and the teacher cache. The GraphConfig it returns is final: its roles (and so which
frames each reader decodes: `GraphConfig.student_frames_only`) never change after.
"""

import dataclasses

import numpy as np
import tensorflow as tf

import cli
import config
import kd_model
import preprocessing
import readers
import run_dir
import teacher_cache


@dataclasses.dataclass(frozen=True)
class RunOptions(object):
  """What train.py's flags say of the run besides its graph and training settings.

  train_dir: --train_dir (the base; the run kind's suffix is added);
  teacher_checkpoint, teacher_cache, teacher_cache_dtype: the flags of those names;
  pca_eigenvals: --pca_eigenvals, and pca_eigenvals_given whether the command line set
  it; start_new_model: --start_new_model.
  """
  train_dir: str
  teacher_checkpoint: str = ""
  teacher_cache: str = ""
  teacher_cache_dtype: str = "float16"
  pca_eigenvals: str = ""
  pca_eigenvals_given: bool = False
  start_new_model: bool = False


@dataclasses.dataclass(frozen=True)
class TrainingRun(object):
  """Everything a training run needs, resolved (see the module docstring).

  cfg: the final GraphConfig (its teacher's model, preprocessing and cache record);
  train_files, eval_files: readers.DataFiles of --train_data_pattern and
    --eval_data_pattern (None without one), each listed once;
  resume_from: the checkpoint of train_dir the run resumes from, None for a fresh start;
  teacher: the serial teacher the training graph restores at a fresh start (None when
    resuming, offline, or with no teacher);
  cache: the teacher_cache.TeacherCache of offline KD (its teacher builds it), or None.
  """
  cfg: config.GraphConfig
  train_cfg: config.TrainConfig
  train_dir: str
  train_files: readers.DataFiles
  eval_files: readers.DataFiles = None
  resume_from: str = None
  teacher: kd_model.Teacher = None
  cache: teacher_cache.TeacherCache = None


def resolve(cfg, train_cfg, train_files, eval_files, options):
  """The TrainingRun of a command's configs and options; reads, never writes.

  Raises:
    UsageError naming the flag or file at fault (no usable teacher, a teacher trained
    on other inputs or preprocessing, a cache directory of other inputs).
  """
  train_dir = run_directory(cfg, options)
  resume_from = (None if options.start_new_model
                 else run_dir.find_checkpoint(train_dir))
  teacher_model, teacher = {}, None
  if cfg.model_type == "KD":
    teacher_model, teacher = _teacher(cfg, train_dir, resume_from, options)
  prep = _preprocessing(cfg, train_dir, teacher, options)
  if teacher:
    _check_teacher_preprocessing(teacher.checkpoint, prep, options.pca_eigenvals)
  cache = None
  if options.teacher_cache:
    described = cfg.replace(teacher_model=teacher_model, preprocessing=prep)
    cache = teacher_cache.TeacherCache(
        options.teacher_cache, teacher_cache.fingerprint(
            described, teacher, train_files.paths, options.teacher_cache_dtype),
        teacher=teacher, data_files=train_files.paths)
    cache.claim()
    if kd_model.needs_teacher_logits(cfg):
      cache.check_logits()
  cfg = cfg.replace(teacher_model=teacher_model, preprocessing=prep,
                    teacher_cache=cache.record() if cache else {})
  return TrainingRun(cfg=cfg, train_cfg=train_cfg, train_dir=train_dir,
                     train_files=train_files, eval_files=eval_files,
                     resume_from=resume_from,
                     teacher=None if cache else teacher, cache=cache)


def run_directory(cfg, options):
  """The run directory: --train_dir plus the run kind's suffix (`_teacher`, ...)."""
  return (options.train_dir.rstrip("/") or ".") + cfg.run_dir_suffix()


def _teacher(cfg, train_dir, resume_from, options):
  """(the teacher's model as model_flags.json records it, the kd_model.Teacher to
  restore or None).

  A serial run that starts fresh, or reads a teacher cache, finds the teacher
  checkpoint and builds the teacher its run directory records; a resumed online run
  already holds its teacher in its checkpoint, and keeps the model it recorded. A
  parallel run's teacher trains from scratch with the command's model flags.
  """
  if cfg.kd_mode == "parallel":
    return cfg.model_json(), None
  if resume_from is not None and not options.teacher_cache:
    recorded = config.from_json(run_dir.read_recorded(train_dir) or {},
                                run_dir.flags_path(train_dir))
    return recorded.teacher_model, None
  checkpoint = run_dir.teacher_checkpoint(
      options.teacher_checkpoint, options.train_dir.rstrip("/") + "_teacher",
      cfg.max_frames if cfg.frame_features else None)
  teacher, model, note = run_dir.teacher_of(checkpoint, cfg)
  print("Teacher: %s" % checkpoint, flush=True)
  if note:
    print(note, flush=True)
  if model != cfg.model_only():
    print("Teacher model: %s; student model: %s"
          % (model.describe(), cfg.model_only().describe()), flush=True)
  return model.model_json(), teacher


def _preprocessing(cfg, train_dir, teacher, options):
  """The run's preprocessing when the command line leaves --pca_eigenvals at its
  default: the flags' otherwise.

  PCA scaling became the default after runs had been written without it. So that those
  keep working with the command that made them, a resumed run keeps the preprocessing
  its model_flags.json records, and a fresh serial-KD run follows its teacher's
  checkpoint. A --pca_eigenvals given on the command line is taken as it is (and a
  mismatch is refused, naming both).
  """
  if options.pca_eigenvals_given or cfg.preprocessing.kind != preprocessing.PCA:
    return cfg.preprocessing
  recorded = None if options.start_new_model else run_dir.read_recorded(train_dir)
  if recorded is not None:
    source = "as recorded in " + run_dir.flags_path(train_dir)
    scaled = recorded.get("preprocessing") == preprocessing.PCA
  elif teacher:
    source = "as the teacher %s was trained" % teacher.checkpoint
    scaled = (preprocessing.SCALE_VARIABLE in
              run_dir.checkpoint_variables(teacher.checkpoint))
  else:
    return cfg.preprocessing
  if scaled:
    return cfg.preprocessing
  print("Preprocessing: none (no PCA scaling), %s; pass --pca_eigenvals to choose"
        % source, flush=True)
  return preprocessing.Preprocessing()


def _check_teacher_preprocessing(checkpoint, prep, pca_eigenvals):
  """The teacher must have been trained on the same preprocessed inputs."""
  stored = preprocessing.SCALE_VARIABLE in run_dir.checkpoint_variables(checkpoint)
  scaled = prep.kind == preprocessing.PCA
  if stored != scaled:
    raise cli.UsageError(
        "the teacher %s was trained %s --pca_eigenvals but this run is %s it"
        % (checkpoint, "with" if stored else "without", "with" if scaled else "without"))
  if scaled and not np.allclose(run_dir.checkpoint_reader(checkpoint).get_tensor(
      preprocessing.SCALE_VARIABLE), prep.rgb_scale):
    raise cli.UsageError("the teacher %s was trained with other --pca_eigenvals "
                         "values than %s" % (checkpoint, pca_eigenvals))


def epoch_examples(run):
  """(examples in one epoch of run's training files, whether that is an estimate),
  for the ETA of the progress lines.

  The first file is counted (its records, or with --segment_labels its rated
  segments) and, when there are more, scaled by their number: an estimate, cheap
  whatever the size of the data.
  """
  paths = run.train_files.paths
  try:
    count = (_rated_segments(paths[0]) if run.cfg.segment_labels
             else readers.count_records(paths[:1]))
  except Exception:  # pylint: disable=broad-except
    return None  # an unreadable first file: the training reports it, the ETA goes
  return count * len(paths), len(paths) > 1


def _rated_segments(path):
  """The rated segments (distinct start times per record) of one frame-level file."""
  count = 0
  for serialized in tf.compat.v1.io.tf_record_iterator(path):
    context = tf.train.SequenceExample.FromString(serialized).context.feature
    if "segment_start_times" in context:
      count += len(set(context["segment_start_times"].int64_list.value))
  return count
