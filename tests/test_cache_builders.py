"""A teacher cache built by several builders at once, moved with its data, and the
settings its fingerprint holds (train.py --teacher_cache, shard_leases.Leases)."""
import glob
import json
import os
import re
import shutil
import time

import pytest

import shard_leases
import teacher_cache
from tests import helpers

K = 4
FILES, VIDEOS = 4, 6  # 4 training files (shards) of 6 videos: 3 batches of 2 each
COMMON = ["--batch_size=2", "--num_readers=2", "--seed=7", "--drop_rate=0",
          "--log_every_n_steps=1", "--export_model_steps=1000",
          "--optimizer=GradientDescentOptimizer", "--base_learning_rate=0.05"
          ] + helpers.TINY_MODEL
BUILT = re.compile(r"Teacher cache: built (teacher-\d+\.tfrecord) as (\S+)")


def _write_data(directory):
  """FILES training files of VIDEOS generated videos each; returns their pattern."""
  from tools import make_synthetic_yt8m as synth
  generator = synth.SyntheticYT8M(seed=3, num_classes=20, num_verticals=4,
                                  min_frames=10, max_frames=40)
  os.makedirs(directory)
  for shard in range(FILES):
    synth.write_frame_records(
        os.path.join(directory, "train%05d.tfrecord" % shard),
        [generator.video("train", shard * VIDEOS + i) for i in range(VIDEOS)])
  return os.path.join(directory, "train*.tfrecord")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("builders")
  train = _write_data(str(root / "demo" / "data"))
  base = str(root / "run")
  helpers.run_cli("train.py", ["--train_data_pattern=" + train, "--train_dir=" + base,
                               "--max_steps=2"] + COMMON)
  setup = {"root": root, "train": train, "teacher": base + "_teacher"}
  reference = str(root / "demo" / "cache")
  out = _build(setup, reference).stdout
  assert "Teacher cache: computing 4 of 4 shards" in out
  setup["reference"] = reference
  return setup


def _kd(setup, cache, train=None):
  return ["--train_data_pattern=" + (train or setup["train"]), "--model_type=KD",
          "--k_frame=%d" % K, "--teacher_checkpoint=" + setup["teacher"],
          "--teacher_cache=" + cache] + COMMON


def _build(setup, cache, *args, check=True, env=None):
  return helpers.run_cli("train.py", _kd(setup, cache) + [
      "--build_teacher_cache_only", "--train_dir=" + str(setup["root"] / "unused")] +
                         list(args), check=check, env=env)


def _start_builder(setup, cache, log, env):
  return helpers.start_cli("train.py", _kd(setup, cache) + [
      "--build_teacher_cache_only", "--train_dir=" + str(setup["root"] / "unused")],
                           log, env=env)


def _wait_for(condition, timeout=120):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline, "timed out"
    time.sleep(0.05)


def _shards(cache):
  """{shard name: its bytes} of a cache directory."""
  return {os.path.basename(path): open(path, "rb").read()
          for path in glob.glob(os.path.join(cache, "teacher-*.tfrecord"))}


def _finished(process, log):
  assert process.wait(timeout=300) == 0, open(log).read()
  return open(log).read()


def test_two_builders_share_the_shards(setup, tmp_path):
  cache = str(tmp_path / "cache")
  # The first builder's teacher is slow (1 s a batch, 3 s a shard); the second starts
  # once the first holds its first lease. Leases (30 s) never expire here.
  slow = {shard_leases.LEASE_ENV: "30", teacher_cache.BATCH_DELAY_ENV: "1"}
  first_log, second_log = str(tmp_path / "first.log"), str(tmp_path / "second.log")
  first = _start_builder(setup, cache, first_log, slow)
  _wait_for(lambda: glob.glob(os.path.join(cache, ".lease-*.json")))
  second = _start_builder(setup, cache, second_log, {shard_leases.LEASE_ENV: "30"})
  first_out, second_out = _finished(first, first_log), _finished(second, second_log)
  by_first, by_second = ([name for name, _ in BUILT.findall(out)]
                         for out in (first_out, second_out))
  assert by_first and by_second, (first_out, second_out)
  assert not set(by_first) & set(by_second)  # no shard computed twice
  assert sorted(by_first + by_second) == ["teacher-%05d.tfrecord" % i
                                          for i in range(FILES)]
  holders = {holder for _, holder in BUILT.findall(first_out + second_out)}
  assert len(holders) == 2
  assert _shards(cache) == _shards(setup["reference"])  # as one builder's
  assert not glob.glob(os.path.join(cache, ".lease-*"))  # every lease released


def test_a_killed_builders_shard_is_taken_over_when_its_lease_expires(setup, tmp_path):
  cache = str(tmp_path / "cache")
  lease = {shard_leases.LEASE_ENV: "3"}
  log = str(tmp_path / "killed.log")
  killed = _start_builder(setup, cache, log,
                          dict(lease, **{teacher_cache.BATCH_DELAY_ENV: "1"}))
  leases = os.path.join(cache, ".lease-*.json")
  _wait_for(lambda: glob.glob(leases))
  time.sleep(1.5)  # into its first shard (3 s): renewed at least once
  held = json.load(open(glob.glob(leases)[0]))
  killed.kill()
  killed.wait(timeout=60)
  assert not _shards(cache)  # killed mid-shard: its lease and temporary file stay
  assert glob.glob(leases) and glob.glob(os.path.join(cache, ".teacher-*.tmp"))
  out = _build(setup, cache, env=lease).stdout
  assert ("the lease of shard 0 by %s expired; taking it over" % held["holder"]) in out
  assert len(BUILT.findall(out)) == FILES
  assert _shards(cache) == _shards(setup["reference"])
  assert not glob.glob(leases)


def _loss_lines(out):
  return [line.split(" | hit@1")[0] for line in out.splitlines()
          if re.match(r"step \d+ \| loss", line)]


def test_a_cache_moved_with_its_data_serves_the_same_values(setup, tmp_path):
  # demo/ (data and cache) copied whole elsewhere: other absolute paths, other times.
  moved = str(tmp_path / "moved")
  shutil.copytree(str(setup["root"] / "demo"), moved)
  moved_train = os.path.join(moved, "data", "train*.tfrecord")
  moved_cache = os.path.join(moved, "cache")

  def train(cache, data, name):
    out = helpers.run_cli("train.py", _kd(setup, cache, data) + [
        "--max_steps=2", "--train_dir=" + str(tmp_path / name)]).stdout
    assert "Teacher cache: computing" not in out  # read, not built again
    recorded = json.load(open(str(tmp_path / name) + "_KD_k_%d/model_flags.json" % K))
    return _loss_lines(out), recorded["teacher_cache"]["digest"]

  original_lines, original_digest = train(setup["reference"], setup["train"], "here")
  moved_lines, moved_digest = train(moved_cache, moved_train, "there")
  assert len(original_lines) == 2 and moved_lines == original_lines
  assert moved_digest == original_digest
  # Data that really differs is still refused: a file of another size, another name.
  with open(os.path.join(moved, "data", "train00001.tfrecord"), "ab") as f:
    f.write(b"\0" * 16)
  process = _build(setup, moved_cache, "--train_data_pattern=" + moved_train,
                   check=False)
  assert process.returncode == 2
  line = helpers.user_error_line(process)
  assert "holds teacher outputs computed from other data files (train00001.tfrecord " \
         "had" in line
  os.rename(os.path.join(moved, "data", "train00001.tfrecord"),
            os.path.join(moved, "data", "train00009.tfrecord"))
  process = _build(setup, moved_cache, "--train_data_pattern=" + moved_train,
                   check=False)
  assert "train00001.tfrecord where --train_data_pattern has train00002.tfrecord" in \
      helpers.user_error_line(process)


def test_bf16_is_part_of_the_fingerprint(setup):
  stored = json.load(open(os.path.join(setup["reference"], "fingerprint.json")))
  assert stored["fingerprint"]["bf16"] is False
  with_bf16 = dict(stored["fingerprint"], bf16=True)
  assert teacher_cache.digest(with_bf16) != stored["digest"]
  process = _build(setup, setup["reference"], "--bf16", check=False)
  assert process.returncode == 2
  assert ("holds teacher outputs computed without --bf16, this run with it"
          in helpers.user_error_line(process))


def test_leases(tmp_path):
  first = shard_leases.Leases(str(tmp_path), seconds=0.5)
  second = shard_leases.Leases(str(tmp_path), seconds=0.5)
  assert first.take(0) == "" and second.take(0) is None and second.take(1) == ""
  assert first.renew(0) and not second.renew(0)
  time.sleep(0.6)  # first's lease expires unrenewed: second takes it over
  assert second.take(0) == first.holder and not first.renew(0)
  first.release(0)  # not first's any more: second's stays
  assert second.read(0)[0]["holder"] == second.holder
  second.release(0)
  assert second.read(0) == (None, None)
  assert first.take(2) == ""
  with first.held(2):  # renewed while held, released after
    time.sleep(0.7)
    assert second.take(2) is None
  assert first.read(2) == (None, None)


def test_names_relative_to_the_files_directory():
  assert teacher_cache.data_names(["/a/b/x.tf", "/a/b/y.tf"]) == ["x.tf", "y.tf"]
  assert teacher_cache.data_names(["gs://bucket/frame/x.tf"]) == ["x.tf"]
  assert teacher_cache.data_names(["/d/1/x.tf", "/d/2/x.tf"]) == ["1/x.tf", "2/x.tf"]


def test_a_cache_of_the_earlier_format_is_served_and_its_runs_resume(setup, tmp_path):
  # The reference cache as an earlier version wrote it: files by absolute path, size
  # and modification time, --bf16 beside the fingerprint.
  legacy = str(tmp_path / "legacy")
  shutil.copytree(setup["reference"], legacy)
  path = os.path.join(legacy, "fingerprint.json")
  stored = json.load(open(path))
  files = sorted(glob.glob(setup["train"]))
  old = teacher_cache.legacy_fingerprint(stored["fingerprint"], files)
  assert old["format"] == 2 and "bf16" not in old
  json.dump({"fingerprint": old, "digest": teacher_cache.digest(old), "bf16": False,
             "representation_width": stored["representation_width"]}, open(path, "w"))
  run = str(tmp_path / "old")
  out = helpers.run_cli("train.py", _kd(setup, legacy) + [
      "--max_steps=2", "--train_dir=" + run]).stdout
  assert "Teacher cache: computing" not in out
  recorded = json.load(open(run + "_KD_k_%d/model_flags.json" % K))["teacher_cache"]
  assert (recorded["format"], recorded["digest"]) == (2, teacher_cache.digest(old))
  out = helpers.run_cli("train.py", _kd(setup, legacy) + [
      "--max_steps=3", "--train_dir=" + run]).stdout
  assert "Starting at step 2 (resumed)" in out
  # The same run with a cache of today's format is refused: it needs the one it read.
  process = helpers.run_cli("train.py", _kd(setup, setup["reference"]) + [
      "--max_steps=4", "--train_dir=" + run], check=False)
  assert "(fingerprint format 2) -> digest" in helpers.user_error_line(process)
  # Its files moved: one line saying to build it again.
  moved = str(tmp_path / "data")
  shutil.copytree(os.path.dirname(setup["train"]), moved)
  process = helpers.run_cli("train.py", _kd(setup, legacy, os.path.join(
      moved, "train*.tfrecord")) + ["--build_teacher_cache_only", "--train_dir=" + run],
                            check=False)
  assert process.returncode == 2
  assert ("an earlier version of this code named them by absolute path" in
          helpers.user_error_line(process))
  process = _build(setup, legacy, "--bf16", check=False)
  assert "computed without --bf16" in helpers.user_error_line(process)
