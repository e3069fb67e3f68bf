"""Label losses (the starter's) and the knowledge-distillation terms L_rep and L_pred."""

import tensorflow as tf

import cli
import registry

tf1 = tf.compat.v1

REDUCTIONS = ("sum", "mean")
PREDICTION_LOSSES = ("mse", "kl")


class BaseLoss(object):
  """calculate_loss(predictions [B, C], labels [B, C], label_weights=None) -> scalar.

  label_weights [B, C] (--segment_labels): each class's term is multiplied by its
  weight, 1 for a rated class and 0 for the others, as the starter's losses do.
  """

  def calculate_loss(self, unused_predictions, unused_labels, label_weights=None,
                     **unused_params):
    raise NotImplementedError()


def _weighted(per_class, label_weights):
  return per_class if label_weights is None else per_class * label_weights


class CrossEntropyLoss(BaseLoss):
  """Binary cross entropy of probabilities: summed over classes, mean over the batch.

  epsilon inside the logs is 1e-8, as in the original KD and NeXtVLAD code
  (StarterCrossEntropyLoss: today's starter, 1e-5).
  """

  epsilon = 1e-8

  def calculate_loss(self, predictions, labels, label_weights=None, **unused_params):
    epsilon = self.epsilon
    labels = tf.cast(labels, tf.float32)
    # max(1 - p, 0) is 1 - p in float32. Under --bf16 (8 mantissa bits) a mixture of
    # experts can round p above 1, and 1 - p + epsilon, refolded as (1 + epsilon) - p,
    # can round to 0: log would give NaN or -inf.
    cross_entropy = (labels * tf.math.log(predictions + epsilon) +
                     (1 - labels) * tf.math.log(tf.maximum(1 - predictions, 0.0) + epsilon))
    return tf.reduce_mean(tf.reduce_sum(_weighted(-cross_entropy, label_weights), axis=1))


class StarterCrossEntropyLoss(CrossEntropyLoss):
  """CrossEntropyLoss with today's starter code's epsilon, 1e-5."""

  epsilon = 1e-5


class HingeLoss(BaseLoss):
  """Hinge loss max(0, 1 - y*p) with y in {-1, 1}: summed over classes, batch mean."""

  def calculate_loss(self, predictions, labels, label_weights=None, b=1.0,
                     **unused_params):
    sign_labels = 2.0 * tf.cast(labels, tf.float32) - 1.0
    hinge = tf.maximum(0.0, b - sign_labels * predictions)
    return tf.reduce_mean(tf.reduce_sum(_weighted(hinge, label_weights), axis=1))


class SoftmaxLoss(BaseLoss):
  """Cross entropy of softmax(predictions) against the label set as a distribution."""

  def calculate_loss(self, predictions, labels, label_weights=None, **unused_params):
    """label_weights: the classes outside the rated ones are left out of the label
    distribution and of the softmax's normalisation (their logits pushed to -inf)."""
    epsilon = 1e-8
    labels = tf.cast(labels, tf.float32)
    if label_weights is not None:
      labels *= label_weights
      predictions += (label_weights - 1.0) * 1e9
    label_sum = tf.maximum(tf.reduce_sum(labels, axis=1, keepdims=True), epsilon)
    log_softmax = tf.nn.log_softmax(predictions, axis=1)
    return tf.reduce_mean(-tf.reduce_sum(labels / label_sum * log_softmax, axis=1))


# --label_loss: CrossEntropyLoss (epsilon 1e-8, the original KD code),
# StarterCrossEntropyLoss (epsilon 1e-5, today's starter), HingeLoss, SoftmaxLoss.
LABEL_LOSSES = registry.Registry("label loss", "--label_loss")
for _loss in (CrossEntropyLoss, StarterCrossEntropyLoss, HingeLoss, SoftmaxLoss):
  LABEL_LOSSES.register(_loss)


def get_label_loss(name):
  """The label loss called `name` (--label_loss), instantiated."""
  return LABEL_LOSSES.create(name)


def _reduce(per_example, reduction):
  if reduction not in REDUCTIONS:
    raise cli.UsageError("--kd_reduction must be sum or mean, got %r" % reduction)
  return tf.reduce_sum(per_example) if reduction == "sum" else tf.reduce_mean(per_example)


def representation_loss(teacher, student, reduction="sum"):
  """L_rep: squared error between representations [B, H], summed over H.

  reduction "sum" adds the examples of the (tower) batch, as the documented recipe
  does (its weights are tuned for batch 80); "mean" averages them.
  """
  per_example = tf.reduce_sum(tf.square(teacher - student), axis=1)
  return _reduce(per_example, reduction)


def prediction_loss(teacher, student, kind="mse", reduction="sum"):
  """L_pred between class probabilities [B, C], summed over classes.

  kind "mse": squared error (the documented recipe); "kl": KL(teacher || student) of
  the per-class Bernoulli distributions (the paper's alternative, multi-label form).
  """
  if kind == "mse":
    per_example = tf.reduce_sum(tf.square(teacher - student), axis=1)
  elif kind == "kl":
    # Each probability and its complement bounded away from 0 separately: under --bf16
    # a clip to 1 - epsilon rounds to 1 and (1 - t) / (1 - s) would be 0 / 0.
    epsilon = 1e-6
    t, s = tf.maximum(teacher, epsilon), tf.maximum(student, epsilon)
    t_c, s_c = tf.maximum(1 - teacher, epsilon), tf.maximum(1 - student, epsilon)
    per_example = tf.reduce_sum(t * tf.math.log(t / s) + t_c * tf.math.log(t_c / s_c),
                                axis=1)
  else:
    raise cli.UsageError("--kd_pred_loss must be mse or kl, got %r" % kind)
  return _reduce(per_example, reduction)
