"""PCA scaling of rgb: the original's default, its numbers, and runs written without it."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import preprocessing
from tests import helpers

tf1 = tf.compat.v1


def test_pca_scaling_matches_the_original_formula():
  # The original: rgb = (dequantized - 4/512) * (sqrt(eigenvalue) + 1e-4); audio as is.
  eigenvalues = np.load(os.path.join(helpers.ROOT, "yt8m_pca", "eigenvals.npy")).ravel()
  assert eigenvalues.shape == (2048,)
  resolved = preprocessing.Preprocessing.from_eigenvalues(preprocessing.DEFAULT_EIGENVALS)
  scale = resolved.rgb_scale
  np.testing.assert_allclose(scale, np.sqrt(eigenvalues[:1024]) + 1e-4, rtol=1e-6)
  rng = np.random.RandomState(0)
  frames = rng.uniform(-2, 2, (2, 3, 1152)).astype(np.float32)
  frames[1, 2] = 0  # padding
  with tf.Graph().as_default():
    out = resolved.apply(tf.constant(frames), tf.constant([3, 2]))
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      got = sess.run(out)
  np.testing.assert_allclose(got[0, :, :1024], (frames[0, :, :1024] - 4 / 512) * scale,
                             rtol=1e-6)
  np.testing.assert_array_equal(got[:, :, 1024:], frames[:, :, 1024:])
  assert not got[1, 2].any()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return helpers.make_dataset(tmp_path_factory.mktemp("data"), train_videos=16,
                              validate_videos=4, min_frames=10, max_frames=30)


def _train(pattern, train_dir, *extra, check=True):
  return helpers.run_cli("train.py", ["--train_data_pattern=" + pattern,
                                      "--train_dir=" + train_dir, "--batch_size=4",
                                      "--export_model_steps=100"] +
                         helpers.TINY_MODEL + list(extra), check=check)


def _recorded(run_dir):
  return json.load(open(os.path.join(run_dir, "model_flags.json")))["preprocessing"]


def test_runs_written_without_pca_keep_working_with_their_command(data, tmp_path):
  train_pattern, _ = data
  base = str(tmp_path / "old")
  # A teacher trained before PCA became the default records "none".
  _train(train_pattern, base, "--max_steps=2", "--pca_eigenvals=")
  assert _recorded(base + "_teacher") == "none"
  # Its command without the flag resumes it as it was trained ...
  out = _train(train_pattern, base, "--max_steps=3").stdout
  assert "Starting at step 2 (resumed)" in out
  assert "Preprocessing: none (no PCA scaling), as recorded in" in out
  assert _recorded(base + "_teacher") == "none"
  # ... and a KD student of it follows its teacher.
  out = _train(train_pattern, base, "--max_steps=1", "--model_type=KD",
               "--k_frame=4").stdout
  assert "as the teacher %s_teacher/model.ckpt-3 was trained" % base in out
  assert _recorded(base + "_KD_k_4") == "none"
  reader = tf1.train.NewCheckpointReader(tf1.train.latest_checkpoint(base + "_KD_k_4"))
  assert not reader.has_tensor("input_preprocessing/rgb_scale")
  # Asking for PCA explicitly against that teacher is refused, naming the flag.
  failed = _train(train_pattern, base, "--max_steps=1", "--model_type=KD", "--k_frame=5",
                  "--pca_eigenvals=yt8m_pca/eigenvals.npy", check=False)
  assert failed.returncode == 2
  assert "trained without --pca_eigenvals" in helpers.user_error_line(failed)
  # So is resuming it with PCA asked for explicitly.
  failed = _train(train_pattern, base, "--max_steps=4",
                  "--pca_eigenvals=yt8m_pca/eigenvals.npy", check=False)
  assert failed.returncode == 2
  assert "--preprocessing: 'none' -> 'pca_eigenvals'" in helpers.user_error_line(failed)


def test_pca_flag_on_features_it_cannot_scale_is_refused(data, tmp_path):
  train_pattern, _ = data
  failed = _train(train_pattern, str(tmp_path / "audio"), "--max_steps=1",
                  "--feature_names=audio", "--feature_sizes=128",
                  "--pca_eigenvals=" + preprocessing.DEFAULT_EIGENVALS + "x", check=False)
  assert failed.returncode == 2
  assert "scales frame-level rgb features" in helpers.user_error_line(failed)
  # The default itself simply does not apply to them.
  _train(train_pattern, str(tmp_path / "audio"), "--max_steps=1", "--feature_names=audio",
         "--feature_sizes=128")
  assert _recorded(str(tmp_path / "audio_teacher")) == "none"
