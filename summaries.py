"""TensorBoard scalars and the one-line evaluation summary, under the starter's
names."""

import tensorflow as tf

tf1 = tf.compat.v1


def MakeSummary(name, value):
  """Creates a tf.Summary proto with one scalar `value` under tag `name`."""
  summary = tf1.Summary()
  val = summary.value.add()
  val.tag = str(name)
  val.simple_value = float(value)
  return summary


def AddScalarSummaries(summary_writer, scalars, global_step):
  """Writes a dict {tag: float} of scalars for `global_step` and flushes."""
  for tag, value in sorted(scalars.items()):
    summary_writer.add_summary(MakeSummary(tag, value), global_step)
  summary_writer.flush()


def FormatEvalInfo(global_step, metrics, examples_per_second=None):
  """The starter's one-line evaluation summary (Hit@1, PERR, both mAPs, GAP, loss).

  MAP_all_classes averages AP over every class (the original KD / NeXtVLAD code),
  MAP_labelled_classes over the classes with a true label (today's starter).
  """
  info = ("global_step {0} | Avg_Hit@1: {1:.4f} | Avg_PERR: {2:.4f} | "
          "MAP_all_classes: {3:.4f} | MAP_labelled_classes: {4:.4f} | GAP: {5:.4f} | "
          "Avg_Loss: {6:.6f}").format(
              global_step, metrics["avg_hit_at_one"], metrics["avg_perr"],
              metrics["map_all_classes"], metrics["map_labelled_classes"], metrics["gap"],
              metrics["avg_loss"])
  if examples_per_second is not None:
    info += " | Examples_per_sec: {0:.1f}".format(examples_per_second)
  return info
