"""Readers round-trip hand-made YouTube-8M records exactly; bad records are named."""

import numpy as np
import pytest
import tensorflow as tf

import cli
import input_pipeline
import readers
import utils
from tools import make_synthetic_yt8m as synth

tf1 = tf.compat.v1


def _video(vid, labels, num_frames, seed, sizes=(("rgb", 8), ("audio", 4))):
  rng = np.random.RandomState(seed)
  video = {"id": vid, "labels": labels}
  for name, size in sizes:
    video[name] = rng.randint(0, 256, size=(num_frames, size)).astype(np.uint8)
  return video


def _read_all(reader, pattern, batch_size=4, num_readers=2):
  """Every batch of one unshuffled epoch, concatenated."""
  with tf.Graph().as_default():
    batch = readers.get_input_data_tensors(reader, readers.list_data_files(pattern),
                                           batch_size, num_readers,
                                           num_epochs=1, shuffle=False)
    out = {k: [] for k in batch}
    with tf1.Session() as sess:
      while True:
        try:
          values = sess.run(batch)
        except tf.errors.OutOfRangeError:
          break
        for k, v in values.items():
          out[k].append(v)
  return {k: np.concatenate(v) for k, v in out.items()}


@pytest.fixture
def frame_files(tmp_path):
  videos = [_video("v%02d" % i, [i % 7, 3] if i % 2 else [i % 7], n, i)
            for i, n in enumerate([1, 5, 300, 301, 450, 2, 17, 299, 3, 9, 1])]
  synth.write_frame_records(str(tmp_path / "train0000.tfrecord"), videos[:6])
  synth.write_frame_records(str(tmp_path / "train0001.tfrecord"), videos[6:])
  return str(tmp_path / "train*.tfrecord"), videos


def test_frame_reader_round_trip_exact(frame_files):
  pattern, videos = frame_files
  reader = readers.YT8MFrameFeatureReader(num_classes=7, feature_sizes=[8, 4],
                                          feature_names=["rgb", "audio"], max_frames=300)
  out = _read_all(reader, pattern)
  ids = [v.decode() for v in out["video_ids"]]
  assert sorted(ids) == sorted(v["id"] for v in videos)  # every record exactly once
  assert out["video_matrix"].shape == (len(videos), 300, 12)
  assert out["video_matrix"].dtype == np.float32
  for row, vid in enumerate(ids):
    video = [v for v in videos if v["id"] == vid][0]
    n = min(len(video["rgb"]), 300)
    assert out["num_frames"][row] == n
    expected = utils.Dequantize(np.concatenate([video["rgb"], video["audio"]],
                                               axis=1)[:n].astype(np.float64))
    np.testing.assert_allclose(out["video_matrix"][row, :n], expected, rtol=1e-6,
                               atol=1e-6)
    assert (out["video_matrix"][row, n:] == 0).all()
    labels = np.zeros(7)
    labels[video["labels"]] = 1
    np.testing.assert_array_equal(out["labels"][row], labels)


def test_dequantize_formula_matches_spec():
  q = np.array([0, 1, 127, 128, 255], np.float64)
  np.testing.assert_allclose(utils.Dequantize(q), q * 4 / 255 + 4 / 512 - 2)
  x = np.array([-3.0, -2.0, 0.0, 1.99, 5.0])
  np.testing.assert_array_equal(utils.Quantize(x), np.round((np.clip(x, -2, 2) + 2) *
                                                            255 / 4).astype(np.uint8))


def test_feature_order_follows_feature_names(frame_files):
  pattern, videos = frame_files
  reader = readers.YT8MFrameFeatureReader(num_classes=7, feature_sizes=[4, 8],
                                          feature_names=["audio", "rgb"], max_frames=20,
                                          dequantize=False)
  out = _read_all(reader, pattern)
  row = [v.decode() for v in out["video_ids"]].index("v06")  # 17 frames
  video = videos[6]
  assert out["video_matrix"].dtype == np.uint8
  np.testing.assert_array_equal(out["video_matrix"][row, :17, :4], video["audio"])
  np.testing.assert_array_equal(out["video_matrix"][row, :17, 4:], video["rgb"])
  # max_frames=20 truncates the long videos.
  assert out["num_frames"].max() == 20


def test_uint8_output_dequantized_in_graph_equals_float_output(frame_files):
  pattern, _ = frame_files
  kwargs = dict(num_classes=7, feature_sizes=[8, 4], feature_names=["rgb", "audio"])
  floats = _read_all(readers.YT8MFrameFeatureReader(**kwargs), pattern)
  raw = _read_all(readers.YT8MFrameFeatureReader(dequantize=False, **kwargs), pattern)
  with tf.Graph().as_default(), tf1.Session() as sess:
    dequantized = sess.run(readers.dequantize_frames(tf.constant(raw["video_matrix"]),
                                                     tf.constant(raw["num_frames"])))
  np.testing.assert_array_equal(dequantized, floats["video_matrix"])


def test_unshuffled_order_is_deterministic_and_last_batch_kept(frame_files):
  pattern, videos = frame_files
  reader = readers.YT8MFrameFeatureReader(num_classes=7, feature_sizes=[8, 4])
  first = _read_all(reader, pattern, batch_size=3, num_readers=2)["video_ids"]
  second = _read_all(reader, pattern, batch_size=3, num_readers=2)["video_ids"]
  assert len(first) == len(videos) == 11  # 3 + 3 + 3 + 2: the partial batch is kept
  np.testing.assert_array_equal(first, second)


def test_shuffled_training_input_repeats_and_drops_partial_batches(frame_files):
  pattern, videos = frame_files
  reader = readers.YT8MFrameFeatureReader(num_classes=7, feature_sizes=[8, 4])
  with tf.Graph().as_default():
    batch = readers.get_input_data_tensors(
        reader, readers.list_data_files(pattern), 4, 2, num_epochs=2, shuffle=True,
        seed=1)
    seen = []
    with tf1.Session() as sess:
      while True:
        try:
          ids = sess.run(batch["video_ids"])
        except tf.errors.OutOfRangeError:
          break
        assert len(ids) == 4
        seen.extend(ids)
  assert len(seen) == 20  # 22 records over two epochs, the last partial batch dropped
  assert len(set(seen)) == 11


def _records_and_buffer(path):
  """(every record of readers.record_dataset(path), its read buffer in bytes: 0 none,
  -1 TensorFlow's default for the file system)."""
  with tf.Graph().as_default() as graph:
    next_record = tf1.data.make_one_shot_iterator(
        readers.record_dataset(path)).get_next()
    # The file reader is a function of one file name; the buffer is its one int64 input.
    reader_op = [o for o in graph.get_operations() if o.type == "FlatMapDataset"][0]
    buffer_bytes, = [t for t in reader_op.inputs[1:] if t.dtype == tf.int64]
    with tf1.Session() as sess:
      records, buffer_bytes = [], sess.run(buffer_bytes)
      while True:
        try:
          records.append(sess.run(next_record))
        except tf.errors.OutOfRangeError:
          return records, int(buffer_bytes)


def test_local_files_are_read_unbuffered_with_the_same_records(tmp_path, monkeypatch):
  # Records bigger than TensorFlow's 256 KB read buffer (a full-length video's is
  # ~350 KB), exactly its size, and small or empty ones.
  rng = np.random.RandomState(0)
  records = [rng.bytes(n) for n in (7, 400000, 0, 262144, 300001, 12)]
  path = str(tmp_path / "train0000.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)
  remote = "ram://test_readers/train0000.tfrecord"
  tf.io.gfile.makedirs("ram://test_readers")
  tf.io.gfile.copy(path, remote, overwrite=True)
  assert _records_and_buffer(path) == (records, 0)
  assert _records_and_buffer(remote) == (records, -1)
  # Every pipeline of make_dataset opens its files through record_dataset.
  opened = []
  real = input_pipeline.record_dataset
  monkeypatch.setattr(input_pipeline, "record_dataset",
                      lambda path: opened.append(path) or real(path))
  reader = readers.YT8MFrameFeatureReader(num_classes=7, feature_sizes=[8, 4])
  for skipped in (None, readers.SkippedRecords):
    with tf.Graph().as_default():
      readers.make_dataset(reader, readers.list_data_files(path), 2, 1, num_epochs=1,
                           shuffle=False,
                           skipped=skipped and skipped())
  assert len(opened) == 2


def test_video_level_reader_round_trip(tmp_path):
  rng = np.random.RandomState(0)
  videos = [{"id": "a", "labels": [2], "mean_rgb": rng.rand(8).astype(np.float32),
             "mean_audio": rng.rand(4).astype(np.float32)},
            {"id": "b", "labels": [0, 4], "mean_rgb": rng.rand(8).astype(np.float32),
             "mean_audio": rng.rand(4).astype(np.float32)}]
  synth.write_video_records(str(tmp_path / "train0000.tfrecord"), videos)
  reader = readers.YT8MAggregatedFeatureReader(num_classes=5, feature_sizes=[8, 4])
  out = _read_all(reader, str(tmp_path / "*.tfrecord"))
  assert list(out["video_ids"]) == [b"a", b"b"]
  for row, video in enumerate(videos):
    np.testing.assert_array_equal(out["video_matrix"][row],
                                  np.concatenate([video["mean_rgb"], video["mean_audio"]]))
  np.testing.assert_array_equal(out["labels"], [[0, 0, 1, 0, 0], [1, 0, 0, 0, 1]])
  np.testing.assert_array_equal(out["num_frames"], [1, 1])


def test_empty_pattern_is_a_usage_error_naming_it(tmp_path):
  reader = readers.YT8MFrameFeatureReader()
  with tf.Graph().as_default():
    with pytest.raises(cli.UsageError, match="nothing.tfrecord.*matches no file"):
      readers.get_input_data_tensors(
          reader, readers.list_data_files(str(tmp_path / "nothing.tfrecord")), 2)


def test_feature_lists_of_different_lengths_are_a_usage_error():
  with pytest.raises(cli.UsageError, match="--feature_names.*--feature_sizes"):
    utils.GetListOfFeatureNamesAndSizes("rgb,audio", "1024")
  with pytest.raises(cli.UsageError, match="--feature_sizes"):
    utils.GetListOfFeatureNamesAndSizes("rgb", "x")
  assert utils.GetListOfFeatureNamesAndSizes("rgb, audio", "1024,128") == (
      ["rgb", "audio"], [1024, 128])


BAD_RECORDS = {
    "short frame": (lambda v: v.update(rgb=v["rgb"][:, :7]),
                    "frame 0 of 'rgb' has 7 bytes, expected 8"),
    "label out of range": (lambda v: v.update(labels=[7]),
                           "label id 7 outside 0..6"),
    "no frames": (lambda v: v.update(rgb=v["rgb"][:0], audio=v["audio"][:0]),
                  "0 frames"),
    "missing audio": (lambda v: v.pop("audio"), "no 'audio' feature list"),
    "no labels": (lambda v: v.update(labels=[]), "labels"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_fails_the_pipeline_and_is_named(tmp_path, case):
  mutate, message = BAD_RECORDS[case]
  videos = [_video("v%d" % i, [1], 4, i) for i in range(5)]
  mutate(videos[3])
  path = str(tmp_path / "train0007.tfrecord")
  synth.write_frame_records(path, videos)
  reader = readers.YT8MFrameFeatureReader(num_classes=7, feature_sizes=[8, 4])
  with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.DataLossError)):
    _read_all(reader, path)
  problem = readers.find_bad_record(reader, [path])
  assert problem.startswith(path + ": record 3: "), problem
  assert message in problem


def test_corrupted_shard_is_named(tmp_path):
  path = str(tmp_path / "train0000.tfrecord")
  synth.write_frame_records(path, [_video("v%d" % i, [1], 4, i) for i in range(3)])
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) - 10])  # truncated last record
  reader = readers.YT8MFrameFeatureReader(num_classes=7, feature_sizes=[8, 4])
  with pytest.raises(tf.errors.DataLossError):
    _read_all(reader, path)
  problem = readers.find_bad_record(reader, [path])
  assert problem.startswith(path + ": record 2: truncated or corrupted"), problem


def test_good_files_have_no_problem(frame_files):
  pattern, _ = frame_files
  reader = readers.YT8MFrameFeatureReader(num_classes=7, feature_sizes=[8, 4])
  assert readers.find_bad_record(reader, readers.list_data_files(pattern).paths) is None


def test_unlabeled_records_are_fine_when_labels_are_not_required(tmp_path):
  path = str(tmp_path / "test0000.tfrecord")
  synth.write_frame_records(path, [_video("t0", [], 3, 0), _video("t1", [], 2, 1)])
  reader = readers.YT8MFrameFeatureReader(num_classes=7, feature_sizes=[8, 4],
                                          require_labels=False)
  out = _read_all(reader, path)
  assert list(out["num_frames"]) == [3, 2]
  assert out["labels"].sum() == 0


def test_count_records_reads_only_the_framing(tmp_path):
  import glob
  from tests import helpers
  train, validate = helpers.make_dataset(tmp_path, train_videos=7, validate_videos=3)
  files = sorted(glob.glob(train)) + sorted(glob.glob(validate))
  expected = sum(1 for f in files for _ in tf.compat.v1.io.tf_record_iterator(f))
  assert readers.count_records(files) == expected == 10
  # A shard cut in the middle of a record counts the whole records before the cut.
  data = open(files[0], "rb").read()
  whole = sum(1 for _ in tf.compat.v1.io.tf_record_iterator(files[0]))
  cut = str(tmp_path / "cut.tfrecord")
  open(cut, "wb").write(data[:-5])
  assert readers.count_records([cut]) == whole - 1
