"""Which k frames of a video a student sees (--frame_sampling, --k_frame).

The paper's student sees k frames spread uniformly over the video; its baselines pick
them at random, at the start, middle or end, or at all three; the KD write-up strided
over the padded tensor (padded_stride).
"""

import tensorflow as tf

import utils

STRATEGIES = ("uniform", "padded_stride", "random", "first", "middle", "last",
              "first_middle_last")


def _uniform_indices(num_frames, k):
  """[B] frame counts -> [B, k] indices floor(j * n / k): every (n/k)-th frame from 0."""
  steps = tf.range(k, dtype=tf.int32)[None, :]
  return (steps * num_frames[:, None]) // k


def select_frames(model_input, num_frames, k, strategy="uniform", seed=None):
  """Picks k frames of each video.

  Args:
    model_input: [B, T, F] frames (any dtype), padded beyond num_frames.
    num_frames: [B] int32 real frames per video, 1..T.
    k: frames to keep, 1..T.
    strategy: one of STRATEGIES.
      uniform: frames floor(j*n/k), j = 0..k-1: exactly k frames spread over the real
        frames, repeating frames when n < k (the default).
      padded_stride: the original KD write-up, x[:, 0:T:T//k] over the padded tensor;
        gives ceil(T / (T//k)) frames, padded ones masked through the new num_frames.
      random: k distinct real frames at random, in time order.
      first / middle / last: k consecutive real frames at the start / centre / end.
      first_middle_last: about k/3 consecutive frames at each of start, centre and end.
      For n < k every strategy but padded_stride falls back to uniform (all real
      frames, repeated).
    seed: op seed for `random`.
  Returns:
    (frames [B, k', F], new num_frames [B] int32); k' = k except for padded_stride.
  """
  if strategy not in STRATEGIES:
    raise utils.UsageError("--frame_sampling must be one of %s, got %r"
                           % (", ".join(STRATEGIES), strategy))
  max_frames = model_input.shape[1]
  if max_frames is not None and not 1 <= k <= max_frames:
    raise utils.UsageError("--k_frame must be in 1..%d, got %d" % (max_frames, k))
  num_frames = tf.cast(num_frames, tf.int32)
  if strategy == "padded_stride":
    stride = max_frames // k
    selected = model_input[:, 0:max_frames:stride]
    new_num_frames = (num_frames + stride - 1) // stride
    return selected, new_num_frames
  uniform = _uniform_indices(num_frames, k)
  steps = tf.range(k, dtype=tf.int32)[None, :]
  if strategy == "uniform":
    indices = uniform
  elif strategy == "first":
    indices = steps + 0 * num_frames[:, None]
  elif strategy == "last":
    indices = num_frames[:, None] - k + steps
  elif strategy == "middle":
    indices = (num_frames[:, None] - k) // 2 + steps
  elif strategy == "first_middle_last":
    indices = _first_middle_last_indices(num_frames, k)
  else:  # random
    scores = tf.random.uniform(tf.shape(model_input)[:2], seed=seed)
    is_real = tf.sequence_mask(num_frames, tf.shape(model_input)[1])
    scores = tf.where(is_real, scores, -tf.ones_like(scores))
    _, picked = tf.math.top_k(scores, k=k, sorted=False)
    indices = tf.sort(picked, axis=1)
  indices = tf.where((num_frames >= k)[:, None], indices, uniform)
  selected = tf.gather(model_input, indices, batch_dims=1)
  return selected, tf.fill(tf.shape(num_frames), k)


def _first_middle_last_indices(num_frames, k):
  """[B] frame counts (>= k) -> [B, k]: blocks of sizes a, b, c (a >= b >= c, sum k)."""
  a = k // 3 + (1 if k % 3 > 0 else 0)
  b = k // 3 + (1 if k % 3 > 1 else 0)
  c = k // 3
  n = num_frames[:, None]
  middle_start = tf.maximum(a, tf.minimum((n - b) // 2, n - c - b))
  first = tf.range(a, dtype=tf.int32)[None, :] + 0 * n
  middle = middle_start + tf.range(b, dtype=tf.int32)[None, :]
  last = n - c + tf.range(c, dtype=tf.int32)[None, :]
  return tf.concat([first, middle, last], axis=1)
