"""Gradient plumbing of the training graph: tower gradients averaged, then
clipped per tensor."""

import tensorflow as tf


def combine_gradients(tower_grads):
  """Averages per-tower gradient lists into one list of (gradient, variable).

  Args:
    tower_grads: one list of (gradient or None, variable) per tower, same variable order.
  Returns:
    list of (mean gradient, variable) for the variables that have a gradient.
  """
  combined = []
  for pairs in zip(*tower_grads):
    grads = [g for g, _ in pairs if g is not None]
    if not grads:
      continue
    variable = pairs[0][1]
    if len(grads) == 1:
      combined.append((grads[0], variable))
    else:
      combined.append((tf.add_n(grads) / float(len(grads)), variable))
  return combined


def clip_gradient_norms(gradients_to_variables, max_norm):
  """Clips each gradient tensor to L2 norm `max_norm` (per tensor, as the starter).

  Returns (clipped (gradient, variable) pairs, the L2 norm of each gradient before
  clipping): the norms are computed anyway, and a NaN or Inf in any gradient makes its
  norm non-finite, so callers check them instead of reading the gradients again.
  """
  clipped, norms = [], []
  for grad, var in gradients_to_variables:
    if grad is not None:
      values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
      norm = tf.norm(values)
      values = values * (max_norm / tf.maximum(norm, max_norm))
      norms.append(norm)
      grad = (tf.IndexedSlices(values, grad.indices, grad.dense_shape)
              if isinstance(grad, tf.IndexedSlices) else values)
    clipped.append((grad, var))
  return clipped, norms
