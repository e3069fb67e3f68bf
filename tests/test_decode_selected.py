"""A student running alone decodes only its k frames; its predictions stay the same.

The reference is the path that decodes every frame and lets kd_model.model_inputs pick
the student's frames (what KD training does, and what every student did before).
"""
import csv
import io

import numpy as np
import pytest
import tensorflow as tf

import frame_selection
import inference_graph
import kd_model
import readers
import run_dir
from tests import helpers

tf1 = tf.compat.v1
K, MAX_FRAMES = 6, 40


@pytest.fixture(scope="module")
def student(tmp_path_factory):
  """A tiny k=6 student trained with random frames, and 11 videos of 3..50 frames
  (some shorter than k, some cut at --max_frames=40)."""
  root = tmp_path_factory.mktemp("decode_selected")
  train, validate = helpers.make_dataset(root / "data", train_videos=8, validate_videos=11,
                                         min_frames=3, max_frames=50,
                                         short_video_fraction=0.3)
  helpers.run_cli("train.py", [
      "--train_data_pattern=" + train, "--train_dir=%s/run" % root, "--model_type=student",
      "--k_frame=%d" % K, "--frame_sampling=random", "--max_frames=%d" % MAX_FRAMES,
      "--batch_size=4", "--max_steps=2", "--seed=1", "--pca_eigenvals="]
      + helpers.TINY_MODEL)
  return {"root": root, "run": str(root / ("run_student_k_%d" % K)), "data": validate}


def _outputs(cfg, run, pattern, student_only):
  """Every video's (id, top classes, top scores, model input) through one reader."""
  with tf.Graph().as_default():
    reader = readers.get_reader(cfg, dequantize=False, require_labels=False,
                                student_only=student_only)
    assert (reader.selected_frames is not None) == student_only
    batch = readers.get_input_data_tensors(
        reader, readers.list_data_files(pattern), 4, 1, num_epochs=1, shuffle=False)
    inputs, _ = kd_model.model_inputs(cfg, kd_model.STUDENT, batch, is_training=False)
    fetches = inference_graph.top_k_outputs(cfg, batch, kd_model.STUDENT, 20,
                                            with_labels=False)
    fetches = [fetches["video_ids"], fetches["top_indices"], fetches["top_scores"], inputs]
    saver = tf1.train.Saver()
    results = []
    with tf1.Session() as sess:
      saver.restore(sess, run_dir.latest_checkpoint(run))
      while True:
        try:
          results.append(sess.run(fetches))
        except tf.errors.OutOfRangeError:
          return [np.concatenate(column) for column in zip(*results)]


def _kaggle_csv(ids, indices, scores):
  """The CSV inference.py must write for these predictions (an independent writer)."""
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(["VideoId", "LabelConfidencePairs"])
  for video_id, labels, values in zip(ids, indices, scores):
    writer.writerow([video_id.decode(), " ".join("%d %g" % (l, v)
                                                 for l, v in zip(labels, values))])
  return text.getvalue()


@pytest.mark.parametrize("strategy", frame_selection.STRATEGIES)
def test_decoding_selected_frames_gives_identical_inputs_and_predictions(student,
                                                                         strategy):
  cfg = run_dir.load(student["run"]).replace(frame_sampling=strategy)
  full = _outputs(cfg, student["run"], student["data"], student_only=False)
  selected = _outputs(cfg, student["run"], student["data"], student_only=True)
  assert len(full[0]) == 11 and list(full[0]) == list(selected[0])  # the video ids
  for reference, value in zip(full[1:], selected[1:]):
    assert reference.dtype == value.dtype and reference.shape == value.shape
    assert reference.tobytes() == value.tobytes()


def test_random_frames_at_inference_are_a_fixed_set_per_video():
  num_frames = tf.constant([40, 40, 3, 17])
  ids = tf.constant([b"a", b"b", b"a", b"c"])
  picks = frame_selection.frame_indices(num_frames, K, "random", MAX_FRAMES,
                                        video_ids=ids)[0]
  again = frame_selection.frame_indices(num_frames[::-1], K, "random", MAX_FRAMES,
                                        video_ids=ids[::-1])[0]
  with tf1.Session() as sess:
    picks, again = sess.run([picks, again])
  np.testing.assert_array_equal(picks, again[::-1])  # batch order does not matter
  assert not np.array_equal(picks[0], picks[1])  # another video, other frames
  np.testing.assert_array_equal(picks[2], [0, 0, 1, 1, 2, 2])  # 3 < k frames: uniform
  for row, n in zip(picks, [40, 40, 3, 17]):
    assert list(row) == sorted(row) and row.max() < n
    if n >= K:
      assert len(set(row)) == K


def test_cli_csv_and_saved_model_csv_equal_the_full_decode(student, tmp_path):
  cfg = run_dir.load(student["run"])
  ids, indices, scores, _ = _outputs(cfg, student["run"], student["data"],
                                     student_only=False)
  expected = _kaggle_csv(ids, indices, scores)
  common = ["--input_data_pattern=" + student["data"], "--batch_size=4"]
  helpers.run_cli("inference.py", common + ["--train_dir=" + student["run"],
                                            "--output_file=%s/run.csv" % tmp_path])
  helpers.run_cli("export_model.py", ["--train_dir=" + student["run"],
                                      "--output_dir=%s/saved" % tmp_path])
  helpers.run_cli("inference.py", common + ["--saved_model=%s/saved" % tmp_path,
                                            "--output_file=%s/saved.csv" % tmp_path])
  assert (tmp_path / "run.csv").read_text() == expected
  assert (tmp_path / "saved.csv").read_text() == expected


@pytest.mark.parametrize("strategy", frame_selection.STRATEGIES)
def test_selected_length_is_the_static_frame_axis_of_both_paths(strategy):
  for k in (1, 6, 7, 150, 299):
    frames = tf.zeros([2, 300, 3], tf.uint8)
    picked, _ = frame_selection.select_frames(frames, tf.constant([300, 9]), k, strategy)
    assert picked.shape[1] == frame_selection.selected_length(k, strategy, 300)
