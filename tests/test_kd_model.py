"""kd_model in process on a tiny NeXtVLAD: serial and parallel KD graphs, the teacher
restore, vanishing distillation terms, per-role inputs, run kinds and recorded flags.

Graphs are assembled the way train_graph.TrainGraph does (the task's tower under a
tower name scope, an optimizer over its trained variables, UPDATE_OPS run with every
step) but on placeholders fed with random uint8 batches, so no data files are needed.
"""
import contextlib
import inspect
import re
import types

import numpy as np
import pytest
import tensorflow as tf

import cli
import config
import file_io
import kd_model
import losses
import preprocessing
import run_dir
import utils
from tests import helpers

tf1 = tf.compat.v1
FLAGS = tf1.flags.FLAGS

T, C, FEATURES = 12, 10, 16 + 8
TINY = dict(model="NeXtVLADModel", frame_features=True, feature_names="rgb,audio",
            feature_sizes="16,8", max_frames=T, num_classes=C, nextvlad_cluster_size=4,
            nextvlad_hidden_size=8, groups=2, expansion=1, gating_reduction=2,
            drop_rate=0.5, video_level_classifier_model="LogisticModel",
            label_loss="CrossEntropyLoss", l2_penalty=1e-3, pca_eigenvals="",
            frame_sampling="uniform", kd_mode="serial", kd_reduction="sum",
            kd_pred_loss="mse", kd_ce_weight=1.0, kd_pred_weight=0.01,
            kd_rep_weight=0.001, regularization_penalty=1.0)
NUM_FRAMES = [T, T, 9, 5, 3, 1]  # full, shorter than T, fewer than k, a single frame
TEACHER_STEPS = 6


@contextlib.contextmanager
def _flag_values(**values):
  """Sets FLAGS for the duration of the block and restores the previous values."""
  saved = {name: FLAGS[name].value for name in values}
  try:
    for name, value in values.items():
      FLAGS[name].value = value
    yield
  finally:
    for name, value in saved.items():
      FLAGS[name].value = value


@pytest.fixture
def set_flags():
  """set_flags(name=value, ...) for one test; every touched flag is restored after it."""
  saved = {}

  def setter(**values):
    for name, value in values.items():
      saved.setdefault(name, FLAGS[name].value)
      FLAGS[name].value = value
  yield setter
  for name, value in saved.items():
    FLAGS[name].value = value


@pytest.fixture
def tiny(set_flags):
  set_flags(**TINY)
  return set_flags


def _numpy_batch(seed, num_frames=NUM_FRAMES, pad_value=0):
  """A reader-like uint8 batch; padding rows hold `pad_value` (0 as the reader pads)."""
  rng = np.random.RandomState(seed)
  num_frames = np.asarray(num_frames, np.int32)
  video = rng.randint(0, 256, size=(len(num_frames), T, FEATURES)).astype(np.uint8)
  video[np.arange(T)[None, :] >= num_frames[:, None]] = pad_value
  labels = (rng.uniform(size=(len(num_frames), C)) < 0.3).astype(np.float32)
  labels[np.arange(len(num_frames)), rng.randint(0, C, len(num_frames))] = 1.0
  return {"video_matrix": video, "num_frames": num_frames, "labels": labels}


def _cfg():
  """The GraphConfig of the flags as the test set them."""
  return config.from_flags()


def _placeholders():
  return {"video_matrix": tf1.placeholder(tf.uint8, [None, T, FEATURES], "video_matrix"),
          "num_frames": tf1.placeholder(tf.int32, [None], "num_frames"),
          "labels": tf1.placeholder(tf.float32, [None, C], "labels")}


def _feed(placeholders, batch):
  return {placeholders[name]: batch[name] for name in placeholders}


def _build_tower(seed=0, cfg=None):
  """A graph with one training tower (the kd_model task's) on placeholders."""
  graph = tf.Graph()
  task = kd_model.training_task(cfg or _cfg())
  with graph.as_default():
    tf1.set_random_seed(seed)
    batch = _placeholders()
    with tf.name_scope("tower_0"):
      terms = task.tower(batch, reuse=False)
  return types.SimpleNamespace(graph=graph, batch=batch, terms=terms, task=task)


def _build_training(seed=0, learning_rate=0.01, cfg=None):
  """One tower, an Adam step over the task's trained variables and UPDATE_OPS."""
  model = _build_tower(seed, cfg)
  graph, batch, terms = model.graph, model.batch, model.terms
  with graph.as_default():
    global_step = tf1.train.get_or_create_global_step()
    train_vars = model.task.trained_variables()
    optimizer = tf1.train.AdamOptimizer(learning_rate)
    grads = optimizer.compute_gradients(terms["total"], var_list=train_vars)
    missing = [v.op.name for g, v in grads if g is None]
    assert not missing, "variables without a gradient: %s" % missing
    updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
    train_op = tf.group(optimizer.apply_gradients(grads, global_step=global_step),
                        *updates)
  return types.SimpleNamespace(graph=graph, batch=batch, terms=terms, updates=updates,
                               train_op=train_op, train_vars=train_vars,
                               task=model.task)


def _update_target(update):
  """The name of the variable an UPDATE_OPS entry assigns (ref or resource variable)."""
  op = update if isinstance(update, tf.Operation) else update.op
  return op.inputs[0].op.name


def _values(sess, variables):
  return dict(zip([v.op.name for v in variables], sess.run(variables)))


def _role_variables(role, trainable_only=False):
  pool = tf1.trainable_variables() if trainable_only else tf1.global_variables()
  return [v for v in pool if v.op.name.startswith(role + "/")]


def _save_initialized_graph(directory, **flag_values):
  """Builds a training tower for `flag_values`, initializes it and saves it."""
  with _flag_values(**dict(TINY, **flag_values)):
    model = _build_tower()
    with model.graph.as_default(), tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      return tf1.train.Saver().save(sess, str(directory / "model.ckpt"))


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
  """A teacher-only run (model_type=teacher on all T frames) trained a few steps."""
  directory = tmp_path_factory.mktemp("teacher")
  with _flag_values(**dict(TINY, model_type="teacher", k_frame=T)):
    assert _cfg().roles() == ("teacher",)
    model = _build_training(seed=1)
    with model.graph.as_default(), tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      for step in range(TEACHER_STEPS):
        sess.run(model.train_op, _feed(model.batch, _numpy_batch(100 + step)))
      assert not _role_variables("student")
      return tf1.train.Saver().save(sess, str(directory / "model.ckpt"))


def test_serial_kd_trains_only_the_student_and_keeps_the_restored_teacher(
    tiny, teacher_checkpoint, monkeypatch):
  tiny(model_type="KD", k_frame=4, kd_mode="serial")
  # The teacher run left non-trivial batch-norm statistics to restore.
  bn = "teacher/tower/hidden1_bn/"
  assert tf.train.load_variable(teacher_checkpoint, bn + "update_count") == TEACHER_STEPS
  assert np.abs(tf.train.load_variable(teacher_checkpoint, bn + "moving_mean")).max() > 1e-3

  # Records how the task's tower builds each role and the outputs it gets.
  calls = []
  create = kd_model.create_role_model

  def recording_create(*args, **kwargs):
    arguments = inspect.signature(create).bind(*args, **kwargs).arguments
    outputs = create(*args, **kwargs)
    calls.append((arguments["role"], arguments["is_training"], outputs))
    return outputs
  monkeypatch.setattr(kd_model, "create_role_model", recording_create)
  model = _build_training(seed=2)
  assert [(role, is_training) for role, is_training, _ in calls] == [
      ("teacher", False), ("student", True)]
  teacher_outputs = calls[0][2]

  with model.graph.as_default():
    teacher_vars = kd_model.teacher_variables()
    names = {v.op.name for v in teacher_vars}
    for suffix in ("moving_mean", "moving_variance", "update_count", "weights"):
      assert any(n.endswith(suffix) for n in names), suffix
    assert not [n for n in names if "Adam" in n]  # no optimizer slots for the teacher
    assert not _role_variables("teacher", trainable_only=True)
    assert _role_variables("student", trainable_only=True)
    assert {v.op.name for v in model.train_vars} == {
        v.op.name for v in _role_variables("student", trainable_only=True)}
    # Every batch-norm update assigns a student variable; the teacher adds none.
    assert model.updates
    for update in model.updates:
      target = _update_target(update)
      assert target.startswith("student/"), target
    run_dir.check_checkpoint_matches(teacher_vars, teacher_checkpoint,
                                      "the teacher checkpoint")
    teacher_saver = tf1.train.Saver(var_list={v.op.name: v for v in teacher_vars})
    # The teacher evaluated alone in inference mode, sharing the tower's variables.
    feed = _feed(model.batch, _numpy_batch(7))
    reference = kd_model.inference_outputs(_cfg(), model.batch, "teacher", reuse=True)
    student_trainable = _role_variables("student", trainable_only=True)
    student_count = [v for v in _role_variables("student")
                     if v.op.name.endswith("hidden1_bn/update_count")]
    # The original's logistic classifier penalizes its weights and its biases.
    penalty = tf.add_n([FLAGS.l2_penalty * tf.nn.l2_loss(v) for v in student_trainable
                        if v.op.name.endswith(("classifier/logistic/weights",
                                               "classifier/logistic/biases"))])
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      teacher_saver.restore(sess, teacher_checkpoint)
      before = _values(sess, student_trainable)
      steps = 3
      for step in range(steps):
        terms, tower_teacher, alone, _ = sess.run(
            [model.terms, teacher_outputs, reference, model.train_op],
            _feed(model.batch, _numpy_batch(200 + step)))
        for key in ("predictions", "representation"):
          np.testing.assert_array_equal(tower_teacher[key], alone[key])
      after = _values(sess, student_trainable)
      teacher_after = _values(sess, teacher_vars)
      assert sess.run(student_count[0]) == steps
      expected_penalty = sess.run(penalty, feed)
      terms = sess.run(model.terms, feed)

  for name, value in teacher_after.items():
    np.testing.assert_array_equal(value, tf.train.load_variable(teacher_checkpoint, name),
                                  err_msg=name)
  for name in before:
    assert not np.array_equal(before[name], after[name]), name + " did not change"
  assert terms["rep_loss"] > 0 and terms["pred_loss"] > 0
  assert terms["regularization"] == pytest.approx(expected_penalty, rel=1e-5)
  assert "teacher_label_loss" not in terms
  expected_total = (terms["label_loss"] + 0.01 * terms["pred_loss"] +
                    0.001 * terms["rep_loss"] + terms["regularization"])
  assert terms["total"] == pytest.approx(expected_total, rel=1e-5)


def _inference_distillation_losses(k_frame, teacher_checkpoint, batch):
  """(L_rep, L_pred) between teacher and a student with the teacher's weights, both in
  inference mode; the student sees `k_frame` frames."""
  with _flag_values(k_frame=k_frame), tf.Graph().as_default():
    inputs = _placeholders()
    outputs = {}
    for role in ("teacher", "student"):
      frames, num_frames = kd_model.model_inputs(_cfg(), role, inputs)
      outputs[role] = kd_model.create_role_model(_cfg(), role, frames, num_frames,
                                                 is_training=False, reuse=False)
    rep = losses.representation_loss(outputs["teacher"]["representation"],
                                     outputs["student"]["representation"], "sum")
    pred = losses.prediction_loss(outputs["teacher"]["predictions"],
                                  outputs["student"]["predictions"], "mse", "sum")
    # Both roles restore the teacher's checkpoint values: names differ only in the
    # leading scope.
    teacher_vars, student_vars = _role_variables("teacher"), _role_variables("student")
    assert len(teacher_vars) + len(student_vars) == len(tf1.global_variables())
    savers = [tf1.train.Saver(var_list={v.op.name: v for v in teacher_vars}),
              tf1.train.Saver(var_list={"teacher/" + v.op.name[len("student/"):]: v
                                        for v in student_vars})]
    with tf1.Session() as sess:
      for saver in savers:
        saver.restore(sess, teacher_checkpoint)
      return sess.run([rep, pred], _feed(inputs, batch))


def test_distillation_terms_vanish_when_the_student_is_the_teacher_in_inference(
    tiny, teacher_checkpoint):
  batch = _numpy_batch(11)
  rep, pred = _inference_distillation_losses(T, teacher_checkpoint, batch)
  assert rep < 1e-6 and pred < 1e-6
  rep, pred = _inference_distillation_losses(4, teacher_checkpoint, batch)
  assert rep > 1e-3 and pred > 1e-4


def _parallel_tower_distillation_losses(k_frame):
  """The KD tower in parallel mode (both roles in training mode, no dropout) with the
  student's variables set to the teacher's -> (rep_loss, pred_loss)."""
  with _flag_values(model_type="KD", kd_mode="parallel", k_frame=k_frame, drop_rate=0.0):
    model = _build_tower(seed=3)
  with model.graph.as_default():
    teachers = {v.op.name[len("teacher/"):]: v for v in _role_variables("teacher")}
    students = _role_variables("student")
    assert len(students) == len(teachers)
    copy = tf.group(*[v.assign(teachers[v.op.name[len("student/"):]]) for v in students])
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      sess.run(copy)
      terms = sess.run(model.terms, _feed(model.batch, _numpy_batch(12)))
  return terms["rep_loss"], terms["pred_loss"]


def test_tower_distillation_terms_vanish_for_identical_models_on_all_frames(tiny):
  # In parallel mode both roles normalize with batch statistics, so with dropout off a
  # student with the teacher's weights on all frames computes exactly what it does.
  rep, pred = _parallel_tower_distillation_losses(T)
  assert rep < 1e-6 and pred < 1e-6
  rep, pred = _parallel_tower_distillation_losses(4)
  assert rep > 1e-3 and pred > 1e-5


def _teacher_shapes_of_kd_graph():
  """{name: shape list} of kd_model.teacher_variables() in a KD tower for the flags."""
  with _build_tower().graph.as_default():
    return {v.op.name: v.shape.as_list() for v in kd_model.teacher_variables()}


def _checkpoint_error(teacher_checkpoint_path):
  with _build_tower().graph.as_default():
    with pytest.raises(cli.UsageError) as error:
      run_dir.check_checkpoint_matches(kd_model.teacher_variables(),
                                        teacher_checkpoint_path, "the teacher checkpoint")
    return str(error.value)


def test_teacher_checkpoint_of_another_config_or_without_teacher_is_refused(
    tiny, tmp_path):
  tiny(model_type="KD", k_frame=4)
  bigger = _save_initialized_graph(tmp_path / "cluster8", model_type="teacher",
                                   k_frame=T, nextvlad_cluster_size=8)
  message = _checkpoint_error(bigger)
  assert message.startswith("the teacher checkpoint %s" % bigger)
  named = re.findall(r"(teacher/\S+) (\[[\d, ]*\]) in the graph vs (\[[\d, ]*\]) stored",
                     message)
  assert named, message
  stored = dict(tf.train.list_variables(bigger))
  graph_shapes = _teacher_shapes_of_kd_graph()
  for name, graph_shape, stored_shape in named:
    assert graph_shape == str(graph_shapes[name]) and stored_shape == str(stored[name])
    assert graph_shape != stored_shape
  # Cluster size 4 vs 8: the cluster logits have groups * clusters columns.
  assert ("teacher/tower/rgb_nextvlad/cluster_logits/weights [16, 8] in the graph vs "
          "[16, 16] stored") in message

  baseline = _save_initialized_graph(tmp_path / "baseline", model_type="student",
                                     k_frame=4)
  assert all(not n.startswith("teacher/") for n, _ in tf.train.list_variables(baseline))
  message = _checkpoint_error(baseline)
  assert "lacks %d variables" % len(graph_shapes) in message, message
  missing = re.findall(r"teacher/[\w/]+", message)
  assert missing and set(missing) <= set(graph_shapes)

  message = _checkpoint_error(str(tmp_path / "nothing" / "model.ckpt-1"))
  assert "cannot be read" in message


def test_parallel_kd_trains_both_roles_and_adds_the_teacher_label_loss(tiny):
  tiny(model_type="KD", kd_mode="parallel", k_frame=4, kd_ce_weight=0.7,
       kd_pred_weight=0.3, kd_rep_weight=0.2, regularization_penalty=2.0)
  assert _cfg().trained_roles() == ("teacher", "student")
  model = _build_training(seed=4)
  with model.graph.as_default():
    teacher_trainable = _role_variables("teacher", trainable_only=True)
    student_trainable = _role_variables("student", trainable_only=True)
    assert teacher_trainable and student_trainable
    assert set(model.train_vars) == set(teacher_trainable + student_trainable)
    targets = [_update_target(update) for update in model.updates]
    assert any(t.startswith("teacher/") and t.endswith("moving_mean") for t in targets)
    assert any(t.startswith("student/") and t.endswith("moving_mean") for t in targets)
    # The teacher learns from the labels only: L_rep and L_pred do not reach it.
    distillation = model.terms["rep_loss"] + model.terms["pred_loss"]
    assert all(g is None for g in tf.gradients(distillation, teacher_trainable))
    assert all(g is not None for g in tf.gradients(distillation, student_trainable))
    teacher_regularization = kd_model.regularization_loss("teacher")
    feed = _feed(model.batch, _numpy_batch(5))
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      before = _values(sess, teacher_trainable + student_trainable)
      terms, teacher_penalty = sess.run([model.terms, teacher_regularization], feed)
      sess.run(model.train_op, feed)
      after = _values(sess, teacher_trainable + student_trainable)
  for name in before:
    assert not np.array_equal(before[name], after[name]), name + " did not change"
  assert "teacher_label_loss" in terms and terms["teacher_label_loss"] > 0
  assert teacher_penalty > 0
  expected = (0.7 * terms["label_loss"] + 0.3 * terms["pred_loss"] +
              0.2 * terms["rep_loss"] + 2.0 * terms["regularization"] +
              terms["teacher_label_loss"] + 2.0 * teacher_penalty)
  assert terms["total"] == pytest.approx(expected, rel=1e-5)


def _dequantized(video, num_frames):
  real = np.arange(video.shape[1])[None, :] < np.asarray(num_frames)[:, None]
  return utils.Dequantize(video.astype(np.float32)) * real[:, :, None]


def test_model_inputs_per_role_are_the_dequantized_frames_they_see(tiny):
  k = 4
  tiny(model_type="KD", k_frame=k, frame_sampling="uniform")
  batch = _numpy_batch(3, pad_value=77)  # garbage padding must not reach the teacher
  with tf.Graph().as_default():
    inputs = _placeholders()
    teacher = kd_model.model_inputs(_cfg(), "teacher", inputs)
    student = kd_model.model_inputs(_cfg(), "student", inputs)
    with _flag_values(k_frame=T):
      all_frames_student = kd_model.model_inputs(_cfg(), "student", inputs)
    assert student[0].shape.as_list() == [None, k, FEATURES]
    with tf1.Session() as sess:
      teacher, student, all_frames = sess.run([teacher, student, all_frames_student],
                                              _feed(inputs, batch))
  video, num_frames = batch["video_matrix"], batch["num_frames"]
  np.testing.assert_allclose(teacher[0], _dequantized(video, num_frames), rtol=1e-6)
  assert (teacher[0][np.arange(T)[None, :] >= num_frames[:, None]] == 0).all()
  np.testing.assert_array_equal(teacher[1], num_frames)
  indices = (np.arange(k)[None, :] * num_frames[:, None]) // k
  assert indices[-1].tolist() == [0, 0, 0, 0] and indices[-2].tolist() == [0, 0, 1, 2]
  expected = utils.Dequantize(
      np.take_along_axis(video, indices[:, :, None], axis=1).astype(np.float32))
  assert student[0].shape == (len(num_frames), k, FEATURES)
  np.testing.assert_allclose(student[0], expected, rtol=1e-6)
  np.testing.assert_array_equal(student[1], [k] * len(num_frames))
  # A student with k_frame = max_frames sees exactly the teacher's input.
  np.testing.assert_array_equal(all_frames[0], teacher[0])
  np.testing.assert_array_equal(all_frames[1], teacher[1])


@pytest.mark.parametrize("model_type, k_frame, suffix, roles, trained", [
    ("teacher", 300, "_teacher", ("teacher",), ("teacher",)),
    ("teacher", 6, "_student_k_6", ("student",), ("student",)),
    ("student", 6, "_student_k_6", ("student",), ("student",)),
    ("student", 300, "_student_k_300", ("student",), ("student",)),
    ("KD", 30, "_KD_k_30", ("teacher", "student"), ("student",)),
])
def test_run_kinds(set_flags, model_type, k_frame, suffix, roles, trained):
  set_flags(model_type=model_type, k_frame=k_frame, max_frames=300, kd_mode="serial")
  config.from_flags()
  assert _cfg().run_dir_suffix() == suffix
  assert _cfg().roles() == roles
  assert _cfg().trained_roles() == trained
  if model_type != "KD":
    assert _cfg().single_model_role() == roles[0]
  else:
    set_flags(kd_mode="parallel")
    assert _cfg().trained_roles() == ("teacher", "student")


@pytest.mark.parametrize("name, value", [
    ("model_type", "Teacher"), ("k_frame", 0), ("k_frame", 301),
    ("frame_sampling", "stride"), ("model", "NoSuchModel"), ("kd_mode", "both"),
    ("kd_reduction", "max"), ("kd_pred_loss", "l1")])
def test_config_names_the_bad_flag(set_flags, name, value):
  set_flags(max_frames=300, model="NeXtVLADModel", frame_features=True)
  config.from_flags()  # the defaults are valid
  set_flags(**{name: value})
  with pytest.raises(cli.UsageError) as error:
    config.from_flags()
  assert "--%s" % name in str(error.value)
  assert str(value) in str(error.value)


def test_model_flags_dict_records_the_graph_flags_and_conflicts_name_them(tiny):
  tiny(model_type="KD", k_frame=6, frame_sampling="random", drop_rate=0.25,
       groups=2, video_level_classifier_model="MoeModel")
  recorded = _cfg().to_json()
  expected = dict(nextvlad_cluster_size=4, nextvlad_hidden_size=8, groups=2,
                  expansion=1, gating_reduction=2, drop_rate=0.25,
                  video_level_classifier_model="MoeModel", model="NeXtVLADModel",
                  k_frame=6, frame_sampling="random", model_type="KD", kd_mode="serial",
                  max_frames=T, num_classes=C, feature_sizes="16,8",
                  label_loss="CrossEntropyLoss", l2_penalty=1e-3,
                  preprocessing=preprocessing.NONE)
  for name, value in expected.items():
    assert recorded[name] == value, name
  assert "pca_eigenvals" not in recorded
  assert "train_dir" not in recorded and "batch_size" not in recorded
  assert run_dir.conflicts(recorded, dict(recorded)) == []
  changed = dict(recorded, drop_rate=0.5, k_frame=30)
  assert run_dir.conflicts(recorded, changed) == ["--drop_rate: 0.25 -> 0.5",
                                                 "--k_frame: 6 -> 30"]


def test_loss_scale_note_gives_the_recipe_balance_for_other_sizes(set_flags):
  set_flags(model_type="KD", kd_reduction="sum", kd_rep_weight=0.001, kd_pred_weight=0.01)
  assert kd_model.loss_scale_note(_cfg(), 80, 2048) is None  # the documented sizes
  note = kd_model.loss_scale_note(_cfg(), 32, 256)
  assert "--kd_rep_weight=0.02 --kd_pred_weight=0.025" in note  # x20 and x2.5
  set_flags(kd_reduction="mean")
  assert kd_model.loss_scale_note(_cfg(), 32, 256) is None
  set_flags(model_type="teacher", kd_reduction="sum")
  assert kd_model.loss_scale_note(_cfg(), 32, 256) is None


def _teacher_model(**changes):
  """The tiny config's model fields with `changes`: a teacher of its own."""
  return dict(_cfg().model_json(), **changes)


def test_each_role_builds_its_own_model_and_l_rep_goes_through_a_projection(
    tiny, monkeypatch):
  tiny(model_type="KD", k_frame=4, nextvlad_hidden_size=4, drop_rate=0.0)
  cfg = _cfg().replace(teacher_model=_teacher_model(
      model="MixNeXtVladModel", mix_number=2, nextvlad_hidden_size=8))
  assert cfg.model_config("teacher").model == "MixNeXtVladModel"
  assert cfg.model_config("student").model == "NeXtVLADModel"
  calls = helpers.record_role_models(monkeypatch)
  model = _build_training(seed=5, cfg=cfg)
  (_, teacher), (_, student) = calls
  with model.graph.as_default():
    shapes = {v.op.name: v.shape.as_list() for v in tf1.global_variables()}
    projection = [v for v in model.train_vars if "rep_projection" in v.op.name]
    assert {v.op.name for v in projection} == {"student/tower/rep_projection/weights",
                                               "student/tower/rep_projection/biases"}
    weights, biases = sorted(projection, key=lambda v: v.op.name)[::-1]
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      feed = _feed(model.batch, _numpy_batch(3))
      terms, t_rep, s_rep, w, b = sess.run(
          [model.terms, teacher["representation"], student["representation"],
           weights, biases], feed)
      before = sess.run(weights)
      sess.run(model.train_op, feed)
      after = sess.run(weights)
  assert shapes["teacher/tower/branch_1/hidden1/weights"][1] == 8
  assert shapes["student/tower/hidden1/weights"][1] == 4
  assert not [n for n in shapes if n.startswith("student/") and "branch_" in n]
  assert shapes["student/tower/rep_projection/weights"] == [4, 8]
  expected = ((t_rep - (s_rep @ w + b)) ** 2).sum()
  assert terms["rep_loss"] == pytest.approx(expected, rel=1e-5)
  assert not np.array_equal(before, after)  # the projection trains with the student
  # The projection is training only: the student's inference graph has none.
  with tf.Graph().as_default():
    kd_model.inference_outputs(cfg, dict(_placeholders(), video_ids=tf.constant(["v"])),
                               "student")
    assert not [v for v in tf1.global_variables() if "rep_projection" in v.op.name]


def test_a_zero_weight_leaves_its_term_and_the_projection_out(tiny):
  tiny(model_type="KD", k_frame=4, nextvlad_hidden_size=4, kd_rep_weight=0.0)
  cfg = _cfg().replace(teacher_model=_teacher_model(nextvlad_hidden_size=8))
  model = _build_tower(cfg=cfg)
  assert "rep_loss" not in model.terms and "pred_loss" in model.terms
  with model.graph.as_default():
    assert not [v for v in tf1.global_variables() if "rep_projection" in v.op.name]
  model = _build_tower(cfg=cfg.replace(kd_rep_weight=0.5, kd_pred_weight=0.0))
  assert "rep_loss" in model.terms and "pred_loss" not in model.terms


def test_model_flags_record_the_teachers_model_and_old_kd_runs_read_as_same(tiny):
  tiny(model_type="KD", k_frame=4)
  teacher = _teacher_model(model="MixNeXtVladModel", mix_number=2)
  recorded = _cfg().replace(teacher_model=teacher).to_json()
  assert recorded["teacher_model"]["model"] == "MixNeXtVladModel"
  back = config.from_json(recorded, "model_flags.json")
  assert back.model_config("teacher") == config.ModelConfig(**teacher)
  assert back.model_config("student") == _cfg().model_only()
  # A KD run written before roles had models of their own built its teacher like its
  # student; a teacher-type run has no teacher_model.
  old = {k: v for k, v in _cfg().to_json().items() if k != "teacher_model"}
  assert config.from_json(old, "old").model_config("teacher") == _cfg().model_only()
  assert config.from_json(dict(old, model_type="teacher"), "old").teacher_model == {}
  changed = dict(recorded, teacher_model=dict(teacher, mix_number=3))
  assert run_dir.conflicts(recorded, changed) == ["--teacher_model: mix_number 2 -> 3"]


def _teacher_run(directory, **flag_values):
  """A run directory holding only the model_flags.json of the tiny config."""
  with _flag_values(**dict(TINY, **flag_values)):
    directory.mkdir()
    file_io.write_json(str(directory / "model_flags.json"), _cfg().to_json())
  return str(directory / "model.ckpt-1")


def test_the_teacher_is_built_from_its_run_directory(tiny, tmp_path):
  tiny(model_type="KD", k_frame=4, nextvlad_hidden_size=4)
  checkpoint = _teacher_run(tmp_path / "mix", model="MixNeXtVladModel", mix_number=2,
                            model_type="teacher", k_frame=T, nextvlad_hidden_size=16)
  teacher, model, note = run_dir.teacher_of(checkpoint, _cfg())
  assert (teacher.checkpoint, teacher.scope, note) == (checkpoint, "teacher", None)
  assert (model.model, model.mix_number, model.nextvlad_hidden_size) == (
      "MixNeXtVladModel", 2, 16)
  # A baseline run teaches with its student/ variables.
  baseline = _teacher_run(tmp_path / "baseline", model_type="student", k_frame=6)
  teacher, model, _ = run_dir.teacher_of(baseline, _cfg())
  assert teacher.scope == "student" and model.nextvlad_hidden_size == 8
  with tf.Graph().as_default():
    variable = tf1.get_variable("teacher/tower/hidden1/weights", [2])
    assert teacher.var_list([variable]) == {"student/tower/hidden1/weights": variable}
  # No model_flags.json: the command's model flags, said in one line.
  (tmp_path / "bare").mkdir()
  teacher, model, note = run_dir.teacher_of(str(tmp_path / "bare" / "model.ckpt-1"),
                                            _cfg())
  assert model == _cfg().model_only() and "has no model_flags.json" in note


@pytest.mark.parametrize("field, value, message", [
    ("num_classes", 7, "predicts 7 classes but --num_classes=%d: L_pred" % C),
    ("feature_sizes", "16,4", "was trained with --feature_sizes=16,4, this run reads "
                              "--feature_sizes=16,8")])
def test_a_teacher_of_other_inputs_or_classes_is_refused(tiny, tmp_path, field, value,
                                                         message):
  tiny(model_type="KD", k_frame=4)
  checkpoint = _teacher_run(tmp_path / "t", model_type="teacher", k_frame=T,
                            **{field: value})
  with pytest.raises(cli.UsageError, match=re.escape(message)):
    run_dir.teacher_of(checkpoint, _cfg())
