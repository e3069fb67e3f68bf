"""Progress lines: durations past a day, and a training ETA that counts to whichever of
--max_steps and the end of --num_epochs comes first (estimated from the files)."""
import re

import pytest

import progress
from tests import helpers


def test_durations_past_a_day_print_as_days():
  assert progress.duration(0) == "00:00:00"
  assert progress.duration(3599.6) == "01:00:00"
  assert progress.duration(86399) == "23:59:59"
  assert progress.duration(86400) == "1 day, 00:00:00"
  assert progress.duration(93784) == "1 day, 02:03:04"
  assert progress.duration(10 * 86400 + 61) == "10 days, 00:01:01"
  assert progress.duration(-5) == "00:00:00"


def test_progress_lines_give_the_share_done_and_the_time_left(monkeypatch, capsys):
  clock = [1000.0]
  monkeypatch.setattr(progress.time, "time", lambda: clock[0])
  counter = progress.Progress(every_secs=30, total=1000)
  clock[0] += 10
  counter.add(100)  # 10 s: no line yet
  clock[0] += 30
  counter.add(300)  # 40 s: 400 of 1000 at 10 videos/s, 60 s left
  assert capsys.readouterr().out == (
      "400 of 1000 videos (40.0%), 10.0 videos/s, ETA 00:01:00\n")
  unknown = progress.Progress(every_secs=1, prefix="cache: ")
  clock[0] += 2
  unknown.add(50)
  assert capsys.readouterr().out == "cache: 50 videos, 25.0 videos/s\n"


def test_the_run_ends_at_whichever_comes_first():
  assert progress.last_step(1000000, (168, True)) == (168, True)
  assert progress.last_step(100, (168, True)) == (100, False)
  assert progress.last_step(None, (168, False)) == (168, False)
  assert progress.last_step(50, None) == (50, False)
  assert progress.last_step(None, None) == (None, False)


def test_time_left_says_when_it_is_an_estimate():
  exact = progress.StepLogger(None, examples_per_step=10, end_step=1000)
  assert exact.time_left(step=100, rate=1.0) == " | 2:30:00 left to step 1000".replace(
      "2:30:00", progress.duration(9000))
  estimated = progress.StepLogger(None, 10, end_step=200000, end_estimated=True)
  assert estimated.time_left(0, 10.0) == (
      " | ~2 days, 07:33:20 left to step ~200000 (estimated)")
  assert progress.StepLogger(None, 10).time_left(5, 10.0) == ""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return helpers.make_dataset(tmp_path_factory.mktemp("data"), train_videos=12,
                              validate_videos=4, min_frames=5, max_frames=10)


def test_a_run_ended_by_its_epochs_counts_down_to_their_end(data, tmp_path):
  """--num_epochs=2 --max_steps=1000000 over 12 videos in several files at batch 4:
  the run ends after 6 steps, and every line says so (an estimate: the first file's
  records times the number of files)."""
  train_pattern, _ = data
  out = helpers.run_cli("train.py", [
      "--train_data_pattern=" + train_pattern, "--train_dir=" + str(tmp_path / "r"),
      "--model=FrameLevelLogisticModel", "--num_classes=20", "--batch_size=4",
      "--num_epochs=2", "--max_steps=1000000", "--log_every_n_steps=1",
      "--pca_eigenvals="]).stdout
  steps = [int(s) for s in re.findall(r"^step (\d+) ", out, re.M)]
  assert steps and steps[-1] == 6, out
  ends = re.findall(r"left to step (~?)(\d+)( \(estimated\))?", out)
  assert len(ends) == len(steps)
  assert {int(end) for _, end, _ in ends} == {6}
  assert all(mark == "~" and note for mark, _, note in ends)
