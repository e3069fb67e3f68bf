"""Name -> class registries, one per kind (models, classifiers, losses), and the
hyperparameters each model registers with itself.

The registered names are the choices a flag accepts: they make its help text, its
absl enum and the one-line error for a name of the wrong kind. A model's registration
is all it takes to add one: config.py defines a flag for each of its Hyperparameters
(default: the model's own keyword default), records it in model_flags.json and passes
it to create_model.
"""

import dataclasses
import inspect

import cli


@dataclasses.dataclass(frozen=True)
class Hyperparameter(object):
  """One create_model keyword argument a flag sets.

  flag: the flag's name (and model_flags.json's key); help: its help text;
  arg: the create_model keyword (default: the flag's name); default: the keyword's
  default in create_model's signature unless given; choices: the values of a string
  flag (an enum); lower_bound / upper_bound: bounds of a number.
  """
  flag: str
  help: str
  arg: str = None
  default: object = None
  choices: tuple = None
  lower_bound: float = None
  upper_bound: float = None

  def keyword(self):
    """The create_model keyword this sets."""
    return self.arg or self.flag


class Registry(object):
  """Classes of one kind by class name, in registration order."""

  def __init__(self, kind, flag):
    """kind: what the classes are ("frame-level model"); flag: the flag choosing one."""
    self.kind = kind
    self.flag = flag
    self._classes = {}

  def register(self, *hyperparameters):
    """A class decorator adding the class under its name with these hyperparameters
    (its `hyperparameters` attribute); `register(cls)` adds one that has none."""
    if len(hyperparameters) == 1 and inspect.isclass(hyperparameters[0]):
      return self.register()(hyperparameters[0])

    def add(cls):
      signature = (inspect.signature(cls.create_model).parameters if hyperparameters
                   else {})
      resolved = []
      for hyperparameter in hyperparameters:
        if hyperparameter.default is None:
          if hyperparameter.keyword() not in signature:
            raise TypeError("%s.create_model has no keyword %s (--%s) to take its "
                            "default from" % (cls.__name__, hyperparameter.keyword(),
                                              hyperparameter.flag))
          hyperparameter = dataclasses.replace(
              hyperparameter, default=signature[hyperparameter.keyword()].default)
        resolved.append(hyperparameter)
      cls.hyperparameters = tuple(resolved)
      self._classes[cls.__name__] = cls
      return cls
    return add

  def names(self):
    """The registered names, in registration order."""
    return tuple(self._classes)

  def classes(self):
    """The registered classes, in registration order."""
    return tuple(self._classes.values())

  def __contains__(self, name):
    return name in self._classes

  def get(self, name):
    """The class called `name`; UsageError naming the flag and the choices otherwise."""
    if name not in self._classes:
      raise cli.UsageError("%s=%s is not a %s (choose from: %s)"
                           % (self.flag, name, self.kind, ", ".join(self.names())))
    return self._classes[name]

  def create(self, name):
    """An instance of the class called `name`."""
    return self.get(name)()


# The models of frame-level features (frame_level_models.py, nextvlad.py), of
# video-level features, and the classifiers on top of a frame-level model (the same
# classes as the video-level models; video_level_models.py).
FRAME_LEVEL_MODELS = Registry("frame-level model", "--model")
VIDEO_LEVEL_MODELS = Registry("video-level model", "--model")
CLASSIFIERS = Registry("video-level classifier", "--video_level_classifier_model")


def frame_level_model(*hyperparameters):
  """Class decorator: registers a frame-level model (--model) and its hyperparameters."""
  return FRAME_LEVEL_MODELS.register(*hyperparameters)


def video_level_model(*hyperparameters):
  """Class decorator: registers a video-level model, usable as --model on video-level
  features and as --video_level_classifier_model on top of a frame-level model."""
  def add(cls):
    cls = VIDEO_LEVEL_MODELS.register(*hyperparameters)(cls)
    CLASSIFIERS.register(*cls.hyperparameters)(cls)
    return cls
  return add


def hyperparameters():
  """{flag: Hyperparameter} of every registered model and classifier.

  Raises:
    TypeError when two registrations define one flag differently.
  """
  found = {}
  for cls in (FRAME_LEVEL_MODELS.classes() + VIDEO_LEVEL_MODELS.classes()):
    for hyperparameter in cls.hyperparameters:
      known = found.setdefault(hyperparameter.flag, hyperparameter)
      if dataclasses.replace(known, arg=None) != dataclasses.replace(hyperparameter,
                                                                    arg=None):
        raise TypeError("--%s is registered twice, differently (%s)"
                        % (hyperparameter.flag, cls.__name__))
  return found


def model_class(name):
  """The model class called `name`, frame-level or video-level (None if neither)."""
  for models in (FRAME_LEVEL_MODELS, VIDEO_LEVEL_MODELS):
    if name in models:
      return models.get(name)
  return None
