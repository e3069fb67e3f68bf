"""The starter's helpers, under the starter's names: Dequantize and
Quantize (YouTube-8M's uint8 feature encoding) and
GetListOfFeatureNamesAndSizes (--feature_names, --feature_sizes)."""

import cli


def Dequantize(feat_vector, max_quantized_value=2, min_quantized_value=-2):
  """Maps uint8 bucket ids (0..255, any shape) back to floats in about [-2, 2].

  x = q * (max - min) / 255 + (max - min) / 512 + min: the half-bucket bias is part of
  the YouTube-8M formula. Works on numpy arrays and tensors alike.
  """
  quantized_range = max_quantized_value - min_quantized_value
  scalar = quantized_range / 255.0
  bias = (quantized_range / 512.0) + min_quantized_value
  return feat_vector * scalar + bias


def Quantize(features, max_quantized_value=2, min_quantized_value=-2):
  """Inverse of Dequantize up to rounding: floats -> uint8 numpy array (same shape)."""
  import numpy as np
  quantized_range = max_quantized_value - min_quantized_value
  clipped = np.clip(features, min_quantized_value, max_quantized_value)
  return np.round((clipped - min_quantized_value) * 255.0 / quantized_range).astype(np.uint8)


def GetListOfFeatureNamesAndSizes(feature_names, feature_sizes):
  """Parses `--feature_names="rgb,audio"` and `--feature_sizes="1024,128"`.

  Returns:
    (names, sizes): a list of str and a list of int of equal length.
  Raises:
    UsageError naming the flags when the lists differ in length or a size is bad.
  """
  names = [n.strip() for n in feature_names.split(",") if n.strip()]
  raw_sizes = [s.strip() for s in str(feature_sizes).split(",") if s.strip()]
  if not names:
    raise cli.UsageError("--feature_names is empty")
  if len(names) != len(raw_sizes):
    raise cli.UsageError(
        "--feature_names has %d entries (%s) but --feature_sizes has %d (%s); give one "
        "size per feature" % (len(names), ",".join(names), len(raw_sizes),
                              ",".join(raw_sizes)))
  sizes = []
  for name, size in zip(names, raw_sizes):
    try:
      value = int(size)
    except ValueError:
      value = 0
    if value <= 0:
      raise cli.UsageError(
          "--feature_sizes: size %r of feature %r is not a positive integer"
          % (size, name))
    sizes.append(value)
  if len(set(names)) != len(names):
    raise cli.UsageError("--feature_names lists a feature twice: %s" % ",".join(names))
  return names, sizes
