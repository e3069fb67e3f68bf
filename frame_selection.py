"""Which k frames of a video a student sees (--frame_sampling, --k_frame).

The paper's student sees k frames spread uniformly over the video; its baselines pick
them at random, at the start, middle or end, or at all three; the KD write-up strided
over the padded tensor (padded_stride).
"""

import tensorflow as tf

import cli

STRATEGIES = ("uniform", "padded_stride", "random", "first", "middle", "last",
              "first_middle_last")


def _uniform_indices(num_frames, k):
  """[B] frame counts -> [B, k] indices floor(j * n / k): every (n/k)-th frame from 0."""
  steps = tf.range(k, dtype=tf.int32)[None, :]
  return (steps * num_frames[:, None]) // k


def select_frames(model_input, num_frames, k, strategy="uniform", seed=None,
                  video_ids=None):
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
    video_ids: [B] string; given, `random` picks a fixed set of frames per video (see
      frame_indices), as inference does.
  Returns:
    (frames [B, k', F], new num_frames [B] int32); k' = k except for padded_stride.
  """
  max_frames = model_input.shape[1]
  if max_frames is None:
    max_frames = tf.shape(model_input)[1]
  indices, new_num_frames = frame_indices(num_frames, k, strategy, max_frames, seed,
                                          video_ids)
  return tf.gather(model_input, indices, batch_dims=1), new_num_frames


def frame_indices(num_frames, k, strategy, max_frames, seed=None, video_ids=None):
  """Which frames select_frames keeps, from the frame counts alone.

  The reader uses this to decode only the frames a student sees.

  Args:
    num_frames: [B] int32 real frames per video, 1..max_frames.
    k, strategy, seed: see select_frames.
    max_frames: T, the padded length (a Python int; a scalar tensor is allowed for
      every strategy but padded_stride).
    video_ids: [B] string or None. For `random`: None draws from a stateful op
      (training: other frames at every step, reproducible with a graph seed); given,
      the scores come from a hash of (video id, frame, seed), so a video gets the same
      frames in every run and every batch (inference).
  Returns:
    (indices [B, k'] int32 in 0..max_frames-1, new num_frames [B] int32). Indices at
    or beyond a video's num_frames occur only for padded_stride (its padding frames).
  """
  if strategy not in STRATEGIES:
    raise cli.UsageError("--frame_sampling must be one of %s, got %r"
                         % (", ".join(STRATEGIES), strategy))
  if isinstance(max_frames, int) and not 1 <= k <= max_frames:
    raise cli.UsageError("--k_frame must be in 1..%d, got %d" % (max_frames, k))
  num_frames = tf.cast(num_frames, tf.int32)
  if strategy == "padded_stride":
    stride = max_frames // k
    picked = tf.range(0, max_frames, stride, dtype=tf.int32)
    indices = tf.tile(picked[None, :], [tf.shape(num_frames)[0], 1])
    return indices, (num_frames + stride - 1) // stride
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
    shape = tf.stack([tf.shape(num_frames)[0], max_frames])
    scores = (tf.random.uniform(shape, seed=seed) if video_ids is None
              else _hashed_scores(video_ids, max_frames, seed or 0))
    is_real = tf.sequence_mask(num_frames, max_frames)
    scores = tf.where(is_real, scores, -tf.ones_like(scores))
    _, picked = tf.math.top_k(scores, k=k, sorted=False)
    indices = tf.sort(picked, axis=1)
  indices = tf.where((num_frames >= k)[:, None], indices, uniform)
  return indices, tf.fill(tf.shape(num_frames), k)


def selected_length(k, strategy, max_frames):
  """k', the frames select_frames keeps per video: k, or for padded_stride
  ceil(max_frames / (max_frames // k))."""
  if strategy == "padded_stride":
    stride = max_frames // k
    return (max_frames + stride - 1) // stride
  return k


_HASH_MODULUS = 2 ** 31 - 1


def _hashed_scores(video_ids, length, seed):
  """[B] ids -> [B, length] float32 in [0, 1): a fixed pseudo-random number per
  (video id, frame, seed). Integer mixing in int64 with every product below 2^62."""
  video = tf.strings.to_hash_bucket_fast(video_ids, _HASH_MODULUS)[:, None]
  frame = tf.range(length, dtype=tf.int64)[None, :]
  x = tf.math.floormod(video * 48271 + (frame + 1) * 69621 + seed % _HASH_MODULUS,
                       _HASH_MODULUS)
  for salt in (12345, 67890, 13579):
    x = tf.math.floormod(x * 48271 + salt, _HASH_MODULUS)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(11, tf.int64)))
  return tf.cast(x, tf.float32) / float(_HASH_MODULUS)


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
