"""Tests of tools/make_synthetic_yt8m.py: YouTube-8M 2018 layout, determinism, statistics."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

import utils
from tools import make_synthetic_yt8m as synth

# Small but complete settings: short videos keep every test fast.
SMALL = dict(num_classes=60, num_verticals=6, min_frames=8, max_frames=20)


def read_records(path):
  return list(tf.compat.v1.io.tf_record_iterator(path))


def parse_frame_records(path):
  """[(id, labels, {feature: uint8 [n, size]})] of a frame-level file."""
  out = []
  for record in read_records(path):
    ex = tf.train.SequenceExample.FromString(record)
    ctx = ex.context.feature
    feats = {}
    for name, feature_list in ex.feature_lists.feature_list.items():
      rows = [np.frombuffer(f.bytes_list.value[0], np.uint8) for f in feature_list.feature]
      feats[name] = np.stack(rows) if rows else np.zeros((0, 0), np.uint8)
    out.append((ctx["id"].bytes_list.value[0].decode(), list(ctx["labels"].int64_list.value),
                feats))
  return out


def parse_video_records(path):
  """[(id, labels, {name: float32 [size]})] of a video-level file."""
  out = []
  for record in read_records(path):
    feat = tf.train.Example.FromString(record).features.feature
    floats = {k: np.array(v.float_list.value, np.float32) for k, v in feat.items()
              if k not in ("id", "labels")}
    out.append((feat["id"].bytes_list.value[0].decode(), list(feat["labels"].int64_list.value),
                floats))
  return out


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synthetic"))
  summary = synth.write_dataset(out, train_videos=7, validate_videos=5, shards=2, seed=3,
                                short_video_fraction=0.2, **SMALL)
  return out, summary


def test_layout_file_names_and_keys(small_dataset):
  out, summary = small_dataset
  for sub in ("frame", "video"):
    names = sorted(os.listdir(os.path.join(out, sub)))
    assert names == ["train0000.tfrecord", "train0001.tfrecord", "validate0000.tfrecord",
                     "validate0001.tfrecord"]
  assert os.path.exists(os.path.join(out, "dataset_info.json"))
  total = 0
  for split, n in (("train", 7), ("validate", 5)):
    frames = 0
    for shard in range(2):
      name = "%s%04d.tfrecord" % (split, shard)
      records = read_records(os.path.join(out, "frame", name))
      total += len(records)
      for record in records:
        ex = tf.train.SequenceExample.FromString(record)
        assert set(ex.context.feature) == {"id", "labels"}
        assert set(ex.feature_lists.feature_list) == {"rgb", "audio"}
        rgb = ex.feature_lists.feature_list["rgb"].feature
        audio = ex.feature_lists.feature_list["audio"].feature
        assert 1 <= len(rgb) == len(audio) <= SMALL["max_frames"]
        frames += len(rgb)
        assert all(len(f.bytes_list.value) == 1 for f in rgb)
        assert {len(f.bytes_list.value[0]) for f in rgb} == {1024}
        assert {len(f.bytes_list.value[0]) for f in audio} == {128}
      for record in read_records(os.path.join(out, "video", name)):
        feat = tf.train.Example.FromString(record).features.feature
        assert set(feat) == {"id", "labels", "mean_rgb", "mean_audio"}
        assert len(feat["mean_rgb"].float_list.value) == 1024
        assert len(feat["mean_audio"].float_list.value) == 128
    assert summary["splits"][split]["videos"] == n
    assert summary["splits"][split]["frames"] == frames
  assert total == 12
  assert not [n for n in os.listdir(os.path.join(out, "frame")) if n.endswith(".tmp")]


def test_ids_unique_labels_valid_and_video_level_matches(small_dataset):
  out, _ = small_dataset
  ids = []
  for split in ("train", "validate"):
    for shard in range(2):
      name = "%s%04d.tfrecord" % (split, shard)
      frames = parse_frame_records(os.path.join(out, "frame", name))
      videos = parse_video_records(os.path.join(out, "video", name))
      assert [(v, l) for v, l, _ in frames] == [(v, l) for v, l, _ in videos]
      for (vid, labels, feats), (_, _, means) in zip(frames, videos):
        ids.append(vid)
        assert re.match(r"^[0-9A-Za-z]{4}$", vid)
        assert labels and labels == sorted(set(labels))
        assert all(0 <= x < SMALL["num_classes"] for x in labels)
        for name in ("rgb", "audio"):
          expected = utils.Dequantize(feats[name].astype(np.float64)).mean(0)
          np.testing.assert_allclose(means["mean_" + name], expected, atol=1e-5)
  assert len(ids) == len(set(ids)) == 12


def test_ids_unique_across_all_splits():
  model = synth.SyntheticYT8M(seed=5, **SMALL)
  ids = [model.video_id(s, i) for s in ("train", "validate", "test") for i in range(3000)]
  ids += [model.video_id(s, synth.MAX_VIDEOS_PER_SPLIT - 1 - i)
          for s in ("train", "validate", "test") for i in range(100)]
  assert len(set(ids)) == len(ids)


def test_determinism_same_seed_identical_bytes_different_seed_differs(tmp_path):
  def files(seed, name):
    out = str(tmp_path / name)
    synth.write_dataset(out, train_videos=4, validate_videos=2, shards=2, seed=seed, **SMALL)
    result = {}
    for sub in ("frame", "video"):
      for fname in sorted(os.listdir(os.path.join(out, sub))):
        with open(os.path.join(out, sub, fname), "rb") as f:
          result[sub + "/" + fname] = f.read()
    return result
  a, b, c = files(11, "a"), files(11, "b"), files(12, "c")
  assert a == b
  assert a.keys() == c.keys()
  assert all(a[k] != c[k] for k in a)


def test_videos_do_not_depend_on_count_or_shards(tmp_path):
  out1, out2 = str(tmp_path / "one"), str(tmp_path / "two")
  synth.write_dataset(out1, splits="train", train_videos=3, shards=1, seed=1, **SMALL)
  synth.write_dataset(out2, splits="train", train_videos=5, shards=3, seed=1, **SMALL)
  first = parse_frame_records(os.path.join(out1, "frame", "train0000.tfrecord"))
  second = parse_frame_records(os.path.join(out2, "frame", "train0000.tfrecord")) + \
      parse_frame_records(os.path.join(out2, "frame", "train0001.tfrecord"))
  assert [v for v, _, _ in first] == [v for v, _, _ in second[:3]]
  np.testing.assert_array_equal(first[2][2]["rgb"], second[2][2]["rgb"])


def test_label_statistics_follow_the_knobs():
  for mean in (3.0, 5.0):
    model = synth.SyntheticYT8M(seed=0, num_classes=3862, max_frames=6, min_frames=6,
                                labels_per_video=mean)
    videos = list(model.videos("train", 400))
    counts = [len(v["labels"]) for v in videos]
    assert min(counts) >= 1
    assert abs(np.mean(counts) - mean) < 0.3
    labels = np.concatenate([v["labels"] for v in videos])
    assert labels.min() >= 0 and labels.max() < 3862
  # Long tail: most of 3862 classes never occur in 400 videos; the head is frequent.
  assert len(set(labels.tolist())) < 3862 // 2
  assert np.bincount(labels)[0] > 20
  # Labels mostly stay in the video's vertical.
  same = [np.mean(model.vertical_of_class[v["labels"]] == v["vertical"]) for v in videos]
  assert np.mean(same) > 0.8


def test_tiny_vocabularies():
  for num_classes, num_verticals in ((1, 1), (5, 5), (7, 2)):
    model = synth.SyntheticYT8M(seed=0, num_classes=num_classes, num_verticals=num_verticals,
                                max_frames=4)
    for video in model.videos("validate", 30):
      assert video["labels"] and max(video["labels"]) < num_classes
      assert 1 <= len(video["rgb"]) <= 4


def test_short_videos_and_max_frames():
  model = synth.SyntheticYT8M(seed=2, num_classes=60, num_verticals=6, min_frames=10,
                              max_frames=15, short_video_fraction=0.3)
  lengths = np.array([len(v["rgb"]) for v in model.videos("train", 200)])
  assert lengths.max() == 15 and np.mean(lengths == 15) > 0.3
  short = lengths <= synth.SHORT_VIDEO_MAX_FRAMES
  assert 30 < short.sum() < 90
  assert lengths[~short].min() >= 10
  model = synth.SyntheticYT8M(seed=2, num_classes=60, num_verticals=6, min_frames=10,
                              max_frames=15, short_video_fraction=0.0)
  assert min(len(v["rgb"]) for v in model.videos("train", 50)) >= 10


def test_feature_values_use_the_range_and_frames_are_correlated():
  model = synth.SyntheticYT8M(seed=4, num_classes=60, num_verticals=6,
                              short_video_fraction=0.0)
  videos = list(model.videos("train", 6))
  rgb = np.concatenate([v["rgb"] for v in videos])
  x = utils.Dequantize(rgb.astype(np.float64))
  assert 0.3 < x.std() < 1.0
  assert np.mean((rgb == 0) | (rgb == 255)) < 0.01
  assert len(np.unique(rgb)) > 200
  xc = utils.Dequantize(videos[0]["rgb"].astype(np.float64)) - x.mean(0)
  unit = xc / np.linalg.norm(xc, axis=1, keepdims=True)
  near = np.mean(np.sum(unit[1:] * unit[:-1], 1))
  far = np.mean(np.sum(unit[60:] * unit[:-60], 1))
  assert near > 0.6 and near > far + 0.2


def test_low_level_writers_hand_crafted_records(tmp_path):
  rng = np.random.default_rng(0)
  videos = [
      {"id": "one1", "labels": [3], "rgb": rng.integers(0, 256, (1, 1024), dtype=np.uint8),
       "audio": rng.integers(0, 256, (1, 128), dtype=np.uint8)},
      {"id": "long", "labels": [0, 7, 9],
       "rgb": rng.integers(0, 256, (301, 1024), dtype=np.uint8),
       "audio": rng.integers(0, 256, (301, 128), dtype=np.uint8)},
  ]
  path = str(tmp_path / "frame" / "train0000.tfrecord")
  assert synth.write_frame_records(path, videos) == 2
  parsed = parse_frame_records(path)
  for video, (vid, labels, feats) in zip(videos, parsed):
    assert vid == video["id"] and labels == video["labels"]
    np.testing.assert_array_equal(feats["rgb"], video["rgb"])
    np.testing.assert_array_equal(feats["audio"], video["audio"])

  # Other feature sets, given under "features".
  custom = [{"id": "cust", "labels": [], "features": {
      "foo": np.arange(6, dtype=np.uint8).reshape(2, 3)}}]
  path = str(tmp_path / "custom.tfrecord")
  synth.write_frame_records(path, custom)
  (vid, labels, feats), = parse_frame_records(path)
  assert vid == "cust" and labels == [] and set(feats) == {"foo"}
  np.testing.assert_array_equal(feats["foo"], [[0, 1, 2], [3, 4, 5]])

  # Video level: means computed from frames, or given.
  path = str(tmp_path / "video" / "train0000.tfrecord")
  given = {"id": "give", "labels": [1], "mean_rgb": np.full(1024, 0.25),
           "mean_audio": np.full(128, -0.5)}
  assert synth.write_video_records(path, videos + [given]) == 3
  parsed = parse_video_records(path)
  np.testing.assert_allclose(parsed[1][2]["mean_rgb"],
                             utils.Dequantize(videos[1]["rgb"].astype(np.float64)).mean(0),
                             atol=1e-5)
  assert parsed[2][0] == "give" and np.all(parsed[2][2]["mean_audio"] == -0.5)

  with pytest.raises(ValueError):
    synth.write_frame_records(str(tmp_path / "bad.tfrecord"),
                              [{"id": "x", "labels": [0], "rgb": np.full((2, 4), 300)}])
  assert not os.path.exists(str(tmp_path / "bad.tfrecord"))


def test_cli_writes_and_reports(tmp_path, capsys):
  out = str(tmp_path / "cli")
  assert synth.main(["--output_dir", out, "--train_videos=3", "--validate_videos=2",
                     "--shards=1", "--num_classes=30", "--num_verticals=3",
                     "--max_frames=8", "--no_video_level"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("train: 3 videos") and lines[1].startswith("validate: 2 videos")
  assert sorted(os.listdir(os.path.join(out, "frame"))) == ["train0000.tfrecord",
                                                            "validate0000.tfrecord"]
  assert not os.path.exists(os.path.join(out, "video"))


def test_rewrite_with_fewer_shards_removes_stale_ones(tmp_path):
  out = str(tmp_path / "d")
  synth.write_dataset(out, splits="train", train_videos=4, shards=3, **SMALL)
  synth.write_dataset(out, splits="train", train_videos=4, shards=2, **SMALL)
  for sub in ("frame", "video"):
    assert sorted(os.listdir(os.path.join(out, sub))) == ["train0000.tfrecord",
                                                          "train0001.tfrecord"]


@pytest.mark.parametrize("args,needle", [
    (["--num_classes=10", "--num_verticals=11"], "--num_verticals"),
    (["--train_videos=-1"], "--train_videos"),
    (["--shards=0"], "--shards"),
    (["--min_frames=301"], "--min_frames"),
    (["--evidence_fraction=1.5"], "--evidence_fraction"),
    (["--labels_per_video=0.5"], "--labels_per_video"),
    (["--splits=train,dev"], "--splits"),
    (["--seed=-3"], "--seed"),
    (["--train_videos=many"], "--train_videos"),
])
def test_cli_rejects_bad_values_with_one_line(tmp_path, capsys, args, needle):
  out = str(tmp_path / "bad")
  with pytest.raises(SystemExit) as e:
    synth.main(["--output_dir", out] + args)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "error:" in err and needle in err
  assert not os.path.exists(os.path.join(out, "frame", "train0000.tfrecord"))


def test_shards_written_by_several_processes_are_the_same(tmp_path, monkeypatch):
  from tools import make_synthetic_yt8m as synth
  # Which process encodes each frame-level record: a line per record in a file of its
  # own (the forked workers inherit the wrapper).
  writers = tmp_path / "writers"
  encode = synth.frame_record

  def frame_record(video):
    with open(str(writers), "a") as f:
      f.write("%d\n" % os.getpid())
    return encode(video)
  monkeypatch.setattr(synth, "frame_record", frame_record)
  summaries, pids = {}, {}
  for workers in (1, 2):
    writers.write_text("")
    summaries[workers] = synth.write_dataset(
        str(tmp_path / str(workers)), train_videos=6, validate_videos=5, shards=3,
        num_classes=20, num_verticals=4, seed=3, max_frames=20, workers=workers)
    pids[workers] = writers.read_text().split()
  # This process wrote every record, then the pool's workers did (one of the two may
  # take every shard when the other starts late).
  assert len(pids[1]) == len(pids[2]) == 11
  assert set(pids[1]) == {str(os.getpid())}
  assert 1 <= len(set(pids[2])) <= 2 and str(os.getpid()) not in pids[2]
  for split in ("train", "validate"):
    one, two = summaries[1]["splits"][split], summaries[2]["splits"][split]
    assert {k: v for k, v in one.items() if not k.endswith("_files")} == \
        {k: v for k, v in two.items() if not k.endswith("_files")}
    assert len(one["frame_files"]) == len(two["frame_files"]) == 3
    assert len(one["video_files"]) == len(two["video_files"]) == 3
    for a, b in zip(one["frame_files"] + one["video_files"],
                    two["frame_files"] + two["video_files"]):
      assert a != b and open(a, "rb").read() == open(b, "rb").read(), a
