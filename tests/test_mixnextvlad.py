"""MixNeXtVladModel (the original's per-video mixture of NeXtVLADs) and the starter's
model contract (loss, regularization_loss, aux_predictions) in training.

Numbers are checked against the definitions: the mixture against its own branches
built alone with the same weights, the KL regularization and the losses in numpy.
"""
import numpy as np
import pytest
import tensorflow as tf

import cli
import config
import kd_model
import losses
import nextvlad

tf1 = tf.compat.v1
FEATURE_SIZES = [16, 8]
F, T, VOCAB, M = sum(FEATURE_SIZES), 10, 12, 3
NEXTVLAD = dict(feature_sizes=FEATURE_SIZES, cluster_size=4, hidden_size=8, groups=2,
                expansion=2, gating_reduction=2, drop_rate=0.0)


def _frames(num_frames, seed=0):
  rng = np.random.RandomState(seed)
  frames = rng.uniform(-2, 2, (len(num_frames), T, F)).astype(np.float32)
  frames[np.arange(T)[None, :] >= np.asarray(num_frames)[:, None]] = 0
  return frames


def _mixture_and_branches(is_training, cl_temperature=2.0, cl_lambda=0.5):
  """Runs the mixture and, sharing its variables, each branch as a NeXtVLADModel."""
  num_frames = [T, 6, 1, 3]
  with tf.Graph().as_default():
    tf1.set_random_seed(4)
    x = tf.constant(_frames(num_frames))
    n = tf.constant(num_frames)
    with tf1.variable_scope("m"):
      mixture = nextvlad.MixNeXtVladModel().create_model(
          x, VOCAB, n, is_training, mix_number=M, cl_temperature=cl_temperature,
          cl_lambda=cl_lambda, **NEXTVLAD)
    branches = []
    for i in range(M):
      with tf1.variable_scope("m", reuse=True), tf1.variable_scope("branch_%d" % i):
        branches.append(nextvlad.NeXtVLADModel().create_model(x, VOCAB, n, is_training,
                                                              **NEXTVLAD))
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      for v in tf1.global_variables():  # biases and BN shifts away from 0
        if v.op.name.endswith(("biases", "beta")):
          v.load(np.random.RandomState(len(v.op.name)).normal(
              0, 0.3, v.shape.as_list()), sess)
      return sess.run([mixture, branches])


@pytest.mark.parametrize("is_training", [False, True])
def test_mixture_is_the_weighted_sum_of_its_branches(is_training):
  mixture, branches = _mixture_and_branches(is_training)
  weights = mixture["mix_weights"]
  assert weights.shape == (4, M)
  np.testing.assert_allclose(weights.sum(axis=1), 1, rtol=1e-6)
  assert np.ptp(weights, axis=0).max() > 1e-3  # the weights are per video
  logits = sum(weights[:, i:i + 1] * b["logits"] for i, b in enumerate(branches))
  np.testing.assert_allclose(mixture["logits"], logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mixture["predictions"], 1 / (1 + np.exp(-logits)),
                             rtol=1e-5, atol=1e-6)
  representation = sum(weights[:, i:i + 1] * b["representation"]
                       for i, b in enumerate(branches))
  np.testing.assert_allclose(mixture["representation"], representation, rtol=1e-5,
                             atol=1e-6)
  assert mixture["representation"].shape == (4, NEXTVLAD["hidden_size"])
  # The branches differ (their own weights), so the mixing matters.
  assert np.abs(branches[0]["logits"] - branches[1]["logits"]).max() > 1e-3
  assert ("regularization_loss" in mixture) == is_training
  assert ("aux_predictions" in mixture) == is_training


def _softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def test_training_returns_the_originals_kl_regularization_and_branch_predictions():
  temperature, weight = 3.0, 0.5
  mixture, branches = _mixture_and_branches(True, temperature, weight)
  mixed = _softmax(mixture["logits"].astype(np.float64) / temperature)
  kl = 0.0
  for branch in branches:
    own = _softmax(branch["logits"].astype(np.float64) / temperature)
    kl += (mixed * (np.log(mixed + 1e-8) - np.log(own + 1e-8))).sum(axis=1)
  assert kl.min() > 1e-6
  assert mixture["regularization_loss"] == pytest.approx(weight * kl.mean(), rel=1e-4)
  for aux, branch in zip(mixture["aux_predictions"], branches):
    np.testing.assert_allclose(aux, branch["predictions"], rtol=1e-6)


def test_model_losses_follow_the_starters_contract():
  label_loss = losses.get_label_loss("CrossEntropyLoss")
  labels = [[1.0, 0.0], [0.0, 1.0]]
  predictions = [[0.9, 0.2], [0.3, 0.6]]
  aux = [[[0.7, 0.1], [0.5, 0.5]], [[0.6, 0.3], [0.2, 0.8]]]
  with tf.Graph().as_default() as graph:
    labels, predictions = tf.constant(labels), tf.constant(predictions)
    aux = [tf.constant(a) for a in aux]
    with tf1.variable_scope("student"):
      tf1.get_variable("w", initializer=tf.constant([3.0, 4.0]),
                       regularizer=lambda w: 0.1 * tf.nn.l2_loss(w))
    plain = kd_model.model_losses({"predictions": predictions}, labels, label_loss,
                                  "student")
    full = kd_model.model_losses(
        {"predictions": predictions, "aux_predictions": aux,
         "regularization_loss": tf.constant(0.25)}, labels, label_loss, "student")
    replaced = kd_model.model_losses(
        {"predictions": predictions, "loss": tf.constant(7.0)}, labels, label_loss,
        "student")
    ce = [label_loss.calculate_loss(p, labels) for p in [predictions] + aux]
    with tf1.Session(graph=graph) as sess:
      sess.run(tf1.global_variables_initializer())
      plain, full, replaced, ce = sess.run([plain, full, replaced, ce])
  l2 = 0.1 * (9 + 16) / 2
  assert plain == pytest.approx((ce[0], l2), rel=1e-6)
  assert full == pytest.approx((ce[0] + ce[1] + ce[2], l2 + 0.25), rel=1e-6)
  assert replaced == pytest.approx((7.0, l2), rel=1e-6)


def _tiny_mixture_config(**changes):
  values = dict(model="MixNeXtVladModel", feature_names="rgb,audio", feature_sizes="16,8",
                max_frames=T, num_classes=VOCAB, nextvlad_cluster_size=4,
                nextvlad_hidden_size=8, groups=2, expansion=2, gating_reduction=2,
                drop_rate=0.0, mix_number=2, pca_eigenvals="", k_frame=T)
  values.update(changes)
  argv = ["--%s=%s" % item for item in values.items()]
  return config.from_flags(config.private_flags(argv))


def test_training_a_mixture_adds_every_branchs_label_loss_and_the_kl(monkeypatch):
  cfg = _tiny_mixture_config(cl_lambda=2.0, regularization_penalty=0.5, l2_penalty=1e-3)
  outputs = []
  create = kd_model.create_role_model
  monkeypatch.setattr(kd_model, "create_role_model",
                      lambda *a, **k: outputs.append(create(*a, **k)) or outputs[-1])
  rng = np.random.RandomState(1)
  labels = (rng.uniform(size=(4, VOCAB)) < 0.3).astype(np.float32)
  with tf.Graph().as_default():
    tf1.set_random_seed(2)
    batch = {"video_matrix": tf.constant(rng.randint(0, 256, (4, T, F)).astype(np.uint8)),
             "num_frames": tf.constant([T, 4, 2, 7]), "labels": tf.constant(labels)}
    terms = kd_model.training_task(cfg).tower(batch, reuse=False)
    l2 = kd_model.regularization_loss("teacher")
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      terms, out, l2 = sess.run([terms, outputs[0], l2])
  assert len(out["aux_predictions"]) == 2

  def cross_entropy(p):
    p = p.astype(np.float64)
    return -(labels * np.log(p + 1e-8) + (1 - labels) * np.log(1 - p + 1e-8)).sum(1).mean()
  expected_label = sum(cross_entropy(p) for p in [out["predictions"]] +
                       out["aux_predictions"])
  assert terms["label_loss"] == pytest.approx(expected_label, rel=1e-5)
  assert out["regularization_loss"] > 0 and l2 > 0
  assert terms["regularization"] == pytest.approx(l2 + out["regularization_loss"],
                                                  rel=1e-5)
  assert terms["total"] == pytest.approx(expected_label + 0.5 * terms["regularization"],
                                         rel=1e-5)


def test_a_mixture_needs_a_classifier_with_logits():
  with pytest.raises(cli.UsageError,
                     match="--video_level_classifier_model=LogisticModel or "
                           "StarterLogisticModel, not MoeModel"):
    _tiny_mixture_config(video_level_classifier_model="MoeModel")
  with pytest.raises(tf1.flags.Error, match="--mix_number=0: 0 is not a positive"):
    _tiny_mixture_config(mix_number=0)
