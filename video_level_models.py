"""Video-level classifiers: [B, D] video vectors -> [B, vocab_size] class probabilities.

They serve as models of their own (on video-level features) and as the classifier head
of the frame-level models (`--video_level_classifier_model`).

Every model here and in frame_level_models takes `class_ids`: None (every class), or a
list of class ids whose columns alone the predictions (and logits) then hold, in that
order, computed from the same full-size variables. `inference.py --segment_labels`
needs only the 1,000 rated classes of 3,862, and computes only those.
"""

import tensorflow as tf

import model_utils
import registry

L2_PENALTY = 1e-8  # the starter's default (--l2_penalty)
NUM_MIXTURES = 2  # --moe_num_mixtures
# The classifiers' hyperparameters (a frame-level model passes its classifier's on).
L2 = registry.Hyperparameter("l2_penalty", "L2 penalty on the classifier weights.",
                             default=L2_PENALTY, lower_bound=0.0)
MIXTURES = registry.Hyperparameter(
    "moe_num_mixtures", "The number of mixtures (excluding the dummy 'expert') used "
    "for MoeModel.", arg="num_mixtures", default=NUM_MIXTURES, lower_bound=1)


@registry.video_level_model(L2)
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

  def create_model(self, model_input, vocab_size, l2_penalty=L2_PENALTY, class_ids=None,
                   **unused_params):
    """model_input [B, D] -> {predictions, logits [B, vocab_size] (or [B, R] for R
    class_ids), representation}."""
    logits = model_utils.fully_connected(
        model_input, vocab_size, "logistic", l2_penalty=l2_penalty,
        stddev=self.weights_stddev(int(model_input.shape[-1])),
        penalize_biases=self.penalize_biases, columns=class_ids)
    return {"predictions": tf.sigmoid(logits), "logits": logits,
            "representation": model_input}


@registry.video_level_model(L2)
class StarterLogisticModel(LogisticModel):
  """LogisticModel as the starter-based models of this port had it: W from a truncated
  normal with stddev 1/sqrt(D), L2 penalty on W only (today's starter penalizes W only).
  """

  penalize_biases = False

  def weights_stddev(self, input_size):
    return input_size ** -0.5


@registry.video_level_model(MIXTURES, L2)
class MoeModel(model_utils.BaseModel):
  """Mixture of logistic experts with a softmax gate per class (and a dummy expert).

  p(class) = sum_m softmax(gates)[m] * sigmoid(expert_m); no logits are defined.
  """

  def create_model(self, model_input, vocab_size, num_mixtures=NUM_MIXTURES,
                   l2_penalty=L2_PENALTY, class_ids=None, **unused_params):
    """model_input [B, D] -> {predictions [B, vocab_size] (or [B, R] for R class_ids),
    representation}."""
    # Class c owns gate columns c*(M+1) .. c*(M+1)+M and expert columns c*M .. c*M+M-1.
    gate_columns = expert_columns = None
    if class_ids is not None:
      gate_columns = [c * (num_mixtures + 1) + j for c in class_ids
                      for j in range(num_mixtures + 1)]
      expert_columns = [c * num_mixtures + j for c in class_ids
                        for j in range(num_mixtures)]
    gate_activations = model_utils.fully_connected(
        model_input, vocab_size * (num_mixtures + 1), "gates", l2_penalty=l2_penalty,
        columns=gate_columns)
    expert_activations = model_utils.fully_connected(
        model_input, vocab_size * num_mixtures, "experts", l2_penalty=l2_penalty,
        columns=expert_columns)
    gates = tf.nn.softmax(tf.reshape(gate_activations, [-1, num_mixtures + 1]))
    experts = tf.sigmoid(tf.reshape(expert_activations, [-1, num_mixtures]))
    probabilities = tf.reduce_sum(gates[:, :num_mixtures] * experts, axis=1)
    predictions = tf.reshape(probabilities, [
        -1, vocab_size if class_ids is None else len(class_ids)])
    return {"predictions": predictions, "representation": model_input}


# The models of video-level features (--model with --frame_features=False) and the
# classifiers on top of a frame-level model: the same classes.
MODELS = registry.VIDEO_LEVEL_MODELS
CLASSIFIERS = registry.CLASSIFIERS
