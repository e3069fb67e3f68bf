"""Run directories written by an earlier version (tests/data/old_runs, see its README)
still evaluate, predict, export, resume and teach."""
import json
import os
import shutil

import pytest
import tensorflow as tf

from tests import helpers

tf1 = tf.compat.v1
OLD_RUNS = os.path.join(helpers.ROOT, "tests", "data", "old_runs")
MODEL = ["--model=DbofModel", "--dbof_cluster_size=8", "--dbof_hidden_size=8",
         "--iterations=10", "--num_classes=20", "--batch_size=4",
         "--export_model_steps=100", "--seed=1"]


@pytest.fixture(scope="module")
def old(tmp_path_factory):
  root = tmp_path_factory.mktemp("old")
  shutil.copytree(OLD_RUNS, str(root / "runs"))
  train, validate = helpers.make_dataset(root / "data", train_videos=24,
                                         validate_videos=8)
  return {"teacher": str(root / "runs" / "old_teacher"),
          "kd": str(root / "runs" / "old_KD_k_4"), "base": str(root / "runs" / "old"),
          "train": train, "validate": validate, "root": root}


@pytest.mark.parametrize("run,role", [("teacher", ""), ("kd", ""), ("kd", "teacher")])
def test_old_runs_evaluate(old, run, role):
  helpers.run_cli("eval.py", ["--train_dir=" + old[run], "--run_once", "--batch_size=4",
                              "--eval_data_pattern=" + old["validate"]] +
                  (["--role=" + role] if role else []))
  record = [json.loads(l) for l in open(os.path.join(old[run], "eval.jsonl"))][-1]
  assert record["step"] == 2 and record["num_examples"] == 8
  assert record["role"] == (role or ("student" if run == "kd" else "teacher"))
  assert 0 < record["gap"] <= 1


def test_old_kd_run_predicts_and_exports_the_same_rows(old, tmp_path):
  csv, saved_csv = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
  helpers.run_cli("inference.py", ["--train_dir=" + old["kd"], "--output_file=" + csv,
                                   "--input_data_pattern=" + old["validate"]])
  helpers.run_cli("export_model.py", ["--train_dir=" + old["kd"],
                                      "--output_dir=" + str(tmp_path / "saved")])
  helpers.run_cli("inference.py", ["--saved_model=" + str(tmp_path / "saved"),
                                   "--output_file=" + saved_csv,
                                   "--input_data_pattern=" + old["validate"]])
  rows = open(csv).read().splitlines()
  assert len(rows) == 9 and rows == open(saved_csv).read().splitlines()


def test_old_runs_resume_with_their_command_and_teach(old):
  before = tf.train.load_variable(os.path.join(old["teacher"], "model.ckpt-2"),
                                  "teacher/tower/cluster/weights")
  out = helpers.run_cli("train.py", ["--train_data_pattern=" + old["train"],
                                     "--train_dir=" + old["base"], "--max_steps=3"] +
                        MODEL).stdout
  assert "Starting at step 2 (resumed)" in out
  after = tf.train.load_variable(tf1.train.latest_checkpoint(old["teacher"]),
                                 "teacher/tower/cluster/weights")
  assert tf1.train.latest_checkpoint(old["teacher"]).endswith("-3")
  assert (before != after).any()
  out = helpers.run_cli("train.py", ["--train_data_pattern=" + old["train"],
                                     "--train_dir=" + old["base"], "--max_steps=3",
                                     "--model_type=KD", "--k_frame=4"] + MODEL).stdout
  assert "Starting at step 2 (resumed)" in out
  # A new student distilled from the old teacher.
  out = helpers.run_cli("train.py", ["--train_data_pattern=" + old["train"],
                                     "--train_dir=" + old["base"], "--max_steps=1",
                                     "--model_type=KD", "--k_frame=6"] + MODEL).stdout
  assert "Teacher: %s/model.ckpt-3" % old["teacher"] in out
