"""Any teacher, any student, through the command lines: the original's MixNeXtVLAD as
a teacher (trained with two towers, --bf16 and frame packing; evaluated, predicted and
exported), distilled online into a narrower NeXtVLAD and, from one teacher cache, into
a FrameLevelLogistic student and a mixture student of another width.

The CLIs run one after another through helpers.run_plan.
"""
import json
import os

import pytest
import tensorflow as tf

from tests import helpers

tf1 = tf.compat.v1
TINY = ["--nextvlad_cluster_size=4", "--groups=2", "--expansion=1",
        "--gating_reduction=4", "--num_classes=20", "--batch_size=4", "--seed=1",
        "--pca_eigenvals=", "--num_readers=2", "--log_every_n_steps=1"]
MIX = ["--model=MixNeXtVladModel", "--mix_number=2", "--nextvlad_hidden_size=16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{step: result} of the whole plan, and the paths it wrote."""
  root = tmp_path_factory.mktemp("any_teacher")
  train, validate = helpers.make_dataset(root / "data", train_videos=16,
                                         validate_videos=12, min_frames=20,
                                         max_frames=60)
  base, cache = str(root / "run"), str(root / "cache")
  teacher, kd = base + "_teacher", base + "_KD_k_4"
  common = TINY + ["--train_data_pattern=" + train, "--max_steps=2"]
  offline = common + ["--model_type=KD", "--teacher_checkpoint=" + teacher,
                      "--teacher_cache=" + cache]
  paths = {"root": root, "teacher": teacher, "kd": kd, "cache": cache,
           "fll": str(root / "fll_KD_k_2"), "mix_student": str(root / "mix_KD_k_6")}
  steps = [
      ("teacher", {"cli": "train.py", "args": common + MIX + [
          "--train_dir=" + base, "--bf16", "--frame_packing=always"]}),
      ("eval_teacher", {"cli": "eval.py", "args": [
          "--train_dir=" + teacher, "--eval_data_pattern=" + validate, "--run_once"]}),
      ("csv_teacher", {"cli": "inference.py", "args": [
          "--train_dir=" + teacher, "--input_data_pattern=" + validate,
          "--output_file=%s/teacher.csv" % root]}),
      ("export_teacher", {"cli": "export_model.py", "args": [
          "--train_dir=" + teacher, "--output_dir=%s/saved_teacher" % root]}),
      ("csv_saved", {"cli": "inference.py", "args": [
          "--saved_model=%s/saved_teacher" % root, "--input_data_pattern=" + validate,
          "--output_file=%s/saved.csv" % root]}),
      ("kd", {"cli": "train.py", "args": common + [
          "--train_dir=" + base, "--model_type=KD", "--k_frame=4",
          "--nextvlad_hidden_size=8"]}),
      ("eval_kd_teacher", {"cli": "eval.py", "args": [
          "--train_dir=" + kd, "--eval_data_pattern=" + validate, "--run_once",
          "--role=teacher"]}),
      ("export_kd", {"cli": "export_model.py", "args": [
          "--train_dir=" + kd, "--output_dir=%s/saved_kd" % root]}),
      # A relative data pattern (the CLIs run from the repository) names the same
      # files, hence the same cache.
      ("fll", {"cli": "train.py", "args": offline + [
          "--train_dir=%s/fll" % root, "--model=FrameLevelLogisticModel",
          "--k_frame=2", "--train_data_pattern=" + os.path.relpath(train, helpers.ROOT)]}),
      ("mix_student", {"cli": "train.py", "args": offline + MIX[:2] + [
          "--train_dir=%s/mix" % root, "--nextvlad_hidden_size=4", "--k_frame=6"]}),
      ("eval_mix_student", {"cli": "eval.py", "args": [
          "--train_dir=" + paths["mix_student"], "--eval_data_pattern=" + validate,
          "--run_once"]}),
      ("other_classes", {"cli": "train.py", "args": common + [
          "--train_dir=%s/other" % root, "--model_type=KD", "--k_frame=4",
          "--teacher_checkpoint=" + teacher, "--num_classes=10"]}),
  ]
  results = helpers.run_plan(root, [step for _, step in steps],
                                       env={"YT8M_CPU_TOWERS": "2"})
  results = dict(zip([name for name, _ in steps], results))
  for name, result in results.items():
    if name != "other_classes":
      assert result["code"] == 0, (name, result["stdout"][-2000:], result["stderr"][-3000:])
  return results, paths


def _eval_record(run_dir):
  with open(os.path.join(run_dir, "eval.jsonl")) as f:
    return [json.loads(line) for line in f][-1]


def _variables(checkpoint_or_dir):
  if os.path.isdir(checkpoint_or_dir):
    checkpoint_or_dir = tf1.train.latest_checkpoint(checkpoint_or_dir)
  return dict(tf.train.list_variables(checkpoint_or_dir))


def test_the_mixture_trains_with_towers_and_bf16_and_serves(runs):
  results, paths = runs
  out = results["teacher"]["stdout"]
  assert "2 towers on logical CPU devices" in out and "Starting at step 0." in out
  variables = _variables(paths["teacher"])
  for name in ("teacher/tower/mix_weights/weights", "teacher/tower/mix_weights_bn/gamma",
               "teacher/tower/branch_0/rgb_nextvlad/cluster_centers",
               "teacher/tower/branch_1/classifier/logistic/weights"):
    assert name in variables, name
  assert variables["teacher/tower/branch_1/hidden1/weights"][1] == 16
  assert 0 < _eval_record(paths["teacher"])["gap"] <= 1
  root = paths["root"]
  rows = open(os.path.join(root, "teacher.csv")).read().splitlines()
  assert len(rows) == 13 and rows == open(os.path.join(root, "saved.csv")).read().splitlines()


def test_kd_rebuilds_the_teacher_from_its_run_directory(runs):
  results, paths = runs
  out = results["kd"]["stdout"]
  assert "Teacher: %s/model.ckpt-2" % paths["teacher"] in out
  assert "Teacher model: MixNeXtVladModel(" in out and "student model: NeXtVLADModel(" in out
  with open(os.path.join(paths["kd"], "model_flags.json")) as f:
    recorded = json.load(f)
  assert recorded["model"] == "NeXtVLADModel" and recorded["nextvlad_hidden_size"] == 8
  assert recorded["teacher_model"]["model"] == "MixNeXtVladModel"
  assert recorded["teacher_model"]["nextvlad_hidden_size"] == 16
  variables = _variables(paths["kd"])
  assert variables["student/tower/rep_projection/weights"] == [8, 16]
  assert "teacher/tower/branch_1/hidden1/weights" in variables
  # The KD run's frozen teacher copy is the teacher: the same metrics, to the bit.
  teacher, copy = _eval_record(paths["teacher"]), _eval_record(paths["kd"])
  assert copy["role"] == "teacher"
  for key in ("gap", "hit_at_one", "perr", "map_all_classes", "loss"):
    assert copy[key] == teacher[key], key
  # The projection is for training only: the SavedModel is the student alone.
  saved = dict(tf.train.list_variables(
      os.path.join(str(paths["root"]), "saved_kd", "variables", "variables")))
  assert "student/tower/hidden1/weights" in saved
  assert not [n for n in saved if "rep_projection" in n or n.startswith("teacher/")]


def test_one_teacher_cache_serves_students_of_every_architecture_and_size(runs):
  results, paths = runs
  assert "Teacher cache: computing 2 of 2 shards" in results["fll"]["stdout"]
  assert "Teacher cache: computing" not in results["mix_student"]["stdout"]
  flags = {}
  for run in ("fll", "mix_student"):
    with open(os.path.join(paths[run], "model_flags.json")) as f:
      flags[run] = json.load(f)
  assert flags["fll"]["teacher_cache"] == flags["mix_student"]["teacher_cache"]
  assert flags["fll"]["model"] == "FrameLevelLogisticModel"
  assert flags["mix_student"]["model"] == "MixNeXtVladModel"
  # The 1152-wide mean frame and the 4-wide mixture both reach the teacher's 16.
  assert _variables(paths["fll"])["student/tower/rep_projection/weights"] == [1152, 16]
  variables = _variables(paths["mix_student"])
  assert variables["student/tower/rep_projection/weights"] == [4, 16]
  assert "student/tower/branch_1/hidden1/weights" in variables
  assert not [n for n in variables if n.startswith("teacher/")]
  for run in ("fll", "mix_student"):
    line = [l for l in results[run]["stdout"].splitlines() if l.startswith("step 2 ")][0]
    assert "pred_loss" in line and "rep_loss" in line, line
  assert 0 < _eval_record(paths["mix_student"])["gap"] <= 1


def test_a_teacher_of_another_class_space_is_one_line(runs):
  results, paths = runs
  result = results["other_classes"]
  assert result["code"] == 2
  lines = [l for l in result["stderr"].splitlines() if "error" in l]
  assert lines == ["train.py: error: the teacher %s/model.ckpt-2 predicts 20 classes but "
                   "--num_classes=10: L_pred compares the two models' class "
                   "probabilities, so they need the same class space" % paths["teacher"]]
