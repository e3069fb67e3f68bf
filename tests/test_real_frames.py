"""The frame-level input path on real YouTube-8M records (tests/data/yt8m2018_frame, see
its README): 26 videos, 4,882 frames this project did not write. Every expected value
comes from a plain protobuf parse of the records, not from TensorFlow's parser or ours.
"""
import glob
import json
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

import frame_selection
import readers
import record_layout
from tests import helpers

tf1 = tf.compat.v1
DATA = os.path.join(helpers.ROOT, "tests", "data", "yt8m2018_frame")
SHARDS = sorted(glob.glob(os.path.join(DATA, "*.tfrecord")))
NAMES, SIZES = ["rgb", "audio"], [1024, 128]
NUM_CLASSES, MAX_FRAMES = 3862, 300


def _protobuf_videos():
  """[(id, sorted labels, [n, 1152] uint8 frames, serialized record)] in file order,
  parsed record by record with protobuf."""
  videos = []
  for path in SHARDS:
    for serialized in tf1.io.tf_record_iterator(path):
      example = tf.train.SequenceExample.FromString(serialized)
      context = example.context.feature
      lists = example.feature_lists.feature_list
      per_feature = []
      for name, size in zip(NAMES, SIZES):
        values = [f.bytes_list.value[0] for f in lists[name].feature]
        assert all(len(v) == size for v in values)
        per_feature.append(np.frombuffer(b"".join(values), np.uint8).reshape(-1, size))
      assert len(per_feature[0]) == len(per_feature[1])
      videos.append((context["id"].bytes_list.value[0],
                     sorted(context["labels"].int64_list.value),
                     np.concatenate(per_feature, axis=1), serialized))
  return videos


VIDEOS = _protobuf_videos()


def test_the_files_are_the_published_ones():
  prefixes = {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()[:8]
              for p in SHARDS}
  assert prefixes == {"clippedtrain3560.tfrecord": "ff7ac059",
                      "clippedtrain3607.tfrecord": "5ef2c3bc",
                      "clippedtrain3622.tfrecord": "5150eb75",
                      "clippedtrain3702.tfrecord": "a8e5cf25",
                      "clippedtrain3749.tfrecord": "c103a893"}
  lengths = [len(frames) for _, _, frames, _ in VIDEOS]
  assert (len(VIDEOS), sum(lengths), min(lengths), max(lengths)) == (26, 4882, 119, 300)
  assert len({video_id for video_id, _, _, _ in VIDEOS}) == 26
  assert {label for _, labels, _, _ in VIDEOS for label in labels} <= {
      170, 709, 1057, 1308, 1454}


def _padded(frames):
  out = np.zeros([MAX_FRAMES, sum(SIZES)], np.uint8)
  out[:len(frames)] = frames
  return out


def test_the_frame_reader_gives_what_protobuf_gives():
  """Through the whole tf.data pipeline, every record once, in file order."""
  reader = readers.YT8MFrameFeatureReader(num_classes=NUM_CLASSES, feature_sizes=SIZES,
                                          feature_names=NAMES, max_frames=MAX_FRAMES,
                                          dequantize=False)
  with tf.Graph().as_default():
    batch = readers.get_input_data_tensors(
        reader, readers.list_data_files(",".join(SHARDS)), batch_size=8,
        num_readers=1, num_epochs=1, shuffle=False)
    got = []
    with tf1.Session() as sess:
      sess.run(tf1.local_variables_initializer())
      while True:
        try:
          values = sess.run(batch)
        except tf.errors.OutOfRangeError:
          break
        got += zip(values["video_ids"], values["labels"], values["video_matrix"],
                   values["num_frames"])
  assert len(got) == len(VIDEOS)
  for (video_id, labels, frames, _), (got_id, dense, matrix, num_frames) in zip(VIDEOS,
                                                                                 got):
    assert got_id == video_id
    assert list(np.flatnonzero(dense)) == labels
    assert num_frames == len(frames)
    assert matrix.dtype == np.uint8 and matrix.tobytes() == _padded(frames).tobytes()


def test_record_layout_locates_every_real_record_where_protobuf_finds_its_frames():
  with tf.Graph().as_default():
    records = tf.constant([serialized for _, _, _, serialized in VIDEOS])
    located, starts, counts = record_layout.locate_frames(records, NAMES, SIZES)
    longest = max(len(frames) for _, _, frames, _ in VIDEOS)
    indices = tf.tile(tf.range(longest)[None, :], [len(VIDEOS), 1])
    real = indices < tf.cast(counts["rgb"], tf.int32)[:, None]
    found = [record_layout.frames_at(records, starts[name], indices, real, size)
             for name, size in zip(NAMES, SIZES)]
    with tf1.Session() as sess:
      located, counts, found = sess.run([located, counts, found])
  assert located.all()
  for row, (_, _, frames, _) in enumerate(VIDEOS):
    assert counts["rgb"][row] == counts["audio"][row] == len(frames)
    in_place = np.concatenate([np.frombuffer(b"".join(found[i][row][:len(frames)]),
                                             np.uint8).reshape(-1, size)
                               for i, size in enumerate(SIZES)], axis=1)
    assert in_place.tobytes() == frames.tobytes()


@pytest.mark.parametrize("strategy", frame_selection.STRATEGIES)
def test_a_students_reader_gives_protobufs_frames_for_every_sampling(strategy):
  """The k frames a student reads in place are those frame_selection picks from the
  protobuf-parsed videos (the random strategy: the same fixed set per video)."""
  k = 6
  student = readers.YT8MFrameFeatureReader(num_classes=NUM_CLASSES, feature_sizes=SIZES,
                                           feature_names=NAMES, max_frames=MAX_FRAMES,
                                           dequantize=False, selected_frames=(k, strategy))
  with tf.Graph().as_default():
    ids = tf.constant([video_id for video_id, _, _, _ in VIDEOS])
    expected = frame_selection.select_frames(
        tf.constant(np.stack([_padded(frames) for _, _, frames, _ in VIDEOS])),
        tf.constant([len(frames) for _, _, frames, _ in VIDEOS], tf.int32), k, strategy,
        video_ids=ids)
    ours = student.parse_batch(tf.constant([s for _, _, _, s in VIDEOS]))
    with tf1.Session() as sess:
      (picked, num_frames), ours = sess.run([expected, ours])
  assert list(ours["video_ids"]) == [video_id for video_id, _, _, _ in VIDEOS]
  assert ours["video_matrix"].dtype == picked.dtype
  assert ours["video_matrix"].tobytes() == picked.tobytes()
  np.testing.assert_array_equal(ours["num_frames"], num_frames)
  for row, (_, labels, _, _) in enumerate(VIDEOS):
    assert list(np.flatnonzero(ours["labels"][row])) == labels


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
  """The documented recipe at tiny sizes on the real records, with its default PCA
  scaling, every command with YT8M_REQUIRE_IN_PLACE=1: teacher, k=6 student, KD
  through a teacher cache, eval, inference CSV, SavedModel and its CSV; then the KD
  student's eval over a shard with one record in another valid layout, with the check
  and without it.

  What it can show: real records go through every step, their frames are read in
  place (a student reader that would parse a batch whole fails instead), PCA scaling
  is applied, and the CLIs agree. What it cannot: anything about accuracy. The labels
  were cut to 5 classes and the models are tiny, trained for 3 steps.
  """
  from tools import documented_command
  root = tmp_path_factory.mktemp("real_recipe")
  odd = str(root / "odd.tfrecord")
  with tf.io.TFRecordWriter(odd) as writer:
    for _, _, _, serialized in VIDEOS[:3]:
      writer.write(serialized)
    writer.write(VIDEOS[3][3] + b"\x1a\x05extra")  # an unknown field after the lists
  data = os.path.join(DATA, "*.tfrecord")
  base = str(root / "run")
  kd = base + "_KD_k_6"
  overrides = ["--train_data_pattern=" + data, "--train_dir=" + base, "--max_step=3",
               "--export_model_steps=100", "--batch_size=4", "--groups=2",
               "--nextvlad_cluster_size=4", "--nextvlad_hidden_size=16",
               "--expansion=1", "--gating_reduction=4", "--num_readers=2",
               "--num_gpu=1", "--seed=1"]
  verbatim = documented_command.documented_flags()
  steps = [
      ("teacher", "train.py", verbatim + overrides + ["--model_type=teacher",
                                                      "--k_frame=300"]),
      ("student", "train.py", verbatim + overrides + ["--model_type=student",
                                                      "--k_frame=6"]),
      ("kd", "train.py", verbatim + overrides + ["--model_type=KD", "--k_frame=6",
                                                 "--teacher_cache=%s/cache" % root]),
      ("eval", "eval.py", ["--train_dir=" + kd, "--eval_data_pattern=" + data,
                           "--run_once", "--batch_size=8"]),
      ("csv", "inference.py", ["--train_dir=" + kd, "--input_data_pattern=" + data,
                               "--output_file=%s/kd.csv" % root, "--batch_size=8"]),
      ("export", "export_model.py", ["--train_dir=" + kd,
                                     "--output_dir=%s/saved" % root]),
      ("csv_saved", "inference.py", ["--saved_model=%s/saved" % root,
                                     "--input_data_pattern=" + data,
                                     "--output_file=%s/saved.csv" % root,
                                     "--batch_size=8"]),
      ("eval_odd", "eval.py", ["--train_dir=" + kd, "--eval_data_pattern=" + odd,
                               "--run_once", "--batch_size=8"]),
  ]
  results = helpers.run_plan(root, [{"cli": cli, "args": args} for _, cli, args in steps],
                             env={readers.REQUIRE_IN_PLACE_ENV: "1"})
  results = dict(zip([name for name, _, _ in steps], results))
  results["eval_odd_unchecked"], = helpers.run_plan(root, [{"cli": "eval.py",
                                                            "args": steps[-1][2]}])
  for name, result in results.items():
    if name != "eval_odd":  # the only one expected to fail
      assert result["code"] == 0, (name, result["stdout"][-2000:],
                                   result["stderr"][-3000:])
  return results, root, kd


def test_the_recipe_runs_on_real_frames_with_pca_reading_students_frames_in_place(recipe):
  import preprocessing
  results, root, kd = recipe
  recorded = json.load(open(os.path.join(kd, "model_flags.json")))
  assert recorded["preprocessing"] == "pca_eigenvals"
  scale = preprocessing.Preprocessing.from_eigenvalues(
      preprocessing.DEFAULT_EIGENVALS).rgb_scale
  np.testing.assert_array_equal(tf.train.load_variable(
      tf1.train.latest_checkpoint(kd), "input_preprocessing/rgb_scale"), scale)
  with open(os.path.join(kd, "eval.jsonl")) as f:
    record, = [r for r in map(json.loads, f) if r["data"].startswith(DATA)]
  assert (record["num_examples"], record["role"]) == (len(VIDEOS), "student")
  assert 0 < record["gap"] <= 1
  csv_rows = open(str(root / "kd.csv")).read().splitlines()
  assert csv_rows[0] == "VideoId,LabelConfidencePairs"
  assert sorted(row.split(",")[0] for row in csv_rows[1:]) == sorted(
      video_id.decode() for video_id, _, _, _ in VIDEOS)
  assert open(str(root / "saved.csv")).read() == open(str(root / "kd.csv")).read()


def test_a_record_in_another_layout_is_what_the_in_place_check_catches(recipe):
  """The check above can fail: one valid record in another layout, which a student
  reader parses whole (same frames), fails the same eval under the check."""
  results, _, _ = recipe
  assert results["eval_odd"]["code"] != 0
  assert "odd.tfrecord failed" in results["eval_odd"]["stderr"]
  assert results["eval_odd_unchecked"]["code"] == 0  # without the check: parsed whole
