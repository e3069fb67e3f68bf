"""Name -> class registries, one per kind (models, classifiers, losses).

The registered names are the choices a flag accepts: they make its help text, its
absl enum and the one-line error for a name of the wrong kind.
"""

import utils


class Registry(object):
  """Classes of one kind by class name, in registration order."""

  def __init__(self, kind, flag):
    """kind: what the classes are ("frame-level model"); flag: the flag choosing one."""
    self.kind = kind
    self.flag = flag
    self._classes = {}

  def register(self, cls):
    """Adds `cls` under its class name; usable as a class decorator."""
    self._classes[cls.__name__] = cls
    return cls

  def names(self):
    """The registered names, in registration order."""
    return tuple(self._classes)

  def __contains__(self, name):
    return name in self._classes

  def get(self, name):
    """The class called `name`; UsageError naming the flag and the choices otherwise."""
    if name not in self._classes:
      raise utils.UsageError("%s=%s is not a %s (choose from: %s)"
                             % (self.flag, name, self.kind, ", ".join(self.names())))
    return self._classes[name]

  def create(self, name):
    """An instance of the class called `name`."""
    return self.get(name)()
