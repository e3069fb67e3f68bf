"""Video-level classifiers: [B, D] video vectors -> [B, vocab_size] class probabilities.

They serve as models of their own (on video-level features) and as the classifier head
of the frame-level models (`--video_level_classifier_model`).
"""

import tensorflow as tf

import model_utils

flags = tf.compat.v1.flags
FLAGS = flags.FLAGS
flags.DEFINE_integer("moe_num_mixtures", 2,
                     "The number of mixtures (excluding the dummy 'expert') used for "
                     "MoeModel.")
flags.DEFINE_float("l2_penalty", 1e-8, "L2 penalty on the classifier weights.")


class LogisticModel(model_utils.BaseModel):
  """Logistic regression: predictions = sigmoid(x W + b).

  As in the original KD / NeXtVLAD code, the L2 penalty applies to W and b
  (StarterLogisticModel: W only, as today's starter).
  """

  penalize_biases = True

  def create_model(self, model_input, vocab_size, l2_penalty=None, weights_stddev=None,
                   **unused_params):
    """model_input [B, D] -> {predictions, logits [B, vocab_size], representation}.

    weights_stddev: of W's truncated-normal initializer (default 1/sqrt(D)); NeXtVLAD
    passes the original's variance scaling.
    """
    l2_penalty = FLAGS.l2_penalty if l2_penalty is None else l2_penalty
    logits = model_utils.fully_connected(model_input, vocab_size, "logistic",
                                         l2_penalty=l2_penalty, stddev=weights_stddev,
                                         penalize_biases=self.penalize_biases)
    return {"predictions": tf.sigmoid(logits), "logits": logits,
            "representation": model_input}


class StarterLogisticModel(LogisticModel):
  """LogisticModel as today's starter code has it: no L2 penalty on the biases."""

  penalize_biases = False


class MoeModel(model_utils.BaseModel):
  """Mixture of logistic experts with a softmax gate per class (and a dummy expert).

  p(class) = sum_m softmax(gates)[m] * sigmoid(expert_m); no logits are defined.
  """

  def create_model(self, model_input, vocab_size, num_mixtures=None, l2_penalty=None,
                   **unused_params):
    """model_input [B, D] -> {predictions [B, vocab_size], representation}."""
    num_mixtures = num_mixtures or FLAGS.moe_num_mixtures
    l2_penalty = FLAGS.l2_penalty if l2_penalty is None else l2_penalty
    gate_activations = model_utils.fully_connected(
        model_input, vocab_size * (num_mixtures + 1), "gates", l2_penalty=l2_penalty)
    expert_activations = model_utils.fully_connected(
        model_input, vocab_size * num_mixtures, "experts", l2_penalty=l2_penalty)
    gates = tf.nn.softmax(tf.reshape(gate_activations, [-1, num_mixtures + 1]))
    experts = tf.sigmoid(tf.reshape(expert_activations, [-1, num_mixtures]))
    probabilities = tf.reduce_sum(gates[:, :num_mixtures] * experts, axis=1)
    predictions = tf.reshape(probabilities, [-1, vocab_size])
    return {"predictions": predictions, "representation": model_input}
