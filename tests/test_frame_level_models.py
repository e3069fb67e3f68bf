"""Frame-level models on tiny configs: outputs, padding, checkpoints, LSTM/H-RNN math."""
import numpy as np
import pytest
import tensorflow as tf

import cli
import frame_level_models
import model_utils

tf1 = tf.compat.v1
FEATURE_SIZES = [16, 8]
F = sum(FEATURE_SIZES)
T = 12
VOCAB = 10
TINY = {
    "FrameLevelLogisticModel": {},
    "DbofModel": dict(cluster_size=4, hidden_size=8, iterations=5,
                      sample_random_frames=False),
    "LstmModel": dict(cells=8, layers=2),
    "NetVLADModel": dict(feature_sizes=FEATURE_SIZES, cluster_size=4, hidden_size=8),
    "HRNNModel": dict(cells=8, block_size=4),
    "NeXtVLADModel": dict(feature_sizes=FEATURE_SIZES, cluster_size=4, hidden_size=8,
                          groups=2, expansion=2, gating_reduction=2, drop_rate=0.0),
    "MixNeXtVladModel": dict(feature_sizes=FEATURE_SIZES, cluster_size=4, hidden_size=8,
                             groups=2, expansion=2, gating_reduction=2, drop_rate=0.0,
                             mix_number=2),
}
REPRESENTATION_SIZE = {"FrameLevelLogisticModel": F}
NAMES = sorted(TINY)
# (model, overrides of TINY, frames T): the base configs and the other code paths.
CASES = [(name, {}, T) for name in NAMES] + [
    ("DbofModel", dict(iterations=30), T),  # T <= iterations: all frames, masked max
    ("DbofModel", dict(iterations=0, pooling_method="average", add_batch_norm=False), T),
    ("NetVLADModel", dict(add_batch_norm=False, gating=False), T),
    ("HRNNModel", dict(block_size=15), 6),  # a k=6 student: one block of 6
    ("HRNNModel", dict(block_size=5), T),  # T not a multiple of the block size
    ("LstmModel", dict(layers=1), T),
]
CASE_IDS = ["%s%s-T%d" % (n, "".join("-%s=%s" % kv for kv in sorted(o.items())), t)
            for n, o, t in CASES]


def _build(name, x, n, is_training, classifier="LogisticModel", reuse=None, **overrides):
  """The model `name` with its TINY config under scope `m`."""
  params = dict(TINY[name], **overrides)
  with tf1.variable_scope("m", reuse=reuse):
    return frame_level_models.MODELS.create(name).create_model(
        x, VOCAB, n, is_training, classifier=classifier, **params)


def _batch(num_frames, max_frames, pad_scale=0.0, seed=0):
  """Random real frames; padding is 0 or pad_scale * normal noise."""
  rng = np.random.RandomState(seed)
  frames = rng.uniform(-2, 2, (len(num_frames), max_frames, F)).astype(np.float32)
  pad = np.arange(max_frames)[None, :] >= np.asarray(num_frames)[:, None]
  noise = np.random.RandomState(seed + 1).normal(size=frames.shape) * pad_scale
  frames[pad] = noise[pad]
  return frames


def _placeholders(max_frames):
  return (tf1.placeholder(tf.float32, [None, max_frames, F]),
          tf1.placeholder(tf.int32, [None]))


# The base configs with both classifiers, and a k=6 student H-RNN (the other cases
# run in both modes in the padding test).
# Every model with the LogisticModel classifier; MoeModel (no logits) behind the
# shared head of two of them (nextvlad.classify).
BUILD_CASES = ([(name, {}, T, "LogisticModel") for name in NAMES] +
               [(name, {}, T, "MoeModel") for name in ("DbofModel", "NeXtVLADModel")])
BUILD_CASES.append(("HRNNModel", dict(block_size=15), 6, "LogisticModel"))
BUILD_IDS = ["%s-T%d-%s" % (n, t, c) for n, _, t, c in BUILD_CASES]
BUILD_IDS[-1] = "HRNNModel-block_size=15-T6-LogisticModel"


@pytest.mark.parametrize("name,overrides,max_frames,classifier", BUILD_CASES,
                         ids=BUILD_IDS)
def test_builds_for_training_and_inference(name, overrides, max_frames, classifier):
  with tf.Graph().as_default():
    x, n = _placeholders(max_frames)
    train = _build(name, x, n, True, classifier, **overrides)
    num_variables = len(tf1.global_variables())
    infer = _build(name, x, n, False, classifier, reuse=True, **overrides)
    assert len(tf1.global_variables()) == num_variables  # inference shares them all
    variables = tf1.trainable_variables()
    gradients = tf.gradients(tf.reduce_sum(train["predictions"]), variables)
    assert [v.op.name for v, g in zip(variables, gradients) if g is None] == []
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      num_frames = [max_frames, 5, 1]
      feed = {x: _batch(num_frames, max_frames), n: num_frames}
      sess.run(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS), feed)
      for outputs in sess.run([train, infer], feed):
        assert outputs["predictions"].shape == (3, VOCAB)
        assert ((outputs["predictions"] >= 0) & (outputs["predictions"] <= 1)).all()
        size = REPRESENTATION_SIZE.get(name, 8)
        assert outputs["representation"].shape == (3, size)
        assert np.isfinite(outputs["representation"]).all()
        has_logits = classifier == "LogisticModel" or name == "FrameLevelLogisticModel"
        assert ("logits" in outputs) == has_logits
        if has_logits:
          np.testing.assert_allclose(1 / (1 + np.exp(-outputs["logits"])),
                                     outputs["predictions"], atol=1e-6)


@pytest.mark.parametrize("name,classifier", [(n, "LogisticModel") for n in NAMES] + [
    ("DbofModel", "MoeModel"), ("NeXtVLADModel", "MoeModel")])
def test_class_ids_compute_those_columns_of_the_same_variables(name, classifier):
  """inference.py --segment_labels computes the rated classes alone (class_ids): the
  same numbers as those columns of every class's predictions, from the same
  variables, read through copies that exist only once column_caches_initializer ran."""
  class_ids = [7, 2, 9, 0]  # not sorted: the columns come in this order
  with tf.Graph().as_default():
    x, n = _placeholders(T)
    full = _build(name, x, n, False, classifier)
    names = sorted(v.op.name for v in tf1.global_variables())
    some = _build(name, x, n, False, classifier, reuse=True, class_ids=class_ids)
    assert sorted(v.op.name for v in tf1.global_variables()) == names
    assert not tf1.local_variables()
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      num_frames = [T, 5, 1]
      feed = {x: _batch(num_frames, T), n: num_frames}
      with pytest.raises(tf.errors.FailedPreconditionError):
        sess.run(some["predictions"], feed)  # copies not made yet: no stale weights
      sess.run(model_utils.column_caches_initializer())
      full, some = sess.run([full, some], feed)
  assert some["predictions"].shape == (3, len(class_ids))
  np.testing.assert_allclose(some["predictions"], full["predictions"][:, class_ids],
                             rtol=1e-5, atol=1e-7)
  assert ("logits" in some) == ("logits" in full)
  if "logits" in full:
    np.testing.assert_allclose(some["logits"], full["logits"][:, class_ids], rtol=1e-5,
                               atol=1e-6)
  np.testing.assert_array_equal(some["representation"], full["representation"])


@pytest.mark.parametrize("name,overrides,max_frames", CASES, ids=CASE_IDS)
def test_padded_frames_do_not_change_predictions(name, overrides, max_frames):
  num_frames = [max_frames, 5, 1]
  with tf.Graph().as_default():
    tf1.set_random_seed(3)
    x, n = _placeholders(max_frames)
    # Training mode too: padding must stay out of the batch-norm batch statistics.
    train = _build(name, x, n, True, **overrides)["predictions"]
    updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
    infer = _build(name, x, n, False, reuse=True, **overrides)["predictions"]
    x_any, _ = _placeholders(None)  # videos cut to their real frames, no padding
    cut = _build(name, x_any, n, False, reuse=True, **overrides)["predictions"]
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      for seed in range(2):  # moving averages away from their initial 0 / 1
        sess.run(updates, {x: _batch(num_frames, max_frames, 3.0, seed=10 + seed),
                           n: num_frames})
      zeros = sess.run([infer, train], {x: _batch(num_frames, max_frames), n: num_frames})
      noisy = sess.run([infer, train],
                       {x: _batch(num_frames, max_frames, 1e3), n: num_frames})
      frames = _batch(num_frames, max_frames)
      alone = [sess.run(cut, {x_any: frames[i:i + 1, :k], n: [k]})[0]
               for i, k in enumerate(num_frames)]
  np.testing.assert_allclose(noisy, zeros, atol=1e-5)
  np.testing.assert_allclose(np.stack(alone), zeros[0], atol=1e-5)
  assert np.abs(zeros[0][0] - zeros[0][2]).max() > 1e-4  # the videos do differ


PINNED_VARIABLES = {
    "FrameLevelLogisticModel": ["m/classifier/logistic/weights"],
    "DbofModel": ["m/input_bn/gamma", "m/cluster/weights", "m/cluster_bn/moving_mean",
                  "m/hidden1/weights", "m/hidden1_bn/moving_variance",
                  "m/classifier/logistic/biases"],
    "LstmModel": ["m/lstm_0/input/weights", "m/lstm_0/recurrent/weights",
                  "m/lstm_1/input/biases"],
    "NetVLADModel": ["m/rgb_netvlad/cluster_centers", "m/audio_netvlad/cluster/weights",
                     "m/hidden1_bn/beta", "m/context_gating/gates/weights"],
    "HRNNModel": ["m/block_lstm_0/input/weights", "m/block_lstm_1/recurrent/weights",
                  "m/video_lstm/recurrent/weights"],
    "NeXtVLADModel": ["m/rgb_nextvlad/cluster_centers", "m/hidden1/weights"],
    "MixNeXtVladModel": ["m/mix_weights_bn/moving_mean", "m/mix_weights/weights",
                         "m/mix_weights/biases", "m/branch_0/rgb_nextvlad/cluster_centers",
                         "m/branch_1/audio_nextvlad/cluster_logits/weights",
                         "m/branch_1/hidden1/weights",
                         "m/branch_1/classifier/logistic/weights"],
}


def _build_and_run(name, seed, frames, num_frames, restore_from=None, save_to=None):
  """-> (sorted [(variable name, shape)], predictions) of a fresh inference graph."""
  with tf.Graph().as_default():
    tf1.set_random_seed(seed)
    x, n = _placeholders(T)
    predictions = _build(name, x, n, False)["predictions"]
    variables = sorted((v.op.name, tuple(v.shape.as_list()))
                       for v in tf1.global_variables())
    saver = tf1.train.Saver()
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      if restore_from:
        saver.restore(sess, restore_from)
      if save_to:
        saver.save(sess, save_to)
      return variables, sess.run(predictions, {x: frames, n: num_frames})


@pytest.mark.parametrize("name", NAMES)
def test_variable_names_are_stable_and_checkpoints_restore(name, tmp_path):
  num_frames = [12, 5, 1]
  frames = _batch(num_frames, T)
  path = str(tmp_path / "model.ckpt")
  names_a, predictions_a = _build_and_run(name, 1, frames, num_frames, save_to=path)
  names_b, predictions_b = _build_and_run(name, 2, frames, num_frames)
  assert names_a == names_b
  assert not np.allclose(predictions_a, predictions_b, atol=1e-5)
  assert set(PINNED_VARIABLES[name]) <= {v for v, _ in names_a}
  _, restored = _build_and_run(name, 2, frames, num_frames, restore_from=path)
  np.testing.assert_allclose(restored, predictions_a, atol=1e-6)


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def _numpy_lstm(frames, weights, scope):
  """frames [n, D] (real frames only) -> final hidden state [H], float64."""
  w_in = weights[scope + "/input/weights"].astype(np.float64)
  b_in = weights[scope + "/input/biases"].astype(np.float64)
  w_rec = weights[scope + "/recurrent/weights"].astype(np.float64)
  cell = hidden = np.zeros(w_rec.shape[0])
  outputs = []
  for frame in frames:
    i, g, f, o = np.split(frame @ w_in + b_in + hidden @ w_rec, 4)
    cell = _sigmoid(f + 1.0) * cell + _sigmoid(i) * np.tanh(g)
    hidden = _sigmoid(o) * np.tanh(cell)
    outputs.append(hidden)
  return hidden, np.array(outputs)


def _run_with_weights(build, frames, num_frames):
  """Runs build(x, n) -> tensors with random (non-zero) biases; returns (out, weights)."""
  with tf.Graph().as_default():
    tf1.set_random_seed(5)
    x = tf1.placeholder(tf.float32, [None, frames.shape[1], frames.shape[2]])
    n = tf1.placeholder(tf.int32, [None])
    outputs = build(x, n)
    variables = {v.op.name: v for v in tf1.global_variables()}
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      for v_name, v in variables.items():
        if v_name.endswith("biases"):
          v.load(np.random.RandomState(0).normal(size=v.shape.as_list()), sess)
      return sess.run(outputs, {x: frames, n: num_frames}), sess.run(variables)


def test_lstm_matches_numpy_loop_over_real_frames():
  num_frames = [6, 3, 1]
  frames = _batch(num_frames, 6, pad_scale=1e3, seed=4)[:, :, :5]
  (outputs, final), weights = _run_with_weights(
      lambda x, n: model_utils.lstm(x, n, 4, "l"), frames, num_frames)
  assert outputs.shape == (3, 6, 4) and final.shape == (3, 4)
  for b, k in enumerate(num_frames):
    expected_final, expected_outputs = _numpy_lstm(frames[b, :k], weights, "l")
    np.testing.assert_allclose(final[b], expected_final, atol=1e-5)
    np.testing.assert_allclose(outputs[b, :k], expected_outputs, atol=1e-5)
    np.testing.assert_allclose(outputs[b, k:], np.tile(expected_final, [6 - k, 1]),
                               atol=1e-5)
  assert np.abs(final).min() > 1e-3


def test_hrnn_representation_matches_numpy_blocks():
  num_frames, block = [10, 5, 4, 1], 4
  frames = _batch(num_frames, 10, pad_scale=1e3, seed=6)

  def build(x, n):
    with tf1.variable_scope("m"):
      return frame_level_models.HRNNModel().create_model(
          x, VOCAB, n, False, cells=3, block_size=block)["representation"]

  representation, weights = _run_with_weights(build, frames, num_frames)
  for b, k in enumerate(num_frames):
    block_states = []
    for start in range(0, k, block):
      _, lower = _numpy_lstm(frames[b, start:min(start + block, k)], weights,
                             "m/block_lstm_0")
      block_states.append(_numpy_lstm(lower, weights, "m/block_lstm_1")[0])
    expected, _ = _numpy_lstm(np.array(block_states), weights, "m/video_lstm")
    np.testing.assert_allclose(representation[b], expected, atol=1e-5)


def test_frame_level_model_registry():
  assert sorted(frame_level_models.MODELS.names()) == NAMES
  for name in NAMES:
    assert type(frame_level_models.MODELS.create(name)).__name__ == name
  assert frame_level_models.NeXtVLADModel is frame_level_models.MODELS.get("NeXtVLADModel")
  with pytest.raises(cli.UsageError, match=r"--model=Nope is not a frame-level model "
                                           r"\(choose from: .*DbofModel"):
    frame_level_models.MODELS.get("Nope")


def test_bad_hyper_parameters_are_usage_errors():
  with tf.Graph().as_default():
    x, n = _placeholders(T)
    with pytest.raises(cli.UsageError, match="--dbof_pooling_method"):
      _build("DbofModel", x, n, False, pooling_method="median")
    with pytest.raises(cli.UsageError, match="--hrnn_block_size"):
      _build("HRNNModel", x, n, False, block_size=0)


def test_flag_defaults_are_the_starter_codes():
  import config
  flags = tf1.flags.FLAGS
  assert (flags.iterations, flags.dbof_add_batch_norm, flags.sample_random_frames,
          flags.dbof_cluster_size, flags.dbof_hidden_size, flags.dbof_pooling_method,
          flags.lstm_cells, flags.lstm_layers) == (30, True, True, 8192, 1024, "max",
                                                   1024, 2)
  assert (flags.netvlad_cluster_size, flags.netvlad_hidden_size,
          flags.netvlad_add_batch_norm, flags.gating, flags.hrnn_cells,
          flags.hrnn_block_size) == (64, 1024, True, True, 1024, 15)
  # Each model's own argument defaults are its flags' defaults.
  import inspect
  defaults = config.defaults()
  assert (flags.mix_number, flags.cl_temperature, flags.cl_lambda) == (3, 2.0, 1.0)
  for name in ("DbofModel", "LstmModel", "NetVLADModel", "HRNNModel", "NeXtVLADModel",
               "MixNeXtVladModel"):
    signature = inspect.signature(frame_level_models.MODELS.get(name).create_model)
    kwargs = defaults.replace(model=name).create_kwargs(defaults.feature_sizes, "auto")
    for arg, value in kwargs.items():
      if arg in signature.parameters:
        default = signature.parameters[arg].default
        assert tuple(default) == value if arg == "feature_sizes" else default == value, (
            name, arg)


def _outputs_with_packing(name, overrides, frames, num_frames, is_training, packing,
                          checkpoint, save):
  """Model outputs under frame_packing; weights saved to / restored from disk."""
  with tf.Graph().as_default():
    out = _build(name, tf.constant(frames), tf.constant(num_frames), is_training,
                 frame_packing=packing, **overrides)
    updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
    saver = tf1.train.Saver()
    with tf1.Session() as sess:
      if save:
        sess.run(tf1.global_variables_initializer())
        sess.run(updates)
        saver.save(sess, checkpoint)
      else:
        saver.restore(sess, checkpoint)
      return sess.run(out)


@pytest.mark.parametrize("name,overrides", [
    ("DbofModel", dict(iterations=0)),
    ("DbofModel", dict(iterations=0, pooling_method="average")),
    ("NetVLADModel", {}),
    ("NeXtVLADModel", {}),
    ("MixNeXtVladModel", {})])
@pytest.mark.parametrize("is_training", [False, True])
def test_packed_real_frames_equal_the_padded_computation(tmp_path, name, overrides,
                                                         is_training):
  num_frames = [12, 5, 1, 9]
  frames = _batch(num_frames, T, pad_scale=1e3)
  checkpoint = str(tmp_path / "m.ckpt")
  padded = _outputs_with_packing(name, overrides, frames, num_frames, is_training,
                                 "never", checkpoint, True)
  packed = _outputs_with_packing(name, overrides, frames, num_frames, is_training,
                                 "always", checkpoint, False)
  for key in ("predictions", "representation"):
    np.testing.assert_allclose(packed[key], padded[key], rtol=2e-4, atol=1e-5)
