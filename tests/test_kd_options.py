"""The named KD options (--kd_pred_loss=logits_kl with --kd_temperature, --kd_rep_loss,
--kd_weights=balanced with --kd_shares): each term against numpy, the balanced weights'
shares and their survival of a resume, what model_flags.json records, and tiny runs
online, with towers, through a teacher cache (new, and one built before caches held
logits) and at segment level."""
import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf

import cli
import config
import kd_model
import losses
import teacher_cache
from tests import helpers

tf1 = tf.compat.v1
T, C, FEATURES = 6, 5, 16 + 8
TINY = dict(model="NeXtVLADModel", feature_names="rgb,audio", feature_sizes="16,8",
            max_frames=T, num_classes=C, nextvlad_cluster_size=4,
            nextvlad_hidden_size=8, groups=2, expansion=1, gating_reduction=2,
            drop_rate=0.0, l2_penalty=1e-3, pca_eigenvals="")


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _run(tensor):
  with tf1.Session() as sess:
    return sess.run(tensor)


# --- the terms against numpy ----------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_logits_kl_is_the_softened_binary_kl_times_t_squared(temperature, reduction):
  rng = np.random.RandomState(0)
  t, s = rng.normal(0, 3, (4, 7)), rng.normal(0, 3, (4, 7))
  p, q = _sigmoid(t / temperature), _sigmoid(s / temperature)
  per_example = temperature ** 2 * np.sum(
      p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), axis=1)
  wanted = per_example.sum() if reduction == "sum" else per_example.mean()
  with tf.Graph().as_default():
    got = _run(losses.logits_kl(tf.constant(t, tf.float32), tf.constant(s, tf.float32),
                                temperature, reduction))
  assert got == pytest.approx(wanted, rel=1e-5)
  # Softening shrinks the per-class gap: at T=2 the term differs from T=1's.
  if temperature == 2.0:
    with tf.Graph().as_default():
      at_one = _run(losses.logits_kl(tf.constant(t, tf.float32),
                                     tf.constant(s, tf.float32), 1.0, reduction))
    assert abs(at_one - got) > 1e-3 * at_one


def test_logits_kl_at_t1_equals_kl_of_the_probabilities():
  rng = np.random.RandomState(1)
  t, s = rng.normal(0, 2, (3, 6)), rng.normal(0, 2, (3, 6))
  with tf.Graph().as_default():
    on_logits = _run(losses.logits_kl(tf.constant(t, tf.float32),
                                      tf.constant(s, tf.float32)))
    on_probabilities = _run(losses.prediction_loss(
        tf.constant(_sigmoid(t), tf.float32), tf.constant(_sigmoid(s), tf.float32),
        "kl"))
  assert on_logits == pytest.approx(on_probabilities, rel=1e-4)


def test_a_model_without_logits_gives_the_logit_of_its_clipped_probabilities():
  p = np.array([[0.0, 1e-9, 0.25, 0.5, 1.0]], np.float32)
  eps = losses.PROBABILITY_EPSILON
  wanted = np.log(np.maximum(p, eps)) - np.log(np.maximum(1 - p, eps))
  with tf.Graph().as_default():
    got = _run(losses.logits_of({"predictions": tf.constant(p)}))
    logits = tf.constant([[1.0, 2.0, 3.0, 4.0, 5.0]])
    assert losses.logits_of({"predictions": tf.constant(p), "logits": logits}) is logits
  np.testing.assert_allclose(got, wanted, rtol=1e-5)
  assert abs(got[0, 3]) < 1e-6 and got[0, 0] == pytest.approx(-13.8155, rel=1e-4)


def test_cosine_and_standardized_representation_losses_against_numpy():
  rng = np.random.RandomState(2)
  teacher = rng.normal(0, 1, (5, 4)) * [1.0, 10.0, 0.1, 0.0]  # a dead dimension too
  teacher[:, 3] = 0.7
  student = rng.normal(0, 1, (5, 4))
  cosine = 1 - np.sum(teacher * student, 1) / (np.linalg.norm(teacher, axis=1) *
                                               np.linalg.norm(student, axis=1))
  mean, variance = teacher.mean(0), teacher.var(0)
  scale = np.sqrt(variance + losses.VARIANCE_FLOOR * variance.mean())
  standardized = np.sum(((teacher - mean) / scale - (student - mean) / scale) ** 2, 1)
  with tf.Graph().as_default():
    t, s = tf.constant(teacher, tf.float32), tf.constant(student, tf.float32)
    got = _run({kind + "_" + reduction:
                losses.representation_loss(t, s, reduction, kind)
                for kind in ("mse", "cosine", "standardized")
                for reduction in ("sum", "mean")})
    # A constant batch (one example a tower) has no spread: scale 1, the mse.
    one = _run(losses.representation_loss(t[:1], s[:1], "sum", "standardized"))
  for kind, per_example in [("mse", np.sum((teacher - student) ** 2, 1)),
                            ("cosine", cosine), ("standardized", standardized)]:
    assert got[kind + "_sum"] == pytest.approx(per_example.sum(), rel=1e-5), kind
    assert got[kind + "_mean"] == pytest.approx(per_example.mean(), rel=1e-5), kind
  assert one == pytest.approx(np.sum((teacher[0] - student[0]) ** 2), rel=1e-5)
  # Scale-free: a teacher 100x larger (and the student with it) leaves both unchanged.
  with tf.Graph().as_default():
    scaled = _run([losses.representation_loss(
        tf.constant(100 * teacher, tf.float32), tf.constant(100 * student, tf.float32),
        "sum", kind) for kind in ("cosine", "standardized")])
  assert scaled == pytest.approx([got["cosine_sum"], got["standardized_sum"]], rel=1e-4)


# --- options in a KD tower ------------------------------------------------------------

def _cfg(**values):
  """A tiny parallel-KD GraphConfig (no teacher checkpoint needed) with `values`."""
  flag_values = config.private_flags([])
  for name, value in dict(TINY, model_type="KD", k_frame=3, kd_mode="parallel",
                          **values).items():
    flag_values[name].value = value
  return config.from_flags(flag_values)


def _batch(seed, size=6):
  rng = np.random.RandomState(seed)
  num_frames = rng.randint(1, T + 1, size).astype(np.int32)
  video = rng.randint(0, 256, (size, T, FEATURES)).astype(np.uint8)
  labels = (rng.uniform(size=(size, C)) < 0.4).astype(np.float32)
  return {"video_matrix": video, "num_frames": num_frames, "labels": labels}


def _training_graph(cfg, monkeypatch=None, towers=1):
  """`towers` KD towers on placeholders, an Adam step and UPDATE_OPS (as TrainGraph);
  the outputs each create_role_model gave (with monkeypatch)."""
  created = helpers.record_role_models(monkeypatch) if monkeypatch else []
  graph = tf.Graph()
  task = kd_model.training_task(cfg)
  with graph.as_default():
    tf1.set_random_seed(1)
    batch = {"video_matrix": tf1.placeholder(tf.uint8, [None, T, FEATURES]),
             "num_frames": tf1.placeholder(tf.int32, [None]),
             "labels": tf1.placeholder(tf.float32, [None, C])}
    slices = [dict(zip(batch, values)) for values in zip(
        *[tf.split(tensor, towers) for tensor in batch.values()])]
    terms = []
    for i, tower_batch in enumerate(slices):
      with tf.name_scope("tower_%d" % i):
        terms.append(task.tower(tower_batch, reuse=i > 0))
    step = tf1.train.get_or_create_global_step()
    optimizer = tf1.train.AdamOptimizer(0.01)
    grads = [optimizer.compute_gradients(t["total"], var_list=task.trained_variables())
             for t in terms]
    averaged = [(tf.add_n([g[i][0] for g in grads]) / towers, grads[0][i][1])
                for i in range(len(grads[0]))]
    train_op = tf.group(optimizer.apply_gradients(averaged, global_step=step),
                        *tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
    saver = tf1.train.Saver()
  return types.SimpleNamespace(graph=graph, batch=batch, terms=terms, created=created,
                               train_op=train_op, saver=saver)


def _feed(model, seed, size=6):
  values = _batch(seed, size)
  return {model.batch[name]: values[name] for name in model.batch}


def test_the_tower_compares_temperature_softened_logits(monkeypatch):
  cfg = _cfg(kd_pred_loss="logits_kl", kd_temperature=2.0, kd_rep_loss="cosine")
  model = _training_graph(cfg, monkeypatch)
  (teacher_role, teacher), (student_role, student) = model.created
  assert (teacher_role, student_role) == ("teacher", "student")
  with model.graph.as_default(), tf1.Session() as sess:
    sess.run(tf1.global_variables_initializer())
    got = sess.run({"terms": model.terms[0], "t": teacher["logits"],
                    "s": student["logits"], "tr": teacher["representation"],
                    "sr": student["representation"]}, _feed(model, 3))
  p, q = _sigmoid(got["t"] / 2), _sigmoid(got["s"] / 2)
  kl = 4 * np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)))
  assert got["terms"]["pred_loss"] == pytest.approx(kl, rel=1e-4)
  tr, sr = got["tr"], got["sr"]
  cosine = np.sum(1 - np.sum(tr * sr, 1) / (np.linalg.norm(tr, axis=1) *
                                            np.linalg.norm(sr, axis=1)))
  assert got["terms"]["rep_loss"] == pytest.approx(cosine, rel=1e-4)


def test_rep_loss_none_leaves_l_rep_and_its_projection_out():
  model = _training_graph(_cfg(kd_rep_loss="none", nextvlad_hidden_size=4))
  assert "rep_loss" not in model.terms[0] and "pred_loss" in model.terms[0]
  with model.graph.as_default():
    assert not [v for v in tf1.global_variables()
                if kd_model.PROJECTION_SCOPE in v.op.name]


def test_balanced_weights_give_the_shares_at_the_first_step_and_stay(tmp_path,
                                                                     towers=2):
  shares = (0.6, 0.3, 0.1)
  cfg = _cfg(kd_weights="balanced", kd_shares="0.6,0.3,0.1", kd_rep_loss="standardized",
             nextvlad_hidden_size=4)  # a narrower student: L_rep through a projection
  model = _training_graph(cfg, towers=towers)
  names = ("label_loss", "pred_loss", "rep_loss")
  with model.graph.as_default(), tf1.Session() as sess:
    sess.run(tf1.global_variables_initializer())
    first = sess.run({"terms": model.terms, "train": model.train_op}, _feed(model, 5))
    weights = [first["terms"][0][short + "_weight"] for short in ("ce", "pred", "rep")]
    # The first tower's terms at the first step, weighted, have the asked shares.
    values = [first["terms"][0][name] for name in names]
    weighted = np.array(weights) * values
    np.testing.assert_allclose(weighted / weighted.sum(), shares, rtol=1e-5)
    assert weighted.sum() == pytest.approx(values[0], rel=1e-5)  # the total is L_CE's
    for tower in first["terms"][1:]:  # every tower weighs with them
      assert [tower[s + "_weight"] for s in ("ce", "pred", "rep")] == weights
    stored = sess.run(tf1.global_variables(kd_model.WEIGHTS_SCOPE)[0])
    np.testing.assert_array_equal(stored, weights + [1.0])
    second = sess.run(model.terms[0], _feed(model, 6))
    assert second["rep_loss"] != values[2]
    assert [second[s + "_weight"] for s in ("ce", "pred", "rep")] == weights
    checkpoint = model.saver.save(sess, str(tmp_path / "model.ckpt"))
  # A resumed run reads them back, whatever its first batch.
  resumed = _training_graph(cfg, towers=towers)
  with resumed.graph.as_default(), tf1.Session() as sess:
    resumed.saver.restore(sess, checkpoint)
    again = sess.run({"terms": resumed.terms[0], "train": resumed.train_op},
                     _feed(resumed, 9))["terms"]
  assert [again[s + "_weight"] for s in ("ce", "pred", "rep")] == weights


def test_a_zero_share_leaves_its_term_out():
  model = _training_graph(_cfg(kd_weights="balanced", kd_shares="0.5,0.5,0"))
  assert "rep_loss" not in model.terms[0] and "pred_weight" in model.terms[0]


@pytest.mark.parametrize("values,message", [
    (dict(kd_temperature=2.0), "--kd_temperature=2 softens logits: it needs "
     "--kd_pred_loss=logits_kl (mse compares probabilities)"),
    (dict(kd_temperature=2.0, kd_pred_loss="kl"), "it needs --kd_pred_loss=logits_kl"),
    (dict(kd_temperature=0.0, kd_pred_loss="logits_kl"),
     "--kd_temperature must be positive"),
    (dict(kd_shares="0.5,0.5"), "--kd_shares=0.5,0.5: give the shares"),
    (dict(kd_shares="0.5,0.5,0.5"), "sum to 1"),
    (dict(kd_shares="1,-0.5,0.5"), "three numbers >= 0"),
    (dict(kd_weights="balanced", kd_rep_loss="none"),
     "--kd_shares=0.5,0.25,0.25 gives L_rep a share but --kd_rep_loss=none"),
])
def test_options_that_mean_nothing_together_are_refused_in_one_line(values, message):
  with pytest.raises(cli.UsageError) as raised:
    _cfg(**values)
  assert message in str(raised.value) and "\n" not in str(raised.value)


def test_the_defaults_are_the_recipe_and_shares_have_one_spelling():
  cfg = config.defaults()
  assert (cfg.kd_pred_loss, cfg.kd_temperature, cfg.kd_rep_loss, cfg.kd_weights) == (
      "mse", 1.0, "mse", "recipe")
  assert kd_model.kd_terms(cfg.replace(model_type="KD")) == ("pred_loss", "rep_loss")
  assert _cfg(kd_shares=".50,0.25,.25").kd_shares == "0.5,0.25,0.25"
  # A model_flags.json written before these options resumes with the recipe's.
  recorded = {k: v for k, v in cfg.to_json().items()
              if k not in ("kd_temperature", "kd_rep_loss", "kd_weights", "kd_shares")}
  assert config.from_json(recorded, "old/model_flags.json").to_json() == cfg.to_json()


# --- runs: online with towers, through caches, at segment level -----------------------

COMMON = ["--batch_size=4", "--num_readers=1", "--seed=7", "--log_every_n_steps=1",
          "--export_model_steps=1000"] + helpers.TINY_MODEL
OPTIONS = ["--kd_pred_loss=logits_kl", "--kd_temperature=2", "--kd_rep_loss=cosine",
           "--kd_weights=balanced", "--kd_shares=0.5,0.3,0.2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("kdopt")
  train, _ = helpers.make_dataset(root / "data", train_videos=16, validate_videos=2,
                                  min_frames=10, max_frames=30)
  base = str(root / "run")
  helpers.run_cli("train.py", ["--train_data_pattern=" + train, "--train_dir=" + base,
                               "--max_steps=3"] + COMMON)
  return {"root": root, "train": train, "teacher": base + "_teacher"}


def _kd(setup, name, *args, check=True, env=None):
  """train.py --model_type=KD --k_frame=4 into <root>/<name>; (process, run dir)."""
  base = str(setup["root"] / name)
  process = helpers.run_cli("train.py", [
      "--train_data_pattern=" + setup["train"], "--train_dir=" + base,
      "--teacher_checkpoint=" + setup["teacher"], "--model_type=KD", "--k_frame=4"] +
      COMMON + list(args), check=check, env=env)
  return process, base + "_KD_k_4"


def _weights_at(run, step):
  return tf.train.load_variable(os.path.join(run, "model.ckpt-%d" % step),
                                kd_model.WEIGHTS_SCOPE + "/values")


def test_online_with_towers_records_the_options_and_refuses_a_resume_with_others(
    setup):
  towers = {"YT8M_CPU_TOWERS": "2"}
  _, run = _kd(setup, "online", "--max_steps=2", *OPTIONS, env=towers)
  recorded = json.load(open(os.path.join(run, "model_flags.json")))
  assert {k: recorded[k] for k in ("kd_pred_loss", "kd_temperature", "kd_rep_loss",
                                   "kd_weights", "kd_shares")} == {
      "kd_pred_loss": "logits_kl", "kd_temperature": 2.0, "kd_rep_loss": "cosine",
      "kd_weights": "balanced", "kd_shares": "0.5,0.3,0.2"}
  weights = _weights_at(run, 2)
  assert weights[3] == 1.0 and weights[0] == pytest.approx(0.5) and weights[1] > 0
  for other in ("--kd_temperature=4", "--kd_rep_loss=standardized",
                "--kd_weights=recipe", "--kd_shares=0.4,0.4,0.2"):
    changed = [a for a in OPTIONS if a.split("=")[0] != other.split("=")[0]] + [other]
    process, _ = _kd(setup, "online", "--max_steps=4", *changed, check=False,
                     env=towers)
    line = helpers.user_error_line(process)
    assert "was trained with other model flags (--%s:" % other[2:].split("=")[0] in line
  process, _ = _kd(setup, "online", "--max_steps=4", *OPTIONS, env=towers)
  assert "Starting at step 2 (resumed)." in process.stdout
  np.testing.assert_array_equal(_weights_at(run, 4), weights)


def _entries(cache):
  """[tf.train.Example features] of every entry of a cache."""
  found = []
  for name in sorted(os.listdir(cache)):
    if name.startswith("teacher-"):
      for record in tf1.io.tf_record_iterator(os.path.join(cache, name)):
        found.append(tf.train.Example.FromString(record).features.feature)
  return found


def test_a_cache_holds_the_teachers_logits_and_serves_logits_kl(setup):
  cache = str(setup["root"] / "cache")
  process, run = _kd(setup, "offline", "--max_steps=2", "--teacher_cache=" + cache,
                     *OPTIONS)
  assert "Teacher cache: computing 2 of 2 shards" in process.stdout
  stored = json.load(open(os.path.join(cache, "fingerprint.json")))
  assert stored["logits"] is True
  entries = _entries(cache)
  assert len(entries) == 16
  for feature in entries:  # sigmoid(logits) are the predictions (float16)
    predictions, logits = (np.frombuffer(feature[name].bytes_list.value[0], np.float16)
                           .astype(np.float32) for name in ("predictions", "logits"))
    assert len(logits) == 20
    np.testing.assert_allclose(_sigmoid(logits), predictions, atol=2e-3)
  assert _weights_at(run, 2)[3] == 1.0


def test_a_cache_without_logits_serves_mse_and_refuses_logits_kl(setup):
  """A cache built for a run that compares no logits (the recipe), as every cache
  written before entries could hold logits: no `logits` beside the fingerprint,
  entries of predictions and representation only (fetching the logits would move the
  teacher's predictions in their last bits)."""
  cache = str(setup["root"] / "old_cache")
  _kd(setup, "builder", "--max_steps=1", "--teacher_cache=" + cache)
  path = os.path.join(cache, "fingerprint.json")
  assert "logits" not in json.load(open(path))
  assert all(set(feature) == {"id", "predictions", "representation"}
             for feature in _entries(cache))
  process, run = _kd(setup, "old_offline", "--max_steps=2", "--teacher_cache=" + cache)
  assert "Teacher cache" not in process.stdout
  assert "logits" not in json.load(open(path))
  # An offline run written before the options (no such keys) resumes with the recipe's.
  flags_path = os.path.join(run, "model_flags.json")
  recorded = json.load(open(flags_path))
  for name in ("kd_temperature", "kd_rep_loss", "kd_weights", "kd_shares"):
    del recorded[name]
  json.dump(recorded, open(flags_path, "w"))
  process, _ = _kd(setup, "old_offline", "--max_steps=3", "--teacher_cache=" + cache)
  assert os.path.exists(os.path.join(run, "model.ckpt-3.index"))
  process, _ = _kd(setup, "old_logits", "--max_steps=1", "--teacher_cache=" + cache,
                   "--kd_pred_loss=logits_kl", check=False)
  assert helpers.user_error_line(process).endswith(
      "--teacher_cache=%s was built without the teacher's logits "
      "(--kd_pred_loss=logits_kl needs them; a cache stores them when the run that "
      "builds it compares them); build it again in another directory" % cache)
  assert not os.path.exists(str(setup["root"] / "old_logits_KD_k_4"))


SEGMENTS = ["--segment_labels", "--max_frames=30", "--batch_size=8", "--seed=3",
            "--export_model_steps=1000", "--num_readers=1", "--log_every_n_steps=1"
            ] + helpers.TINY_MODEL


def test_the_options_at_segment_level_online_and_through_a_cache(tmp_path):
  train, _ = helpers.make_dataset(tmp_path / "data", train_videos=12,
                                  validate_videos=2, max_frames=30, min_frames=12,
                                  segments_per_video=3)
  base = str(tmp_path / "run")
  helpers.run_cli("train.py", ["--train_data_pattern=" + train, "--train_dir=" + base,
                               "--model_type=teacher", "--k_frame=30", "--max_steps=2"]
                  + SEGMENTS)
  options = ["--kd_pred_loss=logits_kl", "--kd_temperature=4",
             "--kd_rep_loss=standardized", "--kd_weights=balanced"]
  cache = str(tmp_path / "cache")
  for name, extra in [("online", []), ("offline", ["--teacher_cache=" + cache])]:
    out = helpers.run_cli("train.py", [
        "--train_data_pattern=" + train, "--train_dir=" + str(tmp_path / name),
        "--teacher_checkpoint=" + base + "_teacher", "--model_type=KD", "--k_frame=2",
        "--max_steps=2"] + SEGMENTS + options + extra).stdout
    assert "step 2 | loss" in out
    run = str(tmp_path / name) + "_KD_k_2"
    weights = _weights_at(run, 2)
    assert weights[3] == 1.0 and weights[0] == pytest.approx(0.5)
    assert json.load(open(os.path.join(run, "model_flags.json")))["kd_temperature"] == 4
  assert json.load(open(os.path.join(cache, "fingerprint.json")))["logits"] is True
  entry = _entries(cache)[0]
  assert (len(entry["logits"].bytes_list.value) ==
          len(entry["segment_start_times"].int64_list.value) > 0)
