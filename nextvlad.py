"""NeXtVLAD (Lin et al., 2018): grouped, expanded NetVLAD aggregation of frame features.

Per modality branch (rgb: N=1024, K clusters, G groups; audio: N=128, K/2, G/2):
  x = FC(frames) N -> lambda*N, attention = sigmoid(FC(x) -> G) * frame mask,
  assignment = softmax_K(BN(x W), per group) * attention,
  vlad[d, k] = sum_{frames, groups} assignment * (x_group[d] - center[d, k]),
  intra-normalised over d, flattened to K * lambda*N/G, batch normalised.
Head: concat branches -> dropout -> FC (no bias) -> BN -> SE gating -> classifier.

MixNeXtVladModel (the NeXtVLAD authors' 2018 submission): several such models mixed by
per-video weights, trained with an on-the-fly distillation of the mixture into each.
"""

import tensorflow as tf

import cli
import model_utils
import registry
import video_level_models

tf1 = tf.compat.v1


def classify(representation, vocab_size, is_training, classifier, classifier_params):
  """The video-level classifier `classifier` on [B, H] under `classifier/` -> its dict,
  with `representation` set to [B, H]."""
  with tf1.variable_scope("classifier"):
    outputs = video_level_models.CLASSIFIERS.create(classifier).create_model(
        representation, vocab_size, is_training=is_training, **classifier_params)
  outputs["representation"] = representation
  return outputs


class NeXtVLAD(object):
  """The NeXtVLAD aggregation layer of one modality."""

  def __init__(self, feature_size, cluster_size, is_training, expansion=2, groups=8):
    """
    Args:
      feature_size: N, features per frame of this modality.
      cluster_size: K, VLAD clusters.
      is_training: Python bool; batch norm in training or inference mode.
      expansion: lambda, the first FC widens frames to lambda * N.
      groups: G; lambda * N must be divisible by G.
    """
    if (expansion * feature_size) % groups:
      raise cli.UsageError("--expansion * feature size (%d * %d) is not divisible by "
                           "--groups=%d" % (expansion, feature_size, groups))
    self.feature_size = feature_size
    self.cluster_size = cluster_size
    self.is_training = is_training
    self.expansion = expansion
    self.groups = groups
    self.group_size = expansion * feature_size // groups

  def output_size(self):
    """Width of the VLAD vector: K * lambda * N / G."""
    return self.cluster_size * self.group_size

  def forward(self, frames, mask, packed=False):
    """frames [B, T, N] float, mask [B, T] (1 real, 0 padding) -> vlad [B, K*lambda*N/G].

    Padding never reaches the output: its attention is zeroed and it is left out of
    the batch statistics. packed: run the per-frame layers (expansion, attention,
    cluster logits) on the real frames only (model_utils.FrameRows); same result.
    """
    rows = model_utils.FrameRows(frames, mask, packed)
    batch_size, max_frames = rows.batch_size, rows.max_frames
    expanded_size = self.expansion * self.feature_size
    # Every weight starts as in the NeXtVLAD solution (slim's variance scaling).
    x = model_utils.fully_connected(
        rows.rows, expanded_size, "expansion",
        stddev=model_utils.variance_scaling_stddev(self.feature_size))
    attention = model_utils.fully_connected(
        x, self.groups, "group_attention", activation=tf.sigmoid,
        stddev=model_utils.variance_scaling_stddev(expanded_size))
    attention = rows.zero_padding(attention)  # [M, G]

    logits = model_utils.fully_connected(
        x, self.groups * self.cluster_size, "cluster_logits", use_bias=False,
        stddev=model_utils.variance_scaling_stddev(expanded_size))
    logits = model_utils.batch_norm(logits, self.is_training, "cluster_bn",
                                    mask=rows.row_mask)
    logits = tf.reshape(logits, [-1, self.groups, self.cluster_size])
    assignment = tf.nn.softmax(logits, axis=-1) * attention[:, :, None]  # [M, G, K]
    assignment = tf.reshape(
        rows.to_padded(tf.reshape(assignment, [-1, self.groups * self.cluster_size])),
        [batch_size, max_frames * self.groups, self.cluster_size])
    grouped = tf.reshape(rows.to_padded(x), [batch_size, max_frames * self.groups,
                                             self.group_size])

    centers = tf1.get_variable(
        "cluster_centers", [1, self.group_size, self.cluster_size],
        initializer=model_utils.truncated_normal(
            model_utils.variance_scaling_stddev(self.group_size), "cluster_centers"))
    assignment_sum = tf.reduce_sum(assignment, axis=1, keepdims=True)  # [B, 1, K]
    vlad = tf.matmul(assignment, grouped, transpose_a=True)  # [B, K, D/G]
    vlad = tf.transpose(vlad, [0, 2, 1]) - assignment_sum * centers  # [B, D/G, K]
    vlad = tf.nn.l2_normalize(vlad, axis=1)
    vlad = tf.reshape(vlad, [batch_size, self.output_size()])
    return model_utils.batch_norm(vlad, self.is_training, "vlad_bn")


@registry.frame_level_model(
    registry.Hyperparameter("nextvlad_cluster_size", "Number of units in the NeXtVLAD "
                            "cluster layer.", arg="cluster_size", lower_bound=1),
    registry.Hyperparameter("nextvlad_hidden_size", "Number of units in the NeXtVLAD "
                            "hidden layer.", arg="hidden_size", lower_bound=1),
    registry.Hyperparameter("groups", "number of groups in VLAD encoding",
                            lower_bound=1),
    registry.Hyperparameter("drop_rate", "dropout ratio after VLAD encoding",
                            lower_bound=0.0, upper_bound=1.0),
    registry.Hyperparameter("expansion", "expansion ratio in Group NetVlad",
                            lower_bound=1),
    registry.Hyperparameter("gating_reduction", "reduction factor in se context "
                            "gating", lower_bound=1))
class NeXtVLADModel(model_utils.BaseModel):
  """NeXtVLAD video classifier over frame features (rgb then audio)."""

  def create_model(self, model_input, vocab_size, num_frames, is_training,
                   feature_sizes=(1024, 128), cluster_size=64, hidden_size=1024, groups=8,
                   expansion=2, gating_reduction=8, drop_rate=0.5,
                   classifier="LogisticModel", frame_packing="auto",
                   **classifier_params):
    """Builds the model (the defaults are those of the flags of the same names).

    Args:
      model_input: [B, T, sum(feature_sizes)] float frames, padded beyond num_frames.
      vocab_size: number of classes.
      num_frames: [B] int real frames per video.
      is_training: Python bool (dropout, batch-norm mode and updates).
      feature_sizes: per-modality widths; the first modality gets K clusters and G
        groups, the others K/2 and G/2.
      classifier: name of the video-level classifier; classifier_params go to it.
      frame_packing: see model_utils.packing_enabled.
    Returns:
      {"predictions": [B, vocab_size], "logits" (LogisticModel only),
       "representation": [B, hidden_size] the gated vector fed to the classifier}.
    """
    mask = model_utils.frame_mask(num_frames, tf.shape(model_input)[1])
    packed = model_utils.packing_enabled(frame_packing, model_input.shape[1])
    branch_names = ["rgb", "audio"] + ["feature%d" % i for i in range(2, 10)]
    vlads = []
    start = 0
    for i, size in enumerate(feature_sizes):
      branch = NeXtVLAD(size, cluster_size if i == 0 else cluster_size // 2,
                        is_training, expansion=expansion,
                        groups=groups if i == 0 else max(groups // 2, 1))
      with tf1.variable_scope("%s_nextvlad" % branch_names[i]):
        vlads.append(branch.forward(model_input[:, :, start:start + size], mask,
                                    packed))
      start += size
    vlad = tf.concat(vlads, axis=1) if len(vlads) > 1 else vlads[0]
    vlad = model_utils.dropout(vlad, drop_rate, is_training)

    hidden = model_utils.fully_connected(
        vlad, hidden_size, "hidden1", use_bias=False,
        stddev=model_utils.variance_scaling_stddev(int(vlad.shape[-1])))
    hidden = model_utils.batch_norm(hidden, is_training, "hidden1_bn")
    representation = model_utils.se_context_gating(hidden, gating_reduction, is_training)
    return classify(representation, vocab_size, is_training, classifier, classifier_params)


@registry.frame_level_model(
    registry.Hyperparameter("mix_number", "MixNeXtVladModel: NeXtVLAD branches mixed "
                            "per video.", lower_bound=1),
    registry.Hyperparameter("cl_temperature", "MixNeXtVladModel: temperature of the "
                            "class distributions (softmax of logits / T) whose KL "
                            "divergence from the mixture to each branch regularizes "
                            "training.", lower_bound=1e-6),
    registry.Hyperparameter("cl_lambda", "MixNeXtVladModel: weight of that KL "
                            "divergence (the model's regularization_loss).",
                            lower_bound=0.0),
    *NeXtVLADModel.hyperparameters)
class MixNeXtVladModel(model_utils.BaseModel):
  """A per-video mixture of NeXtVLAD models ("on-the-fly naive ensemble", the original
  nextvlad.py's second model).

  weights = softmax(FC(BN(mean of the real frames))) over --mix_number branches, each a
  whole NeXtVLADModel under `branch_<n>/` (its own rgb and audio NeXtVLAD, hidden layer,
  gating and classifier); logits = sum_n weights_n * logits_n; predictions =
  sigmoid(logits). In training it also returns the original's regularization_loss,
  cl_lambda * batch mean of sum_n KL(softmax(logits / T) || softmax(logits_n / T)),
  and the branches' predictions as aux_predictions (each gets the label loss).
  """

  def create_model(self, model_input, vocab_size, num_frames, is_training, mix_number=3,
                   cl_temperature=2.0, cl_lambda=1.0, classifier="LogisticModel",
                   **nextvlad_params):
    """Builds the mixture (the defaults are those of the flags of the same names).

    Args:
      model_input: [B, T, sum(feature_sizes)] float frames, padded beyond num_frames.
      vocab_size: number of classes.
      num_frames: [B] int real frames per video.
      is_training: Python bool (dropout, batch norm, and the training-only outputs).
      mix_number: branches M.
      cl_temperature, cl_lambda: temperature and weight of the KL regularization.
      classifier: LogisticModel or StarterLogisticModel (the branches' logits are
        mixed); nextvlad_params go to every branch's NeXtVLADModel.create_model.
    Returns:
      {"predictions": [B, vocab_size], "logits": [B, vocab_size] the mixed logits,
       "representation": [B, hidden_size] the mixing-weighted sum of the branches'
       representations (what L_rep compares), "mix_weights": [B, M]}; in training
      also "regularization_loss" (scalar) and "aux_predictions" (M x [B, vocab_size]).
    """
    mask = model_utils.frame_mask(num_frames, tf.shape(model_input)[1])
    # The original averages over the padded frame axis; over the real frames here, so
    # that padding never changes a prediction (docs/differences.md).
    mean_frame = model_utils.masked_mean(model_input, mask)
    mean_frame = model_utils.batch_norm(mean_frame, is_training, "mix_weights_bn")
    mix_logits = model_utils.fully_connected(
        mean_frame, mix_number, "mix_weights",
        stddev=model_utils.variance_scaling_stddev(int(mean_frame.shape[-1])))
    mix_weights = tf.nn.softmax(mix_logits, axis=-1)  # [B, M]

    branches = []
    for n in range(mix_number):
      with tf1.variable_scope("branch_%d" % n):
        branches.append(NeXtVLADModel().create_model(
            model_input, vocab_size, num_frames, is_training, classifier=classifier,
            **nextvlad_params))
    if any("logits" not in branch for branch in branches):
      raise cli.UsageError("--model=MixNeXtVladModel needs a classifier with logits "
                           "(--video_level_classifier_model=LogisticModel), not %s"
                           % classifier)
    branch_logits = tf.stack([b["logits"] for b in branches], axis=1)  # [B, M, C]
    logits = tf.reduce_sum(mix_weights[:, :, None] * branch_logits, axis=1)
    representation = tf.reduce_sum(
        mix_weights[:, :, None] * tf.stack([b["representation"] for b in branches],
                                           axis=1), axis=1)
    outputs = {"predictions": tf.sigmoid(logits), "logits": logits,
               "representation": representation, "mix_weights": mix_weights}
    if is_training:
      outputs["regularization_loss"] = cl_lambda * mixture_kl(logits, branch_logits,
                                                              cl_temperature)
      outputs["aux_predictions"] = [b["predictions"] for b in branches]
    return outputs


def mixture_kl(logits, branch_logits, temperature, epsilon=1e-8):
  """Batch mean of sum_n KL(softmax(logits / T) || softmax(branch_logits_n / T)).

  logits [B, C] (the mixture's), branch_logits [B, M, C] -> scalar. The class
  distributions are softmaxes over all classes, epsilon 1e-8 inside the logs, as in
  the original.
  """
  mixture = tf.nn.softmax(logits / temperature, axis=-1)[:, None, :]  # [B, 1, C]
  branches = tf.nn.softmax(branch_logits / temperature, axis=-1)  # [B, M, C]
  kl = tf.reduce_sum(mixture * (tf.math.log(mixture + epsilon) -
                                tf.math.log(branches + epsilon)), axis=-1)  # [B, M]
  return tf.reduce_mean(tf.reduce_sum(kl, axis=-1))
