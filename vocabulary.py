"""Class names: the YouTube-8M vocabulary (`vocabulary.csv`) turns class indices into
names a person can check.

The repository ships the official 3,862-class vocabulary.csv (Google's, CC BY 4.0; see
the README's Data section): columns Index, TrainVideoCount, KnowledgeGraphId, Name,
WikiUrl, Vertical1-3, WikiDescription.
"""

import csv
import io

import tensorflow as tf

import cli
import file_io

DEFAULT = "vocabulary.csv"


def load(path, flag_name="--vocabulary"):
  """{class index: name} of a vocabulary CSV with Index and Name columns.

  A relative path is looked up in the current directory, then in this repository; any
  TensorFlow file system (gs://...) serves.
  Raises:
    UsageError naming the flag for a missing or malformed file.
  """
  resolved = file_io.shipped_path(path)
  if not tf.io.gfile.exists(resolved):
    raise cli.UsageError("%s=%s does not exist" % (flag_name, path))
  try:
    with tf.io.gfile.GFile(resolved, "rb") as f:
      text = io.StringIO(f.read().decode("utf-8"), newline="")
    names = {int(row["Index"]): row["Name"] for row in csv.DictReader(text)}
  except (KeyError, ValueError, TypeError, csv.Error, tf.errors.OpError) as e:
    raise cli.UsageError("%s=%s is not a vocabulary CSV with Index and Name columns "
                         "(%s)" % (flag_name, path, e))
  if not names:
    raise cli.UsageError("%s=%s holds no classes" % (flag_name, path))
  return names


def describe(labels, scores, names):
  """'Name 0.986; Other name 0.42; ...' for classes and their scores (unknown classes
  by index)."""
  return "; ".join("%s %g" % (names.get(int(label), "class %d" % label), score)
                   for label, score in zip(labels, scores))
