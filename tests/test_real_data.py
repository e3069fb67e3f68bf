"""The input path on real YouTube-8M records (tests/data/yt8m2018_video, see its README).

Four official 2018 video-level validation shards, 1,211 videos this project did not
write. They check what generated data cannot: the real records' layout and quirks, and
that features reach the model with their own video's labels (a model trained on three
shards must beat, on the fourth, a baseline that knows only the label frequencies).
"""
import csv
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import eval_util
import readers
from tests import helpers

tf1 = tf.compat.v1
DATA = os.path.join(helpers.ROOT, "tests", "data", "yt8m2018_video")
SHARDS = sorted(glob.glob(os.path.join(DATA, "validate*.tfrecord")))
NUM_VIDEOS, NUM_CLASSES = 1211, 3862
VIDEO_FLAGS = ["--frame_features=False", "--feature_names=mean_rgb,mean_audio",
               "--feature_sizes=1024,128"]
STEPS = {"LogisticModel": 150, "MoeModel": 100}  # docs/real_data.md's runs: 150 each


def _reference_records(paths):
  """{id: (labels, 1152 floats)} parsed record by record with protobuf, not our reader."""
  records = {}
  for path in paths:
    for serialized in tf1.io.tf_record_iterator(path):
      feature = tf.train.Example.FromString(serialized).features.feature
      video_id = feature["id"].bytes_list.value[0].decode()
      assert video_id not in records
      records[video_id] = (sorted(feature["labels"].int64_list.value),
                           np.array(list(feature["mean_rgb"].float_list.value) +
                                    list(feature["mean_audio"].float_list.value),
                                    np.float32))
  return records


def _read_all(skip_corrupt_records):
  """Every batch of the reader over the 4 shards, in order; (dict of lists, skip counts)."""
  reader = readers.YT8MAggregatedFeatureReader(
      num_classes=NUM_CLASSES, feature_names=["mean_rgb", "mean_audio"])
  skipped = readers.SkippedRecords() if skip_corrupt_records else None
  batch = readers.get_input_data_tensors(
      reader, readers.list_data_files(",".join(SHARDS)), batch_size=100,
      num_readers=2, num_epochs=1, shuffle=False, skipped=skipped)
  out = {"video_ids": [], "video_matrix": [], "labels": []}
  with tf1.Session() as sess:
    sess.run([tf1.local_variables_initializer(), tf1.tables_initializer()])
    while True:
      try:
        values = sess.run(batch)
      except tf.errors.OutOfRangeError:
        break
      for key in out:
        out[key].extend(values[key])
    counts = skipped.report(sess) if skipped else None
  return out, counts


def test_the_shards_are_the_official_files():
  assert [os.path.basename(p) for p in SHARDS] == [
      "validate%04d.tfrecord" % i for i in range(196, 200)]


@pytest.mark.parametrize("skip_corrupt_records", [False, True])
def test_video_level_reader_reads_every_real_record_once(skip_corrupt_records):
  with tf.Graph().as_default():
    out, counts = _read_all(skip_corrupt_records)
  reference = _reference_records(SHARDS)
  ids = [i.decode() for i in out["video_ids"]]
  assert len(ids) == len(set(ids)) == len(reference) == NUM_VIDEOS
  assert all(len(i) == 4 for i in ids)
  for video_id, matrix, labels in zip(ids, out["video_matrix"], out["labels"]):
    want_labels, want_features = reference[video_id]
    assert matrix.shape == (1152,)
    np.testing.assert_array_equal(matrix, want_features)
    assert labels.shape == (NUM_CLASSES,)
    assert list(np.flatnonzero(labels)) == want_labels
  label_counts = [len(labels) for labels, _ in reference.values()]
  assert min(label_counts) >= 1 and 2.5 < np.mean(label_counts) < 3.5
  if skip_corrupt_records:
    assert counts == (0, 0)  # none skipped, no shard cut short


def test_real_records_carry_an_empty_field_2_that_every_parser_accepts():
  # Each record is an Example followed by the bytes 0x12 0x00: an empty field 2, so it
  # is also a SequenceExample with empty feature lists.
  reader = readers.YT8MAggregatedFeatureReader(
      num_classes=NUM_CLASSES, feature_names=["mean_rgb", "mean_audio"])
  serialized = list(tf1.io.tf_record_iterator(SHARDS[0]))
  assert all(record.endswith(b"\x12\x00") for record in serialized)
  sequence = tf.train.SequenceExample.FromString(serialized[0])
  assert not sequence.feature_lists.feature_list
  # The bad-record locator finds nothing wrong with any shard ...
  assert readers.find_bad_record(reader, SHARDS) is None
  # ... and the locator still names a real defect in a record with the quirk.
  # ... so does the per-record check of --skip_corrupt_records ...
  with tf.Graph().as_default():
    record = tf1.placeholder(tf.string, [])
    valid = reader.record_is_valid(record)
    with tf1.Session() as sess:
      assert all(sess.run(valid, {record: r}) for r in serialized[:20])
  example = tf.train.Example.FromString(serialized[0])
  del example.features.feature["mean_audio"].float_list.value[-2:]
  broken = example.SerializeToString() + b"\x12\x00"
  assert "'mean_audio' has 126 values" in readers._video_record_problem(reader, broken)


def _labels_of(paths):
  records = _reference_records(paths)
  dense = np.zeros((len(records), NUM_CLASSES), np.float32)
  for row, (labels, _) in enumerate(records.values()):
    dense[row, labels] = 1
  return dense


@pytest.fixture(scope="module")
def frequency_baseline_gap():
  """GAP on the 4th shard of predicting every class's frequency in the other three."""
  frequencies = _labels_of(SHARDS[:3]).mean(axis=0)
  held_out = _labels_of(SHARDS[3:])
  metrics = eval_util.EvaluationMetrics(NUM_CLASSES, 20)
  metrics.accumulate(np.tile(frequencies, (len(held_out), 1)), held_out, 0.0)
  return metrics.get()["gap"]


@pytest.mark.parametrize("model", ["LogisticModel", "MoeModel"])
def test_video_level_models_learn_from_real_records(model, frequency_baseline_gap,
                                                    tmp_path):
  # Three shards train, the fourth evaluates. Scrambled features or labels would leave
  # the model at (or below) the frequency baseline, about 0.07.
  assert 0.03 < frequency_baseline_gap < 0.12
  base = str(tmp_path / "real")
  helpers.run_cli("train.py", VIDEO_FLAGS + [
      "--model=" + model, "--train_data_pattern=" + ",".join(SHARDS[:3]),
      "--train_dir=" + base, "--batch_size=64", "--num_epochs=100", "--seed=0",
      "--log_every_n_steps=50", "--max_steps=%d" % STEPS[model]])
  run_dir = base + "_teacher"
  flags = json.load(open(os.path.join(run_dir, "model_flags.json")))
  assert (flags["frame_features"], flags["preprocessing"]) == (False, "none")
  out = helpers.run_cli("eval.py", ["--train_dir=" + run_dir, "--run_once",
                                    "--eval_data_pattern=" + SHARDS[3]]).stdout
  record = [json.loads(line) for line in open(os.path.join(run_dir, "eval.jsonl"))][-1]
  held_out = len(_reference_records(SHARDS[3:]))
  assert record["num_examples"] == held_out
  assert record["gap"] > 2 * frequency_baseline_gap, (record, out)
  assert record["map_all_classes"] < record["map_labelled_classes"]  # most classes absent

  if model != "LogisticModel":
    return  # one CSV is enough
  csv_path = str(tmp_path / "predictions.csv")
  helpers.run_cli("inference.py", ["--train_dir=" + run_dir, "--output_file=" + csv_path,
                                   "--input_data_pattern=" + SHARDS[3],
                                   "--vocabulary=vocabulary.csv"])
  _check_names(csv_path, str(tmp_path / "predictions.names.csv"), run_dir)
  with open(csv_path) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["VideoId", "LabelConfidencePairs"]
  assert sorted(r[0] for r in rows[1:]) == sorted(_reference_records(SHARDS[3:]))
  for _, pairs in rows[1:]:
    values = pairs.split()
    labels, scores = [int(v) for v in values[::2]], [float(v) for v in values[1::2]]
    assert len(labels) == len(set(labels)) == 20
    assert all(0 <= label < NUM_CLASSES for label in labels)
    assert scores == sorted(scores, reverse=True)


def _check_names(csv_path, names_path, run_dir):
  """--vocabulary's readable CSV and tools/top_classes.py name the official classes."""
  with open(os.path.join(helpers.ROOT, "vocabulary.csv"), newline="") as f:
    names = {int(row["Index"]): row["Name"] for row in csv.DictReader(f)}
  assert len(names) == NUM_CLASSES and names[0] == "Game"
  with open(csv_path, newline="") as f:
    kaggle = list(csv.reader(f))[1:]
  with open(names_path, newline="") as f:
    readable = list(csv.reader(f))
  assert readable[0] == ["VideoId", "TopClasses"] and len(readable) == len(kaggle) + 1
  for (video_id, pairs), (named_id, described) in zip(kaggle, readable[1:]):
    values = pairs.split()
    expected = "; ".join("%s %s" % (names[int(c)], s)
                         for c, s in zip(values[0::2], values[1::2]))
    assert (named_id, described) == (video_id, expected)
  # The tool, from the run: each video's true labels by name, the top classes marked.
  reference = _reference_records(SHARDS[3:])
  video_id = kaggle[0][0]
  out = helpers.run_cli(os.path.join("tools", "top_classes.py"), [
      "--train_dir=" + run_dir, "--input_data_pattern=" + SHARDS[3],
      "--video_id=" + video_id, "--top=5"]).stdout.splitlines()
  true_labels = reference[video_id][0]
  assert out[0] == "%s  true: %s" % (video_id, ", ".join(names[c] for c in true_labels))
  top = [int(c) for c in kaggle[0][1].split()[0::2]][:5]
  assert len(out) == 6
  for line, label in zip(out[1:], top):
    assert names[label] in line and line.endswith(" *") == (label in true_labels)
