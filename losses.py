"""Label losses (the starter's) and the knowledge-distillation terms L_rep and L_pred."""

import tensorflow as tf

import cli
import registry

tf1 = tf.compat.v1

REDUCTIONS = ("sum", "mean")
PREDICTION_LOSSES = ("mse", "kl", "logits_kl")  # --kd_pred_loss
REPRESENTATION_LOSSES = ("mse", "none", "cosine", "standardized")  # --kd_rep_loss
# Probabilities are bounded away from 0 and 1 by this before a log (kl, and the logits
# of a model that defines none).
PROBABILITY_EPSILON = 1e-6
# --kd_rep_loss=standardized: each dimension's teacher variance is floored by adding
# this fraction of its mean over the dimensions.
VARIANCE_FLOOR = 0.01


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


def representation_loss(teacher, student, reduction="sum", kind="mse"):
  """L_rep between representations teacher [B, H] and student [B, H] -> scalar.

  kind (--kd_rep_loss):
    mse: squared error summed over H (the documented recipe);
    cosine: 1 - the cosine similarity of each example's two vectors (scale-free);
    standardized: squared error summed over H after each dimension is divided by the
      teacher's standard deviation over the batch, sqrt(var_h + VARIANCE_FLOOR *
      mean_h(var_h)) (1 when the teacher's batch is constant), held fixed
      (stop_gradient). Standardising subtracts the teacher's batch mean from both
      vectors too, which cancels in their difference.
  reduction "sum" adds the examples of the (tower) batch, as the documented recipe
  does (its weights are tuned for batch 80); "mean" averages them.
  """
  if kind == "mse":
    per_example = tf.reduce_sum(tf.square(teacher - student), axis=1)
  elif kind == "cosine":
    per_example = 1.0 - tf.reduce_sum(tf.math.l2_normalize(teacher, axis=1) *
                                      tf.math.l2_normalize(student, axis=1), axis=1)
  elif kind == "standardized":
    per_example = tf.reduce_sum(
        tf.square((teacher - student) / teacher_scale(teacher)), axis=1)
  else:
    raise cli.UsageError("--kd_rep_loss must be one of %s for L_rep, got %r"
                         % (", ".join(r for r in REPRESENTATION_LOSSES if r != "none"),
                            kind))
  return _reduce(per_example, reduction)


def teacher_scale(teacher):
  """teacher [B, H] -> [H], the per-dimension scale of --kd_rep_loss=standardized
  (see representation_loss), without gradient."""
  _, variance = tf.nn.moments(tf.stop_gradient(teacher), axes=[0])
  floor = VARIANCE_FLOOR * tf.reduce_mean(variance)
  # A constant batch (one example) has no spread to standardise by: scale 1.
  return tf.sqrt(variance + floor + tf.cast(tf.equal(floor, 0.0), variance.dtype))


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
    epsilon = PROBABILITY_EPSILON
    t, s = tf.maximum(teacher, epsilon), tf.maximum(student, epsilon)
    t_c, s_c = tf.maximum(1 - teacher, epsilon), tf.maximum(1 - student, epsilon)
    per_example = tf.reduce_sum(t * tf.math.log(t / s) + t_c * tf.math.log(t_c / s_c),
                                axis=1)
  else:
    raise cli.UsageError("--kd_pred_loss must be mse or kl on probabilities, got %r"
                         % kind)
  return _reduce(per_example, reduction)


def logits_kl(teacher_logits, student_logits, temperature=1.0, reduction="sum"):
  """L_pred of --kd_pred_loss=logits_kl: temperature-softened binary KL on logits.

  teacher_logits, student_logits [B, C] -> scalar: per class,
  KL(Bernoulli(sigmoid(t / T)) || Bernoulli(sigmoid(s / T))), summed over classes and
  multiplied by T^2 (Hinton's scaling, so the gradient's size does not shrink as
  1 / T^2 when T grows); then reduced over the batch as the other terms.
  """
  t, s = teacher_logits / temperature, student_logits / temperature
  p = tf.sigmoid(t)
  per_class = (p * (tf.math.log_sigmoid(t) - tf.math.log_sigmoid(s)) +
               (1 - p) * (tf.math.log_sigmoid(-t) - tf.math.log_sigmoid(-s)))
  per_example = temperature ** 2 * tf.reduce_sum(per_class, axis=1)
  return _reduce(per_example, reduction)


def logits_of(outputs):
  """A model's logits [B, C]: outputs["logits"] when it defines them, else the logit
  of its predictions bounded to [PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON]
  (log p - log(1 - p), each term bounded separately as in kl)."""
  if outputs.get("logits") is not None:
    return outputs["logits"]
  p = outputs["predictions"]
  return (tf.math.log(tf.maximum(p, PROBABILITY_EPSILON)) -
          tf.math.log(tf.maximum(1 - p, PROBABILITY_EPSILON)))
