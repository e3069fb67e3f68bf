"""Every registered model becomes a --tflite file (HRNNModel is refused in one line):
each converted at a tiny size and served against its own float32 session."""
import numpy as np
import pytest
import tensorflow as tf

import cli
import config
import kd_model
import registry
import tflite_export

tf1 = tf.compat.v1
MAX_FRAMES, CLASSES = 8, 12
# Tiny sizes for the hyperparameters that set a model's width (the others keep their
# defaults): NeXtVLAD's groups must divide its expanded features.
TINY = {"nextvlad_cluster_size": 4, "nextvlad_hidden_size": 16, "groups": 2,
        "expansion": 1, "gating_reduction": 4, "netvlad_cluster_size": 4,
        "netvlad_hidden_size": 16, "dbof_cluster_size": 16, "dbof_hidden_size": 16,
        "lstm_cells": 8, "lstm_layers": 1, "iterations": 4, "moe_num_mixtures": 2,
        "hrnn_cells": 8, "hrnn_block_size": 4, "mix_number": 2}
FRAME_MODELS = registry.FRAME_LEVEL_MODELS.names()
VIDEO_MODELS = registry.VIDEO_LEVEL_MODELS.names()


def _cfg(model, frame_features):
  fields = {f for f in config.FIELDS}
  values = {name: value for name, value in TINY.items() if name in fields}
  if frame_features:
    values.update(max_frames=MAX_FRAMES, k_frame=MAX_FRAMES)
  else:
    values.update(feature_names=("mean_rgb", "mean_audio"), frame_features=False)
  if model == "MixNeXtVladModel":  # it mixes its branches' logits
    values["video_level_classifier_model"] = "LogisticModel"
  return config.defaults().replace(model=model, num_classes=CLASSES,
                                   sample_random_frames=False, **values)


def _served_against_session(cfg, mode):
  """(file predictions, session predictions) of random inputs; random initial weights."""
  role = kd_model.TEACHER
  spec = tflite_export.input_spec(cfg, role)
  rng = np.random.RandomState(0)
  arrays = []
  for shape, dtype in spec.values():
    if dtype == "uint8":
      arrays.append(rng.randint(0, 256, [3] + shape[1:]).astype(np.uint8))
    elif dtype == "int32":
      arrays.append(np.array([MAX_FRAMES, 3, 1], np.int32))
    else:
      arrays.append(rng.uniform(-1, 1, [3] + shape[1:]).astype(np.float32))
  with tf.Graph().as_default():
    tf1.set_random_seed(1)
    placeholders, output = tflite_export._model_graph(cfg, role, spec)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      expected = sess.run(output, dict(zip(placeholders, arrays)))
      blob = tflite_export.convert(sess, placeholders, output, mode)
  interpreter = tf.lite.Interpreter(model_content=blob)
  for detail, array in zip(interpreter.get_input_details(), arrays):
    interpreter.resize_tensor_input(detail["index"], array.shape)
  interpreter.allocate_tensors()
  for detail, array in zip(interpreter.get_input_details(), arrays):
    interpreter.set_tensor(detail["index"], array)
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), expected


@pytest.mark.parametrize("model,frame_features",
                         [(m, True) for m in FRAME_MODELS] +
                         [(m, False) for m in VIDEO_MODELS])
def test_every_registered_model_converts_or_is_refused(model, frame_features):
  cfg = _cfg(model, frame_features)
  if model in tflite_export.REFUSED:
    with pytest.raises(cli.UsageError) as refused:
      tflite_export.check_exportable(cfg, kd_model.TEACHER, "dynamic")
    assert "--model=%s cannot be exported with --tflite" % model in str(refused.value)
    assert "\n" not in str(refused.value)
    return
  # float32: the same function; dynamic: int8 weights (random ones here, so a looser
  # bound than a trained model's).
  for mode, tolerance in (("float32", 1e-5), ("dynamic", 0.05)):
    tflite_export.check_exportable(cfg, kd_model.TEACHER, mode)
    got, expected = _served_against_session(cfg, mode)
    assert got.shape == (3, CLASSES)
    np.testing.assert_allclose(got, expected, atol=tolerance, rtol=0, err_msg=mode)
