"""Every path flag on a TensorFlow file system other than the local disk: the whole
recipe (train -> distil through a teacher cache -> eval -> inference three ways ->
export) on the in-memory ram:// file system, in one process (tests/one_process.py), and
its outputs compared with the same model's on local disk."""
import csv
import io
import json
import os
import subprocess
import tarfile

import pytest

from tests import helpers

RAM = "ram://e2e"
TRAIN = ["--batch_size=4", "--seed=1", "--num_readers=2"] + helpers.TINY_MODEL


def _error_line(result):
  """The one-line error of a failed step (as helpers.user_error_line)."""
  return helpers.user_error_line(subprocess.CompletedProcess([], result["code"], "",
                                                             result["stderr"]))


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
  """The recipe with every path on ram://; returns {step name: result} and the local
  directory holding what was copied back from ram://."""
  tmp_path = tmp_path_factory.mktemp("cloud")
  train, validate = helpers.make_dataset(tmp_path / "data", train_videos=16,
                                         validate_videos=13, min_frames=10, max_frames=40)
  local = str(tmp_path / "local")
  evil = str(tmp_path / "evil.tgz")
  with tarfile.open(evil, "w:gz") as tar:
    info = tarfile.TarInfo("model/../../escaped")
    info.size = 5
    tar.addfile(info, io.BytesIO(b"pwned"))
  back = str(tmp_path / "back")  # what the test reads of ram:// afterwards
  data = RAM + "/data"
  ram_train, ram_validate = data + "/train*.tfrecord", data + "/validate*.tfrecord"
  runs, out = RAM + "/runs/r", RAM + "/out"
  teacher, kd = runs + "_teacher", runs + "_KD_k_3"
  common = TRAIN + ["--train_data_pattern=" + ram_train, "--train_dir=" + runs,
                    "--pca_eigenvals=%s/pca/eigenvals.npy" % RAM]
  steps = [
      ("copy_data", {"copy": [os.path.dirname(train), data]}),
      ("copy_pca", {"copy": [os.path.join(helpers.ROOT, "yt8m_pca", "eigenvals.npy"),
                             RAM + "/pca/eigenvals.npy"]}),
      ("copy_vocabulary", {"copy": [os.path.join(helpers.ROOT, "vocabulary.csv"),
                                    RAM + "/vocabulary.csv"]}),
      ("teacher", {"cli": "train.py", "args": common + [
          "--model_type=teacher", "--k_frame=300", "--max_steps=2",
          "--export_model_steps=2", "--eval_data_pattern=" + ram_validate]}),
      ("teacher_resumed", {"cli": "train.py", "args": common + [
          "--model_type=teacher", "--k_frame=300", "--max_steps=4",
          "--export_model_steps=2", "--eval_data_pattern=" + ram_validate]}),
      ("kd", {"cli": "train.py", "args": common + [
          "--model_type=KD", "--k_frame=3", "--max_steps=2", "--export_model_steps=2",
          "--teacher_checkpoint=" + teacher, "--teacher_cache=%s/cache" % RAM]}),
      # Again from scratch: the run directory is wiped, the complete cache reused.
      ("kd_new", {"cli": "train.py", "args": common + [
          "--model_type=KD", "--k_frame=3", "--max_steps=2", "--export_model_steps=2",
          "--teacher_checkpoint=" + teacher, "--teacher_cache=%s/cache" % RAM,
          "--start_new_model"]}),
      ("eval", {"cli": "eval.py", "args": [
          "--train_dir=" + kd, "--eval_data_pattern=" + ram_validate, "--run_once",
          "--batch_size=4"]}),
      ("inference_train_dir", {"cli": "inference.py", "args": [
          "--train_dir=" + kd, "--input_data_pattern=" + ram_validate, "--batch_size=4",
          "--output_file=%s/a.csv" % out, "--output_model_tgz=%s/model.tgz" % out,
          "--vocabulary=%s/vocabulary.csv" % RAM]}),
      ("inference_tgz", {"cli": "inference.py", "args": [
          "--input_model_tgz=%s/model.tgz" % out, "--untar_model_dir=%s/untar" % RAM,
          "--input_data_pattern=" + ram_validate, "--batch_size=4",
          "--output_file=%s/b.csv" % out]}),
      ("export", {"cli": "export_model.py", "args": [
          "--train_dir=" + kd, "--output_dir=%s/saved" % RAM]}),
      ("export_again", {"cli": "export_model.py", "args": [
          "--train_dir=" + kd, "--output_dir=%s/saved" % RAM]}),
      ("inference_saved_model", {"cli": "inference.py", "args": [
          "--saved_model=%s/saved" % RAM, "--input_data_pattern=" + ram_validate,
          "--batch_size=4", "--output_file=%s/c.csv" % out]}),
      # The same model on local disk: its CSV must be the same.
      ("copy_kd_to_local", {"copy": [kd, local + "/r_KD_k_3"]}),
      ("inference_local", {"cli": "inference.py", "args": [
          "--train_dir=%s/r_KD_k_3" % local, "--input_data_pattern=" + validate,
          "--batch_size=4", "--output_file=%s/d.csv" % local]}),
      ("unknown_scheme", {"cli": "train.py", "args": common + [
          "--train_dir=s3://bucket/run", "--max_steps=1"]}),
      ("missing_tgz", {"cli": "inference.py", "args": [
          "--input_model_tgz=%s/nothing.tgz" % out, "--input_data_pattern=" + ram_validate,
          "--output_file=%s/e.csv" % out]}),
      ("copy_evil", {"copy": [evil, RAM + "/evil.tgz"]}),
      ("hostile_tgz", {"cli": "inference.py", "args": [
          "--input_model_tgz=%s/evil.tgz" % RAM, "--untar_model_dir=%s/x/untar" % RAM,
          "--input_data_pattern=" + ram_validate, "--output_file=%s/out/f.csv" % RAM]}),
      ("files", {"list": RAM}),
      ("copy_back", {"copy": [RAM, back]}),
  ]
  results = helpers.run_in_one_process(tmp_path, [step for _, step in steps])
  return {"results": dict(zip([name for name, _ in steps], results)), "back": back,
          "local": local, "validate": validate}


def _ok(e2e, name):
  result = e2e["results"][name]
  assert result["code"] == 0, (name, result["stdout"][-2000:], result["stderr"][-3000:])
  return result


def test_every_step_succeeds_on_ram(e2e):
  for name in ("teacher", "teacher_resumed", "kd", "kd_new", "eval", "inference_train_dir",
               "inference_tgz", "export", "export_again", "inference_saved_model",
               "inference_local"):
    _ok(e2e, name)
  assert "Starting at step 2 (resumed)" in _ok(e2e, "teacher_resumed")["stdout"]
  assert "Teacher cache: computing 2 of 2 shards into %s/cache" % RAM in \
      _ok(e2e, "kd")["stdout"]
  kd_new = _ok(e2e, "kd_new")["stdout"]
  assert "--start_new_model: removing %s/runs/r_KD_k_3" % RAM in kd_new
  assert "Starting at step 0." in kd_new and "Teacher cache: computing" not in kd_new
  # An object store has no lock: one line says so (docs/operations.md, cloud storage).
  assert ("note: %s/runs/r_teacher is not on a local disk: no lock" % RAM
          in _ok(e2e, "teacher")["stdout"])


def test_predictions_are_the_same_from_ram_and_local_disk(e2e):
  back = e2e["back"]
  csvs = [open(os.path.join(back, "out", name)).read() for name in ("a.csv", "b.csv",
                                                                     "c.csv")]
  local = open(os.path.join(e2e["local"], "d.csv")).read()
  assert csvs[0] == csvs[1] == csvs[2] == local
  rows = list(csv.reader(local.splitlines()))
  assert rows[0] == ["VideoId", "LabelConfidencePairs"] and len(rows) == 14
  names = open(os.path.join(back, "out", "a.names.csv")).read().splitlines()
  assert names[0] == "VideoId,TopClasses" and len(names) == 14


def test_run_directories_and_metrics_are_written_on_ram(e2e):
  back = e2e["back"]
  files = e2e["results"]["files"]["files"]
  for run in ("r_teacher", "r_KD_k_3"):
    assert "runs/%s/model_flags.json" % run in files
    assert "runs/%s/checkpoint" % run in files
  recorded = json.load(open(os.path.join(back, "runs", "r_KD_k_3", "model_flags.json")))
  assert recorded["preprocessing"] == "pca_eigenvals"
  assert recorded["teacher_cache"]["teacher_checkpoint"] == \
      RAM + "/runs/r_teacher/model.ckpt-4"
  validation = [json.loads(line) for line in open(
      os.path.join(back, "runs", "r_teacher", "validation.jsonl"))]
  assert [r["step"] for r in validation] == [2, 4]
  (evaluation,) = [json.loads(line) for line in open(
      os.path.join(back, "runs", "r_KD_k_3", "eval.jsonl"))]
  assert evaluation["step"] == 2 and evaluation["num_examples"] == 13
  assert any(name.startswith("runs/r_KD_k_3/eval/events.out.tfevents") for name in files)
  assert sorted(n for n in files if n.startswith("cache/")) == [
      "cache/fingerprint.json", "cache/teacher-00000.tfrecord",
      "cache/teacher-00001.tfrecord"]


def test_model_tarball_and_saved_model_are_complete_on_ram(e2e):
  files = e2e["results"]["files"]["files"]
  assert "out/model.tgz" in files
  assert "untar/model/model_flags.json" in files
  assert "saved/saved_model.pb" in files and "saved/assets.extra/model_flags.json" in files
  assert any(n.startswith("saved/variables/variables.index") for n in files)
  # No temporary file or staging directory is left behind.
  assert not [n for n in files if "/." in "/" + n], files


def test_path_mistakes_off_the_local_disk_are_one_line(e2e):
  unknown = e2e["results"]["unknown_scheme"]
  assert unknown["code"] == 2
  assert _error_line(unknown).startswith(
      "train.py: error: --train_dir=s3://bucket/run: TensorFlow ")
  assert "has no file system for s3://" in _error_line(unknown)
  missing = e2e["results"]["missing_tgz"]
  assert missing["code"] == 2
  assert _error_line(missing) == ("inference.py: error: --input_model_tgz=%s/out/"
                                  "nothing.tgz does not exist" % RAM)


def test_hostile_model_tgz_is_refused_off_the_local_disk_too(e2e):
  hostile = e2e["results"]["hostile_tgz"]
  assert hostile["code"] == 2
  assert _error_line(hostile) == (
      "inference.py: error: --input_model_tgz=%s/evil.tgz: member "
      "'model/../../escaped' would land outside --untar_model_dir; refused" % RAM)
  files = e2e["results"]["files"]["files"]
  assert not [n for n in files if n.startswith("x/") or "escaped" in n], files
