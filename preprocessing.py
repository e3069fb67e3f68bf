"""Frame preprocessing between the reader and the model.

As the original KD code and the NeXtVLAD solution do, frame-level rgb features (the first
feature, named rgb, 1024 values) are shifted by the half-bucket bias and scaled per
dimension by sqrt(eigenvalue) + 1e-4 of the YouTube-8M PCA eigenvalues (audio is left
unchanged). The eigenvalues ship with this repository as `yt8m_pca/eigenvals.npy`, the
path the originals load; `--pca_eigenvals=` (empty) turns the scaling off, and other
features are never scaled. The scale lives in the graph as the variable
`input_preprocessing/rgb_scale`, so a checkpoint carries the preprocessing it was trained
with and eval, inference and exported models apply the same one without the .npy file.
"""

import dataclasses
import hashlib

import numpy as np
import tensorflow as tf

import cli
import file_io

tf1 = tf.compat.v1
DEFAULT_EIGENVALS = "yt8m_pca/eigenvals.npy"  # the --pca_eigenvals default

PCA = "pca_eigenvals"
NONE = "none"
RGB_BIAS = 4.0 / 512.0
RGB_NAME, RGB_SIZE = "rgb", 1024
# The scale's variable, as a checkpoint names it.
SCALE_VARIABLE = "input_preprocessing/rgb_scale"


def load_rgb_scale(path, rgb_size=RGB_SIZE):
  """Reads the eigenvalue file -> float32 [rgb_size] scale sqrt(eigenvalue) + 1e-4.

  Raises:
    UsageError naming --pca_eigenvals for a missing or malformed file.
  """
  resolved = file_io.shipped_path(path)
  if not tf.io.gfile.exists(resolved):
    raise cli.UsageError("--pca_eigenvals=%s does not exist" % path)
  try:
    with tf.io.gfile.GFile(resolved, "rb") as f:
      eigenvalues = np.load(f).astype(np.float64).reshape(-1)
  except Exception as e:  # numpy raises several types for a bad file
    raise cli.UsageError("--pca_eigenvals=%s is not a .npy array: %s" % (path, e))
  if eigenvalues.size < rgb_size:
    raise cli.UsageError("--pca_eigenvals=%s needs at least %d values, has %d"
                         % (path, rgb_size, eigenvalues.size))
  if not np.isfinite(eigenvalues[:rgb_size]).all():
    raise cli.UsageError("--pca_eigenvals=%s holds NaN or Inf values" % path)
  if (eigenvalues[:rgb_size] < 0).any():
    raise cli.UsageError("--pca_eigenvals=%s holds negative eigenvalues" % path)
  return (np.sqrt(eigenvalues[:rgb_size]) + 1e-4).astype(np.float32)


def scales(frame_features, feature_names, feature_sizes):
  """Whether PCA scaling applies to these features: frame-level, rgb (1024) first."""
  return bool(frame_features) and (feature_names[0], feature_sizes[0]) == (RGB_NAME,
                                                                           RGB_SIZE)


@dataclasses.dataclass(frozen=True)
class Preprocessing(object):
  """What happens to frames between the reader and the model, resolved once.

  kind: PCA or NONE (what model_flags.json records).
  rgb_scale: numpy float32 [1024] when the scale was loaded from an eigenvalue file
    (training: the initial value of the scale variable); None when its values come
    from a checkpoint (eval, inference, export: the variable is restored).
  scale_sha256: the scale's digest (teacher-cache fingerprints), or None.
  source: where it was resolved from (a flag or a file), for messages.
  """
  kind: str = NONE
  rgb_scale: object = dataclasses.field(default=None, compare=False, repr=False)
  scale_sha256: str = None
  source: str = dataclasses.field(default="", compare=False)

  def __post_init__(self):
    if self.kind not in (PCA, NONE):
      raise cli.UsageError("%sunknown preprocessing %r" % (
          self.source + ": " if self.source else "", self.kind))

  @classmethod
  def from_eigenvalues(cls, path):
    """PCA scaling with the scale of the eigenvalue file `path` (--pca_eigenvals)."""
    scale = load_rgb_scale(path)
    return cls(PCA, scale, hashlib.sha256(scale.tobytes()).hexdigest(),
               "--pca_eigenvals=" + path)

  def apply(self, frames, num_frames, rgb_size=RGB_SIZE):
    """Applies this preprocessing to dequantized frames.

    Args:
      frames: [B, T, F] float32, rgb in the first rgb_size columns, padding rows 0.
      num_frames: [B] int32.
    Returns:
      [B, T, F] float32, padding rows still 0. With PCA the scale is the variable
      input_preprocessing/rgb_scale (one per graph, shared by every role), initialized
      from rgb_scale when known, else restored from a checkpoint.
    """
    if self.kind == NONE:
      return frames
    with tf1.variable_scope("input_preprocessing", reuse=tf1.AUTO_REUSE):
      initializer = (tf1.zeros_initializer() if self.rgb_scale is None
                     else tf1.constant_initializer(self.rgb_scale))
      scale = tf1.get_variable("rgb_scale", [rgb_size], initializer=initializer,
                               trainable=False)
    rgb = (frames[:, :, :rgb_size] - RGB_BIAS) * scale
    mask = tf.sequence_mask(num_frames, tf.shape(frames)[1], dtype=frames.dtype)
    rgb = rgb * mask[:, :, None]
    return tf.concat([rgb, frames[:, :, rgb_size:]], axis=2)
