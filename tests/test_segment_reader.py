"""--segment_labels in the readers and the losses: each rated segment of a video is one
example, with exactly the frames, labels and label weights a plain protobuf parse
gives; every segment of a video for inference; one-line errors for bad ratings."""
import numpy as np
import pytest
import tensorflow as tf

import losses
import readers
from tests import helpers
from tests.test_segment_eval import rated_shard

tf1 = tf.compat.v1
NUM_CLASSES, MAX_FRAMES, SIZE = 20, 40, 5


@pytest.fixture(scope="module")
def rated_data(tmp_path_factory):
  directory = tmp_path_factory.mktemp("rated")
  _, validate = helpers.make_dataset(directory, train_videos=4, validate_videos=10,
                                     num_classes=NUM_CLASSES, max_frames=MAX_FRAMES,
                                     min_frames=8, segments_per_video=3)
  return validate


def read_all(reader, pattern, batch_size=7):
  """Every batch of one unshuffled pass, concatenated per key."""
  with tf.Graph().as_default():
    dataset = readers.make_dataset(reader, readers.list_data_files(pattern), batch_size,
                                   num_epochs=1,
                                   shuffle=False)
    batch = tf1.data.make_one_shot_iterator(dataset).get_next()
    parts = []
    with tf1.Session() as sess:
      while True:
        try:
          parts.append(sess.run(batch))
        except tf.errors.OutOfRangeError:
          break
  return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def protobuf_videos(pattern):
  """[(id, frames uint8 [T, 1152] (at most MAX_FRAMES), ratings [(label, start,
  score)])] of the records, by a plain protobuf parse."""
  videos = []
  for path in readers.list_data_files(pattern).paths:
    for serialized in tf1.io.tf_record_iterator(path):
      example = tf.train.SequenceExample.FromString(serialized)
      lists = example.feature_lists.feature_list
      frames = np.concatenate([
          np.array([np.frombuffer(f.bytes_list.value[0], np.uint8)
                    for f in lists[name].feature[:MAX_FRAMES]])
          for name in ("rgb", "audio")], axis=1)
      context = example.context.feature
      ratings = list(zip(context["segment_labels"].int64_list.value,
                         context["segment_start_times"].int64_list.value,
                         context["segment_scores"].float_list.value))
      videos.append((context["id"].bytes_list.value[0], frames, ratings))
  return videos


def segment_reader(rated):
  return readers.YT8MSegmentReader(segment_size=SIZE, rated=rated,
                                   num_classes=NUM_CLASSES, max_frames=MAX_FRAMES,
                                   dequantize=False)


def test_each_rated_segment_is_one_example_as_protobuf_gives_it(rated_data):
  got = read_all(segment_reader(rated=True), rated_data)
  row, rated_videos = 0, []
  for video_id, frames, ratings in protobuf_videos(rated_data):
    starts = list(dict.fromkeys(start for _, start, _ in ratings))  # first-seen order
    rated_videos.append(bool(starts))  # a short video may have none: no example
    for rank, start in enumerate(starts):
      assert got["video_ids"][row] == video_id
      assert got["segment_start_times"][row] == start
      assert got["segment_rank"][row] == rank
      assert got["num_frames"][row] == SIZE
      np.testing.assert_array_equal(got["video_matrix"][row], frames[start:start + SIZE])
      labels, weights = np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES)
      for label, rated_start, score in ratings:
        if rated_start == start:
          labels[label], weights[label] = score, 1.0
      np.testing.assert_array_equal(got["labels"][row], labels)
      np.testing.assert_array_equal(got["label_weights"][row], weights)
      row += 1
  assert row == len(got["video_ids"]) and sum(rated_videos) >= 8
  assert "record_index" not in got
  assert 0 < got["labels"].sum() < got["label_weights"].sum()  # positives and negatives


def test_inference_reads_every_segment_of_a_video(rated_data):
  got = read_all(segment_reader(rated=False), rated_data)
  row = 0
  for video_id, frames, _ in protobuf_videos(rated_data):
    for start in range(0, len(frames), SIZE):
      length = min(SIZE, len(frames) - start)
      assert (got["video_ids"][row], got["segment_start_times"][row],
              got["num_frames"][row]) == (video_id, start, length)
      np.testing.assert_array_equal(got["video_matrix"][row][:length],
                                    frames[start:start + length])
      row += 1
  assert row == len(got["video_ids"])
  assert "label_weights" not in got


def test_training_batches_hold_batch_size_segments_and_shuffle(rated_data):
  with tf.Graph().as_default():
    batch = readers.get_input_data_tensors(segment_reader(rated=True),
                                           readers.list_data_files(rated_data),
                                           batch_size=8, seed=3)
    with tf1.Session() as sess:
      first = [sess.run(batch) for _ in range(2)]
  assert all(len(b["video_ids"]) == 8 for b in first)
  shuffled = [(v, s) for b in first for v, s in zip(b["video_ids"],
                                                      b["segment_start_times"])]
  in_order = read_all(segment_reader(rated=True), rated_data)
  in_order = list(zip(in_order["video_ids"], in_order["segment_start_times"]))
  assert len(in_order) >= 16 and shuffled != in_order[:16]
  assert set(shuffled) <= set(in_order)


@pytest.mark.parametrize("ratings, problem", [
    ([(3, 0, 1.0), (4, 25, 0.0)], "the segment rated at 25 lies outside the video's 25 "
     "frames (rated 5-frame segments start at 0..20; --segment_size, --max_frames)"),
    ([(3, 0, 0.5)], "segment_scores 0.5 for class 3 at 0; they must be 0 or 1"),
    ([(20, 0, 1.0)], "segment_labels id 20 outside 0..19 (--num_classes=20)"),
])
def test_bad_ratings_fail_in_one_line_naming_file_and_record(tmp_path, ratings,
                                                               problem):
  good = {"aaaa": [(1, 5, 1.0)]}
  shard = rated_shard(str(tmp_path / "v.tfrecord"), dict(good, bbbb=ratings))
  reader = readers.YT8MSegmentReader(segment_size=SIZE, rated=True,
                                     num_classes=NUM_CLASSES, feature_names=["rgb"],
                                     feature_sizes=[1024], max_frames=MAX_FRAMES)
  with pytest.raises(tf.errors.InvalidArgumentError):
    read_all(reader, shard)
  assert readers.find_bad_record(reader, [shard]) == "%s: record 1: %s" % (shard,
                                                                           problem)


def test_unequal_rating_fields_are_named(tmp_path):
  shard = rated_shard(str(tmp_path / "v.tfrecord"), {"aaaa": [(1, 5, 1.0)]},
                      scores_override=[1.0, 0.0])
  reader = readers.YT8MSegmentReader(segment_size=SIZE, rated=True,
                                     num_classes=NUM_CLASSES, feature_names=["rgb"],
                                     feature_sizes=[1024], max_frames=MAX_FRAMES)
  with pytest.raises(tf.errors.InvalidArgumentError):
    read_all(reader, shard)
  assert readers.find_bad_record(reader, [shard]).endswith(
      "record 0: 1 segment_labels, 1 segment_start_times and 2 segment_scores; they "
      "must be as many")


@pytest.mark.parametrize("name", ["CrossEntropyLoss", "HingeLoss", "SoftmaxLoss"])
def test_label_weights_leave_unrated_classes_out_of_the_loss(name):
  rng = np.random.default_rng(0)
  predictions = rng.uniform(0.05, 0.95, (4, 6)).astype(np.float32)
  labels = (rng.uniform(size=(4, 6)) < 0.5).astype(np.float32)
  weights = np.zeros((4, 6), np.float32)
  weights[np.arange(4), [0, 2, 2, 5]] = 1.0
  weights[1, 3] = 1.0
  loss = losses.get_label_loss(name)
  with tf.Graph().as_default(), tf1.Session() as sess:
    weighted = sess.run(loss.calculate_loss(tf.constant(predictions), tf.constant(labels),
                                            label_weights=tf.constant(weights)))
    # Changing what the unrated classes predict or are labelled changes nothing.
    noise = np.where(weights > 0, 0.0, rng.uniform(-0.04, 0.04, (4, 6)))
    moved = sess.run(loss.calculate_loss(
        tf.constant((predictions + noise).astype(np.float32)),
        tf.constant(np.where(weights > 0, labels, 1 - labels)),
        label_weights=tf.constant(weights)))
  assert weighted == pytest.approx(moved, rel=1e-6)
  if name == "CrossEntropyLoss":
    terms = -(labels * np.log(predictions + 1e-8) +
              (1 - labels) * np.log(1 - predictions + 1e-8))
    assert weighted == pytest.approx((terms * weights).sum(axis=1).mean(), rel=1e-5)


def test_skip_corrupt_records_drops_a_record_with_bad_ratings(tmp_path):
  shard = rated_shard(str(tmp_path / "v.tfrecord"), {
      "aaaa": [(1, 5, 1.0)], "bbbb": [(3, 0, 0.5)], "cccc": [(2, 0, 0.0), (2, 20, 1.0)]})
  reader = readers.YT8MSegmentReader(segment_size=SIZE, rated=True,
                                     num_classes=NUM_CLASSES, feature_names=["rgb"],
                                     feature_sizes=[1024], max_frames=MAX_FRAMES)
  with tf.Graph().as_default():
    skipped = readers.SkippedRecords()
    batch = readers.get_input_data_tensors(reader, readers.list_data_files(shard), 8,
                                           num_epochs=1, shuffle=False,
                                           skipped=skipped)
    with tf1.Session() as sess:
      sess.run([tf1.local_variables_initializer(), tf1.tables_initializer()])
      got = sess.run(batch)
      assert skipped.report(sess) == (1, 0)
  assert [(v, s) for v, s in zip(got["video_ids"], got["segment_start_times"])] == [
      (b"aaaa", 5), (b"cccc", 0), (b"cccc", 20)]


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="KD", k_frame=6),
     "--k_frame=6: with --segment_labels the student sees k of a segment's "
     "--segment_size=5 frames"),
    (dict(frame_features=False, feature_names=("mean_rgb",), feature_sizes=(1024,)),
     "--segment_labels needs frame features (--frame_features): segments are frames of "
     "a video"),
    (dict(segment_size=301), "--segment_size=301 exceeds --max_frames=300"),
])
def test_segment_flags_are_checked_in_one_line(changes, message):
  import cli
  import config
  with pytest.raises(cli.UsageError) as error:
    config.defaults().replace(segment_labels=True, **changes)
  assert str(error.value) == message


def test_the_teacher_sees_a_whole_segment_and_a_student_k_of_its_frames():
  import config
  cfg = config.defaults().replace(segment_labels=True)  # --k_frame=300, the default
  assert cfg.single_model_role() == "teacher" and cfg.frames_seen("teacher") == 5
  student = cfg.replace(model_type="KD", k_frame=2)
  assert student.frames_seen("student") == 2 and student.frames_seen("teacher") == 5
  assert config.defaults().frames_seen("teacher") == 300
