"""Run directories that move: checkpoints are recorded relative to their directory, so
a run directory moved on local disk or copied to another file system (ram:// here, as
gs:// would be) evaluates, predicts, exports, resumes and teaches, and an offline-KD
run resumes with its teacher cache. One written by an earlier version, whose state file
names absolute paths that are gone, falls back to its newest complete checkpoint and
says so in one line.

The CLIs of a test on ram:// run in one process (tests/one_process.py), since ram://
lives in a process's memory; on local disk each goes through helpers.run_cli."""
import hashlib
import json
import os
import shutil

import pytest

import config
import run_dir
import teacher_cache
from tests import helpers

TRAIN = ["--batch_size=4", "--seed=1", "--num_readers=2", "--export_model_steps=1000",
         "--log_every_n_steps=1000"] + helpers.TINY_MODEL
OLD_RUNS = os.path.join(helpers.ROOT, "tests", "data", "old_runs")
OLD_MODEL = ["--model=DbofModel", "--dbof_cluster_size=8", "--dbof_hidden_size=8",
             "--iterations=10", "--num_classes=20", "--batch_size=4",
             "--export_model_steps=100", "--seed=1"]
NOTE = "names checkpoints that are not there (moved or copied?)"
RAM = "ram://movable"


def _run(tmp_path, steps):
  """Runs the named plan steps [(name, step)] (helpers.run_plan: in one process when
  they touch ram://); {name: result}."""
  results = helpers.run_plan(tmp_path, [step for _, step in steps])
  return dict(zip([name for name, _ in steps], results))


def _ok(result):
  assert result.get("code") == 0, (result.get("stdout", "")[-2000:],
                                   result.get("stderr", "")[-3000:])
  return result["stdout"]


def _notes(stdout):
  return [line for line in stdout.splitlines() if NOTE in line]


def _note(run, checkpoint="model.ckpt-2"):
  return ("note: %s/checkpoint %s; using %s, the newest complete one in %s"
          % (run, NOTE, checkpoint, run))


def _read(path):
  with open(str(path)) as f:
    return f.read()


def _state_paths(run):
  """The paths a run directory's `checkpoint` state file names, in its order: the
  latest, then every one it keeps."""
  return [line.split(":", 1)[1].strip().strip('"')
          for line in _read(os.path.join(str(run), "checkpoint")).splitlines()
          if line.startswith(("model_checkpoint_path:", "all_model_checkpoint_paths:"))]


def _train(train, base, *args):
  return {"cli": "train.py", "args": TRAIN + ["--train_data_pattern=" + train,
                                              "--train_dir=" + base] + list(args)}


def _write_old_state(run, where):
  """A state file as an earlier version wrote it on local disk: absolute paths, of the
  run directory when it was at `where`."""
  steps = sorted(int(name[len("model.ckpt-"):-len(".index")])
                 for name in os.listdir(run)
                 if name.startswith("model.ckpt-") and name.endswith(".index"))
  lines = ['model_checkpoint_path: "%s/model.ckpt-%d"' % (where, steps[-1])]
  lines += ['all_model_checkpoint_paths: "%s/model.ckpt-%d"' % (where, s) for s in steps]
  with open(os.path.join(run, "checkpoint"), "w") as f:
    f.write("\n".join(lines) + "\n")


def _recorded_by_an_earlier_version(run, fingerprint_file):
  """Rewrites an offline-KD run's model_flags.json as the version before this one
  wrote it: its cache digest hashed the whole fingerprint, the teacher checkpoint's
  absolute path included."""
  flags_file = os.path.join(run, "model_flags.json")
  recorded = json.loads(_read(flags_file))
  fingerprint = json.loads(_read(fingerprint_file))["fingerprint"]
  fingerprint["teacher_checkpoint"] = recorded["teacher_cache"]["teacher_checkpoint"]
  recorded["teacher_cache"]["digest"] = hashlib.sha256(
      json.dumps(fingerprint, sort_keys=True).encode("utf-8")).hexdigest()[:16]
  del recorded["teacher_cache"]["format"]  # records had none then
  with open(flags_file, "w") as f:
    json.dump(recorded, f)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return helpers.make_dataset(tmp_path_factory.mktemp("data"), train_videos=16,
                              validate_videos=8, min_frames=10, max_frames=40)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  """A teacher (2 steps) and an offline-KD student (k=3) distilled through a cache in
  <root>/origin/runs; the student's predictions before anything moved; and
  legacy_KD_k_3, a copy of the student as an earlier version would have left it
  (absolute paths in its state file, the digest of the path-hashing days). A copy of
  it all stays in <root>/snapshot."""
  train, validate = data
  root = tmp_path_factory.mktemp("trained")
  runs = root / "origin" / "runs"
  base, cache = str(runs / "r"), str(root / "cache")
  results = _run(root, [
      ("teacher", _train(train, base, "--max_steps=2")),
      ("kd", _train(train, base, "--model_type=KD", "--k_frame=3", "--max_steps=2",
                    "--teacher_cache=" + cache)),
      ("inference", {"cli": "inference.py", "args": [
          "--train_dir=%s_KD_k_3" % base, "--input_data_pattern=" + validate,
          "--batch_size=4", "--output_file=%s/before.csv" % root]})])
  for result in results.values():
    _ok(result)
  states = {run: _read(runs / run / "checkpoint") for run in ("r_teacher", "r_KD_k_3")}
  legacy = str(runs / "legacy_KD_k_3")
  shutil.copytree(base + "_KD_k_3", legacy)
  _write_old_state(legacy, legacy)
  _recorded_by_an_earlier_version(legacy, os.path.join(cache, "fingerprint.json"))
  shutil.copytree(str(root / "origin"), str(root / "snapshot"))
  return {"root": root, "cache": cache, "train": train, "validate": validate,
          "states": states, "before_csv": _read(root / "before.csv")}


@pytest.fixture(scope="module")
def moved(trained):
  """The runs of `trained` moved on local disk (os.rename of their parent directory);
  the data and the cache stay where they are."""
  origin, after = trained["root"] / "origin", trained["root"] / "after"
  os.rename(str(origin), str(after))
  return dict(trained, runs=str(after / "runs"), base=str(after / "runs" / "r"))


def test_a_fresh_run_records_its_checkpoints_relative_to_its_directory(trained):
  for run, text in trained["states"].items():
    assert text == ('model_checkpoint_path: "model.ckpt-2"\n'
                    'all_model_checkpoint_paths: "model.ckpt-0"\n'
                    'all_model_checkpoint_paths: "model.ckpt-2"\n'), run


def test_a_moved_run_evaluates_predicts_and_exports(moved, tmp_path):
  base, validate = moved["base"], moved["validate"]
  results = _run(tmp_path, [
      ("eval", {"cli": "eval.py", "args": [
          "--train_dir=%s_teacher" % base, "--eval_data_pattern=" + validate,
          "--run_once", "--batch_size=4"]}),
      ("inference", {"cli": "inference.py", "args": [
          "--train_dir=%s_KD_k_3" % base, "--input_data_pattern=" + validate,
          "--batch_size=4", "--output_file=%s/after.csv" % tmp_path]}),
      ("export", {"cli": "export_model.py", "args": [
          "--train_dir=%s_KD_k_3" % base, "--output_dir=%s/saved" % tmp_path]})])
  for name, result in results.items():
    assert not _notes(_ok(result)), name  # relative names: nothing to fall back from
  (evaluation,) = [json.loads(l)
                   for l in _read(base + "_teacher/eval.jsonl").splitlines()]
  assert (evaluation["step"], evaluation["num_examples"]) == (2, 8)
  assert _read(tmp_path / "after.csv") == moved["before_csv"]
  assert "Exported the student of %s_KD_k_3 (model.ckpt-2)" % base in \
      results["export"]["stdout"]
  assert os.path.exists(str(tmp_path / "saved" / "saved_model.pb"))


def test_a_moved_offline_kd_run_resumes_with_its_cache(moved, tmp_path):
  base, runs, cache = moved["base"], moved["runs"], moved["cache"]
  results = _run(tmp_path, [
      # Its teacher from the default <train_dir>_teacher, moved with it.
      ("kd", _train(moved["train"], base, "--model_type=KD", "--k_frame=3",
                    "--max_steps=4", "--teacher_cache=" + cache)),
      ("legacy", _train(moved["train"], runs + "/legacy", "--model_type=KD",
                        "--k_frame=3", "--max_steps=3", "--teacher_cache=" + cache,
                        "--teacher_checkpoint=%s_teacher" % base))])
  kd, legacy = _ok(results["kd"]), _ok(results["legacy"])
  assert not _notes(kd)
  assert "Teacher: %s_teacher/model.ckpt-2" % base in kd
  assert _notes(legacy) == [_note(runs + "/legacy_KD_k_3")]
  for out in (kd, legacy):
    assert "Starting at step 2 (resumed)" in out
    assert "Teacher cache: computing" not in out  # the same cache, reused
  # The Saver goes on managing the checkpoints written before the move.
  assert _state_paths(base + "_KD_k_3") == ["model.ckpt-4", "model.ckpt-0",
                                            "model.ckpt-2", "model.ckpt-4"]
  assert _state_paths(runs + "/legacy_KD_k_3") == ["model.ckpt-3", "model.ckpt-0",
                                                   "model.ckpt-2", "model.ckpt-3"]


def test_a_moved_teacher_teaches_and_a_copy_of_it_resumes(moved, tmp_path):
  base, runs = moved["base"], moved["runs"]
  # A copy: the teacher itself keeps the step the cache was built from.
  shutil.copytree(base + "_teacher", runs + "/copy_teacher")
  results = _run(tmp_path, [
      ("teach", _train(moved["train"], runs + "/pupil", "--model_type=KD",
                       "--k_frame=2", "--max_steps=1",
                       "--teacher_checkpoint=%s_teacher" % base)),
      ("resume", _train(moved["train"], runs + "/copy", "--max_steps=4"))])
  teach, resume = _ok(results["teach"]), _ok(results["resume"])
  assert not _notes(teach) and not _notes(resume)
  assert "Teacher: %s_teacher/model.ckpt-2" % base in teach
  assert "Starting at step 0." in teach
  assert _state_paths(runs + "/pupil_KD_k_2") == ["model.ckpt-1", "model.ckpt-0",
                                                  "model.ckpt-1"]
  assert "Starting at step 2 (resumed)" in resume
  assert _state_paths(runs + "/copy_teacher") == ["model.ckpt-4", "model.ckpt-0",
                                                  "model.ckpt-2", "model.ckpt-4"]


def _copied_to_ram(trained, *runs):
  """Plan steps copying runs of `trained` (from its snapshot) and its cache from local
  disk to ram://, as one copies run directories between gs:// and a local disk."""
  snapshot = str(trained["root"] / "snapshot" / "runs")
  steps = [("copy_" + run, {"copy": [snapshot + "/" + run, RAM + "/runs/" + run]})
           for run in runs]
  return steps + [("copy_cache", {"copy": [trained["cache"], RAM + "/cache"]})]


def test_on_ram_a_copied_run_evaluates_predicts_and_exports(trained, moved, tmp_path):
  """Also two old run directories there: one copied from local disk (its state file
  names local paths, gone since `moved`), one whose state file names ram:// paths that
  are gone."""
  runs, out, back = RAM + "/runs", RAM + "/out", str(tmp_path / "back")
  validate = trained["validate"]
  old_state = tmp_path / "old_checkpoint"
  old_state.write_text('model_checkpoint_path: "%s/gone/model.ckpt-2"\n'
                       'all_model_checkpoint_paths: "%s/gone/model.ckpt-2"\n'
                       % (RAM, RAM))

  def evaluate(run):
    return {"cli": "eval.py", "args": ["--train_dir=" + run, "--run_once",
                                       "--eval_data_pattern=" + validate,
                                       "--batch_size=4"]}
  results = _run(tmp_path, _copied_to_ram(trained, "r_teacher", "r_KD_k_3",
                                          "legacy_KD_k_3") + [
      ("copy_old", {"copy": [os.path.join(OLD_RUNS, "old_teacher"), RAM + "/old"]}),
      ("copy_old_state", {"copy": [str(old_state), RAM + "/old/checkpoint"]}),
      ("eval", evaluate(runs + "/r_teacher")),
      ("inference", {"cli": "inference.py", "args": [
          "--train_dir=%s/r_KD_k_3" % runs, "--input_data_pattern=" + validate,
          "--batch_size=4", "--output_file=%s/after.csv" % out]}),
      ("export", {"cli": "export_model.py", "args": [
          "--train_dir=%s/r_KD_k_3" % runs, "--output_dir=%s/saved" % out]}),
      ("legacy_eval", evaluate(runs + "/legacy_KD_k_3")),
      ("old_eval", evaluate(RAM + "/old")),
      ("copy_back", {"copy": [RAM, back]})])
  for name in ("eval", "inference", "export"):
    assert not _notes(_ok(results[name])), name
  (evaluation,) = [json.loads(l) for l in
                   _read(back + "/runs/r_teacher/eval.jsonl").splitlines()]
  assert (evaluation["step"], evaluation["num_examples"]) == (2, 8)
  assert _read(back + "/out/after.csv") == trained["before_csv"]
  assert os.path.exists(back + "/out/saved/saved_model.pb")
  for name, run in [("legacy_eval", "runs/legacy_KD_k_3"), ("old_eval", "old")]:
    assert _notes(_ok(results[name])) == [_note(RAM + "/" + run)], name
    (evaluation,) = [json.loads(l)
                     for l in _read(back + "/%s/eval.jsonl" % run).splitlines()]
    assert evaluation["step"] == 2 and evaluation["checkpoint"] == "model.ckpt-2", run


def test_on_ram_a_copied_run_resumes_teaches_and_keeps_its_cache(trained, tmp_path):
  runs, cache, back = RAM + "/runs", RAM + "/cache", str(tmp_path / "back")
  train = trained["train"]
  results = _run(tmp_path, _copied_to_ram(trained, "r_teacher", "r_KD_k_3") + [
      ("kd", _train(train, runs + "/r", "--model_type=KD", "--k_frame=3",
                    "--max_steps=4", "--teacher_cache=" + cache)),
      ("teach", _train(train, runs + "/pupil", "--model_type=KD", "--k_frame=2",
                       "--max_steps=1", "--teacher_checkpoint=%s/r_teacher" % runs)),
      ("resume", _train(train, runs + "/r", "--max_steps=4")),
      ("copy_back", {"copy": [RAM + "/runs", back]})])
  for name in ("kd", "teach", "resume"):
    out = _ok(results[name])
    assert not _notes(out), name
    assert "Teacher cache: computing" not in out, name
    assert ("Starting at step 0." if name == "teach"
            else "Starting at step 2 (resumed)") in out, name
  assert "Teacher: %s/r_teacher/model.ckpt-2" % runs in results["kd"]["stdout"]
  assert "Teacher: %s/r_teacher/model.ckpt-2" % runs in results["teach"]["stdout"]
  assert _state_paths(back + "/r_teacher") == ["model.ckpt-4", "model.ckpt-0",
                                               "model.ckpt-2", "model.ckpt-4"]
  assert _state_paths(back + "/r_KD_k_3") == ["model.ckpt-4", "model.ckpt-0",
                                              "model.ckpt-2", "model.ckpt-4"]
  assert _state_paths(back + "/pupil_KD_k_2")[0] == "model.ckpt-1"


@pytest.fixture
def old_runs(tmp_path):
  """tests/data/old_runs moved: their state files name absolute paths that are gone."""
  runs = tmp_path / "runs"
  shutil.copytree(OLD_RUNS, str(runs))
  for run in ("old_teacher", "old_KD_k_4"):
    _write_old_state(str(runs / run), str(tmp_path / "gone" / run))
  return str(runs)


def test_an_old_moved_run_evaluates_predicts_and_exports_with_one_note(
    old_runs, data, tmp_path):
  teacher, kd = old_runs + "/old_teacher", old_runs + "/old_KD_k_4"
  results = _run(tmp_path, [
      ("eval", {"cli": "eval.py", "args": [
          "--train_dir=" + teacher, "--eval_data_pattern=" + data[1], "--run_once",
          "--batch_size=4"]}),
      ("export", {"cli": "export_model.py", "args": [
          "--train_dir=" + kd, "--output_dir=%s/saved" % tmp_path]}),
      # One look at the checkpoint for the tarball and the CSV: one note.
      ("inference", {"cli": "inference.py", "args": [
          "--train_dir=" + kd, "--input_data_pattern=" + data[1],
          "--output_file=%s/a.csv" % tmp_path,
          "--output_model_tgz=%s/model.tgz" % tmp_path]})])
  for name, run in [("eval", teacher), ("export", kd), ("inference", kd)]:
    assert _notes(_ok(results[name])) == [_note(run)], name
  (evaluation,) = [json.loads(l) for l in _read(teacher + "/eval.jsonl").splitlines()]
  assert (evaluation["step"], evaluation["num_examples"]) == (2, 8)
  assert len(_read(tmp_path / "a.csv").splitlines()) == 9
  assert os.path.exists(str(tmp_path / "saved" / "saved_model.pb"))


def test_an_old_moved_run_resumes_and_teaches_with_one_note(old_runs, data, tmp_path):
  base = old_runs + "/old"
  old_train = ["--train_data_pattern=" + data[0], "--train_dir=" + base] + OLD_MODEL
  results = _run(tmp_path, [
      ("teach", {"cli": "train.py", "args": old_train + [
          "--model_type=KD", "--k_frame=6", "--max_steps=1"]}),
      ("teacher", {"cli": "train.py", "args": old_train + ["--max_steps=3"]}),
      ("kd", {"cli": "train.py", "args": old_train + [
          "--model_type=KD", "--k_frame=4", "--max_steps=3"]})])
  for name, run in [("teach", "_teacher"), ("teacher", "_teacher"), ("kd", "_KD_k_4")]:
    assert _notes(_ok(results[name])) == [_note(base + run)], name
  assert "Teacher: %s_teacher/model.ckpt-2" % base in results["teach"]["stdout"]
  # A new checkpoint, and a state file of names relative to the directory.
  for name, run in [("teacher", "_teacher"), ("kd", "_KD_k_4")]:
    assert "Starting at step 2 (resumed)" in results[name]["stdout"], name
    assert _state_paths(base + run) == ["model.ckpt-3", "model.ckpt-2", "model.ckpt-3"]
    assert os.path.exists(base + run + "/model.ckpt-3.index")


def _copy_old_teacher(target):
  shutil.copytree(os.path.join(OLD_RUNS, "old_teacher"), str(target))
  return str(target)


def test_the_fallback_takes_the_newest_complete_checkpoint(tmp_path):
  run = _copy_old_teacher(tmp_path / "old_teacher")
  _write_old_state(run, str(tmp_path / "gone"))
  # Newer but incomplete: an index without its data; one of two data shards.
  shutil.copy(os.path.join(run, "model.ckpt-2.index"),
              os.path.join(run, "model.ckpt-9.index"))
  for name in ("model.ckpt-7.index", "model.ckpt-7.data-00000-of-00002"):
    shutil.copy(os.path.join(run, "model.ckpt-2.data-00000-of-00001"),
                os.path.join(run, name))
  assert run_dir.complete_checkpoints(run) == [os.path.join(run, "model.ckpt-2")]
  assert run_dir.resolve_checkpoint(run) == (os.path.join(run, "model.ckpt-2"),
                                             _note(run))
  assert run_dir.recorded_checkpoints(run, os.path.join(run, "model.ckpt-2")) == [
      os.path.join(run, "model.ckpt-2")]
  # A state file that names nothing falls back as well; none at all: no checkpoint.
  with open(os.path.join(run, "checkpoint"), "w") as f:
    f.write("")
  assert run_dir.resolve_checkpoint(run) == (os.path.join(run, "model.ckpt-2"),
                                             _note(run))
  os.remove(os.path.join(run, "checkpoint"))
  assert run_dir.resolve_checkpoint(run) == (None, None)


def test_a_copy_reads_its_own_checkpoints_and_relative_names_need_no_note(tmp_path):
  original = _copy_old_teacher(tmp_path / "original")
  _write_old_state(original, original)  # absolute paths, still valid
  assert run_dir.resolve_checkpoint(original) == (
      os.path.join(original, "model.ckpt-2"), None)
  copy = str(tmp_path / "copy")
  shutil.copytree(original, copy)  # its state file names the original's checkpoints
  assert run_dir.resolve_checkpoint(copy) == (os.path.join(copy, "model.ckpt-2"), None)
  relative = _copy_old_teacher(tmp_path / "relative")  # as shipped: relative names
  assert run_dir.resolve_checkpoint(relative) == (
      os.path.join(relative, "model.ckpt-2"), None)
  assert run_dir.find_checkpoint(str(tmp_path / "nothing")) is None


def test_a_moved_run_without_a_complete_checkpoint_is_one_line(data, tmp_path):
  run = _copy_old_teacher(tmp_path / "old_teacher")
  _write_old_state(run, str(tmp_path / "gone"))
  os.remove(os.path.join(run, "model.ckpt-2.index"))  # only the data shard was copied
  process = helpers.run_cli("eval.py", ["--train_dir=" + run, "--run_once",
                                        "--eval_data_pattern=" + data[1]], check=False)
  assert process.returncode == 2
  assert helpers.user_error_line(process) == (
      "eval.py: error: --train_dir=%s has no checkpoint yet" % run)
  assert not _notes(process.stdout)


def test_the_cache_digest_and_checks_ignore_where_the_teacher_lives():
  wanted = {"teacher": {"preprocessing": "pca_eigenvals", "model": "NeXtVLADModel"},
            "rgb_scale_sha256": "a", "teacher_checkpoint_sha256": "c",
            "teacher_checkpoint": "/runs/x_teacher/model.ckpt-6", "files": [["f", 1, 2]],
            "dtype": "float16", "format": teacher_cache.FORMAT, "teacher_scope": "teacher"}
  moved = dict(wanted, teacher_checkpoint="/elsewhere/x_teacher/model.ckpt-6")
  assert teacher_cache.digest(moved) == teacher_cache.digest(wanted)
  assert teacher_cache.digest(dict(wanted, teacher_checkpoint_sha256="d")) != \
      teacher_cache.digest(wanted)
  assert teacher_cache._mismatch(moved, wanted) is None
  # A resumed run compares the cache it records by its digest alone.
  record = {"format": teacher_cache.FORMAT, "digest": "0123",
            "teacher_checkpoint": wanted["teacher_checkpoint"],
            "preprocessing": "pca_eigenvals", "num_files": 1, "dtype": "float16"}
  elsewhere = dict(record, teacher_checkpoint=moved["teacher_checkpoint"])
  assert run_dir.conflicts({"teacher_cache": record}, {"teacher_cache": elsewhere}) == []
  assert run_dir.conflicts({"teacher_cache": record},
                          {"teacher_cache": dict(elsewhere, digest="4567")})
  assert run_dir.conflicts({"teacher_cache": record}, {"teacher_cache": {}})
  # A record of an earlier version (no format; its digest hashed the teacher's path)
  # compares by what it shares with today's: preprocessing, files, dtype.
  earlier = {k: v for k, v in record.items() if k != "format"}
  assert run_dir.conflicts({"teacher_cache": earlier}, {"teacher_cache": elsewhere}) == []
  assert run_dir.conflicts({"teacher_cache": earlier},
                          {"teacher_cache": dict(elsewhere, dtype="float32")})
