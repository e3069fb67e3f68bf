"""Video-level classifiers: [B, D] video vectors -> [B, vocab_size] class probabilities.

They serve as models of their own (on video-level features) and as the classifier head
of the frame-level models (`--video_level_classifier_model`).
"""

import tensorflow as tf

import model_utils
import registry

L2_PENALTY = 1e-8  # the starter's default (--l2_penalty)
NUM_MIXTURES = 2  # --moe_num_mixtures


class LogisticModel(model_utils.BaseModel):
  """Logistic regression: predictions = sigmoid(x W + b).

  As in the original KD / NeXtVLAD code: W starts from slim's variance-scaling defaults
  (model_utils.variance_scaling_stddev) and the L2 penalty applies to W and b.
  StarterLogisticModel is today's starter's variant.
  """

  penalize_biases = True

  def weights_stddev(self, input_size):
    """Stddev of W's truncated-normal initializer for D = input_size inputs."""
    return model_utils.variance_scaling_stddev(input_size)

  def create_model(self, model_input, vocab_size, l2_penalty=L2_PENALTY, **unused_params):
    """model_input [B, D] -> {predictions, logits [B, vocab_size], representation}."""
    logits = model_utils.fully_connected(
        model_input, vocab_size, "logistic", l2_penalty=l2_penalty,
        stddev=self.weights_stddev(int(model_input.shape[-1])),
        penalize_biases=self.penalize_biases)
    return {"predictions": tf.sigmoid(logits), "logits": logits,
            "representation": model_input}


class StarterLogisticModel(LogisticModel):
  """LogisticModel as the starter-based models of this port had it: W from a truncated
  normal with stddev 1/sqrt(D), L2 penalty on W only (today's starter penalizes W only).
  """

  penalize_biases = False

  def weights_stddev(self, input_size):
    return input_size ** -0.5


class MoeModel(model_utils.BaseModel):
  """Mixture of logistic experts with a softmax gate per class (and a dummy expert).

  p(class) = sum_m softmax(gates)[m] * sigmoid(expert_m); no logits are defined.
  """

  def create_model(self, model_input, vocab_size, num_mixtures=NUM_MIXTURES,
                   l2_penalty=L2_PENALTY, **unused_params):
    """model_input [B, D] -> {predictions [B, vocab_size], representation}."""
    gate_activations = model_utils.fully_connected(
        model_input, vocab_size * (num_mixtures + 1), "gates", l2_penalty=l2_penalty)
    expert_activations = model_utils.fully_connected(
        model_input, vocab_size * num_mixtures, "experts", l2_penalty=l2_penalty)
    gates = tf.nn.softmax(tf.reshape(gate_activations, [-1, num_mixtures + 1]))
    experts = tf.sigmoid(tf.reshape(expert_activations, [-1, num_mixtures]))
    probabilities = tf.reduce_sum(gates[:, :num_mixtures] * experts, axis=1)
    predictions = tf.reshape(probabilities, [-1, vocab_size])
    return {"predictions": predictions, "representation": model_input}


# The models of video-level features (--model with --frame_features=False) ...
MODELS = registry.Registry("video-level model", "--model")
# ... and the classifiers on top of a frame-level model: the same classes.
CLASSIFIERS = registry.Registry("video-level classifier", "--video_level_classifier_model")
for _model in (LogisticModel, StarterLogisticModel, MoeModel):
  MODELS.register(_model)
  CLASSIFIERS.register(_model)
