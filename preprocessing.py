"""Frame preprocessing between the reader and the model.

With `--pca_eigenvals` (the YouTube-8M PCA eigenvalues, `yt8m_pca/eigenvals.npy` from
Google's yt8m_pca.tgz, shape (2048, 1), first 1024 used) the rgb part is shifted by the
half-bucket bias and scaled per dimension by sqrt(eigenvalue) + 1e-4, as the NeXtVLAD
solution does; audio is left unchanged. Without it frames enter the model as
dequantized. The scale lives in the graph as the variable `input_preprocessing/rgb_scale`,
so a checkpoint carries the preprocessing it was trained with and eval, inference and
exported models apply the same one without the .npy file.
"""

import os

import numpy as np
import tensorflow as tf

import utils

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS
flags.DEFINE_string("pca_eigenvals", "",
                    "Path of yt8m_pca/eigenvals.npy (YouTube-8M PCA eigenvalues). When "
                    "given, rgb features are scaled by sqrt(eigenvalue) + 1e-4 before the "
                    "model (the NeXtVLAD recipe); empty: no scaling.")

PCA = "pca_eigenvals"
NONE = "none"
RGB_BIAS = 4.0 / 512.0


def load_rgb_scale(path, rgb_size=1024):
  """Reads the eigenvalue file -> float32 [rgb_size] scale sqrt(eigenvalue) + 1e-4.

  Raises:
    UsageError naming --pca_eigenvals for a missing or malformed file.
  """
  if not os.path.exists(path):
    raise utils.UsageError("--pca_eigenvals=%s does not exist" % path)
  try:
    eigenvalues = np.load(path).astype(np.float64).reshape(-1)
  except Exception as e:  # numpy raises several types for a bad file
    raise utils.UsageError("--pca_eigenvals=%s is not a .npy array: %s" % (path, e))
  if eigenvalues.size < rgb_size:
    raise utils.UsageError("--pca_eigenvals=%s needs at least %d values, has %d"
                           % (path, rgb_size, eigenvalues.size))
  if not np.isfinite(eigenvalues[:rgb_size]).all():
    raise utils.UsageError("--pca_eigenvals=%s holds NaN or Inf values" % path)
  if (eigenvalues[:rgb_size] < 0).any():
    raise utils.UsageError("--pca_eigenvals=%s holds negative eigenvalues" % path)
  return (np.sqrt(eigenvalues[:rgb_size]) + 1e-4).astype(np.float32)


def kind_from_flags():
  """The preprocessing the flags ask for: PCA or NONE."""
  return PCA if FLAGS.pca_eigenvals else NONE


def preprocess(frames, num_frames, kind, rgb_size=1024, training_scale=None):
  """Applies the preprocessing `kind` to dequantized frames.

  Args:
    frames: [B, T, F] float32, rgb in the first rgb_size columns, padding rows 0.
    num_frames: [B] int32.
    kind: PCA or NONE.
    training_scale: numpy [rgb_size] initial value of the scale variable (from
      load_rgb_scale) when training; None when the value comes from a checkpoint.
  Returns:
    [B, T, F] float32, padding rows still 0.
  """
  if kind == NONE:
    return frames
  if kind != PCA:
    raise utils.UsageError("unknown preprocessing %r in model_flags.json" % kind)
  with tf1.variable_scope("input_preprocessing", reuse=tf1.AUTO_REUSE):
    initializer = (tf1.zeros_initializer() if training_scale is None
                   else tf1.constant_initializer(training_scale))
    scale = tf1.get_variable("rgb_scale", [rgb_size], initializer=initializer,
                             trainable=False)
  rgb = (frames[:, :, :rgb_size] - RGB_BIAS) * scale
  mask = tf.sequence_mask(num_frames, tf.shape(frames)[1], dtype=frames.dtype)
  rgb = rgb * mask[:, :, None]
  return tf.concat([rgb, frames[:, :, rgb_size:]], axis=2)
