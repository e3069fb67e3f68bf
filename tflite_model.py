"""A quantized (or float32) TFLite file of a role's model, served where a checkpoint
serves: `TFLiteModel` loads export_model.py's `model.tflite` with its sidecar
`model.tflite.json`, checks both, and `predictions_op(batch)` puts the interpreter
into the inference graph in place of the model, so the reader, the metrics and the
CSV writers stay those of every other path (inference_graph.InferenceGraph).

The file takes what the project's reader hands the role's model (frames as the
reader's uint8 bytes and num_frames, or video-level features) and returns the role's
class probabilities [B, C]; dequantization and the PCA scaling are inside it.
"""

import contextlib
import hashlib
import os
import re
import sys
import warnings

import numpy as np
import tensorflow as tf

import cli
import config
import file_io

SIDECAR_SUFFIX = ".json"
FORMAT = 1
QUANTIZATIONS = ("float32", "dynamic", "int8")
# The flags a file is made for: given on a command line, they must agree with it.
CHECKED_FLAGS = ("feature_names", "feature_sizes", "frame_features", "num_classes",
                 "max_frames", "k_frame", "frame_sampling", "segment_labels",
                 "segment_size")


def sidecar_path(path):
  """The sidecar of a .tflite file: <path>.json."""
  return path + SIDECAR_SUFFIX


@contextlib.contextmanager
def _quiet_stderr():
  """Silences the interpreter's own INFO lines on stderr (the delegate it created),
  which would otherwise sit beside the one-line errors of the CLIs."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def _interpreter_class():
  """The pinned TensorFlow's interpreter (its deprecation warning silenced: LiteRT's
  is a separate package; see docs/evaluation.md)."""
  warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
  warnings.filterwarnings("ignore", category=UserWarning,
                          module="tensorflow.lite.python.interpreter")
  return tf.lite.Interpreter


class TFLiteModel(object):
  """A .tflite file and what it was made from (its sidecar).

  Attributes: path, cfg (the exported run's GraphConfig), role, quantization,
  num_classes, step (the global step of the checkpoint it was made from).
  """

  def __init__(self, path, num_threads=None, flag_name="--tflite_model"):
    """Raises UsageError naming flag_name and the file when the file or its sidecar is
    missing, truncated, or not a model."""
    self.path = path
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
      raise cli.UsageError("%s=%s does not exist" % (flag_name, path))
    sidecar = sidecar_path(path)
    if not tf.io.gfile.exists(sidecar):
      raise cli.UsageError("%s=%s has no %s beside it (written with it by "
                           "export_model.py --tflite)" % (flag_name, path,
                                                          os.path.basename(sidecar)))
    try:
      meta = file_io.read_json(sidecar)
      self.cfg = config.from_json(meta["model_flags"], sidecar)
      self.role, self.quantization = meta["role"], meta["quantization"]
      self._inputs, self._output = meta["inputs"], meta["output"]
      size, sha256 = meta["tflite_bytes"], meta["tflite_sha256"]
      step = re.search(r"-(\d+)$", meta.get("checkpoint") or "")
    except (KeyError, TypeError, ValueError) as e:
      raise cli.UsageError("%s is not a sidecar of export_model.py --tflite (%s)"
                           % (sidecar, e))
    if meta.get("format") != FORMAT or self.quantization not in QUANTIZATIONS:
      raise cli.UsageError("%s: format %r / quantization %r unknown to this version"
                           % (sidecar, meta.get("format"), self.quantization))
    actual = tf.io.gfile.stat(path).length
    if actual != size:
      raise cli.UsageError("%s=%s is %d bytes, its sidecar says %d: truncated or "
                           "replaced" % (flag_name, path, actual, size))
    with tf.io.gfile.GFile(path, "rb") as f:
      content = f.read()  # read once: digested, then handed to the interpreter
    if hashlib.sha256(content).hexdigest() != sha256:
      raise cli.UsageError("%s=%s does not match its sidecar's sha256: damaged or "
                           "replaced" % (flag_name, path))
    self.num_classes = self.cfg.num_classes
    self.step = int(step.group(1)) if step else 0  # of the checkpoint exported
    try:
      with _quiet_stderr():
        self._interpreter = _interpreter_class()(model_content=content,
                                                 num_threads=num_threads)
      details = {d["name"]: d["index"] for d in self._interpreter.get_input_details()}
      self._input_index = {key: details[spec["index_name"]]
                           for key, spec in self._inputs.items()}
      self._output_index = next(
          d["index"] for d in self._interpreter.get_output_details()
          if d["name"] == self._output["index_name"])
    except (ValueError, RuntimeError, KeyError, StopIteration) as e:
      raise cli.UsageError("%s=%s is not a TFLite model of its sidecar (%s)"
                           % (flag_name, path, str(e).splitlines()[0]))
    self._batch_size = None

  def check_command(self, flag_values, flag_name="--tflite_model"):
    """Refuses a file made for other inputs than the command line's own flags ask
    (only the flags given on it count), naming the flag."""
    for name in CHECKED_FLAGS:
      if not flag_values[name].present:
        continue
      ours = flag_values[name].value
      theirs = getattr(self.cfg, name)
      if isinstance(theirs, tuple):
        ours = tuple(type(theirs[0])(v) for v in str(ours).split(","))
      if ours != theirs:
        raise cli.UsageError(
            "%s=%s was made for --%s=%s, this command asks --%s=%s"
            % (flag_name, self.path, name, _spell(theirs), name, _spell(ours)))
    if flag_values["pca_eigenvals"].present:
      scaled = bool(flag_values.pca_eigenvals)
      if scaled != (self.cfg.preprocessing.kind != "none"):
        raise cli.UsageError("%s=%s was made with preprocessing %s, this command asks "
                             "--pca_eigenvals=%s" % (flag_name, self.path,
                                                     self.cfg.preprocessing.kind,
                                                     flag_values.pca_eigenvals))
    if flag_values["role"].present and flag_values.role and (
        flag_values.role != self.role):
      raise cli.UsageError("%s=%s holds the %s, this command asks --role=%s"
                           % (flag_name, self.path, self.role, flag_values.role))

  def predict(self, *inputs):
    """The role's class probabilities [B, C] float32 of one reader batch: (frames
    uint8 [B, T, F], num_frames int32 [B]), or (features float32 [B, F])."""
    batch_size = len(inputs[0])
    keys = ("frames", "num_frames") if "frames" in self._input_index else ("features",)
    if batch_size != self._batch_size:
      for key, value in zip(keys, inputs):
        self._interpreter.resize_tensor_input(self._input_index[key], value.shape)
      self._interpreter.allocate_tensors()
      self._batch_size = batch_size
    for key, value in zip(keys, inputs):
      dtype = np.uint8 if key == "frames" else (np.int32 if key == "num_frames"
                                                 else np.float32)
      self._interpreter.set_tensor(self._input_index[key],
                                   np.ascontiguousarray(value, dtype=dtype))
    self._interpreter.invoke()
    return np.array(self._interpreter.get_tensor(self._output_index))

  def predictions_op(self, batch):
    """The interpreter on a reader batch, as a graph op -> predictions [B, C]."""
    inputs = ([batch["video_matrix"], batch["num_frames"]] if self.cfg.frame_features
              else [batch["video_matrix"]])
    predictions = tf.numpy_function(self.predict, inputs, tf.float32,
                                    name="tflite_model")
    predictions.set_shape([None, self.num_classes])
    return predictions

  def describe(self):
    """'the student (k 6, dynamic)' for log lines."""
    return "the %s (%s, k_frame %d, %s)" % (self.role, self.cfg.model,
                                            self.cfg.k_frame, self.quantization)


def _spell(value):
  return ",".join(map(str, value)) if isinstance(value, tuple) else value
