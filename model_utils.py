"""Graph-mode layers built from tf.compat.v1.get_variable and tf.nn ops.

No Keras, no contrib, no tf_slim: variable names are fixed by the scopes below
(`<scope>/weights`, `<scope>/biases`, `<scope>/beta`, `<scope>/gamma`,
`<scope>/moving_mean`, `<scope>/moving_variance`), so a checkpoint written by one run
restores in another. Batch-norm moving averages are updated by ops in the UPDATE_OPS
collection, which the training loop runs with every step.
"""

import contextlib
import hashlib

import tensorflow as tf

import cli

tf1 = tf.compat.v1
PACK_ABOVE_FRAMES = 32
FRAME_PACKINGS = ("auto", "always", "never")  # --frame_packing

BATCH_NORM_DECAY = 0.999
BATCH_NORM_EPSILON = 1e-3
# Collection of the ops that fill the column copies fully_connected(columns=...) reads:
# variables outside the global and local collections, filled (column_caches_initializer)
# only after the weights they copy are restored.
COLUMN_CACHES = "column_caches"


class BaseModel(object):
  """Interface of every model: create_model(...) -> dict of output tensors.

  The dict has `predictions` [B, vocab_size] probabilities, `logits` [B, vocab_size]
  where the classifier defines them, and `representation` [B, H] (the vector fed to
  the classifier; L_rep compares it between teacher and student). In training a model
  may add the starter's `loss` (replaces the label loss of `predictions`),
  `regularization_loss` (added to the L2 terms) and `aux_predictions` (a list of
  [B, vocab_size], each adding its label loss); see kd_model.model_losses.
  """

  def create_model(self, model_input, vocab_size, num_frames, is_training, **unused):
    raise NotImplementedError()


def l2_regularizer(scale):
  """Returns f(w) = scale * sum(w**2) / 2 (the starter's slim.l2_regularizer), or None."""
  if not scale:
    return None
  return lambda weights: tf.multiply(scale, tf.nn.l2_loss(weights), name="l2_penalty")


def stable_seed(name):
  """The op seed of the random op called `name` (its variable or name scope path),
  when the graph has a seed (--seed), else None (drawn anew every run).

  Seeded by name, a variable starts from the same values, and a dropout draws the same
  masks, whatever else the graph holds: a KD student trained online (a teacher built
  before it) or offline (no teacher) starts and trains alike. TensorFlow's default op
  seeds count the ops created before, so any other op would change them.
  """
  if tf1.get_default_graph().seed is None:
    return None
  return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16) & 0x7FFFFFFF


def truncated_normal(stddev, name):
  """A truncated-normal initializer for the variable `name` of the current variable
  scope, seeded by its full name (stable_seed)."""
  scope = tf1.get_variable_scope().name
  return tf1.truncated_normal_initializer(
      stddev=stddev, seed=stable_seed((scope + "/" if scope else "") + name))


def variance_scaling_stddev(fan_in):
  """The truncated-normal stddev of slim's `variance_scaling_initializer()` defaults.

  factor 2.0, mode fan_in, not uniform: sqrt(1.3 * 2 / fan_in). The 1.3 makes up for the
  truncation at 2 stddev, so the weights' actual standard deviation is about
  sqrt(2 / fan_in). The NeXtVLAD solution and the KD code start every NeXtVLAD weight
  and the logistic classifier from it.
  """
  return (1.3 * 2.0 / fan_in) ** 0.5


def fully_connected(inputs, num_outputs, scope, use_bias=True, activation=None,
                    l2_penalty=0.0, stddev=None, penalize_biases=False, columns=None):
  """Dense layer over the last axis: [..., D] -> [..., num_outputs].

  Weights start from a truncated normal with stddev 1/sqrt(D) unless given (0: from
  zeros); biases from 0. l2_penalty regularizes the weights, and the biases too if
  penalize_biases. columns: None, or a list of output indices: the variables keep
  their full [D, num_outputs] shape (and names), but only these outputs are computed,
  in this order: [..., D] -> [..., len(columns)]. They are read from copies made once
  by column_caches_initializer(), to be run after the weights are restored (a
  gather per step cost about as much as the columns it saves).
  """
  input_size = int(inputs.shape[-1])
  if stddev is None:
    stddev = 1.0 / input_size ** 0.5
  with tf1.variable_scope(scope):
    weights = tf1.get_variable(
        "weights", [input_size, num_outputs],
        initializer=(truncated_normal(stddev, "weights") if stddev
                     else tf1.zeros_initializer()),
        regularizer=l2_regularizer(l2_penalty))
    if columns is not None:
      columns = tf.constant(columns, tf.int32)
      weights = _column_cache(tf.gather(weights, columns, axis=1), "weights_columns")
    if inputs.shape.ndims == 2:
      outputs = tf.matmul(inputs, weights)
    else:
      outputs = tf.tensordot(inputs, weights, axes=[[inputs.shape.ndims - 1], [0]])
    if use_bias:
      biases = tf1.get_variable(
          "biases", [num_outputs], initializer=tf1.zeros_initializer(),
          regularizer=l2_regularizer(l2_penalty) if penalize_biases else None)
      if columns is not None:
        biases = _column_cache(tf.gather(biases, columns), "biases_columns")
      outputs = tf.nn.bias_add(outputs, biases)
    if activation is not None:
      outputs = activation(outputs)
  return outputs


def _column_cache(columns, name):
  """A variable of no collection that holds `columns` (a tensor read from other
  variables) once the op it adds to COLUMN_CACHES has run; reading it before fails."""
  cache = tf1.Variable(tf.zeros(columns.shape, columns.dtype), trainable=False,
                       collections=[], name=name)
  tf1.add_to_collection(COLUMN_CACHES, cache.assign(columns).op)
  return cache


def column_caches_initializer():
  """The op that copies the columns every fully_connected(columns=...) of the default
  graph reads; run it after restoring (or initializing) the weights, never before."""
  return tf.group(*tf1.get_collection(COLUMN_CACHES), name="init_column_caches")


def _masked_moments(inputs, mask):
  """Mean and variance over every axis but the last, counting only mask == 1 entries.

  mask has the shape of inputs without its last axis (or None: every entry counts).
  """
  axes = list(range(inputs.shape.ndims - 1))
  if mask is None:
    return tf.nn.moments(inputs, axes)
  weights = tf.cast(mask, inputs.dtype)[..., None]
  count = tf.maximum(tf.reduce_sum(weights), 1.0)
  mean = tf.reduce_sum(inputs * weights, axes) / count
  variance = tf.reduce_sum(tf.square(inputs - mean) * weights, axes) / count
  return mean, variance


def _fused_batch_norm(inputs, beta, gamma, epsilon):
  """Training-mode batch norm of [..., C] in one fused kernel (and one for its gradient).

  Returns (outputs, batch mean, batch variance). The kernel normalizes with the biased
  variance but returns the unbiased one; the (n - 1) / n factor gives back the biased
  variance, the same moment _masked_moments computes.
  """
  channels = int(inputs.shape[-1])
  rows = tf.reshape(inputs, [-1, 1, 1, channels])
  outputs, mean, unbiased = tf1.nn.fused_batch_norm(
      rows, tf.ones([channels], inputs.dtype) if gamma is None else gamma,
      tf.zeros([channels], inputs.dtype) if beta is None else beta,
      epsilon=epsilon, is_training=True)
  n = tf.cast(tf.shape(rows)[0], unbiased.dtype)
  variance = unbiased * (n - 1.0) / tf.maximum(n, 1.0)
  return tf.reshape(outputs, tf.shape(inputs)), mean, variance


def batch_norm(inputs, is_training, scope, center=True, scale=True, mask=None,
               decay=BATCH_NORM_DECAY, epsilon=BATCH_NORM_EPSILON, activation=None):
  """Batch normalization over the last axis of `inputs` [..., C].

  Training: normalizes with the batch moments (of the entries where `mask` is 1, so
  padded frames never shift the statistics) and adds the moving-average updates to
  UPDATE_OPS. Inference: uses the moving averages and adds no update.

  The moving averages are zero-debiased: after t updates they are the exact
  exponentially weighted mean of the t batch moments (the first update copies the batch
  moments), so short runs do not evaluate with statistics still near their 0/1
  initial values.
  """
  channels = int(inputs.shape[-1])
  with tf1.variable_scope(scope):
    beta = gamma = None
    if center:
      beta = tf1.get_variable("beta", [channels], initializer=tf1.zeros_initializer())
    if scale:
      gamma = tf1.get_variable("gamma", [channels], initializer=tf1.ones_initializer())
    moving_collections = [tf1.GraphKeys.GLOBAL_VARIABLES,
                          tf1.GraphKeys.MOVING_AVERAGE_VARIABLES]
    moving_mean = tf1.get_variable("moving_mean", [channels], trainable=False,
                                   initializer=tf1.zeros_initializer(),
                                   collections=moving_collections)
    moving_variance = tf1.get_variable("moving_variance", [channels], trainable=False,
                                       initializer=tf1.ones_initializer(),
                                       collections=moving_collections)
    update_count = tf1.get_variable("update_count", [], dtype=tf.float32,
                                    trainable=False, initializer=tf1.zeros_initializer(),
                                    collections=moving_collections)
    if not is_training:
      outputs = tf.nn.batch_normalization(inputs, moving_mean, moving_variance, beta,
                                          gamma, epsilon)
    elif mask is None:
      outputs, mean, variance = _fused_batch_norm(inputs, beta, gamma, epsilon)
    else:
      mean, variance = _masked_moments(inputs, mask)
      outputs = tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, epsilon)
    if is_training:
      count = tf1.assign_add(update_count, 1.0)
      rate = (1.0 - decay) / (1.0 - tf.pow(decay, count))
      # Assigned as a convex combination, not subtracted: towers and distributed
      # workers update the same variable concurrently, and an assign_sub computed from
      # a stale read, at the early rates near 1 of the debiasing, drove the variance
      # negative (NaN at inference). A stale assign only loses one update.
      for moving, batch_moment in ((moving_mean, mean), (moving_variance, variance)):
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, tf1.assign(
            moving, moving * (1.0 - rate) + batch_moment * rate))
    if activation is not None:
      outputs = activation(outputs)
  return outputs


def dropout(inputs, rate, is_training):
  """Drops units with probability `rate` while training; identity at inference."""
  if not is_training or not rate:
    return inputs
  return tf.nn.dropout(inputs, rate=rate, seed=stable_seed(
      tf1.get_default_graph().get_name_scope() + "/dropout"))


def context_gating(inputs, is_training, scope="context_gating", use_batch_norm=True,
                   l2_penalty=0.0):
  """Context gating [B, D] -> [B, D]: x * sigmoid(BN(x W)) (or x W + b without BN)."""
  with tf1.variable_scope(scope):
    gates = fully_connected(inputs, int(inputs.shape[-1]), "gates",
                            use_bias=not use_batch_norm, l2_penalty=l2_penalty)
    if use_batch_norm:
      gates = batch_norm(gates, is_training, "gates_bn")
    return inputs * tf.sigmoid(gates)


def se_context_gating(inputs, reduction, is_training, scope="gating"):
  """Squeeze-and-excitation gating [B, H] -> [B, H] (NeXtVLAD's head).

  gates = sigmoid(relu(BN(x W1)) W2), W1: H -> H/reduction, W2: H/reduction -> H, both
  initialised as the NeXtVLAD solution does (variance_scaling_stddev).
  """
  hidden_size = int(inputs.shape[-1])
  squeezed_size = hidden_size // reduction
  with tf1.variable_scope(scope):
    gates = fully_connected(inputs, squeezed_size, "squeeze", use_bias=False,
                            stddev=variance_scaling_stddev(hidden_size))
    gates = batch_norm(gates, is_training, "squeeze_bn", activation=tf.nn.relu)
    gates = fully_connected(gates, hidden_size, "excite", use_bias=False,
                            stddev=variance_scaling_stddev(squeezed_size))
    return inputs * tf.sigmoid(gates)


def packing_enabled(frame_packing, max_frames):
  """Whether per-frame layers run on packed real frames.

  frame_packing: "always", "never", or "auto": pack when the frame axis is longer than
    PACK_ABOVE_FRAMES (teachers), keep the dense grid for k-frame students.
  max_frames: the static frame-axis length, or None when unknown.
  """
  if frame_packing not in FRAME_PACKINGS:
    raise cli.UsageError("--frame_packing must be auto, always or never, got %r"
                         % frame_packing)
  if frame_packing != "auto":
    return frame_packing == "always"
  return max_frames is None or max_frames > PACK_ABOVE_FRAMES


class FrameRows(object):
  """The per-frame rows of a padded batch, for layers applied to every frame.

  Padded: all B*T rows, with a row mask (padding rows are computed and then ignored).
  Packed: only the rows of real frames, gathered into one [M, F] matrix (M = sum of
  num_frames), so per-frame work is proportional to real frames; `to_padded` scatters
  results back to [B, T, C] with zeros at the padding. `row_mask` is None when every
  row is real (packed, or no mask given).
  """

  def __init__(self, frames, mask, packed):
    """frames [B, T, F], mask [B, T] (1/True for real frames; None: all real),
    packed: Python bool."""
    self.packed = packed and mask is not None
    self.batch_size = tf.shape(frames)[0]
    self.max_frames = tf.shape(frames)[1]
    if mask is None:
      self.rows = tf.reshape(frames, [-1, int(frames.shape[-1])])
      self.row_mask = None
      return
    real = tf.cast(mask, tf.bool)
    if self.packed:
      self.indices = tf.where(real)  # [M, 2] (video, frame), sorted by video
      self.rows = tf.gather_nd(frames, self.indices)
      self.row_mask = None
      self.segment_ids = self.indices[:, 0]
    else:
      self.rows = tf.reshape(frames, [-1, int(frames.shape[-1])])
      self.row_mask = tf.reshape(real, [-1])

  def to_padded(self, values):
    """Row values [M, C] -> [B, T, C] (zeros at padding when packed)."""
    channels = int(values.shape[-1])
    if self.packed:
      return tf.scatter_nd(self.indices, values,
                           tf.stack([tf.cast(self.batch_size, tf.int64),
                                     tf.cast(self.max_frames, tf.int64), channels]))
    return tf.reshape(values, [self.batch_size, self.max_frames, channels])

  def zero_padding(self, values):
    """Row values [M, C] with padding rows set to 0 (a no-op when every row is real)."""
    if self.row_mask is None:
      return values
    return values * tf.cast(self.row_mask, values.dtype)[:, None]


def masked_mean(frames, mask):
  """frames [B, T, D], mask [B, T] float 1/0 -> mean over real frames [B, D]."""
  total = tf.reduce_sum(tf.where(mask[:, :, None] > 0, frames, tf.zeros_like(frames)),
                        axis=1)
  return total / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)


def frame_mask(num_frames, max_frames, dtype=tf.float32):
  """[B] real frame counts -> [B, max_frames] mask, 1 for real frames, 0 for padding."""
  return tf.sequence_mask(num_frames, max_frames, dtype=dtype)


_UNROLLED = []  # non-empty inside unrolled_recurrence()


@contextlib.contextmanager
def unrolled_recurrence():
  """Within it, lstm builds its time loop unrolled when the time axis is static: the
  same variables and the same step ops, once per frame, instead of a tf.scan loop (which
  TensorFlow Lite's builtin ops cannot run with a dynamic batch; see tflite_export)."""
  _UNROLLED.append(True)
  try:
    yield
  finally:
    _UNROLLED.pop()


def lstm(inputs, num_frames, num_units, scope, forget_bias=1.0):
  """One LSTM layer over the real frames of each sequence.

  Variables: `<scope>/input/weights` [D, 4H], `<scope>/input/biases` [4H] and
  `<scope>/recurrent/weights` [H, 4H]; the 4H gate columns are ordered input,
  candidate, forget, output. `forget_bias` is added to the forget gate (not stored), as
  in the starter's BasicLSTMCell.

  The input projection of all frames is one [B*T, D] x [D, 4H] matmul; only the
  recurrent [B, H] x [H, 4H] product runs inside the time loop. The state of sequence b
  stops changing after num_frames[b] steps, so padded frames never reach it.

  Args:
    inputs: [B, T, D] float frames, padded beyond num_frames.
    num_frames: [B] int real frames per sequence (0 leaves the state at zero).
    num_units: H.
    scope: variable scope name.
  Returns:
    (outputs [B, T, H] hidden state after each step (frozen over padding),
     final_state_h [B, H] the hidden state after the last real frame).
  """
  input_size = int(inputs.shape[-1])
  batch_size, max_frames = tf.shape(inputs)[0], tf.shape(inputs)[1]
  with tf1.variable_scope(scope):
    projected = fully_connected(tf.reshape(inputs, [-1, input_size]), 4 * num_units,
                                "input")
    with tf1.variable_scope("recurrent"):
      recurrent_weights = tf1.get_variable(
          "weights", [num_units, 4 * num_units],
          initializer=truncated_normal(num_units ** -0.5, "weights"))
  projected = tf.transpose(tf.reshape(projected, [batch_size, max_frames, 4 * num_units]),
                           [1, 0, 2])  # time-major [T, B, 4H]
  is_real = tf.transpose(tf.sequence_mask(num_frames, max_frames))[:, :, None]

  def step(state, elements):
    cell, hidden = state
    projected_t, is_real_t = elements
    gates = projected_t + tf.matmul(hidden, recurrent_weights)
    in_gate, candidate, forget_gate, out_gate = tf.split(gates, 4, axis=1)
    new_cell = (tf.sigmoid(forget_gate + forget_bias) * cell +
                tf.sigmoid(in_gate) * tf.tanh(candidate))
    new_hidden = tf.sigmoid(out_gate) * tf.tanh(new_cell)
    return (tf.where(is_real_t, new_cell, cell), tf.where(is_real_t, new_hidden, hidden))

  zeros = tf.zeros(tf.stack([batch_size, num_units]), inputs.dtype)
  if _UNROLLED and inputs.shape[1] is not None:
    state, hiddens = (zeros, zeros), []
    for t in range(int(inputs.shape[1])):
      state = step(state, (projected[t], is_real[t]))
      hiddens.append(state[1])
    hiddens = tf.stack(hiddens)
  else:
    _, hiddens = tf.scan(step, (projected, is_real), initializer=(zeros, zeros))
  # The state froze after the last real frame, so the last step holds it.
  return tf.transpose(hiddens, [1, 0, 2]), hiddens[-1]
