"""Reliability: bad inputs, crashes and hostile files never lose work or mislead.

The one-line-error cases run through a *driver*: one Python process per entry point that
imports the script once and calls `cli.run_main(main, argv)` for many argv lists, as
the script's `__main__` does, with stdout and stderr captured at the file-descriptor
level (C++ log lines count as output too). That saves a TensorFlow import (~4 s) per
case; the three drivers start early and run while the crash tests run. Crash tests run
the real scripts and SIGKILL them.
"""
import glob
import io
import json
import os
import random
import shutil
import signal
import tarfile
import time
import types

import numpy as np
import pytest
import tensorflow as tf

import cli
import file_io
import readers
from tests import helpers
from tools import make_synthetic_yt8m as synth

tf1 = tf.compat.v1

TINY = ["--batch_size=4"] + helpers.TINY_MODEL
BAD_RECORD = 3  # the record of train0001.tfrecord each bad data set spoils

# -------------------------------------------------------------------------------------
# The driver (runs in its own process; see the module docstring).

DRIVER = r'''
import glob, json, os, shutil, sys, tempfile, time, importlib, traceback
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf
tf1 = tf.compat.v1
tf1.disable_eager_execution()
script, cases = sys.argv[1], json.load(open(sys.argv[2]))
module = importlib.import_module(script[:-3])
import cli
FLAGS = tf1.flags.FLAGS

graphs_built = [0]
graph_init = tf.Graph.__init__
def counting_init(self, *args, **kwargs):
  graphs_built[0] += 1
  graph_init(self, *args, **kwargs)
tf.Graph.__init__ = counting_init

# train.py: remember the TrainGraph and look at the default graph when the loop starts.
train_graphs, loop = [], {}
if hasattr(module, "train_graph"):
  train_init = module.train_graph.TrainGraph.__init__
  def recording_init(self, *args, **kwargs):
    train_init(self, *args, **kwargs)
    train_graphs.append(self)
  module.train_graph.TrainGraph.__init__ = recording_init
  logger_start = module.progress.StepLogger.start
  def recording_start(self, step):
    graph = tf1.get_default_graph()
    loop["is_train_graph"] = graph is train_graphs[-1].graph
    loop["finalized_at_loop_start"] = graph.finalized
    loop["ops_at_loop_start"] = len(graph.get_operations())
    try:
      tf.constant(0.0)
      loop["adding_an_op_raises"] = False
    except RuntimeError:
      loop["adding_an_op_raises"] = True
    logger_start(self, step)
  module.progress.StepLogger.start = recording_start

def checkpoint_deleted_before_restore():
  """What a running training does between eval choosing a checkpoint and restoring it:
  it writes a newer checkpoint and deletes the chosen one."""
  saver = tf1.train.Saver
  original = saver.restore
  done = []
  def restore(self, sess, path):
    if not done:
      done.append(path)
      directory = os.path.dirname(path)
      newer = os.path.join(directory, "model.ckpt-1000")
      for name in glob.glob(path + ".*"):
        shutil.copy(name, newer + name[len(path):])
      tf1.train.update_checkpoint_state(directory, newer)
      for name in glob.glob(path + ".*"):
        os.remove(name)
    return original(self, sess, path)
  saver.restore = restore
  return lambda: setattr(saver, "restore", original)

results = {}
# The log's descriptors, kept at fixed high numbers for the whole run, where no case's
# own files can land.
LOG_OUT, LOG_ERR = os.dup2(1, 900), os.dup2(2, 901)
for case in cases:
  FLAGS.unparse_flags()
  graphs_built[0] = 0
  del train_graphs[:]
  loop.clear()
  undo = globals()[case["patch"]]() if case.get("patch") else None
  start = time.time()
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
    try:
      cli.run_main(module.main, [script] + case["args"])
      code = 0
    except SystemExit as e:
      code = e.code
    except BaseException:
      traceback.print_exc()
      code = "uncaught exception"
    finally:
      sys.stdout.flush(); sys.stderr.flush()
      os.dup2(LOG_OUT, 1); os.dup2(LOG_ERR, 2)
      if undo:
        undo()
    out.seek(0); err.seek(0)
    result = {"code": code, "stdout": out.read(), "stderr": err.read(),
              "graphs_built": graphs_built[0], "seconds": time.time() - start}
  if train_graphs:  # (MonitoredSession un-finalizes the graph when it closes)
    result.update(loop, ops_after=len(train_graphs[-1].graph.get_operations()))
  results[case["name"]] = result
print("DRIVER RESULTS " + json.dumps(results))
'''


class Driver(object):
  """One driver process, started at once; `results()` waits for it."""

  def __init__(self, script, cases, directory):
    self.script = script
    cases_file = os.path.join(directory, "cases_%s.json" % script[:-3])
    with open(cases_file, "w") as f:
      json.dump(cases, f)
    self.log_path = os.path.join(directory, "driver_%s.log" % script[:-3])
    # A file of its own: drivers start one after the other, and rewriting a shared
    # driver.py while an earlier driver's child was still reading it ran an empty
    # script (exit 0, nothing in the log).
    driver = os.path.join(directory, "driver_%s.py" % script[:-3])
    with open(driver, "w") as f:
      f.write(DRIVER)
    self.process = helpers.start_cli(driver, [script, cases_file], self.log_path,
                                     cwd=directory)
    self._results = None

  def results(self, timeout=600):
    if self._results is None:
      self.process.wait(timeout=timeout)
      with open(self.log_path) as log:
        output = log.read()
      lines = [l for l in output.splitlines() if l.startswith("DRIVER RESULTS ")]
      assert self.process.returncode == 0 and lines, output[-5000:]
      self._results = json.loads(lines[-1][len("DRIVER RESULTS "):])
    return self._results

  def __getitem__(self, name):
    return self.results()[name]

  def stop(self):
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait()


def error_line(result):
  """The one line a failed case printed (asserts exit 2, no traceback, nothing else)."""
  assert result["code"] == 2, result
  return helpers.user_error_line(types.SimpleNamespace(stderr=result["stderr"]))


# -------------------------------------------------------------------------------------
# Data and fixtures.

def _rewrite_shard(source, target, mutate=None):
  """Copies a TFRecord shard, spoiling record BAD_RECORD with mutate(SequenceExample)."""
  records = list(tf1.io.tf_record_iterator(source))
  if mutate:
    example = tf.train.SequenceExample.FromString(records[BAD_RECORD])
    mutate(example)
    records[BAD_RECORD] = example.SerializeToString()
  os.makedirs(os.path.dirname(target), exist_ok=True)
  with tf.io.TFRecordWriter(target) as writer:
    for record in records:
      writer.write(record)


def _set_labels(example, labels):
  del example.context.feature["labels"].int64_list.value[:]
  example.context.feature["labels"].int64_list.value.extend(labels)


def _delete(container, key):
  del container[key]


def _short_frame(example):
  example.feature_lists.feature_list["rgb"].feature[1].bytes_list.value[0] = b"x" * 1000


def _clear_frames(example):
  for name in ("rgb", "audio"):
    del example.feature_lists.feature_list[name].feature[:]


MUTATIONS = {  # name: (mutation of record BAD_RECORD, expected problem)
    "missing_rgb": (lambda e: _delete(e.feature_lists.feature_list, "rgb"),
                    "no 'rgb' feature list (--feature_names)"),
    "missing_audio": (lambda e: _delete(e.feature_lists.feature_list, "audio"),
                      "no 'audio' feature list (--feature_names)"),
    "missing_labels": (lambda e: _delete(e.context.feature, "labels"),
                       "no 'labels' feature"),
    "frame_bytes": (_short_frame,
                    "frame 1 of 'rgb' has 1000 bytes, expected 1024 (--feature_sizes)"),
    "label_out_of_range": (lambda e: _set_labels(e, [1, 20]),
                           "label id 20 outside 0..19 (--num_classes=20)"),
    "zero_frames": (_clear_frames, "video with 0 frames in 'rgb'"),
}


def _make_bad_sets(train_pattern, root):
  """{case: (pattern, expected line)} with train0000 good and train0001 spoiled."""
  shard0, shard1 = sorted(glob.glob(train_pattern))
  sets = {}
  for case, (mutate, problem) in MUTATIONS.items():
    directory = os.path.join(root, case)
    shutil.copy(shard0, os.path.join(_mkdir(directory), "train0000.tfrecord"))
    bad = os.path.join(directory, "train0001.tfrecord")
    _rewrite_shard(shard1, bad, mutate)
    sets[case] = (os.path.join(directory, "train*.tfrecord"),
                  "%s: record %d: %s" % (bad, BAD_RECORD, problem))
  records = list(tf1.io.tf_record_iterator(shard1))
  for case in ("truncated", "corrupted"):
    directory = os.path.join(root, case)
    shutil.copy(shard0, os.path.join(_mkdir(directory), "train0000.tfrecord"))
    bad = os.path.join(directory, "train0001.tfrecord")
    data = bytearray(open(shard1, "rb").read())
    if case == "truncated":  # the last record loses its tail
      data = data[:-10]
      index = len(records) - 1
    else:  # one flipped byte in the payload of record BAD_RECORD: its CRC fails
      index = BAD_RECORD
      offset = sum(len(r) + 16 for r in records[:index]) + 12 + len(records[index]) // 2
      data[offset] ^= 0xFF
    open(bad, "wb").write(bytes(data))
    sets[case] = (os.path.join(directory, "train*.tfrecord"),
                  "%s: record %d: truncated or corrupted TFRecord" % (bad, index))
  # Good shards plus a spoiled record plus a damaged shard, for --skip_corrupt_records.
  mixed = _mkdir(os.path.join(root, "mixed"))
  shutil.copy(shard0, os.path.join(mixed, "train0000.tfrecord"))
  shutil.copy(os.path.join(root, "frame_bytes", "train0001.tfrecord"),
              os.path.join(mixed, "train0001.tfrecord"))
  shutil.copy(os.path.join(root, "truncated", "train0001.tfrecord"),
              os.path.join(mixed, "train0002.tfrecord"))
  sets["mixed"] = (os.path.join(mixed, "train*.tfrecord"), None)
  return sets


def _mkdir(path):
  os.makedirs(path, exist_ok=True)
  return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  train, validate = helpers.make_dataset(root, train_videos=16, validate_videos=8,
                                         min_frames=5, max_frames=20)
  return {"root": str(root), "train": train, "validate": validate,
          "bad": _make_bad_sets(train, str(root / "bad"))}


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
  """A tiny trained teacher run (checkpoints at steps 0, 1, 2)."""
  root = tmp_path_factory.mktemp("teacher")
  helpers.run_cli("train.py", ["--train_data_pattern=" + data["train"],
                               "--train_dir=%s/run" % root, "--max_steps=2",
                               "--export_model_steps=1"] + TINY)
  return str(root / "run_teacher")


def _video_level_data(root):
  """Video-level shards of 40 videos: good, and with a NaN in the features of video 29."""
  rng = np.random.RandomState(0)
  videos = [{"id": "v%02d" % i, "labels": [i % 5],
             "mean_rgb": rng.randn(8).astype(np.float32),
             "mean_audio": rng.randn(4).astype(np.float32)} for i in range(40)]
  synth.write_video_records(os.path.join(root, "good", "train0000.tfrecord"), videos)
  videos[29]["mean_rgb"][3] = np.nan
  synth.write_video_records(os.path.join(root, "nan", "train0000.tfrecord"), videos)
  return {k: os.path.join(root, k, "train*.tfrecord") for k in ("good", "nan")}


VIDEO_LEVEL = ["--frame_features=False", "--feature_names=mean_rgb,mean_audio",
               "--feature_sizes=8,4", "--model=LogisticModel", "--num_classes=5",
               "--batch_size=4", "--export_model_steps=1", "--seed=1",
               "--log_every_n_steps=1000"]


def _tar(path, members):
  """Writes a .tgz of (TarInfo, bytes or None) members."""
  with tarfile.open(path, "w:gz") as tar:
    for info, payload in members:
      if payload is not None:
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
      else:
        tar.addfile(info)


def _member(name, kind=tarfile.REGTYPE, link=""):
  info = tarfile.TarInfo(name)
  info.type = kind
  info.linkname = link
  return info


def _hostile_archives(root, outside):
  """{case: (tgz path, untar dir)}; `outside` holds `secret`, which must stay as it is."""
  flags = b"{}"
  cases = {
      "hard_link_to_absolute_path": [(_member("model/passwd", tarfile.LNKTYPE,
                                              "/etc/passwd"), None)],
      "hard_link_out_of_target": [(_member("model/x", tarfile.LNKTYPE,
                                           "../../outside/secret"), None)],
      "hard_link_inside_target": [(_member("model/model_flags.json"), flags),
                                  (_member("model/y", tarfile.LNKTYPE,
                                           "model/model_flags.json"), None)],
      "relative_symlink_out": [(_member("model/link", tarfile.SYMTYPE, "../../outside"),
                                None)],
      "symlinked_dir_then_file": [(_member("model/d", tarfile.SYMTYPE, outside), None),
                                  (_member("model/d/evil"), b"pwned")],
      "fifo": [(_member("model/fifo", tarfile.FIFOTYPE), None)],
      "dotdot_through_model": [(_member("model/../../outside/evil"), b"pwned")],
      # The archive is harmless; the untar dir already holds a link out of it.
      "existing_link_in_untar_dir": [(_member("model/model_flags.json"), flags)],
  }
  archives = {}
  for case, members in cases.items():
    tgz = os.path.join(root, case + ".tgz")
    _tar(tgz, members)
    untar = os.path.join(root, "untar_" + case)
    if case == "existing_link_in_untar_dir":
      os.makedirs(untar)
      os.symlink(outside, os.path.join(untar, "model"))
    archives[case] = (tgz, untar)
  return archives


@pytest.fixture(scope="module")
def drivers(data, teacher, tmp_path_factory):
  """Starts the train, eval and inference drivers; their results are read on demand."""
  root = str(tmp_path_factory.mktemp("drivers"))
  bad = data["bad"]
  video = _video_level_data(os.path.join(root, "video"))
  inf_pca = os.path.join(root, "eigenvals_inf.npy")
  np.save(inf_pca, np.concatenate([np.ones(1000), [np.inf], np.ones(1047)])[:, None])
  race_dir = os.path.join(root, "race_run_teacher")
  shutil.copytree(teacher, race_dir)
  # A teacher checkpoint without its model_flags.json: KD builds it from its own flags.
  bare_teacher = os.path.join(root, "bare_teacher")
  shutil.copytree(teacher, bare_teacher)
  os.remove(os.path.join(bare_teacher, "model_flags.json"))
  # The copied state file names the teacher's checkpoints by absolute path.
  tf1.train.update_checkpoint_state(race_dir, os.path.join(race_dir, "model.ckpt-2"))
  outside = _mkdir(os.path.join(root, "outside"))
  open(os.path.join(outside, "secret"), "w").write("secret")
  archives = _hostile_archives(root, outside)
  good = "--train_data_pattern=" + data["train"]

  def train_dir(name):
    return "--train_dir=" + os.path.join(root, "runs", name)

  flag_cases = {
      "names_sizes_lengths": ["--feature_names=rgb,audio", "--feature_sizes=1024"],
      "unknown_model": ["--model=NoSuchModel"],
      "k_frame_0": ["--k_frame=0"],
      "k_frame_301": ["--k_frame=301", "--model_type=KD"],
      "frame_sampling": ["--frame_sampling=every_other"],
      "model_type": ["--model_type=Teacher"],
      "batch_size_0": ["--batch_size=0"],
      "batch_size_negative": ["--batch_size=-4"],
      "empty_pattern": ["--train_data_pattern="],
      "pattern_matches_nothing": ["--train_data_pattern=" + os.path.join(
          data["root"], "frame", "nothing*.tfrecord")],
      "path_does_not_exist": ["--train_data_pattern=/nonexistent/yt8m/train*.tfrecord"],
  }
  train_cases = [{"name": name, "args": [good, train_dir(name)] + TINY + args}
                 for name, args in flag_cases.items()]
  train_cases += [  # one epoch: training reads the bad record for sure
      {"name": "bad_" + case, "args": ["--train_data_pattern=" + bad[case][0],
                                       train_dir(case), "--num_epochs=1"] + TINY}
      for case in ("truncated", "label_out_of_range")]
  train_cases += [
      # A good run (also skipping corrupt records: there are none), then a resume
      # without --skip_corrupt_records: it reads data, it does not shape the model.
      {"name": "good", "args": [good, train_dir("good"), "--max_steps=2",
                                "--skip_corrupt_records", "--log_every_n_steps=1"] + TINY},
      {"name": "good_resumed", "args": [good, train_dir("good"), "--max_steps=3"] + TINY},
      {"name": "skip_mixed", "args": ["--train_data_pattern=" + bad["mixed"][0],
                                      train_dir("skip"), "--num_epochs=1",
                                      "--skip_corrupt_records"] + TINY},
      {"name": "kd_no_teacher", "args": [good, train_dir("kd_no_teacher"),
                                         "--model_type=KD",
                                         "--k_frame=4"] + TINY},
      {"name": "kd_teacher_path_missing", "args": [
          good, train_dir("kd2"), "--model_type=KD", "--k_frame=4",
          "--teacher_checkpoint=/nonexistent/model.ckpt-7"] + TINY},
      {"name": "kd_teacher_other_shapes", "args": [
          good, train_dir("kd3"), "--model_type=KD", "--k_frame=4",
          "--teacher_checkpoint=" + bare_teacher] + TINY + ["--nextvlad_hidden_size=32"]},
      {"name": "kd_teacher_other_model", "args": [
          good, train_dir("kd4"), "--model_type=KD", "--k_frame=4",
          "--teacher_checkpoint=" + bare_teacher, "--model=FrameLevelLogisticModel"] +
          TINY},
      {"name": "pca_inf", "args": [good, train_dir("pca"), "--pca_eigenvals=" + inf_pca,
                                   "--max_steps=1"] + TINY},
      {"name": "nan_input", "args": ["--train_data_pattern=" + video["nan"],
                                     train_dir("nan")] + VIDEO_LEVEL},
      # The learning rate grows 1e20-fold per step: a step's update overflows.
      {"name": "diverging", "args": [
          "--train_data_pattern=" + video["good"], train_dir("diverging"),
          "--optimizer=GradientDescentOptimizer", "--base_learning_rate=0.1",
          "--learning_rate_decay=1e20", "--learning_rate_decay_examples=4",
          "--label_loss=HingeLoss", "--max_steps=50"] + VIDEO_LEVEL},
  ]

  validate = "--eval_data_pattern=" + data["validate"]
  eval_cases = [
      {"name": "batch_size_0", "args": ["--train_dir=" + teacher, validate, "--run_once",
                                        "--batch_size=0"]},
      {"name": "path_does_not_exist", "args": [
          "--train_dir=" + teacher, "--run_once",
          "--eval_data_pattern=/nonexistent/yt8m/validate*.tfrecord"]},
      {"name": "empty_pattern", "args": ["--train_dir=" + teacher, "--run_once",
                                         "--eval_data_pattern="]},
      {"name": "pattern_matches_nothing", "args": [
          "--train_dir=" + teacher, "--run_once", "--eval_data_pattern=" +
          os.path.join(data["root"], "frame", "nothing*.tfrecord")]},
      {"name": "bad_corrupted", "args": ["--train_dir=" + teacher, "--run_once",
                                         "--eval_data_pattern=" + bad["corrupted"][0],
                                         "--batch_size=4"]},
      {"name": "skip_mixed", "args": ["--train_dir=" + teacher, "--run_once",
                                      "--eval_data_pattern=" + bad["mixed"][0],
                                      "--batch_size=4", "--skip_corrupt_records"]},
      {"name": "checkpoint_deleted_before_restore",
       "patch": "checkpoint_deleted_before_restore",
       "args": ["--train_dir=" + race_dir, validate, "--run_once", "--batch_size=4"]},
  ]

  def inference(name, pattern, *extra):
    return ["--train_dir=" + teacher, "--input_data_pattern=" + pattern,
            "--output_file=" + os.path.join(root, name + ".csv"), "--batch_size=4"] + \
        list(extra)
  inference_cases = [
      {"name": "batch_size_0", "args": inference("batch_size_0", data["validate"],
                                                 "--batch_size=0")},
      {"name": "skip_refused", "args": inference("skip_refused", data["validate"],
                                                 "--skip_corrupt_records")},
      {"name": "path_does_not_exist", "args": inference(
          "path_does_not_exist", "/nonexistent/yt8m/test*.tfrecord")},
      {"name": "empty_pattern", "args": inference("empty_pattern", "")},
      {"name": "pattern_matches_nothing", "args": inference(
          "pattern_matches_nothing",
          os.path.join(data["root"], "frame", "nothing*.tfrecord"))},
      {"name": "bad_zero_frames", "args": inference("bad_zero_frames",
                                                    bad["zero_frames"][0])},
      {"name": "unlabeled", "args": inference("unlabeled", bad["missing_labels"][0])},
  ]
  for case, (tgz, untar) in archives.items():
    inference_cases.append({"name": "tgz_" + case, "args": [
        "--input_model_tgz=" + tgz, "--untar_model_dir=" + untar,
        "--input_data_pattern=" + data["validate"],
        "--output_file=" + os.path.join(root, "tgz_%s.csv" % case)]})

  started = {script: Driver(script, cases, root) for script, cases in
             [("train.py", train_cases), ("eval.py", eval_cases),
              ("inference.py", inference_cases)]}
  info = {"root": root, "race_dir": race_dir, "outside": outside, "archives": archives,
          "bad": bad, "teacher": teacher}
  yield dict(started, **info)
  for driver in started.values():
    driver.stop()


@pytest.fixture(scope="module", autouse=True)
def _start_drivers_early(request):
  """Starts the drivers before the crash tests when any selected test needs them."""
  if any("drivers" in item.fixturenames for item in request.session.items
         if item.module is request.module):
    request.getfixturevalue("drivers")


# -------------------------------------------------------------------------------------
# Process helpers for the crash tests.

def _start(script, args, log_path):
  return helpers.start_cli(script, args, log_path)


def _wait_until(condition, process, what, log_path=None, timeout=180):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return
    if process.poll() is not None:
      break
    time.sleep(0.005)
  log = open(log_path).read()[-3000:] if log_path else ""
  raise AssertionError("%s never happened (exit %s):\n%s" % (what, process.poll(), log))


def _printed(log_path, text):
  return lambda: text in open(log_path).read()


def _kill(process):
  process.send_signal(signal.SIGKILL)
  process.wait()


def _kill_after(process, delay):
  """SIGKILLs `process` after `delay` s -> whether it was still running then."""
  time.sleep(delay)
  running = process.poll() is None
  _kill(process)
  return running


def _checkpoint_restores(run_dir):
  """The step of the latest checkpoint, after loading every variable (all finite)."""
  checkpoint = tf1.train.latest_checkpoint(run_dir)
  assert checkpoint, os.listdir(run_dir)
  values = {name: tf.train.load_variable(checkpoint, name)
            for name, _ in tf.train.list_variables(checkpoint)}
  for name, value in values.items():
    assert np.isfinite(value).all(), (checkpoint, name)
  step = int(values["global_step"])
  assert checkpoint.endswith("-%d" % step)
  # And a Saver restores it into a fresh graph of the same variables.
  with tf.Graph().as_default():
    for name, value in values.items():
      tf1.get_variable(name, np.shape(value), tf.as_dtype(np.asarray(value).dtype))
    with tf1.Session() as sess:
      tf1.train.Saver().restore(sess, checkpoint)
  return step


# -------------------------------------------------------------------------------------
# 1. Bad data.

@pytest.mark.parametrize("case", sorted(MUTATIONS) + ["truncated", "corrupted"])
def test_bad_data_fails_the_pipeline_with_one_line_naming_file_and_record(data, case):
  """In process, for every kind of bad data: the reading pipeline train/eval use fails,
  and readers.data_error (what the CLIs raise) is one line naming file, record, problem."""
  pattern, expected = data["bad"][case]
  reader = readers.YT8MFrameFeatureReader(num_classes=20)
  with tf.Graph().as_default():
    batch = readers.get_input_data_tensors(
        reader, readers.list_data_files(pattern), 4, 2, num_epochs=1, shuffle=False)
    with tf1.Session() as sess:
      with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.DataLossError)) as e:
        while True:
          sess.run(batch)
  error = readers.data_error(e.value, reader,
                             readers.list_data_files(pattern, "--train_data_pattern"))
  assert isinstance(error, cli.UsageError)
  assert str(error).startswith(expected) and "\n" not in str(error), str(error)


# -------------------------------------------------------------------------------------
# 3 and 4. Concurrent eval and crash safety (first: they run while the drivers work).

@pytest.fixture(scope="module")
def killed_training(data, tmp_path_factory):
  """Trains with a checkpoint every step; evals run meanwhile; SIGKILLs it 3 times.

  Kill 1 after two concurrent `eval.py --run_once`, kill 2 at a random moment of its
  first 3 s (graph building, session creation, the first saves), kill 3 at a random
  moment of the loop; then a restart finishes the run.
  """
  root = tmp_path_factory.mktemp("killed")
  seed = random.randrange(10 ** 6)
  rng = random.Random(seed)
  max_steps = 300  # >= 0.17 s per step with a checkpoint each: not reached before kill 3
  args = ["--train_data_pattern=" + data["train"], "--train_dir=%s/run" % root,
          "--max_steps=%d" % max_steps, "--num_epochs=100000", "--export_model_steps=1",
          "--log_every_n_steps=1000"] + TINY
  run_dir = str(root / "run_teacher")
  report = {"seed": seed, "kills": [], "evals": [], "starts": []}
  began = time.time()
  for attempt in range(3):
    log = str(root / ("train%d.log" % attempt))
    process = _start("train.py", args, log)
    try:
      if attempt == 1:
        _wait_until(_printed(log, "Run directory:"), process, "run directory line", log)
        delay = rng.uniform(0.0, 3.0)
      else:
        _wait_until(_printed(log, "Starting at step"), process, "training start", log)
        delay = rng.uniform(0.0, 0.5) if attempt == 0 else rng.uniform(0.3, 2.5)
      if attempt == 0:
        evals = [_start("eval.py", ["--train_dir=" + run_dir, "--run_once",
                                    "--eval_data_pattern=" + data["validate"],
                                    "--batch_size=4"], str(root / ("eval%d.log" % i)))
                 for i in range(2)]
        for i, evaluation in enumerate(evals):
          evaluation.wait(timeout=300)
          report["evals"].append((evaluation.returncode,
                                  open(str(root / ("eval%d.log" % i))).read()))
      still_running = _kill_after(process, delay)
    finally:
      if process.poll() is None:
        _kill(process)
    started = [l for l in open(log).read().splitlines() if l.startswith("Starting at")]
    report["starts"].append(started)
    step = _checkpoint_restores(run_dir) if tf1.train.latest_checkpoint(run_dir) else None
    report["kills"].append({"delay": delay, "killed_while_running": still_running,
                            "latest_step": step, "at_second": time.time() - began})
  final = helpers.run_cli("train.py", args + ["--export_model_steps=1000"])
  report["final"] = final.stdout
  report["final_step"] = _checkpoint_restores(run_dir)
  report["max_steps"] = max_steps
  report["seconds"] = time.time() - began
  return report


def test_sigkilled_training_always_resumes_from_a_complete_checkpoint(killed_training):
  report = killed_training
  kills = report["kills"]
  assert all(k["killed_while_running"] for k in kills), report
  # Every kill left a latest checkpoint whose every variable loads; every restart
  # resumed from exactly that step.
  assert kills[0]["latest_step"] is not None and kills[2]["latest_step"] is not None
  previous = [k["latest_step"] for k in kills]
  for started, step in zip(report["starts"][1:] + [report["final"].splitlines()],
                           previous):
    line = [l for l in started if l.startswith("Starting at")]
    if line:  # a kill before "Starting at" (kill 2) prints nothing
      assert line[0] == "Starting at step %d (resumed)." % step, (report["seed"], line)
  assert "Starting at step %d (resumed)." % kills[2]["latest_step"] in report["final"]
  assert "Done training at step %d" % report["max_steps"] in report["final"]
  assert report["final_step"] == report["max_steps"]
  assert kills[2]["latest_step"] >= kills[0]["latest_step"] > 0


def test_eval_on_a_run_being_checkpointed_every_step_never_fails(killed_training):
  """Two `eval.py --run_once` while the run saves a checkpoint every step (the Saver
  keeps 5 and deletes older ones): both exit 0 with the metrics line."""
  assert len(killed_training["evals"]) == 2
  for code, log in killed_training["evals"]:
    assert code == 0, log
    assert "Traceback" not in log
    assert [l for l in log.splitlines() if "| Avg_Hit@1:" in l and "GAP:" in l], log


# Inference and export.

def _killed_mid_run(script, args, watch_dir, prefix, delay, after_line=None):
  """Starts `script`; SIGKILLs it `delay` s after an entry prefix* appears in watch_dir
  (and `after_line` was printed). Returns (killed while running, its output)."""
  log = os.path.join(watch_dir, script + ".log")
  process = _start(script, args, log)
  try:
    _wait_until(lambda: bool(glob.glob(os.path.join(watch_dir, prefix + "*"))) and (
        not after_line or after_line in open(log).read()), process,
                "%s* in %s" % (prefix, watch_dir), log)
    running = _kill_after(process, delay)
  finally:
    if process.poll() is None:
      _kill(process)
  return running, open(log).read()


OLD_CSV = "VideoId,LabelConfidencePairs\nold,1 0.5\n"

# Runs a CLI in a child process that SIGKILLs itself the `count`-th time the function
# `target` (module.attribute) is called: a kill at a known point of the write, every time.
KILL_AT = r'''
import importlib, os, signal, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf
tf.compat.v1.disable_eager_execution()
script, target, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
module = importlib.import_module(script[:-3])
import cli
owner_name, attribute = target.rsplit(".", 1)
owner = importlib.import_module(owner_name)
original, calls = getattr(owner, attribute), [0]
def killing(*args, **kwargs):
  calls[0] += 1
  if calls[0] == count:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
  return original(*args, **kwargs)
setattr(owner, attribute, killing)
cli.run_main(module.main, [script] + sys.argv[4:])
'''


def _killed_at(tmp_path, script, target, count, args):
  """Runs `script args`, SIGKILLed at the count-th call of target; its CompletedProcess."""
  driver = tmp_path / "kill_at.py"
  driver.write_text(KILL_AT)
  process = helpers.run_cli(str(driver), [script, target, str(count)] + list(args),
                            check=False)
  assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
  return process


@pytest.mark.parametrize("point", ["after_first_rows", "before_rename"])
def test_killed_inference_leaves_no_partial_csv(teacher, data, tmp_path, point):
  output = tmp_path / "predictions.csv"
  output.write_text(OLD_CSV)
  pattern = data["train"] + "," + data["validate"]  # 24 videos, one per batch
  target, count = {"after_first_rows": ("inference.csv_rows", 2),
                   "before_rename": ("os.replace", 1)}[point]
  _killed_at(tmp_path, "inference.py", target, count,
             ["--train_dir=" + teacher, "--input_data_pattern=" + pattern,
              "--output_file=" + str(output), "--batch_size=1"])
  # The output is untouched; what was being written is the hidden temporary file
  # (complete but not renamed yet, or cut short with whatever its buffer had written).
  assert output.read_text() == OLD_CSV
  (partial,) = glob.glob(str(tmp_path / ".predictions.csv.*.tmp"))
  rows = open(partial).read().splitlines()
  if point == "before_rename":
    assert rows[0] == "VideoId,LabelConfidencePairs" and len(rows) == 25
  else:
    assert len(rows) < 25


@pytest.mark.parametrize("point", ["while_staging", "between_the_renames"])
def test_killed_export_leaves_no_half_saved_model(teacher, tmp_path, point):
  target = tmp_path / "saved"
  target.mkdir()
  (target / "saved_model.pb").write_bytes(b"old complete model")
  # shutil.copy adds model_flags.json to the staged model after the SavedModel is
  # written; os.rename's first call moves the old model aside, its second puts the new
  # one in place (killed just before each call).
  kill_at, count = {"while_staging": ("shutil.copy", 1),
                    "between_the_renames": ("os.rename", 2)}[point]
  _killed_at(tmp_path, "export_model.py", kill_at, count,
             ["--train_dir=" + teacher, "--output_dir=" + str(target)])
  if point == "while_staging":
    assert sorted(os.listdir(str(target))) == ["saved_model.pb"]
    assert (target / "saved_model.pb").read_bytes() == b"old complete model"
    # The half-staged model is in a hidden directory next to it, never in `saved`.
    (staging,) = glob.glob(str(tmp_path / ".saved.*"))
    assert not os.path.exists(os.path.join(staging, "model", "assets.extra",
                                           "model_flags.json"))
  else:
    # The one moment the target may be absent: the old model already moved aside.
    assert not target.exists()
  # Run again, it completes: a loadable new model replaces what was there.
  helpers.run_cli("export_model.py", ["--train_dir=" + teacher, "--output_dir=" +
                                      str(target)])
  assert (target / "assets.extra" / "model_flags.json").exists()
  with tf.Graph().as_default(), tf1.Session() as sess:
    tf1.saved_model.load(sess, [tf1.saved_model.tag_constants.SERVING], str(target))


# -------------------------------------------------------------------------------------
# The tests below read the drivers' results. 1. Bad data (continued).

def test_bad_data_from_the_command_line_is_one_line_and_exit_2(drivers):
  bad = drivers["bad"]
  for script, name, case in [("train.py", "bad_truncated", "truncated"),
                             ("train.py", "bad_label_out_of_range", "label_out_of_range"),
                             ("eval.py", "bad_corrupted", "corrupted"),
                             ("inference.py", "bad_zero_frames", "zero_frames")]:
    line = error_line(drivers[script][name])
    assert line.startswith("%s: error: %s" % (script, bad[case][1])), (script, line)
  assert not os.path.exists(os.path.join(drivers["root"], "bad_zero_frames.csv"))


@pytest.mark.parametrize("script", ["train.py", "eval.py", "inference.py"])
def test_missing_data_paths_are_named_before_any_graph(drivers, script):
  flag = {"train.py": "--train_data_pattern", "eval.py": "--eval_data_pattern",
          "inference.py": "--input_data_pattern"}[script]
  result = drivers[script]["path_does_not_exist"]
  assert "%s '/nonexistent/yt8m/" % flag in error_line(result)
  assert "matches no file" in error_line(result)
  assert result["graphs_built"] == 0
  empty = drivers[script]["empty_pattern"]
  assert "%s is required" % flag in error_line(empty) and empty["graphs_built"] == 0
  nothing = drivers[script]["pattern_matches_nothing"]
  assert flag in error_line(nothing)
  assert "nothing*.tfrecord' matches no file" in error_line(nothing)
  assert nothing["graphs_built"] == 0


def test_skip_corrupt_records_in_train_and_eval_reports_what_it_skipped(drivers):
  train = drivers["train.py"]["skip_mixed"]
  assert train["code"] == 0, train
  assert ("--skip_corrupt_records: skipped 1 corrupt records and the unreadable rest of "
          "1 damaged shards") in train["stdout"]
  assert "train0002.tfrecord" in train["stderr"]  # the damaged shard is named
  evaluation = drivers["eval.py"]["skip_mixed"]
  assert evaluation["code"] == 0, evaluation
  assert "GAP:" in evaluation["stdout"]
  assert ("--skip_corrupt_records: 1 corrupt records and the unreadable rest of 1 "
          "damaged shards are not in these metrics") in evaluation["stdout"]
  records = file_io.read_jsonl(os.path.join(drivers["teacher"], "eval.jsonl"))
  skipping = [r for r in records if r["data"] == drivers["bad"]["mixed"][0]]
  # 8 + 8 + 8 records: one spoiled, and the truncated shard keeps 7 of its 8.
  assert [(r["skipped_records"], r["num_examples"]) for r in skipping] == [(1, 22)]
  # The flag chooses records, not the model: not recorded, resuming without it is fine.
  good = drivers["train.py"]["good"]
  assert "skipped 0 corrupt records" in good["stdout"]
  resumed = drivers["train.py"]["good_resumed"]
  assert resumed["code"] == 0 and "Starting at step 2 (resumed)" in resumed["stdout"], \
      resumed
  flags_file = os.path.join(drivers["root"], "runs", "good_teacher", "model_flags.json")
  assert "skip_corrupt_records" not in file_io.read_json(flags_file)


def test_inference_never_drops_a_video(drivers):
  refused = error_line(drivers["inference.py"]["skip_refused"])
  assert "--skip_corrupt_records is for train.py and eval.py" in refused
  assert drivers["inference.py"]["skip_refused"]["graphs_built"] == 0
  # Unlabeled records are fine for inference: every video gets its row.
  unlabeled = drivers["inference.py"]["unlabeled"]
  assert unlabeled["code"] == 0, unlabeled
  rows = open(os.path.join(drivers["root"], "unlabeled.csv")).read().splitlines()[1:]
  records = [r for path in sorted(glob.glob(drivers["bad"]["missing_labels"][0]))
             for r in tf1.io.tf_record_iterator(path)]
  assert len(rows) == len({r.split(",")[0] for r in rows}) == len(records) == 16


# -------------------------------------------------------------------------------------
# 2. Bad flags.

BAD_FLAGS = {
    "names_sizes_lengths": "--feature_names has 2 entries (rgb,audio) but --feature_sizes "
                           "has 1 (1024)",
    # absl's own checks (enums, bounds) name the flag and its value.
    "unknown_model": "flag --model=NoSuchModel: value should be one of <",
    "k_frame_0": "--k_frame must be in 1..300 (--max_frames), got 0",
    "k_frame_301": "--k_frame must be in 1..300 (--max_frames), got 301",
    "frame_sampling": "flag --frame_sampling=every_other: value should be one of <uniform|",
    "model_type": "flag --model_type=Teacher: value should be one of <teacher|student|KD>",
    "batch_size_0": "flag --batch_size=0: 0 is not a positive integer",
    "batch_size_negative": "flag --batch_size=-4: -4 is not a positive integer",
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_train_flags_are_one_line_naming_the_flag_before_any_graph(drivers, case):
  result = drivers["train.py"][case]
  line = error_line(result)
  assert line.startswith("train.py: error: ") and BAD_FLAGS[case] in line, line
  assert result["graphs_built"] == 0 and result["stdout"] == ""
  assert not glob.glob(os.path.join(drivers["root"], "runs", case + "_*"))


def test_bad_batch_size_of_eval_and_inference_is_named_before_any_graph(drivers):
  for script in ("eval.py", "inference.py"):
    result = drivers[script]["batch_size_0"]
    assert error_line(result) == ("%s: error: flag --batch_size=0: 0 is not a positive "
                                  "integer" % script)
    assert result["graphs_built"] == 0


# -------------------------------------------------------------------------------------
# 3. Checkpoints (continued).

def test_kd_without_a_usable_teacher_names_what_is_missing_or_mismatched(drivers):
  train = drivers["train.py"]
  line = error_line(train["kd_no_teacher"])
  assert "KD needs a trained teacher: no checkpoint in %s_teacher" % os.path.join(
      drivers["root"], "runs", "kd_no_teacher") in line
  assert train["kd_no_teacher"]["graphs_built"] == 0
  # Nothing is left behind: the run directory is created only once a teacher is found.
  assert not os.path.exists(os.path.join(drivers["root"], "runs", "kd_no_teacher_KD_k_4"))
  assert ("--teacher_checkpoint=/nonexistent/model.ckpt-7 does not exist" in
          error_line(train["kd_teacher_path_missing"]))
  # The teacher is built from its run directory's model_flags.json; without one, from
  # the KD command's model flags (said in a note), which may not fit its checkpoint.
  assert "has no model_flags.json: the teacher is built from this command's model flags" \
      in train["kd_teacher_other_shapes"]["stdout"]
  line = error_line(train["kd_teacher_other_shapes"])
  assert "was written for another model config" in line
  assert "differ in shape, e.g. teacher/tower/" in line and "32" in line
  line = error_line(train["kd_teacher_other_model"])  # FrameLevelLogisticModel
  assert ("teacher/tower/classifier/logistic/weights [1152, 20] in the graph vs [16, 20] "
          "stored") in line


def test_eval_retries_when_training_deletes_the_checkpoint_before_restore(drivers):
  """Deterministic version of the race the concurrent test below provokes by chance."""
  result = drivers["eval.py"]["checkpoint_deleted_before_restore"]
  assert result["code"] == 0, result
  assert "global_step 2 | Avg_Hit@1:" in result["stdout"]
  record = file_io.read_jsonl(os.path.join(drivers["race_dir"], "eval.jsonl"))[-1]
  assert record["checkpoint"] == "model.ckpt-1000"


# -------------------------------------------------------------------------------------
# 5. Numerics.

def _stopped_at_step(drivers, name):
  line = error_line(drivers["train.py"][name])
  prefix = "train.py: error: training stopped at step "
  assert line.startswith(prefix), line
  assert "not finite" in line and "the last good checkpoint in" in line
  return int(line[len(prefix):].split(":")[0])


def test_nan_in_the_input_stops_training_naming_the_step(drivers):
  step = _stopped_at_step(drivers, "nan_input")
  run_dir = os.path.join(drivers["root"], "runs", "nan_teacher")
  assert step > 1 and _checkpoint_restores(run_dir) == step - 1


def test_diverging_loss_stops_training_naming_the_step_before_saving(drivers):
  """A 1e20-fold learning rate growth per step: the update of step 3 overflows the
  weights. The step fails before its checkpoint, so the last one holds finite values."""
  step = _stopped_at_step(drivers, "diverging")
  run_dir = os.path.join(drivers["root"], "runs", "diverging_teacher")
  assert _checkpoint_restores(run_dir) == step - 1  # restorable, all values finite
  assert step == 3  # caught in the step whose update overflowed, not the next one


def test_non_finite_pca_eigenvalues_are_refused_before_any_graph(drivers):
  result = drivers["train.py"]["pca_inf"]
  assert "--pca_eigenvals=" in error_line(result)
  assert "holds NaN or Inf values" in error_line(result)
  assert result["graphs_built"] == 0


# -------------------------------------------------------------------------------------
# 6. Hostile archives.

@pytest.mark.parametrize("case", ["hard_link_to_absolute_path", "hard_link_out_of_target",
                                  "hard_link_inside_target", "relative_symlink_out",
                                  "symlinked_dir_then_file", "fifo", "dotdot_through_model",
                                  "existing_link_in_untar_dir"])
def test_hostile_model_tgz_is_refused_and_nothing_is_written_outside(drivers, case):
  result = drivers["inference.py"]["tgz_" + case]
  assert "refused" in error_line(result) and "--input_model_tgz=" in error_line(result)
  assert result["graphs_built"] == 0
  outside = drivers["outside"]
  assert os.listdir(outside) == ["secret"] and open(
      os.path.join(outside, "secret")).read() == "secret"
  _, untar = drivers["archives"][case]
  written = [os.path.join(d, n) for d, dirs, files in os.walk(untar) for n in dirs + files]
  expected = [os.path.join(untar, "model")] if case == "existing_link_in_untar_dir" else []
  assert written == expected
  assert not os.path.exists(os.path.join(drivers["root"], "tgz_%s.csv" % case))


# -------------------------------------------------------------------------------------
# 7. Long runs: the training graph is finalized before the loop.

def test_training_graph_is_finalized_before_the_loop(drivers):
  """MonitoredSession finalizes the graph: building an op inside the loop (the usual
  cause of memory growing per step) raises instead. bench/bench_memory.py measures it."""
  good = drivers["train.py"]["good"]
  assert good["code"] == 0, good
  assert good["is_train_graph"] and good["finalized_at_loop_start"]
  assert good["adding_an_op_raises"]
  assert good["ops_after"] == good["ops_at_loop_start"]  # the loop added none
  assert "step 2 | loss" in good["stdout"]  # the loop ran (with detailed logging)
