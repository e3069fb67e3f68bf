"""Progress lines of long runs: training steps (StepLogger) and passes over records
(Progress). Lines, not a terminal animation: these commands run in logs on clusters.
"""

import time

import eval_util
import summaries


def duration(seconds):
  """HH:MM:SS, and past a day the days first: 93784 s -> 1 day, 02:03:04."""
  seconds = int(round(max(seconds, 0)))
  days, seconds = divmod(seconds, 86400)
  clock = "%02d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)
  if not days:
    return clock
  return "%d day%s, %s" % (days, "" if days == 1 else "s", clock)


class Progress(object):
  """A line every `every_secs` seconds on long passes: videos done, videos/s, and with a
  known total the share done and the time left."""

  def __init__(self, every_secs, total=None, what="videos", prefix=""):
    """prefix: text before each line (it may change between lines)."""
    self.every_secs = every_secs
    self.total = total
    self.what = what
    self.prefix = prefix
    self.start = self.last = time.time()
    self.done = 0

  def add(self, count):
    """Counts `count` more videos; prints a line when every_secs have passed."""
    self.done += count
    now = time.time()
    if now - self.last >= self.every_secs:
      self.last = now
      print(self.prefix + self.line(), flush=True)

  def rate(self):
    """Videos per second since the start."""
    return self.done / max(time.time() - self.start, 1e-9)

  def line(self):
    """'N [of T (P%)] videos, R videos/s[, ETA H:MM:SS]'."""
    rate = self.rate()
    if not self.total:
      return "%d %s, %.1f %s/s" % (self.done, self.what, rate, self.what)
    left = max(self.total - self.done, 0) / max(rate, 1e-9)
    return "%d of %d %s (%.1f%%), %.1f %s/s, ETA %s" % (
        self.done, self.total, self.what, 100.0 * self.done / self.total, rate,
        self.what, duration(left))


def last_step(max_steps, epochs_end):
  """(the step a run ends at, whether that is an estimate): --max_steps or the end of
  its epochs, whichever comes first; (None, False) when neither is known.

  epochs_end: (the step the last epoch ends at, whether estimated), or None.
  """
  ends = [(max_steps, False)] if max_steps else []
  if epochs_end:
    ends.append(epochs_end)
  return min(ends) if ends else (None, False)


class StepLogger(object):
  """Console lines and TensorBoard scalars every --log_every_n_steps steps.

  A line ends with the time left to `end_step` (progress.last_step), marked '~' and
  'estimated' when the epoch's size is estimated.
  """

  def __init__(self, writer, examples_per_step, end_step=None, end_estimated=False):
    self.writer = writer
    self.examples_per_step = examples_per_step
    self.end_step = end_step
    self.end_estimated = end_estimated
    self.last_time = None
    self.last_step = None

  def start(self, step):
    """Marks the start of the loop at `step` (for the examples/s rate)."""
    self.last_time, self.last_step = time.time(), step

  def log(self, step, values, predictions, labels):
    """Writes one console line and the summaries for `step` (after a training step).

    values: the training fetches (loss_terms, learning_rate); predictions, labels:
    [B, C] of the step's batch.
    """
    now = time.time()
    rate = (step - self.last_step) * self.examples_per_step / max(now - self.last_time,
                                                                  1e-9)
    self.last_time, self.last_step = now, step
    scalars = {"losses/" + k: float(v) for k, v in values["loss_terms"].items()}
    scalars["learning_rate"] = float(values["learning_rate"])
    scalars["examples_per_second"] = rate
    scalars["training/hit_at_one"] = eval_util.calculate_hit_at_one(predictions, labels)
    scalars["training/gap"] = eval_util.calculate_gap(predictions, labels)
    line = "step %d | loss %.4f" % (step, values["loss_terms"]["total"])
    for name in ("label_loss", "pred_loss", "rep_loss"):
      if name in values["loss_terms"]:
        line += " | %s %.4f" % (name, values["loss_terms"][name])
    line += " | hit@1 %.3f | gap %.3f | %.1f examples/s" % (
        scalars["training/hit_at_one"], scalars["training/gap"], rate)
    line += self.time_left(step, rate)
    print(line, flush=True)
    if self.writer:
      summaries.AddScalarSummaries(self.writer, scalars, step)

  def time_left(self, step, rate):
    """' | H:MM:SS left to step N' (or '' when the end is unknown)."""
    if not self.end_step or rate <= 0:
      return ""
    left = max(self.end_step - step, 0) * self.examples_per_step / rate
    if self.end_estimated:
      return " | ~%s left to step ~%d (estimated)" % (duration(left), self.end_step)
    return " | %s left to step %d" % (duration(left), self.end_step)
