"""Video-level distillation (--frame_features=False, no k) on real YouTube-8M records.

A MoeModel teacher trained a few steps on one official video-level shard teaches a
LogisticModel student, online and through a teacher cache; the KD loss is checked
against numpy, frame-level flags are refused, and eval.py serves the student.
"""
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import cli
import config
import kd_model
import run_dir
from tests import helpers

tf1 = tf.compat.v1
DATA = os.path.join(helpers.ROOT, "tests", "data", "yt8m2018_video")
TRAIN, HELD_OUT = (os.path.join(DATA, "validate%04d.tfrecord" % i) for i in (196, 199))
NUM_CLASSES, MIXTURES = 3862, 2
VIDEO = ["--frame_features=False", "--feature_names=mean_rgb,mean_audio",
         "--feature_sizes=1024,128"]
# Plain gradient descent for the students: Adam turns last-bit differences of
# near-zero gradients (a teacher computed in another graph) into full-size steps.
COMMON = VIDEO + ["--train_data_pattern=" + TRAIN, "--batch_size=16", "--seed=3",
                  "--num_readers=1", "--num_epochs=100", "--log_every_n_steps=1",
                  "--export_model_steps=1000"]
STUDENT = ["--model=LogisticModel", "--optimizer=GradientDescentOptimizer",
           "--base_learning_rate=0.1", "--max_steps=6"]


def _train(*args, check=True):
  return helpers.run_cli("train.py", COMMON + list(args), check=check)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A MoeModel teacher; KD students online and through a float32 cache; the
  student alone (all of base)."""
  root = tmp_path_factory.mktemp("video_kd")
  base = str(root / "v")
  _train("--train_dir=" + base, "--model=MoeModel", "--moe_num_mixtures=%d" % MIXTURES,
         "--max_steps=8")
  online = _train("--train_dir=" + base, "--model_type=KD", *STUDENT).stdout
  cached = _train("--train_dir=" + str(root / "cached"), "--model_type=KD",
                  "--teacher_checkpoint=" + base + "_teacher",
                  "--teacher_cache=" + str(root / "cache"),
                  "--teacher_cache_dtype=float32", *STUDENT).stdout
  alone = _train("--train_dir=" + base, "--model_type=student", *STUDENT).stdout
  return {"root": root, "teacher": base + "_teacher", "kd": base + "_KD",
          "cached": str(root / "cached_KD"), "student": base + "_student",
          "out": {"online": online, "cached": cached, "alone": alone}}


def _variables(directory, step, prefix):
  checkpoint = os.path.join(directory, "model.ckpt-%d" % step)
  return {name: tf.train.load_variable(checkpoint, name)
          for name, _ in tf.train.list_variables(checkpoint) if name.startswith(prefix)}


def _loss_terms(out):
  """[{term: value}] of train.py's step lines."""
  return [dict(re.findall(r"\| (\w+_loss) ([0-9.]+)", line))
          for line in out.splitlines() if re.match(r"step \d+ \| loss", line)]


def test_video_level_kd_runs_online_and_through_a_cache(runs):
  recorded = json.load(open(os.path.join(runs["kd"], "model_flags.json")))
  assert (recorded["model_type"], recorded["frame_features"]) == ("KD", False)
  assert recorded["teacher_model"]["model"] == "MoeModel"
  assert recorded["model"] == "LogisticModel"
  for kind in ("online", "cached"):
    out = runs["out"][kind]
    assert "L_rep is identically zero: it is left out" in out
    terms = _loss_terms(out)
    assert len(terms) == 6 and all(set(t) == {"label_loss", "pred_loss"} for t in terms)
  # The cache holds exactly what the online teacher computes: the same student.
  online = _variables(runs["kd"], 6, "student/")
  cached = _variables(runs["cached"], 6, "")
  assert not [name for name in cached if name.startswith("teacher/")]
  assert set(online) == {n for n in cached if n.startswith("student/")}
  for name, value in online.items():
    np.testing.assert_allclose(cached[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  assert os.path.exists(str(runs["root"] / "cache" / "teacher-00000.tfrecord"))


def test_the_student_alone_starts_where_the_distilled_one_does(runs):
  # --model_type=student at video level: the model trained alone under student/
  # (<train_dir>_student), seeded like the KD student, so the two are paired.
  alone, distilled = (_variables(runs[r], 0, "student/") for r in ("student", "kd"))
  assert set(alone) == set(distilled) and alone
  for name, value in alone.items():
    np.testing.assert_array_equal(distilled[name], value, err_msg=name)
  assert all("pred_loss" not in t for t in _loss_terms(runs["out"]["alone"]))
  assert not _variables(runs["student"], 6, "teacher/")


def _records(path, count):
  """(features [N, 1152], labels [N, C]) of a shard's first `count` records (None:
  all), parsed with protocol buffers, not the project's reader."""
  features, labels = [], []
  for serialized in list(tf1.io.tf_record_iterator(path))[:count]:
    feature = tf.train.Example.FromString(serialized).features.feature
    features.append(list(feature["mean_rgb"].float_list.value) +
                    list(feature["mean_audio"].float_list.value))
    labels.append(np.zeros(NUM_CLASSES, np.float32))
    labels[-1][list(feature["labels"].int64_list.value)] = 1
  return np.array(features, np.float32), np.array(labels)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _moe(checkpoint, x):
  """The teacher's probabilities, from its checkpoint's weights in numpy."""
  value = lambda name: tf.train.load_variable(checkpoint, "teacher/tower/" + name)
  gates = x @ value("gates/weights") + value("gates/biases")
  gates = np.exp(gates.reshape(-1, MIXTURES + 1) - gates.max())
  gates /= gates.sum(axis=1, keepdims=True)
  experts = _sigmoid(x @ value("experts/weights") + value("experts/biases"))
  return (gates[:, :MIXTURES] * experts.reshape(-1, MIXTURES)).sum(axis=1).reshape(
      len(x), NUM_CLASSES)


def test_the_kd_loss_is_ce_plus_weighted_l_pred_in_numpy(runs, monkeypatch):
  weights = dict(kd_ce_weight=0.7, kd_pred_weight=0.05)
  cfg = config.from_flags(config.private_flags(VIDEO + [
      "--model=LogisticModel", "--model_type=KD"] +
      ["--%s=%s" % item for item in weights.items()]))
  checkpoint = run_dir.find_checkpoint(runs["teacher"])
  teacher, model, _ = run_dir.teacher_of(checkpoint, cfg)
  cfg = cfg.replace(teacher_model=model.model_json())
  assert not cfg.distils_representation()
  features, labels = _records(HELD_OUT, 12)
  built = {}
  create = kd_model.create_role_model
  monkeypatch.setattr(kd_model, "create_role_model", lambda c, role, *a, **k:
                      built.setdefault(role, create(c, role, *a, **k)))
  with tf.Graph().as_default():
    tf1.set_random_seed(0)
    batch = {"video_ids": tf.constant(["v%d" % i for i in range(len(features))]),
             "video_matrix": tf.constant(features),
             "num_frames": tf.ones([len(features)], tf.int32),
             "labels": tf.constant(labels)}
    task = kd_model.training_task(cfg, teacher=teacher)
    terms = task.tower(batch, reuse=False)
    init_fn, _, _ = task.restore_teacher()
    student_vars = {v.op.name: v for v in tf1.trainable_variables("student/")}
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      init_fn(None, sess)
      terms, t, s, w = sess.run([terms, built["teacher"]["predictions"],
                                 built["student"]["predictions"], student_vars])
  assert set(terms) == {"label_loss", "pred_loss", "regularization", "total",
                        "predictions"}
  # The roles are the teacher's checkpoint and the LogisticModel student.
  np.testing.assert_allclose(t, _moe(checkpoint, features.astype(np.float64)),
                             rtol=1e-4, atol=1e-6)
  logits = features.astype(np.float64) @ w["student/tower/logistic/weights"]
  np.testing.assert_allclose(s, _sigmoid(logits + w["student/tower/logistic/biases"]),
                             rtol=1e-4, atol=1e-6)
  # The loss from those predictions, in numpy (float64).
  t, s, eps = t.astype(np.float64), s.astype(np.float64), 1e-8
  ce = -(labels * np.log(s + eps) +
         (1 - labels) * np.log(np.maximum(1 - s, 0) + eps)).sum(axis=1).mean()
  pred = ((t - s) ** 2).sum()  # --kd_reduction=sum
  regularization = 1e-8 * sum((v.astype(np.float64) ** 2).sum() / 2 for v in w.values())
  assert terms["label_loss"] == pytest.approx(ce, rel=1e-5)
  assert terms["pred_loss"] == pytest.approx(pred, rel=1e-5)
  assert terms["regularization"] == pytest.approx(regularization, rel=1e-4)
  assert terms["total"] == pytest.approx(
      0.7 * ce + 0.05 * pred + regularization, rel=1e-5)
  assert 0.05 * pred > 1e-3 * terms["total"]  # L_pred counts in this total


@pytest.mark.parametrize("given, flag", [
    (["--k_frame=6"], "--k_frame=6"), (["--k_frame=300"], "--k_frame=300"),
    (["--frame_sampling=random"], "--frame_sampling=random"),
    (["--max_frames=100"], "--max_frames=100"),
    (["--segment_size=10"], "--segment_size=10"),
    (["--frame_packing=always"], "--frame_packing=always"),
    (["--video_level_classifier_model=MoeModel"], "--video_level_classifier_model"),
    (["--model_type=KD", "--kd_rep_weight=0.001"], "--kd_rep_weight=0.001"),
])
def test_a_frame_level_flag_is_refused_at_video_level(given, flag):
  argv = VIDEO + ["--model=LogisticModel"] + given
  with pytest.raises(cli.UsageError) as error:
    config.from_flags(config.private_flags(argv))
  assert str(error.value).startswith(flag) and "\n" not in str(error.value)
  # The same flags at frame level, and video level with the defaults, are accepted.
  frame_level = given + ([] if "k_frame" in given[0] else ["--k_frame=6"])
  config.from_flags(config.private_flags(frame_level))
  config.from_flags(config.private_flags(VIDEO + ["--model=LogisticModel"] + [
      a for a in given if a.startswith("--model_type")]))


@pytest.mark.parametrize("model_type, kd_mode, suffix, roles, trained", [
    ("teacher", "serial", "_teacher", ("teacher",), ("teacher",)),
    ("student", "serial", "_student", ("student",), ("student",)),
    ("KD", "serial", "_KD", ("teacher", "student"), ("student",)),
    ("KD", "parallel", "_KD", ("teacher", "student"), ("teacher", "student")),
])
def test_video_level_run_kinds(model_type, kd_mode, suffix, roles, trained):
  cfg = config.from_flags(config.private_flags(VIDEO + [
      "--model=LogisticModel", "--model_type=" + model_type, "--kd_mode=" + kd_mode,
      "--kd_rep_weight=0"]))
  assert (cfg.run_dir_suffix(), cfg.roles(), cfg.trained_roles()) == (
      suffix, roles, trained)
  assert cfg.role() == ("student" if model_type != "teacher" else "teacher")
  # The documented frame-level commands keep their names.
  frame = config.from_flags(config.private_flags(["--model_type=" + model_type,
                                                  "--k_frame=30"]))
  assert frame.run_dir_suffix() == {"teacher": "_student_k_30",
                                    "student": "_student_k_30",
                                    "KD": "_KD_k_30"}[model_type]
  assert frame.distils_representation() == (model_type == "KD")


def test_a_frame_level_flag_is_one_line_from_train_py(runs):
  process = _train("--train_dir=" + str(runs["root"] / "refused"), "--model_type=KD",
                   "--k_frame=6", *STUDENT, check=False)
  assert process.returncode != 0
  assert helpers.user_error_line(process).endswith(
      "--k_frame=6 means nothing with video-level features (--frame_features=False): "
      "a video-level student reads the whole record, as its teacher does; leave it out")
  assert not os.path.exists(str(runs["root"] / "refused_KD"))


def _eval(directory, *args):
  helpers.run_cli("eval.py", ["--train_dir=" + directory, "--run_once",
                              "--eval_data_pattern=" + HELD_OUT] + list(args))
  return [json.loads(line) for line in open(os.path.join(directory, "eval.jsonl"))][-1]


def test_eval_of_a_video_level_kd_run_is_its_student(runs):
  features, labels = _records(HELD_OUT, None)
  w = _variables(runs["kd"], 6, "student/")
  student = _sigmoid(features.astype(np.float64) @ w["student/tower/logistic/weights"] +
                     w["student/tower/logistic/biases"])
  expected = helpers.reference_metrics(student, labels)
  record = _eval(runs["kd"])
  assert (record["role"], record["num_examples"]) == ("student", len(features))
  # (eval's mAP counts each video's top 20 classes; the reference ranks all 3,862)
  for key in ("gap", "hit_at_one"):
    assert record[key] == pytest.approx(expected[key], abs=1e-4), key
  teacher = helpers.reference_metrics(
      _moe(run_dir.find_checkpoint(runs["kd"]), features.astype(np.float64)), labels)
  assert abs(teacher["gap"] - expected["gap"]) > 1e-3  # not the teacher's numbers
  record = _eval(runs["kd"], "--role=teacher")
  assert record["role"] == "teacher"
  assert record["gap"] == pytest.approx(teacher["gap"], abs=1e-4)
