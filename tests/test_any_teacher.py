"""Any teacher, any student, through the command lines: the original's MixNeXtVLAD as
a teacher (trained with two towers, --bf16 and frame packing; evaluated, predicted and
exported), distilled online into a narrower NeXtVLAD and, from one teacher cache, into
a FrameLevelLogistic student and a mixture student of another width.

The CLIs run one after another through helpers.run_plan.
"""
import json
import os
import re

import numpy as np
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
  # The mixture teacher runs in an interpreter of its own that logs TensorFlow's INFO
  # lines (TF_CPP_MIN_LOG_LEVEL=0): grappler's line says what the bf16 rewrite did.
  teacher_run = helpers.run_cli("train.py", common + MIX + [
      "--train_dir=" + base, "--bf16", "--frame_packing=always"],
      env={"YT8M_CPU_TOWERS": "2", "TF_CPP_MIN_LOG_LEVEL": "0"}, check=False)
  grand = str(root / "grand_KD_k_2")
  paths["grand"] = grand
  steps = [
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
      ("other_features", {"cli": "train.py", "args": common + [
          "--train_dir=%s/other" % root, "--model_type=KD", "--k_frame=4",
          "--teacher_checkpoint=" + teacher, "--feature_names=rgb",
          "--feature_sizes=1024"]}),
      ("other_max_frames", {"cli": "train.py", "args": common + [
          "--train_dir=%s/other" % root, "--model_type=KD", "--k_frame=4",
          "--teacher_checkpoint=" + teacher, "--max_frames=200"]}),
      # A distilled student teaches a student of its own (its run directory given).
      ("grand", {"cli": "train.py", "args": common + [
          "--train_dir=%s/grand" % root, "--model_type=KD", "--k_frame=2",
          "--teacher_checkpoint=" + kd, "--nextvlad_hidden_size=4"]}),
      ("eval_grand_teacher", {"cli": "eval.py", "args": [
          "--train_dir=" + grand, "--eval_data_pattern=" + validate, "--run_once",
          "--role=teacher"]}),
  ]
  results = helpers.run_plan(root, [step for _, step in steps],
                                       env={"YT8M_CPU_TOWERS": "2"})
  results = dict(zip([name for name, _ in steps], results))
  results["teacher"] = {"code": teacher_run.returncode, "stdout": teacher_run.stdout,
                        "stderr": teacher_run.stderr}
  for name, result in results.items():
    if not name.startswith("other_"):
      assert result["code"] == 0, (name, result["stdout"][-2000:], result["stderr"][-3000:])
  return results, paths


def _eval_record(run_dir, role=None):
  """The last eval.jsonl record of run_dir (of that role when given)."""
  with open(os.path.join(run_dir, "eval.jsonl")) as f:
    return [r for r in map(json.loads, f) if role in (None, r["role"])][-1]


def _variables(checkpoint_or_dir):
  if os.path.isdir(checkpoint_or_dir):
    checkpoint_or_dir = tf1.train.latest_checkpoint(checkpoint_or_dir)
  return dict(tf.train.list_variables(checkpoint_or_dir))


def _graph_ops(checkpoint_or_dir):
  """{node name: op} of the training graph saved beside a checkpoint (its .meta)."""
  if os.path.isdir(checkpoint_or_dir):
    checkpoint_or_dir = tf1.train.latest_checkpoint(checkpoint_or_dir)
  meta_graph = tf1.MetaGraphDef()
  with open(checkpoint_or_dir + ".meta", "rb") as f:
    meta_graph.ParseFromString(f.read())
  return {node.name: node.op for node in meta_graph.graph_def.node}


def _frame_layer_ops(ops, scope):
  """The op types under `scope` (a NeXtVLAD's rgb_nextvlad) in the first tower's
  forward pass."""
  return {op for name, op in ops.items() if name.startswith("tower_0/" + scope)}


def test_the_mixture_trains_with_towers_and_bf16_and_serves(runs):
  results, paths = runs
  out = results["teacher"]["stdout"]
  assert "2 towers on logical CPU devices" in out and "Starting at step 0." in out
  # --bf16: grappler's oneDNN bfloat16 rewrite ran on the training graph and converted
  # its matrix products (only a session configured for it logs this line).
  converted = [int(n) for n in re.findall(
      r"Converted (\d+)/\d+ nodes to bfloat16 precision", results["teacher"]["stderr"])]
  assert converted and max(converted) >= 10, results["teacher"]["stderr"][-3000:]
  assert "bfloat16" not in results["eval_teacher"]["stderr"]
  # --frame_packing=always: every branch's per-frame layers gather the real frames and
  # scatter them back; the KD student at k=4 (auto) keeps the dense grid.
  ops = _graph_ops(paths["teacher"])
  for branch in (0, 1):
    packed = _frame_layer_ops(ops, "teacher/tower/branch_%d/rgb_nextvlad/" % branch)
    assert {"Where", "GatherNd", "ScatterNd"} <= packed, sorted(packed)
  dense = _frame_layer_ops(_graph_ops(paths["kd"]), "student/tower/rgb_nextvlad/")
  assert dense and not {"GatherNd", "ScatterNd"} & dense, sorted(dense)
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
  teacher = _eval_record(paths["teacher"])
  copy = _eval_record(paths["kd"], role="teacher")
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


@pytest.mark.parametrize("step, flag, theirs, ours", [
    ("other_features", "feature_names", "rgb,audio", "rgb"),
    ("other_max_frames", "max_frames", "300", "200")])
def test_a_teacher_that_read_other_records_is_one_line(runs, step, flag, theirs, ours):
  results, paths = runs
  result = results[step]
  assert result["code"] == 2 and "Traceback" not in result["stderr"]
  lines = [l for l in result["stderr"].splitlines() if "error" in l]
  assert lines == ["train.py: error: the teacher %s/model.ckpt-2 was trained with "
                   "--%s=%s, this run reads --%s=%s: teacher and student read the same "
                   "records" % (paths["teacher"], flag, theirs, flag, ours)]


def test_a_distilled_student_teaches_a_student_of_its_own(runs):
  results, paths = runs
  out = results["grand"]["stdout"]
  assert "Teacher: %s/model.ckpt-2" % paths["kd"] in out
  with open(os.path.join(paths["grand"], "model_flags.json")) as f:
    recorded = json.load(f)
  assert recorded["teacher_model"]["model"] == "NeXtVLADModel"
  assert recorded["teacher_model"]["nextvlad_hidden_size"] == 8
  assert recorded["nextvlad_hidden_size"] == 4
  # The KD run's student, restored into the new run's teacher/ and kept frozen.
  student = tf.train.load_checkpoint(tf1.train.latest_checkpoint(paths["kd"]))
  grand = tf.train.load_checkpoint(tf1.train.latest_checkpoint(paths["grand"]))
  names = [n for n in _variables(paths["kd"]) if n.startswith("student/tower/")
           and "rep_projection" not in n and "Adam" not in n]
  assert "student/tower/hidden1/weights" in names
  for name in names:
    np.testing.assert_array_equal(grand.get_tensor("teacher" + name[len("student"):]),
                                  student.get_tensor(name), err_msg=name)
  assert _variables(paths["grand"])["student/tower/rep_projection/weights"] == [4, 8]
  # Its teacher role (that student, on every frame as a teacher reads them) evaluates.
  record = _eval_record(paths["grand"], role="teacher")
  assert record["num_examples"] == 12 and 0 < record["gap"] <= 1
