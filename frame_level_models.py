"""Frame-level models: [B, T, F] frames (zero-padded beyond num_frames) -> classes.

Every model derives model_utils.BaseModel and returns {"predictions" [B, vocab],
"logits" (where the classifier defines them), "representation" [B, H]}, the vector that
enters the video-level classifier (--video_level_classifier_model). Padded frames never
change the output: they are masked out of pooling and batch statistics, or the
recurrent state stops at the last real frame.

  FrameLevelLogisticModel  mean of the real frames -> logistic regression
  DbofModel                deep bag of frames (starter code)
  LstmModel                stacked LSTM, final state (starter code)
  NetVLADModel             learnable NetVLAD per modality + context gating (Willow)
  HRNNModel                hierarchical LSTM over blocks of frames (H-RNN teacher)
  NeXtVLADModel            re-exported from nextvlad.py
  MixNeXtVladModel         a per-video mixture of NeXtVLADs (nextvlad.py)
"""

import tensorflow as tf

import cli
import frame_selection
import model_utils
import registry
import video_level_models
from nextvlad import MixNeXtVladModel, NeXtVLADModel, classify

tf1 = tf.compat.v1
POOLING_METHODS = ("max", "average")  # --dbof_pooling_method


def _branch_names(count):
  """Scope names of the modalities, as nextvlad.py names them: rgb, audio, feature2..."""
  return (["rgb", "audio"] + ["feature%d" % i for i in range(2, count)])[:count]


masked_mean = model_utils.masked_mean


def masked_max(frames, mask):
  """frames [B, T, D], mask [B, T] float 1/0 -> max over real frames [B, D]."""
  lowest = tf.fill(tf.shape(frames), frames.dtype.min)
  return tf.reduce_max(tf.where(mask[:, :, None] > 0, frames, lowest), axis=1)


def _stacked_lstm(frames, num_frames, num_units, num_layers, scope):
  """LSTM layers `<scope>_0..` over [B, T, D] -> final hidden state of the top [B, H]."""
  outputs = frames
  for layer in range(num_layers):
    outputs, final_h = model_utils.lstm(outputs, num_frames, num_units,
                                        "%s_%d" % (scope, layer))
  return final_h


@registry.frame_level_model(video_level_models.L2)
class FrameLevelLogisticModel(model_utils.BaseModel):
  """Logistic regression on the mean of the real frames."""

  def create_model(self, model_input, vocab_size, num_frames, is_training,
                   l2_penalty=video_level_models.L2_PENALTY, class_ids=None,
                   **unused_params):
    """model_input [B, T, F], num_frames [B] -> {predictions, logits [B, vocab] (or
    [B, R] for R class_ids, see video_level_models), representation [B, F] the mean
    frame}."""
    mask = model_utils.frame_mask(num_frames, tf.shape(model_input)[1])
    representation = masked_mean(model_input, mask)
    with tf1.variable_scope("classifier"):
      # The starter's model: L2 on the weights only.
      outputs = video_level_models.StarterLogisticModel().create_model(
          representation, vocab_size, l2_penalty=l2_penalty, class_ids=class_ids)
    outputs["representation"] = representation
    return outputs


@registry.frame_level_model(
    registry.Hyperparameter("iterations", "Frames DbofModel samples per video (0: all "
                            "real frames).", lower_bound=0),
    registry.Hyperparameter("dbof_add_batch_norm", "Adds batch normalization to the "
                            "DBoF model.", arg="add_batch_norm"),
    registry.Hyperparameter("sample_random_frames", "DbofModel samples --iterations "
                            "random frames if True, uniformly spread frames if False."),
    registry.Hyperparameter("dbof_cluster_size", "Number of units in the DBoF cluster "
                            "layer.", arg="cluster_size", lower_bound=1),
    registry.Hyperparameter("dbof_hidden_size", "Number of units in the DBoF hidden "
                            "layer.", arg="hidden_size", lower_bound=1),
    registry.Hyperparameter("dbof_pooling_method", "Pooling of the DBoF cluster layer "
                            "over frames.", arg="pooling_method",
                            choices=POOLING_METHODS))
class DbofModel(model_utils.BaseModel):
  """Deep bag of frames: per-frame cluster layer, pooled over frames, hidden layer.

  frames (sampled) -> [input BN] -> FC to C (BN instead of bias) -> relu6 -> max or
  average over frames -> FC to H (BN instead of bias) -> relu6 -> classifier.
  """

  def create_model(self, model_input, vocab_size, num_frames, is_training,
                   iterations=30, sample_random_frames=True, add_batch_norm=True,
                   cluster_size=8192, hidden_size=1024, pooling_method="max",
                   classifier="LogisticModel", frame_packing="auto",
                   **classifier_params):
    """Builds the model (defaults: the flags --iterations, --sample_random_frames,
    --dbof_*).

    Args:
      model_input: [B, T, F] float frames, padded beyond num_frames.
      num_frames: [B] int real frames per video.
      is_training: Python bool (batch-norm mode and updates).
      iterations: frames sampled per video; 0 (or >= T) uses all real frames.
    Returns:
      {"predictions": [B, vocab_size], "logits" (LogisticModel only),
       "representation": [B, hidden_size]}.
    """
    if pooling_method not in POOLING_METHODS:
      raise cli.UsageError("--dbof_pooling_method must be max or average, got %r"
                           % pooling_method)
    if iterations < 0:
      raise cli.UsageError("--iterations must be >= 0, got %d" % iterations)

    frames, mask = self._sample(model_input, num_frames, iterations,
                                "random" if sample_random_frames else "uniform")
    rows = model_utils.FrameRows(
        frames, mask, model_utils.packing_enabled(frame_packing, frames.shape[1]))
    clusters = self._cluster_layer(rows, cluster_size, add_batch_norm, is_training)
    pooled = self._pool(rows, clusters, pooling_method)

    hidden = model_utils.fully_connected(pooled, hidden_size, "hidden1",
                                         use_bias=not add_batch_norm)
    if add_batch_norm:
      hidden = model_utils.batch_norm(hidden, is_training, "hidden1_bn")
    representation = tf.nn.relu6(hidden)
    return classify(representation, vocab_size, is_training, classifier,
                    classifier_params)

  @staticmethod
  def _sample(model_input, num_frames, iterations, strategy):
    """-> (frames [B, T', F], mask [B, T'] float, or None when every frame is real).

    Sampling `iterations` of n < iterations real frames only repeats frames, so when
    the static T is at most `iterations` (the k-frame student) all real frames are used
    with masked pooling: the same max pool with less work (an average pool then weighs
    every real frame once instead of by how often it was drawn).
    """
    max_frames = model_input.shape[1]
    if not iterations or (max_frames is not None and max_frames <= iterations):
      return model_input, model_utils.frame_mask(num_frames, tf.shape(model_input)[1])
    if max_frames is None:
      # select_frames needs at least `iterations` frames; it only picks real ones.
      shortfall = tf.maximum(iterations - tf.shape(model_input)[1], 0)
      model_input = tf.pad(model_input, [[0, 0], [0, shortfall], [0, 0]])
    frames, _ = frame_selection.select_frames(
        model_input, num_frames, iterations, strategy,
        seed=model_utils.stable_seed(tf1.get_default_graph().get_name_scope() +
                                     "/sample_frames"))
    return frames, None

  @staticmethod
  def _cluster_layer(rows, cluster_size, add_batch_norm, is_training):
    """FrameRows -> relu6 cluster activations per row [M, C], as one matmul."""
    activation = rows.rows
    if add_batch_norm:
      activation = model_utils.batch_norm(activation, is_training, "input_bn",
                                          mask=rows.row_mask)
    activation = model_utils.fully_connected(activation, cluster_size, "cluster",
                                             use_bias=not add_batch_norm)
    if add_batch_norm:
      activation = model_utils.batch_norm(activation, is_training, "cluster_bn",
                                          mask=rows.row_mask)
    return tf.nn.relu6(activation)

  @staticmethod
  def _pool(rows, clusters, pooling_method):
    """Max or average of each video's real-frame rows: [M, C] -> [B, C]."""
    if rows.packed:
      pool = (tf.math.unsorted_segment_max if pooling_method == "max"
              else tf.math.unsorted_segment_mean)
      return pool(clusters, rows.segment_ids, num_segments=rows.batch_size)
    padded = rows.to_padded(clusters)
    if rows.row_mask is None:  # sampled: every frame is real
      return (tf.reduce_max if pooling_method == "max" else tf.reduce_mean)(padded, 1)
    mask = tf.reshape(tf.cast(rows.row_mask, padded.dtype), tf.shape(padded)[:2])
    return (masked_max if pooling_method == "max" else masked_mean)(padded, mask)


@registry.frame_level_model(
    registry.Hyperparameter("lstm_cells", "Number of LSTM cells.", arg="cells",
                            lower_bound=1),
    registry.Hyperparameter("lstm_layers", "Number of LSTM layers.", arg="layers",
                            lower_bound=1))
class LstmModel(model_utils.BaseModel):
  """A stack of LSTMs over the real frames; the top layer's final state is classified."""

  def create_model(self, model_input, vocab_size, num_frames, is_training, cells=1024,
                   layers=2, classifier="LogisticModel", **classifier_params):
    """Builds the model (defaults: --lstm_cells, --lstm_layers).

    Args:
      model_input: [B, T, F] float frames, padded beyond num_frames.
      num_frames: [B] int real frames per video.
    Returns:
      {"predictions": [B, vocab_size], "logits" (LogisticModel only),
       "representation": [B, cells] the top layer's state after the last real frame}.
    """
    if layers < 1:
      raise cli.UsageError("--lstm_layers must be >= 1, got %d" % layers)
    representation = _stacked_lstm(model_input, num_frames, cells, layers, "lstm")
    return classify(representation, vocab_size, is_training, classifier,
                    classifier_params)


def netvlad(frames, mask, cluster_size, add_batch_norm, is_training, packed=False):
  """Learnable NetVLAD of one modality (variables in the current scope).

  a = softmax_K(BN(x W)) * mask, vlad[d, k] = sum_t a_tk (x_td - c_dk), L2-normalized
  over d per cluster, flattened, L2-normalized.

  Args:
    frames: [B, T, D] float, padded beyond the mask.
    mask: [B, T] float, 1 for real frames.
    cluster_size: K.
    packed: run the per-frame layers on the real frames only (model_utils.FrameRows).
  Returns:
    [B, K*D] float.
  """
  feature_size = int(frames.shape[-1])
  rows = model_utils.FrameRows(frames, mask, packed)
  x = rows.rows
  if add_batch_norm:
    x = model_utils.batch_norm(x, is_training, "input_bn", mask=rows.row_mask)
  logits = model_utils.fully_connected(x, cluster_size, "cluster",
                                       use_bias=not add_batch_norm)
  if add_batch_norm:
    logits = model_utils.batch_norm(logits, is_training, "cluster_bn",
                                    mask=rows.row_mask)
  assignment = tf.nn.softmax(logits, axis=-1)
  if rows.row_mask is not None:
    # tf.where, not a product: padded frames may hold anything, even inf.
    real = rows.row_mask[:, None]
    assignment = tf.where(real, assignment, tf.zeros_like(assignment))
    x = tf.where(real, x, tf.zeros_like(x))
  assignment = rows.to_padded(assignment)  # [B, T, K]
  x = rows.to_padded(x)  # [B, T, D]
  centers = tf1.get_variable(
      "cluster_centers", [1, feature_size, cluster_size],
      initializer=model_utils.truncated_normal(feature_size ** -0.5, "cluster_centers"))
  weighted_sum = tf.matmul(x, assignment, transpose_a=True)  # [B, D, K]
  vlad = weighted_sum - tf.reduce_sum(assignment, axis=1, keepdims=True) * centers
  vlad = tf.nn.l2_normalize(vlad, axis=1)
  vlad = tf.reshape(vlad, [-1, feature_size * cluster_size])
  return tf.nn.l2_normalize(vlad, axis=1)


@registry.frame_level_model(
    registry.Hyperparameter("netvlad_cluster_size", "Number of NetVLAD clusters of the "
                            "first modality (the others get half).", arg="cluster_size",
                            lower_bound=1),
    registry.Hyperparameter("netvlad_hidden_size", "Number of units in the NetVLAD "
                            "hidden layer.", arg="hidden_size", lower_bound=1),
    registry.Hyperparameter("netvlad_add_batch_norm", "Adds batch normalization to the "
                            "NetVLAD model.", arg="add_batch_norm"),
    registry.Hyperparameter("gating", "Context gating after the NetVLAD hidden layer."))
class NetVLADModel(model_utils.BaseModel):
  """NetVLAD per modality -> hidden FC + BN + relu6 -> context gating -> classifier."""

  def create_model(self, model_input, vocab_size, num_frames, is_training,
                   feature_sizes=(1024, 128), cluster_size=64, hidden_size=1024,
                   add_batch_norm=True, gating=True, classifier="LogisticModel",
                   frame_packing="auto", **classifier_params):
    """Builds the model (defaults: --feature_sizes, --netvlad_*, --gating).

    Args:
      model_input: [B, T, sum(feature_sizes)] float frames, padded beyond num_frames.
      num_frames: [B] int real frames per video.
      feature_sizes: per-modality widths; the first modality gets K clusters, the
        others K/2.
    Returns:
      {"predictions": [B, vocab_size], "logits" (LogisticModel only),
       "representation": [B, hidden_size] the (gated) hidden vector}.
    """
    mask = model_utils.frame_mask(num_frames, tf.shape(model_input)[1])
    packed = model_utils.packing_enabled(frame_packing, model_input.shape[1])
    vlads = []
    start = 0
    for i, (name, size) in enumerate(zip(_branch_names(len(feature_sizes)),
                                         feature_sizes)):
      with tf1.variable_scope("%s_netvlad" % name):
        vlads.append(netvlad(model_input[:, :, start:start + size], mask,
                             cluster_size if i == 0 else max(cluster_size // 2, 1),
                             add_batch_norm, is_training, packed))
      start += size
    vlad = tf.concat(vlads, axis=1) if len(vlads) > 1 else vlads[0]

    hidden = model_utils.fully_connected(vlad, hidden_size, "hidden1",
                                         use_bias=not add_batch_norm)
    if add_batch_norm:
      hidden = model_utils.batch_norm(hidden, is_training, "hidden1_bn")
    representation = tf.nn.relu6(hidden)
    if gating:
      representation = model_utils.context_gating(
          representation, is_training, use_batch_norm=add_batch_norm)
    return classify(representation, vocab_size, is_training, classifier,
                    classifier_params)


@registry.frame_level_model(
    registry.Hyperparameter("hrnn_cells", "Number of LSTM cells of both HRNN levels.",
                            arg="cells", lower_bound=1),
    registry.Hyperparameter("hrnn_block_size", "Consecutive frames per HRNN block.",
                            arg="block_size", lower_bound=1))
class HRNNModel(model_utils.BaseModel):
  """Hierarchical RNN: a 2-layer LSTM inside blocks of frames, an LSTM over blocks.

  Frames are cut into blocks of S = min(--hrnn_block_size, T) consecutive frames (T
  padded up to a multiple of S). Every block of every video runs through the lower LSTM
  as one batch of sequences; the final states of the blocks holding real frames
  (ceil(num_frames / S) of them) feed the upper LSTM, whose final state is classified.
  """

  def create_model(self, model_input, vocab_size, num_frames, is_training, cells=1024,
                   block_size=15, block_layers=2, classifier="LogisticModel",
                   **classifier_params):
    """Builds the model (defaults: --hrnn_cells, --hrnn_block_size).

    Args:
      model_input: [B, T, F] float frames, padded beyond num_frames.
      num_frames: [B] int real frames per video.
      block_layers: LSTM layers of the lower (within-block) level.
    Returns:
      {"predictions": [B, vocab_size], "logits" (LogisticModel only),
       "representation": [B, cells] the upper LSTM's final state}.
    """
    if block_size < 1:
      raise cli.UsageError("--hrnn_block_size must be >= 1, got %d" % block_size)
    if model_input.shape[1] is not None:
      block_size = min(block_size, int(model_input.shape[1]))
    num_frames = tf.cast(num_frames, tf.int32)

    blocks, block_frames = self._split_blocks(model_input, num_frames, block_size)
    block_states = _stacked_lstm(blocks, tf.reshape(block_frames, [-1]), cells,
                                 block_layers, "block_lstm")
    block_states = tf.reshape(block_states, [tf.shape(model_input)[0], -1, cells])
    num_blocks = (num_frames + block_size - 1) // block_size
    _, representation = model_utils.lstm(block_states, num_blocks, cells, "video_lstm")
    return classify(representation, vocab_size, is_training, classifier,
                    classifier_params)

  @staticmethod
  def _split_blocks(frames, num_frames, block_size):
    """[B, T, F] -> (blocks [B*NB, S, F], real frames per block [B, NB]), NB = ceil(T/S)
    (T padded with zero frames up to NB*S)."""
    feature_size = int(frames.shape[-1])
    batch_size, max_frames = tf.shape(frames)[0], tf.shape(frames)[1]
    padding = (block_size - max_frames % block_size) % block_size
    frames = tf.pad(frames, [[0, 0], [0, padding], [0, 0]])
    num_blocks = (max_frames + padding) // block_size
    blocks = tf.reshape(frames, [batch_size * num_blocks, block_size, feature_size])
    starts = tf.range(num_blocks) * block_size
    block_frames = tf.clip_by_value(num_frames[:, None] - starts[None, :], 0, block_size)
    return blocks, block_frames


# Every frame-level model: those above and nextvlad.py's, in registration order.
MODELS = registry.FRAME_LEVEL_MODELS
