"""Batch-norm moving averages updated by towers (or workers) that read them at once.

Towers and asynchronous workers update the same moving_mean / moving_variance in the
same step; each update's new value may be computed from a read taken before another
tower wrote. model_utils.batch_norm assigns a convex combination of that read and the
batch moment, so a stale read loses an update at worst; the update it replaced,
`moving.assign_sub((moving - batch_moment) * rate)`, applied a delta computed from the
stale read to the value another tower had just written, and with the debiased rates
near 1 of the first steps drove the variance negative (NaN at inference).

The race is reproduced deterministically: in graph mode any tensor can be fed, so both
towers' updates run with the read of the moving average they are computed from fed
with the same stale value (as if both had read it before either wrote), one after the
other.
"""
import numpy as np
import tensorflow as tf

import model_utils

tf1 = tf.compat.v1
CHANNELS = 3


def _ancestors(tensor):
  """The ops `tensor` is computed from (itself included), through data and control
  inputs."""
  seen, stack = set(), [tensor.op]
  while stack:
    op = stack.pop()
    if op not in seen:
      seen.add(op)
      stack.extend(t.op for t in op.inputs)
      stack.extend(op.control_inputs)
  return seen


def _reads_of(variable, ops):
  """Among `ops`, the outputs that read `variable`: ReadVariableOp of its handle
  (resource variables) or the identity of its ref (ref variables)."""
  return [op.outputs[0] for op in ops
          if op.type in ("ReadVariableOp", "Identity") and op.inputs and
          op.inputs[0].op is variable.op]


def _two_towers(x1, x2, decay):
  """Two calls of batch_norm sharing one set of variables, as towers do; returns
  ({"mean": variable, "variance": variable},
   [tower 1's updates, tower 2's updates]), each update a
   (variable name, assign op, [reads of its variable its value is computed from])."""
  with tf1.variable_scope("towers", reuse=tf1.AUTO_REUSE):
    model_utils.batch_norm(x1, True, "bn", decay=decay)
    model_utils.batch_norm(x2, True, "bn", decay=decay)
  with tf1.variable_scope("towers/bn", reuse=True):
    variables = {"mean": tf1.get_variable("moving_mean"),
                 "variance": tf1.get_variable("moving_variance")}
  towers = [[], []]
  for update in tf1.get_collection(tf1.GraphKeys.UPDATE_OPS):
    op = update.op
    target, value = op.inputs[0], op.inputs[1]
    name = [n for n, v in variables.items() if target.op is v.op]
    assert len(name) == 1, "an update of no moving average: %s" % op.name
    ancestors = _ancestors(value)
    tower = [x.op in ancestors for x in (x1, x2)]
    assert sum(tower) == 1, op.name
    reads = _reads_of(variables[name[0]], ancestors)
    # Without a read to feed, the race cannot be staged here: the update would then be
    # computed some other way (e.g. one fused op), and this test must be rewritten.
    assert reads, "%s's value reads no %s" % (op.name, name[0])
    towers[tower.index(True)].append((name[0], op, reads))
  assert [sorted(u[0] for u in t) for t in towers] == [["mean", "variance"]] * 2
  return variables, towers


def _run_towers(batches, decay, stale=None):
  """Builds two towers on `batches` ([B, CHANNELS] each), runs tower 1's updates, then
  tower 2's; with `stale` ({"mean", "variance": values}) every update's read of its
  moving average is fed that value. Returns the moving averages (initial, after tower
  1, after tower 2), each {"mean", "variance": values}."""
  with tf.Graph().as_default():
    x1 = tf1.placeholder(tf.float32, [None, CHANNELS])
    x2 = tf1.placeholder(tf.float32, [None, CHANNELS])
    variables, towers = _two_towers(x1, x2, decay)
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      states = [sess.run(variables)]
      for tower, (x, batch) in enumerate(zip((x1, x2), batches)):
        feed = {x: batch}
        for name, _, reads in towers[tower]:
          if stale is not None:
            feed.update({read: stale[name] for read in reads})
        sess.run([op for _, op, _ in towers[tower]], feed)
        states.append(sess.run(variables))
  return states


def test_towers_updating_from_one_stale_read_keep_a_convex_combination():
  """Both towers read the moving averages at their initial values (mean 0, variance
  1), then write one after the other: the moving variance must end a weighted mean of
  that stale value and the batch variances (here exactly tower 2's update of the stale
  value: tower 1's update is lost), never below zero."""
  decay = model_utils.BATCH_NORM_DECAY
  random = np.random.RandomState(0)
  # Small batch variances: a delta computed from the stale 1.0 is then about -rate.
  batches = [random.normal(5.0, 0.05, (16, CHANNELS)).astype(np.float32),
             random.normal(-3.0, 0.1, (16, CHANNELS)).astype(np.float32)]
  stale = {"mean": np.zeros(CHANNELS, np.float32),
           "variance": np.ones(CHANNELS, np.float32)}
  initial, after_first, final = _run_towers(batches, decay, stale)
  for name in stale:
    np.testing.assert_array_equal(initial[name], stale[name])
  means = [b.mean(0) for b in batches]
  variances = [b.var(0) for b in batches]
  # The first debiased update (rate 1) copies the batch moments. (The rates are
  # float32: 1 - pow(0.999, 1) is 5e-5 off 1 - 0.999, hence atol.)
  np.testing.assert_allclose(after_first["variance"], variances[0], atol=1e-4)
  np.testing.assert_allclose(after_first["mean"], means[0], rtol=1e-4)
  assert np.all(final["variance"] >= 0), final["variance"]
  for name, moments in (("variance", variances), ("mean", means)):
    candidates = np.stack([stale[name]] + moments)
    low, high = candidates.min(0), candidates.max(0)
    assert np.all(final[name] >= low - 1e-6) and np.all(final[name] <= high + 1e-6), (
        name, final[name], low, high)
  # The second update (count 2, rate (1 - decay) / (1 - decay**2)) of the stale value.
  rate = (1.0 - decay) / (1.0 - decay ** 2)
  for name, moments in (("variance", variances), ("mean", means)):
    np.testing.assert_allclose(final[name], stale[name] * (1 - rate) + moments[1] * rate,
                               rtol=1e-4, atol=1e-4, err_msg=name)


def test_towers_update_in_turn_like_two_consecutive_batches():
  """Without a stale read (tower 2 reads what tower 1 wrote), the two towers' updates
  are the exact debiased mean of their batch moments, as two steps of one tower."""
  decay = 0.9
  random = np.random.RandomState(1)
  batches = [random.normal(i, 1 + i, (8, CHANNELS)).astype(np.float32) for i in (1, 2)]
  final = _run_towers(batches, decay)[-1]
  weights = np.array([decay, 1.0]) / (1.0 + decay)
  np.testing.assert_allclose(final["variance"], sum(
      w * b.var(0) for w, b in zip(weights, batches)), rtol=1e-4)
  np.testing.assert_allclose(final["mean"], sum(
      w * b.mean(0) for w, b in zip(weights, batches)), rtol=1e-4)
