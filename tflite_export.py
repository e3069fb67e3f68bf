"""Exports one role of a run's checkpoint as a TensorFlow Lite file (export_model.py
--tflite): `model.tflite` and its sidecar `model.tflite.json`.

The file takes what the project's reader hands the model for that role, and holds
everything after it (dequantization, the PCA scaling, the model):
  frame level:  frames      uint8   [B, T, F]  T: the frames the reader gives the role
                                               (a student's k', picked by the reader)
                num_frames  int32   [B]
  video level:  features    float32 [B, F]
and returns
                predictions float32 [B, num_classes], the role's class probabilities.
B is dynamic (the interpreter's resize_tensor_input). Quantization modes:
  float32  the weights as they are;
  dynamic  int8 weights, float activations (Optimize.DEFAULT);
  int8     int8 weights and activations, calibrated on records read by the project's
           reader (inputs and outputs keep the types above).

The sidecar (format 1) says what the file was made from, so serving it needs no run
directory:
  {"format": 1, "quantization": mode, "role": "teacher" | "student",
   "model_flags": the run's model_flags.json (GraphConfig.to_json()),
   "inputs": {name: {"index_name": interpreter input name, "shape": [-1, ...],
                     "dtype": "uint8" | "int32" | "float32"}},
   "output": {"index_name": interpreter output name, "shape": [-1, num_classes]},
   "tflite_bytes": size, "tflite_sha256": hex digest of model.tflite,
   "calibration": {"data_pattern": ..., "batches": N} (int8) or null,
   "checkpoint": basename of the checkpoint}
"""

import hashlib
import os

import tensorflow as tf

import cli
import file_io
import kd_model
import model_utils
import readers
import run_dir
import tflite_model

tf1 = tf.compat.v1

MODES = tflite_model.QUANTIZATIONS
TFLITE_FILE = "model.tflite"
OUTPUT = "predictions"

# Models whose graph TensorFlow Lite's builtin ops cannot hold, and why. (LstmModel's
# recurrence is unrolled over its static time axis: model_utils.unrolled_recurrence.)
REFUSED = {
    "HRNNModel": "its upper LSTM runs over a per-video number of blocks, which needs "
                 "TensorFlow ops outside TensorFlow Lite's builtins (Flex ops, which "
                 "the pinned TensorFlow's interpreter cannot run); serve its "
                 "SavedModel",
}


def check_exportable(cfg, role, mode, calibration_pattern=""):
  """Raises UsageError (one line) when `role` of this run cannot become a `mode` file:
  an unknown mode, int8 without calibration data, a refused model, or a student whose
  frames are picked at random inside the model from the video id (not an input)."""
  if mode not in MODES:
    raise cli.UsageError("--tflite=%s: choose from %s" % (mode, ", ".join(MODES)))
  if mode == "int8" and not calibration_pattern:
    raise cli.UsageError("--tflite=int8 needs --calibration_data_pattern (training "
                         "records to calibrate the activations on)")
  model = cfg.model_config(role).model
  if model in REFUSED:
    raise cli.UsageError("--model=%s cannot be exported with --tflite: %s"
                         % (model, REFUSED[model]))
  length = input_spec(cfg, role).get("frames", ([None, None],))[0][1]
  if (role == kd_model.STUDENT and cfg.frame_features
      and cfg.frame_sampling == "random" and cfg.k_frame < length):
    raise cli.UsageError(
        "--frame_sampling=random: this run's student picks its frames inside the model "
        "from a hash of the video id, which the --tflite file does not take; serve its "
        "SavedModel")


def input_spec(cfg, role):
  """{input name: (shape, numpy dtype name)} of the file, in input order, shape[0] =
  None: the static shapes of the batch the role's reader hands the model."""
  with tf.Graph().as_default():
    reader = readers.get_reader(cfg, dequantize=False, require_labels=False,
                                student_only=role == kd_model.STUDENT)
    batch = reader.parse_batch(tf1.placeholder(tf.string, [None]))
    matrix = batch["video_matrix"]
    shape = [None] + matrix.shape.as_list()[1:]
    if not cfg.frame_features:
      return {"features": (shape, matrix.dtype.name)}
    return {"frames": (shape, matrix.dtype.name), "num_frames": ([None], "int32")}


def _model_graph(cfg, role, spec):
  """Placeholders for `spec` and the role's predictions in inference mode.

  Returns:
    (list of placeholders in spec order, predictions [B, num_classes] float32).
  """
  placeholders = [tf1.placeholder(dtype, shape, name=name)
                  for name, (shape, dtype) in spec.items()]
  if cfg.frame_features:
    frames, num_frames = placeholders
  else:
    frames = placeholders[0]
    num_frames = tf.ones(tf.shape(frames)[:1], tf.int32)
  # video_ids feed only `random` frame picking inside the model, refused above.
  batch = {"video_matrix": frames, "num_frames": num_frames,
           "video_ids": tf.as_string(num_frames)}
  with model_utils.unrolled_recurrence():
    outputs = kd_model.inference_outputs(cfg, batch, role)
  return placeholders, tf.identity(outputs["predictions"], name=OUTPUT)


def calibration_batches(cfg, role, data_pattern, batches, batch_size):
  """Up to `batches` reader batches of `data_pattern` records for int8 calibration:
  a list of [input arrays in input_spec order]. Read in a graph of its own."""
  files = readers.list_data_files(data_pattern, "--calibration_data_pattern")
  with tf.Graph().as_default():
    reader = readers.get_reader(cfg, dequantize=False, require_labels=False,
                                student_only=role == kd_model.STUDENT)
    dataset = readers.make_dataset(reader, files, batch_size, num_epochs=1,
                                   shuffle=False)
    batch = tf1.data.make_one_shot_iterator(dataset).get_next()
    wanted = ([batch["video_matrix"], batch["num_frames"]] if cfg.frame_features
              else [batch["video_matrix"]])
    read = []
    with tf1.Session() as sess:
      for _ in range(batches):
        try:
          read.append(sess.run(wanted))
        except tf.errors.OutOfRangeError:
          break
  if not read:
    raise cli.UsageError("--calibration_data_pattern %r holds no records"
                         % data_pattern)
  return read


def convert(sess, inputs, output, mode, calibration=None):
  """The .tflite bytes of `output` as a function of `inputs` in `sess` (see MODES).

  calibration: for int8, a list of [input arrays] (calibration_batches).
  """
  converter = tf1.lite.TFLiteConverter.from_session(sess, inputs, [output])
  if mode in ("dynamic", "int8"):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if mode == "int8":
    # One record at a time: the calibrator cannot resize its inputs between samples,
    # and a tensor's range over the records is the same as over their batches.
    converter.representative_dataset = lambda: (
        [array[i:i + 1] for array in arrays] for arrays in calibration
        for i in range(len(arrays[0])))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  try:
    return converter.convert()
  except Exception as e:  # the converter raises several kinds (ConverterError, ...)
    raise cli.UsageError("--tflite=%s: TensorFlow Lite cannot convert this model: %s"
                         % (mode, _first_error_line(e)))


def _first_error_line(error):
  """The most telling line of a converter error (its first 'error:' line)."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  for line in lines:
    if "error:" in line:
      return line[line.index("error:") + 6:].strip()[:300]
  return (lines[0] if lines else type(error).__name__)[:300]


def interpreter_names(tflite_bytes):
  """({input name: interpreter input detail}, output detail) of a .tflite model."""
  interpreter = tf.lite.Interpreter(model_content=tflite_bytes)
  inputs = {detail["name"]: detail for detail in interpreter.get_input_details()}
  return inputs, interpreter.get_output_details()[0]


def sidecar(cfg, role, mode, spec, tflite_bytes, checkpoint, calibration=None):
  """The sidecar dict of a converted file (format in the module docstring).

  calibration: None, or (data_pattern, batches read).
  """
  inputs, output = interpreter_names(tflite_bytes)
  described = {}
  for name, (shape, dtype) in spec.items():
    if name not in inputs:
      raise AssertionError("input %s missing from the converted file (has %s)"
                           % (name, sorted(inputs)))
    described[name] = {"index_name": name, "shape": [-1] + list(shape[1:]),
                       "dtype": dtype}
  return {
      "format": tflite_model.FORMAT, "quantization": mode, "role": role,
      "model_flags": cfg.to_json(), "inputs": described,
      "output": {"index_name": output["name"], "shape": [-1, cfg.num_classes]},
      "tflite_bytes": len(tflite_bytes),
      "tflite_sha256": hashlib.sha256(tflite_bytes).hexdigest(),
      "calibration": (None if calibration is None else
                      {"data_pattern": calibration[0], "batches": calibration[1]}),
      "checkpoint": os.path.basename(checkpoint),
  }


def export(cfg, role, checkpoint, output_dir, mode, calibration_pattern="",
           calibration_batches_wanted=8, batch_size=64):
  """Writes output_dir/model.tflite and its sidecar (each atomically, sidecar last)
  from `checkpoint`'s `role`. Returns the path of the .tflite file."""
  check_exportable(cfg, role, mode, calibration_pattern)
  spec = input_spec(cfg, role)
  calibration, read = None, None
  if mode == "int8":
    read = calibration_batches(cfg, role, calibration_pattern,
                               calibration_batches_wanted, batch_size)
    calibration = (calibration_pattern, len(read))
  with tf.Graph().as_default():
    inputs, output = _model_graph(cfg, role, spec)
    variables = tf1.global_variables()
    run_dir.check_checkpoint_matches(variables, checkpoint, "checkpoint")
    with tf1.Session() as sess:
      run_dir.restore_checkpoint(tf1.train.Saver(variables), sess, checkpoint)
      tflite_bytes = convert(sess, inputs, output, mode, read)
  described = sidecar(cfg, role, mode, spec, tflite_bytes, checkpoint, calibration)
  path = os.path.join(output_dir, TFLITE_FILE)
  with file_io.atomic_output(path, "wb") as f:
    f.write(tflite_bytes)
  file_io.write_json(tflite_model.sidecar_path(path), described)
  return path
