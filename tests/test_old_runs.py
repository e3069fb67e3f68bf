"""Run directories written by an earlier version (tests/data/old_runs, see its README)
still evaluate, predict, export, resume and teach, with the metrics and predictions of
tests/data/old_runs_golden (see its README and tests/old_runs_golden.py)."""
import os

import pytest
import tensorflow as tf

from tests import helpers
from tests import old_runs_golden as golden

tf1 = tf.compat.v1
MODEL = ["--model=DbofModel", "--dbof_cluster_size=8", "--dbof_hidden_size=8",
         "--iterations=10", "--num_classes=20", "--batch_size=4",
         "--export_model_steps=100", "--seed=1"]


@pytest.fixture(scope="module")
def old(tmp_path_factory):
  """Copies of the old runs, as recorded and with uniform DBoF frames, and the data."""
  root = tmp_path_factory.mktemp("old")
  runs = golden.copy_runs(root / "runs")
  uniform = golden.copy_runs(root / "uniform", uniform_frames=True)
  train, validate = helpers.make_dataset(root / "data", **golden.DATA)
  return {"teacher": runs["teacher"], "kd": runs["kd"], "uniform": uniform,
          "train": train, "validate": validate, "root": root}


def test_the_generator_writes_the_golden_validation_data_for_its_seed(old, tmp_path):
  """The golden metrics hold for these bytes: the generator gives them again for the
  seed (here and on the machine that wrote the golden files)."""
  wanted = golden.golden_metrics()["data"]
  assert {k: wanted[k] for k in golden.DATA} == golden.DATA
  digests = golden.data_digests(old["validate"])
  assert digests == wanted["validate_sha256"], "the data generator changed"
  _, again = helpers.make_dataset(tmp_path, splits=("validate",), **golden.DATA)
  assert golden.data_digests(again) == digests
  _, other_seed = helpers.make_dataset(tmp_path / "seed2", splits=("validate",),
                                       seed=2, **golden.DATA)
  assert set(golden.data_digests(other_seed).values()).isdisjoint(digests.values())


@pytest.mark.parametrize("run,role", [("teacher", ""), ("kd", ""), ("kd", "teacher")])
def test_old_runs_evaluate(old, run, role):
  """The runs as recorded evaluate their latest checkpoint (found through their old
  `checkpoint` file) in the right role; the student, which samples no random frames,
  gives the golden metrics."""
  record = golden.evaluate(old[run], old["validate"], role)
  assert record["step"] == 2 and record["num_examples"] == 8
  # Written before --segment_labels existed: video level (8 videos, not segments).
  assert record["segment_labels"] is False
  assert record["role"] == (role or ("student" if run == "kd" else "teacher"))
  assert 0 < record["gap"] <= 1
  if (run, role) == ("kd", ""):
    golden.assert_metrics_match(record, golden.golden_metrics()["eval"]["kd"], "kd")


@pytest.mark.parametrize("name", ["teacher", "kd_as_teacher"])
def test_old_teachers_evaluate_to_the_golden_metrics(old, name):
  """The teacher run and the KD run's teacher (--role=teacher), with uniform frames,
  give the golden eval.py records (the same: distillation never changes the teacher)."""
  run, role = golden.EVALS[name]
  record = golden.evaluate(old["uniform"][run], old["validate"], role)
  wanted = golden.golden_metrics()["eval"]
  golden.assert_metrics_match(record, wanted[name], name)
  golden.assert_metrics_match(record, wanted["teacher"], name)


def test_old_kd_run_predicts_and_exports_the_same_rows(old, tmp_path):
  """inference.py gives the golden CSV from the KD run, and the same rows from its
  export."""
  csv, saved_csv = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
  golden.predict(old["kd"], old["validate"], csv)
  golden.assert_rows_match(csv, os.path.join(golden.GOLDEN, golden.CSVS["kd"]))
  helpers.run_cli("export_model.py", ["--train_dir=" + old["kd"],
                                      "--output_dir=" + str(tmp_path / "saved")])
  helpers.run_cli("inference.py", ["--saved_model=" + str(tmp_path / "saved"),
                                   "--output_file=" + saved_csv,
                                   "--input_data_pattern=" + old["validate"]])
  rows = open(csv).read().splitlines()
  assert len(rows) == 9 and rows == open(saved_csv).read().splitlines()


def test_old_teacher_run_predicts_the_golden_rows(old, tmp_path):
  """inference.py gives the golden CSV from the teacher run (uniform frames)."""
  csv = str(tmp_path / "teacher.csv")
  golden.predict(old["uniform"]["teacher"], old["validate"], csv)
  golden.assert_rows_match(csv, os.path.join(golden.GOLDEN, golden.CSVS["teacher"]))


def test_old_runs_resume_with_their_command_and_teach(old, tmp_path):
  """The old runs resume with the command that wrote them, and the old teacher teaches
  a new student (on a copy of their own: resuming moves them past step 2)."""
  runs = golden.copy_runs(tmp_path / "runs")
  base = str(tmp_path / "runs" / "old")
  before = tf.train.load_variable(os.path.join(runs["teacher"], "model.ckpt-2"),
                                  "teacher/tower/cluster/weights")
  out = helpers.run_cli("train.py", ["--train_data_pattern=" + old["train"],
                                     "--train_dir=" + base, "--max_steps=3"] +
                        MODEL).stdout
  assert "Starting at step 2 (resumed)" in out
  after = tf.train.load_variable(tf1.train.latest_checkpoint(runs["teacher"]),
                                 "teacher/tower/cluster/weights")
  assert tf1.train.latest_checkpoint(runs["teacher"]).endswith("-3")
  assert (before != after).any()
  out = helpers.run_cli("train.py", ["--train_data_pattern=" + old["train"],
                                     "--train_dir=" + base, "--max_steps=3",
                                     "--model_type=KD", "--k_frame=4"] + MODEL).stdout
  assert "Starting at step 2 (resumed)" in out
  # A new student distilled from the old teacher.
  out = helpers.run_cli("train.py", ["--train_data_pattern=" + old["train"],
                                     "--train_dir=" + base, "--max_steps=1",
                                     "--model_type=KD", "--k_frame=6"] + MODEL).stdout
  assert "Teacher: %s/model.ckpt-3" % runs["teacher"] in out


def test_the_golden_comparison_catches_a_changed_score_order_or_metric(tmp_path):
  """assert_rows_match and assert_metrics_match fail on changes beyond their
  tolerances and pass within them (on edited copies of the golden files)."""
  path = os.path.join(golden.GOLDEN, golden.CSVS["kd"])
  rows = golden.read_csv(path)
  assert len(rows) == 8 and all(len(pairs) == 20 for _, pairs in rows)

  def write(edited):
    out = str(tmp_path / "edited.csv")
    with open(out, "w") as f:
      f.write("VideoId,LabelConfidencePairs\n")
      for video_id, pairs in edited:
        f.write("%s,%s\n" % (video_id, " ".join("%d %g" % p for p in pairs)))
    return out

  golden.assert_rows_match(write(rows), path)
  scaled = [(v, [(c, s * (1 + 3e-5)) for c, s in pairs]) for v, pairs in rows]
  golden.assert_rows_match(write(scaled), path)
  first, pairs = rows[0]
  swapped = [(first, [pairs[1], pairs[0]] + pairs[2:])] + rows[1:]
  changed = [(first, [(pairs[0][0], pairs[0][1] * (1 + 3e-4))] + pairs[1:])] + rows[1:]
  for edited in (rows[::-1], swapped, changed, rows[:-1]):
    with pytest.raises(AssertionError):
      golden.assert_rows_match(write(edited), path)
  wanted = golden.golden_metrics()["eval"]["kd"]
  golden.assert_metrics_match(dict(wanted, gap=wanted["gap"] + 5e-6), wanted, "kd")
  for change in (dict(gap=wanted["gap"] + 2e-5), dict(loss=wanted["loss"] * 1.00001),
                 dict(num_examples=7), dict(role="teacher")):
    with pytest.raises(AssertionError):
      golden.assert_metrics_match(dict(wanted, **change), wanted, "kd")
