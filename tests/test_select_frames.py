"""k-frame selection: exact frame indices per strategy, edge cases of num_frames and k."""
import numpy as np
import pytest
import tensorflow as tf

import cli
import frame_selection

T = 300


def _select(num_frames, k, strategy, seed=1):
  """Runs select_frames on frames whose single feature is their own index."""
  num_frames = np.asarray(num_frames, np.int32)
  frames = np.tile(np.arange(T, dtype=np.float32)[None, :, None], [len(num_frames), 1, 1])
  # Padding must never be picked by a strategy that could avoid it: mark it with -1.
  frames[np.arange(T)[None, :] >= num_frames[:, None]] = -1
  with tf.Graph().as_default():
    out, new_n = frame_selection.select_frames(tf.constant(frames), tf.constant(num_frames), k,
                                       strategy, seed=seed)
    with tf.compat.v1.Session() as sess:
      selected, new_n = sess.run([out, new_n])
  return selected[:, :, 0].astype(int), new_n


def test_uniform_exact_indices():
  selected, n = _select([300, 100, 7, 2, 1], 6, "uniform")
  np.testing.assert_array_equal(selected, [
      [0, 50, 100, 150, 200, 250],
      [0, 16, 33, 50, 66, 83],
      [0, 1, 2, 3, 4, 5],
      [0, 0, 0, 1, 1, 1],
      [0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(n, [6] * 5)


def test_uniform_k_not_dividing_300_gives_exactly_k_frames():
  selected, n = _select([300, 299], 7, "uniform")
  assert selected.shape == (2, 7)
  np.testing.assert_array_equal(selected[0], [0, 42, 85, 128, 171, 214, 257])
  np.testing.assert_array_equal(selected[1], [j * 299 // 7 for j in range(7)])
  np.testing.assert_array_equal(n, [7, 7])


def test_padded_stride_reproduces_original_including_its_quirks():
  # k=7 does not divide 300: stride 42 gives 8 frames, as the original did.
  selected, n = _select([300, 100, 3], 7, "padded_stride")
  np.testing.assert_array_equal(selected[0], [0, 42, 84, 126, 168, 210, 252, 294])
  # Padded frames are selected (value -1 here) and masked through num_frames.
  np.testing.assert_array_equal(selected[1], [0, 42, 84, -1, -1, -1, -1, -1])
  np.testing.assert_array_equal(selected[2], [0, -1, -1, -1, -1, -1, -1, -1])
  np.testing.assert_array_equal(n, [8, 3, 1])


def test_first_middle_last_and_fml():
  first, _ = _select([300, 10], 6, "first")
  np.testing.assert_array_equal(first, [[0, 1, 2, 3, 4, 5]] * 2)
  last, _ = _select([300, 10], 6, "last")
  np.testing.assert_array_equal(last, [range(294, 300), range(4, 10)])
  middle, _ = _select([300, 10], 6, "middle")
  np.testing.assert_array_equal(middle, [range(147, 153), range(2, 8)])
  fml, _ = _select([300, 10], 6, "first_middle_last")
  np.testing.assert_array_equal(fml, [[0, 1, 149, 150, 298, 299], [0, 1, 4, 5, 8, 9]])
  # k=7: blocks 3, 2, 2.
  fml7, _ = _select([300, 7], 7, "first_middle_last")
  np.testing.assert_array_equal(fml7, [[0, 1, 2, 149, 150, 298, 299], range(7)])


def test_short_videos_fall_back_to_uniform_for_every_strategy():
  for strategy in ["first", "middle", "last", "first_middle_last", "random"]:
    selected, n = _select([4, 1], 6, strategy)
    np.testing.assert_array_equal(selected, [[0, 0, 1, 2, 2, 3], [0] * 6], strategy)
    np.testing.assert_array_equal(n, [6, 6])


def test_random_picks_distinct_real_frames_in_time_order():
  selected, _ = _select([300, 50, 6], 6, "random", seed=3)
  for row, n in zip(selected, [300, 50, 6]):
    assert list(row) == sorted(set(row)), row
    assert row.min() >= 0 and row.max() < n
  np.testing.assert_array_equal(selected[2], range(6))


@pytest.mark.parametrize("strategy", frame_selection.STRATEGIES)
def test_every_num_frames_and_k_stays_inside_real_frames(strategy):
  num_frames = np.arange(1, T + 1)
  for k in [1, 2, 6, 7, 30, 299, 300]:
    selected, n = _select(num_frames, k, strategy)
    if strategy == "padded_stride":
      stride = T // k
      assert selected.shape[1] == len(range(0, T, stride))
      np.testing.assert_array_equal(n, -(-num_frames // stride))
      # Exactly the first n columns are real frames.
      real = np.arange(selected.shape[1])[None, :] < n[:, None]
      assert (selected[real] >= 0).all() and (selected[~real] == -1).all()
    else:
      assert selected.shape == (T, k)
      np.testing.assert_array_equal(n, [k] * T)
      assert (selected >= 0).all(), (strategy, k)
      assert (selected < num_frames[:, None]).all()
      assert (np.diff(selected, axis=1) >= 0).all(), (strategy, k)


def test_bad_strategy_and_k_are_usage_errors():
  x = tf.zeros([2, T, 3])
  n = tf.constant([3, 4])
  with pytest.raises(cli.UsageError, match="--frame_sampling"):
    frame_selection.select_frames(x, n, 6, "sometimes")
  with pytest.raises(cli.UsageError, match="--k_frame"):
    frame_selection.select_frames(x, n, 301)
  with pytest.raises(cli.UsageError, match="--k_frame"):
    frame_selection.select_frames(x, n, 0)
