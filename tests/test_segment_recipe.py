"""The recipe at segment level (--segment_labels) on generated rated shards: a teacher
over each segment's 5 frames, a 1-frame student alone, a 2-frame student distilled
through a teacher cache; eval.py's segment metrics, inference.py's Class,Segments CSV
and the cache's entries, each against the models' own predictions computed here."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import kd_model
import readers
import run_dir
from tests import helpers
from tools import segment_eval_inference

tf1 = tf.compat.v1
NUM_CLASSES = 20
COMMON = ["--segment_labels", "--max_frames=40", "--batch_size=8", "--seed=3",
          "--export_model_steps=1000", "--max_steps=8"] + helpers.TINY_MODEL
VIDEO_LEVEL = [a for a in COMMON if a != "--segment_labels"]
RATED = [1, 2, 3, 5, 8, 13]  # the "rated classes" of this test's segment_label_ids


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("segments")
  train, validate = helpers.make_dataset(root / "data", train_videos=24,
                                         validate_videos=10, num_classes=NUM_CLASSES,
                                         max_frames=40, min_frames=12,
                                         segments_per_video=3)
  base = str(root / "run")
  cache = str(root / "cache")
  for args in (["--model_type=teacher", "--k_frame=40"],
               ["--model_type=student", "--k_frame=1"],
               ["--model_type=KD", "--k_frame=2", "--teacher_cache=" + cache]):
    helpers.run_cli("train.py", ["--train_data_pattern=" + train,
                                 "--train_dir=" + base] + COMMON + args)
  # The 2019 starter's baseline: a model trained on whole videos.
  video_base = str(root / "video")
  helpers.run_cli("train.py", ["--train_data_pattern=" + train, "--train_dir=" +
                               video_base, "--model_type=teacher", "--k_frame=40"]
                  + VIDEO_LEVEL)
  return {"root": root, "train": train, "validate": validate, "cache": cache,
          "teacher": base + "_teacher", "student": base + "_student_k_1",
          "kd": base + "_KD_k_2", "video_teacher": video_base + "_teacher"}


def direct_predictions(directory, pattern, rated, role=None, batch_size=8):
  """{(video id, start): (predictions [C], labels [C], label weights [C])} of the
  run's model (a video-level run's too) on the rated segments (rated=True) or every
  segment, computed here."""
  cfg = run_dir.load(directory).replace(segment_labels=True, segment_size=5)
  role = role or cfg.role()
  with tf.Graph().as_default():
    reader = readers.get_reader(cfg, require_labels=rated, dequantize=False)
    batch = readers.get_input_data_tensors(reader, readers.list_data_files(pattern),
                                           batch_size, 1, num_epochs=1,
                                           shuffle=False)
    outputs = kd_model.inference_outputs(cfg, batch, role)
    fetches = [batch["video_ids"], batch["segment_start_times"], outputs["predictions"],
               batch["labels"], batch.get("label_weights", batch["labels"])]
    found = {}
    with tf1.Session() as sess:
      tf1.train.Saver().restore(sess, tf1.train.latest_checkpoint(directory))
      while True:
        try:
          ids, starts, predictions, labels, weights = sess.run(fetches)
        except tf.errors.OutOfRangeError:
          break
        for row, (video_id, start) in enumerate(zip(ids, starts)):
          found[(video_id.decode(), int(start))] = (predictions[row], labels[row],
                                                    weights[row])
  return found


def test_each_run_records_the_segment_mode(runs):
  for name in ("teacher", "student", "kd"):
    recorded = json.load(open(os.path.join(runs[name], "model_flags.json")))
    assert (recorded["segment_labels"], recorded["segment_size"]) == (True, 5), name
  assert json.load(open(os.path.join(runs["cache"], "fingerprint.json")))[
      "fingerprint"]["teacher"]["segment_labels"] is True


@pytest.mark.parametrize("name", ["teacher", "student", "kd"])
def test_eval_scores_the_rated_classes_of_each_rated_segment(runs, name):
  out = helpers.run_cli("eval.py", ["--train_dir=" + runs[name], "--run_once",
                                    "--eval_data_pattern=" + runs["validate"],
                                    "--batch_size=8"]).stdout
  assert "on rated 5-frame segments (only rated classes count)" in out
  record = json.loads(open(os.path.join(runs[name], "eval.jsonl")).readlines()[-1])
  assert record["segment_labels"] is True
  segments = direct_predictions(runs[name], runs["validate"], rated=True)
  assert_rated_segment_metrics(record, segments)


def assert_rated_segment_metrics(record, segments):
  """record (eval.jsonl) holds the metrics of `segments` ({key: (predictions, labels,
  label weights)}) computed here: each segment's rated classes only (the others score
  0), by the definitions written plainly (tests/helpers.reference_metrics)."""
  predictions, labels, weights = (np.array(v) for v in zip(*segments.values()))
  assert record["num_examples"] == len(segments) > 20
  assert set(np.unique(weights)) == {0, 1} and not (labels * (1 - weights)).any()
  expected = helpers.reference_metrics(np.where(weights > 0, predictions, 0), labels)
  assert 0 < expected["gap"] < 1
  for key in ("gap", "hit_at_one", "map_all_classes"):
    assert record[key] == pytest.approx(expected[key], abs=1e-6), key


def reference_ranking(scores_by_segment, rated, top_k, max_pred):
  """{class: [segment ids]}: the starter's rule written plainly (each segment is a
  candidate for its top_k rated classes; each class keeps its max_pred best)."""
  candidates = {}
  for (video_id, start), scores in scores_by_segment.items():
    best = sorted(rated, key=lambda c: -scores[c])[:top_k]
    for label in best:
      candidates.setdefault(label, []).append((-scores[label], "%s:%d" % (video_id,
                                                                         start)))
  return {label: [segment for _, segment in sorted(entries)[:max_pred]]
          for label, entries in candidates.items()}


def test_inference_writes_the_class_segments_csv_of_every_segment(runs, tmp_path):
  ids_file = tmp_path / "rated.csv"
  ids_file.write_text("Index\n" + "".join("%d\n" % c for c in RATED))
  output = tmp_path / "segments.csv"
  out = helpers.run_cli("inference.py", [
      "--train_dir=" + runs["kd"], "--input_data_pattern=" + runs["validate"],
      "--output_file=%s" % output, "--segment_label_ids_file=%s" % ids_file,
      "--top_k=2", "--segment_max_pred=7", "--batch_size=8"]).stdout
  segments = direct_predictions(runs["kd"], runs["validate"], rated=False)
  assert "Wrote the Class,Segments CSV of %d segments" % len(segments) in out
  lines = output.read_text().splitlines()
  assert lines[0] == "Class,Segments"
  written = {int(line.split(",")[0]): line.split(",")[1].split() for line in lines[1:]}
  expected = reference_ranking({k: v[0] for k, v in segments.items()}, RATED, 2, 7)
  assert written == expected
  assert sorted(written) == [c for c in RATED if c in expected]
  # The 2019 metric of that CSV against the validation ratings.
  scored = helpers.run_cli("tools/segment_eval_inference.py", [
      "--eval_data_pattern=" + runs["validate"], "--submission_file=%s" % output,
      "--num_classes=%d" % NUM_CLASSES]).stdout
  assert "mAP@all: " in scored


def test_the_tflite_file_of_a_segment_run_writes_the_same_class_segments_csv(
    runs, tmp_path):
  """export_model.py --tflite=float32 of the segment KD run, served by inference.py
  --tflite_model: the file takes a segment's frames and the CSV is the checkpoint's."""
  ids_file = tmp_path / "rated.csv"
  ids_file.write_text("Index\n" + "".join("%d\n" % c for c in RATED))
  export = str(tmp_path / "export")
  helpers.run_cli("export_model.py", ["--train_dir=" + runs["kd"],
                                      "--output_dir=" + export, "--tflite=float32"])
  csvs = []
  for source in ("--train_dir=" + runs["kd"],
                 "--tflite_model=" + os.path.join(export, "model.tflite")):
    output = tmp_path / ("%d.csv" % len(csvs))
    helpers.run_cli("inference.py", [
        source, "--input_data_pattern=" + runs["validate"], "--output_file=%s" % output,
        "--segment_label_ids_file=%s" % ids_file, "--top_k=2", "--segment_max_pred=7",
        "--batch_size=8"])
    csvs.append(output.read_text())
  assert csvs[0].startswith("Class,Segments\n") and csvs[1] == csvs[0]


def test_segment_flags_of_inference_fail_in_one_line(runs, tmp_path):
  ids_file = tmp_path / "rated.csv"
  ids_file.write_text("Index\n3\n25\n")
  process = helpers.run_cli("inference.py", [
      "--train_dir=" + runs["kd"], "--input_data_pattern=" + runs["validate"],
      "--output_file=%s" % (tmp_path / "x.csv"),
      "--segment_label_ids_file=%s" % ids_file], check=False)
  assert process.returncode != 0
  assert helpers.user_error_line(process).endswith(
      "--segment_label_ids_file=%s names class 25, but the model predicts 20 classes "
      "(--num_classes)" % ids_file)
  assert not (tmp_path / "x.csv").exists()


def assert_cache_holds(cache, pattern, teacher_dir):
  """The cache holds one entry per rated segment of pattern's videos, each the
  prediction of teacher_dir's model on that segment (float16)."""
  teacher = direct_predictions(teacher_dir, pattern, rated=True)
  cached = {}
  for index, _ in enumerate(readers.list_data_files(pattern).paths):
    shard = os.path.join(cache, "teacher-%05d.tfrecord" % index)
    for serialized in tf1.io.tf_record_iterator(shard):
      entry = tf.train.Example.FromString(serialized).features.feature
      video_id = entry["id"].bytes_list.value[0].decode()
      for start, values in zip(entry["segment_start_times"].int64_list.value,
                               entry["predictions"].bytes_list.value):
        cached[(video_id, int(start))] = np.frombuffer(values, np.float16)
  assert set(cached) == set(teacher) and len(cached) > 40
  for key, (predictions, _, _) in teacher.items():
    np.testing.assert_allclose(cached[key], predictions, atol=2e-3, err_msg=str(key))


def test_the_teacher_cache_holds_the_teachers_outputs_per_rated_segment(runs):
  assert_cache_holds(runs["cache"], runs["train"], runs["teacher"])


def test_a_video_level_teacher_teaches_a_segment_student_on_each_segment(runs,
                                                                        tmp_path):
  """The 2019 starter's baseline as a teacher: a model trained on whole videos, applied
  to each rated segment's 5 frames, its outputs cached per segment."""
  base = str(tmp_path / "run")
  cache = str(tmp_path / "cache")
  helpers.run_cli("train.py", ["--train_data_pattern=" + runs["train"], "--train_dir=" +
                               base, "--model_type=KD", "--k_frame=2",
                               "--teacher_checkpoint=" + runs["video_teacher"],
                               "--teacher_cache=" + cache] + COMMON)
  assert json.load(open(os.path.join(runs["video_teacher"], "model_flags.json")))[
      "segment_labels"] is False
  assert json.load(open(base + "_KD_k_2/model_flags.json"))["segment_labels"] is True
  assert json.load(open(os.path.join(cache, "fingerprint.json")))[
      "fingerprint"]["teacher"]["segment_labels"] is True
  assert_cache_holds(cache, runs["train"], runs["video_teacher"])


def test_a_video_level_run_ranks_segments_when_asked(runs, tmp_path):
  """--segment_labels on the command line overrides what the run recorded: a model
  trained on whole videos scored on the rated segments (eval.py) and ranking every
  segment (inference.py's Class,Segments CSV)."""
  run = runs["video_teacher"]
  out = helpers.run_cli("eval.py", ["--train_dir=" + run, "--run_once",
                                    "--batch_size=8",
                                    "--eval_data_pattern=" + runs["validate"],
                                    "--segment_labels"]).stdout
  assert "on rated 5-frame segments (only rated classes count)" in out
  record = json.loads(open(os.path.join(run, "eval.jsonl")).readlines()[-1])
  assert record["segment_labels"] is True
  assert_rated_segment_metrics(record, direct_predictions(run, runs["validate"],
                                                          rated=True))
  ids_file = tmp_path / "rated.csv"
  ids_file.write_text("Index\n" + "".join("%d\n" % c for c in RATED))
  output = tmp_path / "segments.csv"
  helpers.run_cli("inference.py", [
      "--train_dir=" + run, "--input_data_pattern=" + runs["validate"],
      "--output_file=%s" % output, "--segment_labels", "--batch_size=8",
      "--segment_label_ids_file=%s" % ids_file, "--top_k=2", "--segment_max_pred=7"])
  lines = output.read_text().splitlines()
  assert lines[0] == "Class,Segments"
  written = {int(line.split(",")[0]): line.split(",")[1].split() for line in lines[1:]}
  segments = direct_predictions(run, runs["validate"], rated=False)
  assert written == reference_ranking({k: v[0] for k, v in segments.items()}, RATED, 2,
                                      7)


def test_a_segment_run_scores_whole_videos_when_told_nosegment_labels(runs):
  """The other way round: a segment run evaluated on whole videos."""
  out = helpers.run_cli("eval.py", ["--train_dir=" + runs["teacher"], "--run_once",
                                    "--eval_data_pattern=" + runs["validate"],
                                    "--nosegment_labels"]).stdout
  assert "on rated" not in out
  record = json.loads(open(os.path.join(runs["teacher"], "eval.jsonl")).readlines()[-1])
  assert record["segment_labels"] is False and record["num_examples"] == 10


def test_a_segment_runs_saved_model_serves_every_segment(runs, tmp_path):
  export_dir = str(tmp_path / "saved_model")
  helpers.run_cli("export_model.py", ["--train_dir=" + runs["kd"],
                                      "--output_dir=" + export_dir])
  records = [r for path in readers.list_data_files(runs["validate"]).paths
             for r in tf1.io.tf_record_iterator(path)]
  with tf.Graph().as_default(), tf1.Session() as sess:
    meta_graph = tf1.saved_model.load(sess, ["serve"], export_dir)
    signature = meta_graph.signature_def["serving_default"]
    fetch = {key: value.name for key, value in signature.outputs.items()}
    served = sess.run(fetch, {signature.inputs["examples"].name: records})
  segments = direct_predictions(runs["kd"], runs["validate"], rated=False)
  keys = [(v.decode(), int(s)) for v, s in zip(served["video_id"],
                                               served["segment_start_time"])]
  assert keys == list(segments)  # every segment, in the records' order
  for row, key in enumerate(keys):
    classes, scores = served["class_indexes"][row], served["predictions"][row]
    direct = segments[key][0]
    # Every class (20 = the served top 20), best first; each served score is that
    # class's own prediction.
    assert sorted(classes) == list(range(NUM_CLASSES)), classes
    assert list(scores) == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, direct[classes], atol=1e-5, err_msg=str(key))


def test_inference_writes_a_video_csv_when_told_nosegment_labels(runs, tmp_path):
  output = tmp_path / "videos.csv"
  helpers.run_cli("inference.py", ["--train_dir=" + runs["teacher"], "--nosegment_labels",
                                   "--input_data_pattern=" + runs["validate"],
                                   "--output_file=%s" % output])
  lines = output.read_text().splitlines()
  assert lines[0] == "VideoId,LabelConfidencePairs" and len(lines) == 11


def test_inference_refuses_a_saved_model_with_segment_labels(runs, tmp_path):
  process = helpers.run_cli("inference.py", [
      "--saved_model=%s" % runs["root"], "--segment_labels",
      "--input_data_pattern=" + runs["validate"],
      "--output_file=%s" % (tmp_path / "x.csv")], check=False)
  assert process.returncode == 2
  assert helpers.user_error_line(process) == (
      "inference.py: error: --segment_labels ranks segments per rated class: use "
      "--train_dir or --input_model_tgz (a SavedModel serves each segment's top "
      "classes over all classes)")
  assert not (tmp_path / "x.csv").exists()


def test_bad_ratings_stop_train_and_eval_in_one_line(runs, tmp_path):
  """A record rating a segment with 0.5 (scores are 0 or 1) after a good one."""
  good, first = None, None
  for serialized in tf1.io.tf_record_iterator(readers.list_data_files(
      runs["validate"]).paths[0]):
    example = tf.train.SequenceExample.FromString(serialized)
    scores = example.context.feature["segment_scores"].float_list.value
    if len(scores):
      if good is None:
        good = serialized
      else:
        first = (example.context.feature["segment_labels"].int64_list.value[0],
                 example.context.feature["segment_start_times"].int64_list.value[0])
        scores[0] = 0.5
        bad = example.SerializeToString()
        break
  shard = str(tmp_path / "bad.tfrecord")
  with tf.io.TFRecordWriter(shard) as writer:
    writer.write(good)
    writer.write(bad)
  problem = ("%s: record 1: segment_scores 0.5 for class %d at %d; they must be 0 or 1"
             % ((shard,) + first))
  trained = helpers.run_cli("train.py", [
      "--train_data_pattern=" + shard, "--train_dir=%s/run" % tmp_path,
      "--model_type=teacher", "--k_frame=40"] + COMMON, check=False)
  evaluated = helpers.run_cli("eval.py", [
      "--train_dir=" + runs["teacher"], "--eval_data_pattern=" + shard, "--run_once",
      "--batch_size=8"], check=False)
  for script, process in (("train.py", trained), ("eval.py", evaluated)):
    assert process.returncode != 0, script
    line = helpers.user_error_line(process)
    assert line.startswith(script + ": error: ") and problem in line, line
