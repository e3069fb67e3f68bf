"""tools/segment_eval_inference.py: the 2019 segment metric (the starter's definition)
on hand-computed cases, and one-line errors for bad ratings and CSVs."""
import os

import pytest
import tensorflow as tf

from tests import helpers
from tools import segment_eval_inference as segment_eval

TOOL = "tools/segment_eval_inference.py"
# video id -> [(class, start time, score)]
RATINGS = {"aaaa": [(3, 0, 1.0), (3, 5, 0.0), (7, 0, 1.0)],
           "bbbb": [(3, 10, 1.0), (3, 15, 1.0), (7, 5, 0.0)],
           "cccc": [(7, 20, 0.0), (9, 0, 0.0)]}
CSV = """Class,Segments
3,bbbb:10 zzzz:0 aaaa:5 aaaa:0 bbbb:15
7,bbbb:5 cccc:20 aaaa:0
9,cccc:0
"""
# By hand. Class 3 has 3 positives (aaaa:0, bbbb:10, bbbb:15); zzzz:0 is not rated and
# drops out, leaving hits at ranks 1, 3 and 4: (1/1 + 2/3 + 3/4) / 3 = 29/36. Class 7
# has 1 positive (aaaa:0), found at rank 3: (1/3) / 1. Class 9 has no positive rating:
# left out. Mean: (29/36 + 1/3) / 2 = 41/72.
# With --top_n=3 the cut comes before the unrated drop out: class 3 keeps bbbb:10 and
# aaaa:5 (zzzz:0 drops): 1/3 (cutting after the drop would keep aaaa:0 too: 5/9);
# class 7 keeps all three: 1/3. Mean 1/3.


def rated_shard(path, ratings, scores_override=None):
  with tf.io.TFRecordWriter(path) as writer:
    for video_id, rows in ratings.items():
      example = tf.train.SequenceExample()
      context = example.context.feature
      context["id"].bytes_list.value.append(video_id.encode())
      context["segment_labels"].int64_list.value.extend(r[0] for r in rows)
      context["segment_start_times"].int64_list.value.extend(r[1] for r in rows)
      context["segment_scores"].float_list.value.extend(
          scores_override or [r[2] for r in rows])
      rgb = example.feature_lists.feature_list["rgb"]
      for _ in range(25):
        rgb.feature.add().bytes_list.value.append(bytes(1024))
      writer.write(example.SerializeToString())
  return path


@pytest.fixture
def files(tmp_path):
  shard = rated_shard(str(tmp_path / "validate0.tfrecord"), RATINGS)
  csv_path = tmp_path / "segments.csv"
  csv_path.write_text(CSV)
  return shard, str(csv_path)


def test_the_metric_is_the_hand_computed_one(files):
  shard, csv_path = files
  rated = segment_eval.rated_segments(shard)
  assert len(rated) == 8 and rated[("bbbb:15", 3)] == 1.0
  mean, per_class, left_out = segment_eval.segment_map(
      segment_eval.submission_rankings(csv_path, rated), rated)
  assert per_class == pytest.approx({3: 29 / 36, 7: 1 / 3}, abs=1e-12)
  assert left_out == [9]
  assert mean == pytest.approx(41 / 72, abs=1e-12)
  mean, per_class, _ = segment_eval.segment_map(
      segment_eval.submission_rankings(csv_path, rated, top_n=3), rated)
  assert per_class == pytest.approx({3: 1 / 3, 7: 1 / 3}, abs=1e-12)
  assert mean == pytest.approx(1 / 3, abs=1e-12)


def test_a_perfect_and_a_reversed_ranking():
  assert segment_eval.average_precision([1, 1, 0, 0], 2) == 1.0
  assert segment_eval.average_precision([0, 0, 1, 1], 2) == pytest.approx(
      (1 / 3 + 2 / 4) / 2)
  # positives the ranking never reaches still count in P
  assert segment_eval.average_precision([1], 4) == 0.25


def test_the_command_line(files):
  shard, csv_path = files
  out = helpers.run_cli(TOOL, ["--eval_data_pattern=" + shard,
                               "--submission_file=" + csv_path]).stdout
  assert "rated segments: 8; classes scored: 2" in out
  assert "note: 1 classes of the CSV have no positive rating" in out
  assert "mAP@all: %.6f" % (41 / 72) in out


@pytest.mark.parametrize("case, message", [
    ("score", "video aaaa rates class 3 at 0 with score 0.5; segment_scores must be 0 "
              "or 1"),
    ("counts", "video aaaa has 3 segment_labels, 3 segment_start_times and 2 "
               "segment_scores"),
    ("class", "video aaaa rates class 3862, outside the 3862 classes (--num_classes)"),
    ("start", "video aaaa rates the segment at 25, but its 25 frames hold 5-frame "
              "segments from 0 to 20"),
    ("csv", "line 2: expected '<class>,<segment id> <segment id> ...'"),
    ("twice", "line 3: class 3 appears twice"),
    ("missing", "--submission_file="),
    ("no shards", "matches no file"),
])
def test_mistakes_are_one_line(files, tmp_path, case, message):
  shard, csv_path = files
  if case in ("score", "counts"):
    ratings = {"aaaa": RATINGS["aaaa"]}
    shard = rated_shard(str(tmp_path / "bad.tfrecord"), ratings,
                        [0.5, 0.0, 1.0] if case == "score" else [1.0, 0.0])
  elif case in ("class", "start"):
    ratings = {"aaaa": [(3862, 0, 1.0)] if case == "class" else [(3, 25, 1.0)]}
    shard = rated_shard(str(tmp_path / "bad.tfrecord"), ratings)
  elif case == "csv":
    with open(csv_path, "w") as f:
      f.write("Class,Segments\nthree,aaaa:0\n")
  elif case == "twice":
    with open(csv_path, "w") as f:
      f.write("Class,Segments\n3,aaaa:0\n3,bbbb:10\n")
  elif case == "missing":
    csv_path = str(tmp_path / "nothing.csv")
  else:
    shard = str(tmp_path / "none*.tfrecord")
  done = helpers.run_cli(TOOL, ["--eval_data_pattern=" + shard,
                                "--submission_file=" + csv_path], check=False)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], done.stderr
  assert lines[0].startswith("segment_eval_inference.py: error: ")


def test_generated_rated_shards_have_the_layout_and_learnable_ratings(tmp_path):
  """make_synthetic_yt8m --segments_per_video writes the 2019 context fields, and a
  scorer that knows each class's look ranks its positive segments well above chance:
  the ratings follow the frames."""
  import numpy as np

  import utils
  from tools import make_synthetic_yt8m as generator
  knobs = dict(num_classes=20, num_verticals=4)
  summary = generator.write_dataset(str(tmp_path), splits=("validate",),
                                    validate_videos=60, shards=1, video_level=False,
                                    seed=3, segments_per_video=4, **knobs)
  shard, = summary["splits"]["validate"]["frame_files"]
  model = generator.SyntheticYT8M(seed=3, **knobs)
  looks = model.prototypes @ model.w_rgb  # [classes, 1024]: each class's rgb direction
  rated, guesses = {}, {}
  for serialized in tf.compat.v1.io.tf_record_iterator(shard):
    example = tf.train.SequenceExample.FromString(serialized)
    video_id, labels, starts, scores = segment_eval.video_ratings(example)
    frames = [f.bytes_list.value[0] for f in example.feature_lists.feature_list["rgb"].feature]
    rgb = utils.Dequantize(np.frombuffer(b"".join(frames), np.uint8).reshape(-1, 1024))
    assert len(labels) == len(starts) == len(scores) == min(4, len(frames) // 5)
    assert set(labels) <= set(example.context.feature["labels"].int64_list.value)
    assert starts == sorted(set(starts)) and set(scores) <= {0.0, 1.0}
    for label, start, score in zip(labels, starts, scores):
      assert start % 5 == 0 and start + 5 <= len(frames)
      segment = "%s:%d" % (video_id, start)
      rated[(segment, label)] = score
      guesses[(segment, label)] = float((rgb[start:start + 5].mean(0) - model.b_rgb)
                                        @ looks[label])
  assert 0.2 < np.mean(list(rated.values())) < 0.9 and len(rated) > 150
  rng = np.random.RandomState(0)
  ranked = {c: sorted((s for s, l in guesses if l == c), key=lambda s: -guesses[(s, c)])
            for c in {l for _, l in rated}}
  shuffled = {c: list(rng.permutation(segments)) for c, segments in ranked.items()}
  ours, _, _ = segment_eval.segment_map(ranked, rated)
  chance, _, _ = segment_eval.segment_map(shuffled, rated)
  assert ours > chance + 0.1, (ours, chance)
  # Without the three fields, each record is the one written without ratings.
  plain, = generator.write_dataset(str(tmp_path / "plain"), splits=("validate",),
                                   validate_videos=60, shards=1, video_level=False,
                                   seed=3, **knobs)["splits"]["validate"]["frame_files"]
  for rated_record, plain_record in zip(tf.compat.v1.io.tf_record_iterator(shard),
                                        tf.compat.v1.io.tf_record_iterator(plain)):
    example = tf.train.SequenceExample.FromString(rated_record)
    for name in ("segment_labels", "segment_start_times", "segment_scores"):
      del example.context.feature[name]
    assert example.SerializeToString(deterministic=True) == plain_record
