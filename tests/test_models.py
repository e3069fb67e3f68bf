"""Layers, NeXtVLAD, video-level classifiers and losses on tiny configs."""
import math

import numpy as np
import pytest
import tensorflow as tf

import cli
import losses
import model_utils
import nextvlad
import video_level_models

tf1 = tf.compat.v1
TINY = dict(feature_sizes=[16, 8], cluster_size=4, hidden_size=8, groups=2, expansion=2,
            gating_reduction=2, drop_rate=0.0)


def _nextvlad_predictions(frames, num_frames, is_training, classifier="LogisticModel",
                          seed=0, train_steps=0):
  """Builds a tiny NeXtVLAD, optionally runs BN-update steps, returns its outputs."""
  with tf.Graph().as_default():
    tf1.set_random_seed(seed)
    x = tf1.placeholder(tf.float32, [None, frames.shape[1], 24])
    n = tf1.placeholder(tf.int32, [None])
    with tf1.variable_scope("m"):
      out = nextvlad.NeXtVLADModel().create_model(x, 10, n, is_training,
                                                  classifier=classifier, **TINY)
    updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      feed = {x: frames, n: num_frames}
      for _ in range(train_steps):
        sess.run(updates, feed)
      return sess.run(out, feed)


def _random_batch(num_frames, max_frames=12, pad_value=None, seed=0):
  rng = np.random.RandomState(seed)
  frames = rng.uniform(-2, 2, size=(len(num_frames), max_frames, 24)).astype(np.float32)
  pad = np.arange(max_frames)[None, :] >= np.asarray(num_frames)[:, None]
  frames[pad] = 0.0 if pad_value is None else pad_value * rng.normal(size=(pad.sum(), 24))
  return frames


@pytest.mark.parametrize("classifier", ["LogisticModel", "MoeModel"])
def test_nextvlad_shapes_and_outputs(classifier):
  frames = _random_batch([12, 5, 1])
  out = _nextvlad_predictions(frames, [12, 5, 1], True, classifier)
  assert out["predictions"].shape == (3, 10)
  assert ((out["predictions"] >= 0) & (out["predictions"] <= 1)).all()
  assert out["representation"].shape == (3, 8)
  assert ("logits" in out) == (classifier == "LogisticModel")
  if "logits" in out:
    np.testing.assert_allclose(1 / (1 + np.exp(-out["logits"])), out["predictions"],
                               rtol=1e-5)


@pytest.mark.parametrize("is_training", [False, True])
def test_nextvlad_ignores_padded_frames(is_training):
  num_frames = [12, 5, 1]
  clean = _random_batch(num_frames)
  noisy = _random_batch(num_frames, pad_value=1e3)
  assert not np.allclose(clean, noisy)
  a = _nextvlad_predictions(clean, num_frames, is_training, train_steps=2)
  b = _nextvlad_predictions(noisy, num_frames, is_training, train_steps=2)
  np.testing.assert_allclose(a["predictions"], b["predictions"], rtol=1e-5, atol=1e-6)
  # The same video with more padding columns gives the same answer too.
  longer = np.concatenate([clean, np.zeros_like(clean)], axis=1)
  c = _nextvlad_predictions(longer, num_frames, is_training, train_steps=2)
  np.testing.assert_allclose(a["predictions"], c["predictions"], rtol=1e-5, atol=1e-6)


def test_nextvlad_documented_config_has_88_9m_parameters():
  with tf.Graph().as_default():
    x = tf1.placeholder(tf.float32, [None, 300, 1152])
    n = tf1.placeholder(tf.int32, [None])
    nextvlad.NeXtVLADModel().create_model(
        x, 3862, n, True, feature_sizes=[1024, 128], cluster_size=128, hidden_size=2048,
        groups=8, expansion=2, gating_reduction=8, drop_rate=0.5,
        classifier="LogisticModel")
    count = sum(v.shape.num_elements() for v in tf1.trainable_variables())
    hidden = [v for v in tf1.trainable_variables() if v.op.name == "hidden1/weights"][0]
  assert abs(count - 88.9e6) / 88.9e6 < 0.01, count
  assert hidden.shape.as_list() == [128 * 256 + 64 * 64, 2048]


def test_nextvlad_weights_start_as_slim_variance_scaling():
  # The NeXtVLAD solution and the KD code: slim.variance_scaling_initializer() defaults,
  # a normal with stddev sqrt(1.3 * 2 / fan_in) truncated at 2 stddev, whose standard
  # deviation is that stddev times sqrt(1 - 4 phi(2) / (2 Phi(2) - 1)) = 0.8796.
  # fan_in as slim counts it: shape[-2] times the leading dimensions.
  truncation = np.sqrt(1 - 4 * np.exp(-2) / np.sqrt(2 * np.pi) / math.erf(2 / np.sqrt(2)))
  config = dict(feature_sizes=[1024, 128], cluster_size=256, hidden_size=256, groups=32,
                expansion=2, gating_reduction=8, drop_rate=0.0)
  with tf.Graph().as_default():
    tf1.set_random_seed(0)
    x = tf1.placeholder(tf.float32, [None, 4, 1152])
    n = tf1.placeholder(tf.int32, [None])
    nextvlad.NeXtVLADModel().create_model(x, 20, n, True, **config)
    weights = [v for v in tf1.global_variables()
               if v.op.name.endswith(("weights", "cluster_centers"))]
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      values = sess.run({v.op.name: v for v in weights})
  names = sorted(values)
  # expansion, attention, cluster logits and centres of both branches, hidden layer,
  # both gating layers, the logistic classifier.
  assert len(names) == 12, names
  assert "classifier/logistic/weights" in names
  for name in names:
    shape = values[name].shape
    fan_in = shape[-2] * int(np.prod(shape[:-2]))
    formula = np.sqrt(1.3 * 2.0 / fan_in)
    assert model_utils.variance_scaling_stddev(fan_in) == pytest.approx(formula)
    assert values[name].size >= 2000, name  # so 5% is beyond sampling noise
    assert values[name].std() == pytest.approx(formula * truncation, rel=0.05), name


def test_batch_norm_moving_averages_are_exact_debiased_means():
  decay = 0.9
  batches = [np.random.RandomState(i).normal(i, 1 + i, size=(5, 3)).astype(np.float32)
             for i in range(4)]
  with tf.Graph().as_default():
    x = tf1.placeholder(tf.float32, [None, 3])
    model_utils.batch_norm(x, True, "bn", decay=decay)
    updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
    assert len(updates) == 2
    with tf1.variable_scope("bn", reuse=True):
      mean_var = tf1.get_variable("moving_mean")
      variance_var = tf1.get_variable("moving_variance")
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      for b in batches:
        sess.run(updates, {x: b})
      moving_mean, moving_variance = sess.run([mean_var, variance_var])
  weights = np.array([decay ** (len(batches) - 1 - i) for i in range(len(batches))])
  weights /= weights.sum()
  np.testing.assert_allclose(moving_mean, sum(w * b.mean(0) for w, b in
                                              zip(weights, batches)), rtol=1e-5)
  np.testing.assert_allclose(moving_variance, sum(w * b.var(0) for w, b in
                                                  zip(weights, batches)), rtol=1e-5)


def test_batch_norm_inference_uses_moving_averages_and_adds_no_updates():
  with tf.Graph().as_default():
    x = tf.constant([[1.0, 2.0], [3.0, 6.0]])
    y = model_utils.batch_norm(x, False, "bn", epsilon=0.0)
    assert not tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      np.testing.assert_allclose(sess.run(y), [[1.0, 2.0], [3.0, 6.0]])  # mean 0, var 1


def test_fused_batch_norm_equals_the_masked_path_with_every_row_real():
  # mask=None trains through one fused kernel; an all-true mask through the moments.
  x = np.random.RandomState(0).normal(2.0, 3.0, size=(4, 6, 5)).astype(np.float32)
  weights = np.arange(5, dtype=np.float32)
  with tf.Graph().as_default():
    inputs = tf.constant(x)
    fused = model_utils.batch_norm(inputs, True, "fused")
    masked = model_utils.batch_norm(inputs, True, "masked", mask=tf.ones([4, 6]))
    grads = [tf.gradients(tf.reduce_sum(tf.sin(y) * weights), inputs)[0]
             for y in (fused, masked)]
    updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
    moving = [[v for v in tf1.global_variables() if v.op.name == scope + "/moving_variance"]
              [0] for scope in ("fused", "masked")]
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      y_fused, y_masked, g_fused, g_masked = sess.run([fused, masked] + grads)
      sess.run(updates)
      var_fused, var_masked = sess.run(moving)
  assert y_fused.shape == x.shape
  np.testing.assert_allclose(y_fused, y_masked, atol=1e-5)
  np.testing.assert_allclose(g_fused, g_masked, atol=1e-5)
  # The biased variance (the unbiased one would be 24/23 = 4% larger).
  np.testing.assert_allclose(var_fused, x.reshape(-1, 5).var(0), rtol=1e-4)
  np.testing.assert_allclose(var_fused, var_masked, rtol=1e-4)


def test_masked_batch_norm_statistics_skip_masked_rows():
  with tf.Graph().as_default():
    x = tf.constant([[1.0], [3.0], [1000.0]])
    y = model_utils.batch_norm(x, True, "bn", mask=tf.constant([True, True, False]),
                               epsilon=0.0, center=False, scale=False)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      np.testing.assert_allclose(sess.run(y)[:2, 0], [-1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("name,biases_penalized", [("LogisticModel", True),
                                                    ("StarterLogisticModel", False)])
def test_logistic_l2_penalty_lands_in_regularization_losses(name, biases_penalized):
  # The original KD code penalizes weights and biases; today's starter the weights only.
  with tf.Graph().as_default():
    x = tf.ones([2, 3])
    getattr(video_level_models, name)().create_model(x, 4, l2_penalty=0.5)
    penalty = tf.add_n(tf1.losses.get_regularization_losses())
    params = {v.op.name.split("/")[-1]: v for v in tf1.global_variables()}
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      sess.run(params["biases"].assign([1.0, -2.0, 0.5, 3.0]))
      w, b, p = sess.run([params["weights"], params["biases"], penalty])
  expected = 0.5 * (w ** 2).sum() / 2 + (0.5 * (b ** 2).sum() / 2 if biases_penalized else 0)
  np.testing.assert_allclose(p, expected, rtol=1e-5)


def test_moe_predictions_match_numpy_formula():
  with tf.Graph().as_default():
    x = tf.constant(np.random.RandomState(0).normal(size=(3, 5)), tf.float32)
    out = video_level_models.MoeModel().create_model(x, 4, num_mixtures=2,
                                                     l2_penalty=0.0)
    params = {v.op.name: v for v in tf1.global_variables()}
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      pred, xv, p = sess.run([out["predictions"], x, params])
  gates = xv @ p["gates/weights"] + p["gates/biases"]
  experts = xv @ p["experts/weights"] + p["experts/biases"]
  gates = np.exp(gates.reshape(-1, 3))
  gates /= gates.sum(1, keepdims=True)
  experts = 1 / (1 + np.exp(-experts.reshape(-1, 2)))
  expected = (gates[:, :2] * experts).sum(1).reshape(3, 4)
  np.testing.assert_allclose(pred, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["LogisticModel", "StarterLogisticModel", "MoeModel"])
def test_video_level_class_ids_compute_those_columns(name):
  """class_ids picks each class's own gate and expert columns (MoeModel: M + 1 and M
  per class) from the full-size variables."""
  class_ids = [3, 0, 5]
  with tf.Graph().as_default():
    x = tf.constant(np.random.RandomState(0).normal(size=(4, 5)), tf.float32)
    model = video_level_models.MODELS.create(name)
    full = model.create_model(x, 6, num_mixtures=3)
    num_variables = len(tf1.global_variables())
    with tf1.variable_scope(tf1.get_variable_scope(), reuse=True):
      some = model.create_model(x, 6, num_mixtures=3, class_ids=class_ids)
    assert len(tf1.global_variables()) == num_variables
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      sess.run(model_utils.column_caches_initializer())
      full, some = sess.run([full["predictions"], some["predictions"]])
  assert some.shape == (4, 3)
  np.testing.assert_allclose(some, full[:, class_ids], rtol=1e-6)


def test_classifier_and_loss_lookup_errors_name_the_flag():
  with pytest.raises(cli.UsageError, match="--video_level_classifier_model=Nope is not a "
                                           "video-level classifier"):
    video_level_models.CLASSIFIERS.get("Nope")
  with pytest.raises(cli.UsageError, match="--label_loss"):
    losses.get_label_loss("BaseLoss")


def _run(t):
  with tf1.Session() as sess:
    return sess.run(t)


def test_label_losses_match_numpy():
  # A confidently wrong 1.0 and a missed 0.0 make the epsilon inside the logs visible.
  p = np.array([[0.9, 1.0, 0.5], [0.1, 0.7, 0.0]], np.float32)
  y = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
  with tf.Graph().as_default():
    ce = _run(losses.CrossEntropyLoss().calculate_loss(tf.constant(p), tf.constant(y)))
    starter_ce = _run(losses.get_label_loss("StarterCrossEntropyLoss").calculate_loss(
        tf.constant(p), tf.constant(y)))
    hinge = _run(losses.HingeLoss().calculate_loss(tf.constant(p), tf.constant(y)))
    soft = _run(losses.SoftmaxLoss().calculate_loss(tf.constant(p), tf.constant(y)))
  for value, eps in [(ce, 1e-8), (starter_ce, 1e-5)]:  # the original's, the starter's
    expected = -(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)).sum(1).mean()
    np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert ce - starter_ce == pytest.approx(np.log(1e-5 / 1e-8), rel=1e-3)  # one such term per video
  np.testing.assert_allclose(hinge, np.maximum(0, 1 - (2 * y - 1) * p).sum(1).mean(),
                             rtol=1e-5)
  softmax = np.exp(p) / np.exp(p).sum(1, keepdims=True)
  np.testing.assert_allclose(
      soft, -(y / y.sum(1, keepdims=True) * np.log(softmax)).sum(1).mean(), rtol=1e-5)


def test_distillation_losses_sum_and_mean_reductions():
  t = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.3]], np.float32)
  s = np.array([[0.8, 0.3], [0.5, 0.1], [0.2, 0.3]], np.float32)
  per_example = ((t - s) ** 2).sum(1)
  with tf.Graph().as_default():
    rep_sum = _run(losses.representation_loss(tf.constant(t), tf.constant(s), "sum"))
    rep_mean = _run(losses.representation_loss(tf.constant(t), tf.constant(s), "mean"))
    pred_sum = _run(losses.prediction_loss(tf.constant(t), tf.constant(s), "mse", "sum"))
    kl = _run(losses.prediction_loss(tf.constant(t), tf.constant(s), "kl", "mean"))
    kl_self = _run(losses.prediction_loss(tf.constant(t), tf.constant(t), "kl", "sum"))
  np.testing.assert_allclose(rep_sum, per_example.sum(), rtol=1e-6)
  np.testing.assert_allclose(rep_mean, per_example.mean(), rtol=1e-6)
  np.testing.assert_allclose(pred_sum, per_example.sum(), rtol=1e-6)
  expected_kl = (t * np.log(t / s) + (1 - t) * np.log((1 - t) / (1 - s))).sum(1).mean()
  np.testing.assert_allclose(kl, expected_kl, rtol=1e-4)
  assert abs(kl_self) < 1e-6


def test_probability_losses_stay_finite_at_bf16_rounding():
  # Under --bf16 probabilities near 1 round to exactly 1 or just above it (1 + 2^-7).
  p = np.array([[1.0, 1.0078125, 0.0, 0.5]], np.float32)
  y = np.array([[1, 0, 0, 1]], np.float32)
  with tf.Graph().as_default():
    ce = _run(losses.CrossEntropyLoss().calculate_loss(tf.constant(p), tf.constant(y)))
    kl = _run(losses.prediction_loss(tf.constant(p), tf.constant(p[:, ::-1]), "kl"))
    kl_self = _run(losses.prediction_loss(tf.constant(p), tf.constant(p), "kl"))
  # -log(1 + 1e-8) for the right 1.0, -log(1e-8) for the wrong 1.0078, 0 for the
  # right 0.0, -log(0.5 + 1e-8) for the 0.5.
  np.testing.assert_allclose(ce, -np.log(1 + 1e-8) - np.log(1e-8) - np.log(0.5 + 1e-8),
                             rtol=1e-5)
  assert np.isfinite(kl) and kl > 0
  assert abs(kl_self) < 1e-6


def test_gradient_clipping_per_tensor_returns_the_norms_before_clipping():
  import gradients
  with tf.Graph().as_default():
    big, small = tf.constant([3.0, 4.0]), tf.constant([0.3, 0.4])
    sparse = tf.IndexedSlices(tf.constant([[6.0, 8.0]]), tf.constant([1]),
                              tf.constant([3, 2]))
    nan = tf.constant([np.nan, 1.0])
    clipped, norms = gradients.clip_gradient_norms(
        [(big, "a"), (small, "b"), (sparse, "c"), (None, "d"), (nan, "e")], 1.0)
    values = _run([clipped[0][0], clipped[1][0], clipped[2][0].values] + norms)
  assert [v for _, v in clipped] == ["a", "b", "c", "d", "e"] and clipped[3][0] is None
  np.testing.assert_allclose(values[0], [0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(values[1], [0.3, 0.4], rtol=1e-6)  # under the cap
  np.testing.assert_allclose(values[2], [[0.6, 0.8]], rtol=1e-6)
  np.testing.assert_allclose(values[3:6], [5.0, 0.5, 10.0], rtol=1e-6)
  assert np.isnan(values[6])  # a NaN gradient shows in its norm


def test_packing_choice_follows_the_flag_and_the_frame_axis():
  assert model_utils.packing_enabled("auto", 300)
  assert model_utils.packing_enabled("auto", None)
  assert not model_utils.packing_enabled("auto", 30)
  assert not model_utils.packing_enabled("never", 300)
  assert model_utils.packing_enabled("always", 30)
  with pytest.raises(cli.UsageError, match="--frame_packing"):
    model_utils.packing_enabled("sometimes", 300)
