"""inference.py --segment_labels against video-level inference of the same model.

  python bench/bench_segment_inference.py [--segments=100000] [--models=logistic,nextvlad]
      [--repeats=3]

Writes generated test shards whose videos hold `--segments` 5-frame segments in all
(300-frame videos: 60 segments each), makes a run directory per model (random
weights, one training step: speed does not depend on them), and runs inference.py
on the shards in two modes, each run in a process of its own: the video-level CSV
(VideoId,LabelConfidencePairs) and the Class,Segments CSV over the 1,000 rated classes
of segment_label_ids.csv with --segment_max_pred=100000. Each mode runs --repeats
times, the modes interleaved; it prints the median wall time (and each run's), frames
per second (every frame of the shards lies in one segment, so both modes see the same
frames), the median CPU seconds (user + system: less sensitive than wall time to
other load on a shared machine) and the highest peak RSS (rusage). Targets: segment
inference peak RSS < 1 GB, and >= 0.9 of video-level inference's frames/s. Also each mode's model
alone (inference.py's graph on an in-graph random batch, in a process of its own), so
that end to end / model only shows what reading, cutting segments, ranking and
writing cost on top of the model.

Models: `logistic` (FrameLevelLogisticModel: the pipeline itself, reading, cutting
segments, ranking and writing, with a model of negligible cost per example) and
`nextvlad` (the documented NeXtVLAD teacher config). A NeXtVLAD's head (the hidden
layer on the 36,864-wide VLAD, gating and the logits: ~84M MACs, ~79M over the 1,000
rated classes alone) runs once per example: once per 300 frames at video level, once
per 5 frames here, where its frames cost ~4.5M MACs each. So per frame the segment
model does ~4x the work, and its ratio is bound near 0.24 by arithmetic, not by the
pipeline. FrameLevelLogistic's head (1,152 x 1,000 MACs per segment) is small, but
per frame still 15 times the video model's.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common

DOCUMENTED_NEXTVLAD = ["--model=NeXtVLADModel", "--nextvlad_cluster_size=128",
                       "--nextvlad_hidden_size=2048", "--groups=8", "--expansion=2",
                       "--gating_reduction=8", "--drop_rate=0.5"]
MODELS = {"logistic": ["--model=FrameLevelLogisticModel"],
          "nextvlad": DOCUMENTED_NEXTVLAD}
FRAMES_PER_VIDEO = 300


def peak_of(command, log_path):
  """Runs `command` with stdout/stderr to log_path; returns (seconds, CPU seconds, peak
  RSS MB) of the child, the last two read from its rusage when it ends."""
  start = time.time()
  with open(log_path, "w") as log:
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    _, status, usage = os.wait4(child.pid, 0)
  seconds = time.time() - start
  if status != 0:
    raise SystemExit("failed: %s\n%s" % (" ".join(command),
                                         open(log_path).read()[-2000:]))
  return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def model_only(run, mode, batch_size, seconds=20.0):
  """Frames/s of the run's model alone in this process (inference.py's graph on an
  in-graph random uint8 batch of batch_size 300-frame videos, or of batch_size 5-frame
  segments ranked over the rated classes), run for about `seconds`."""
  import numpy as np
  import tensorflow as tf
  import file_io
  import inference_graph
  import model_utils
  import run_dir
  import segment_ranking
  import sessions
  tf1 = tf.compat.v1
  tf1.disable_eager_execution()
  cfg = run_dir.load(run).replace(segment_labels=mode == "segment")
  frames = cfg.example_frames()
  classes = (segment_ranking.read_rated_classes(file_io.shipped_path(
      "segment_label_ids.csv")) if mode == "segment" else None)
  with tf.Graph().as_default():
    rng = np.random.RandomState(0)
    matrix = tf1.Variable(rng.randint(0, 256, [batch_size, frames, 1152]).astype(
        np.uint8), trainable=False)
    batch = {"video_ids": tf.constant(["v%d" % i for i in range(batch_size)]),
             "video_matrix": tf.identity(matrix),
             "num_frames": tf.fill([batch_size], frames)}
    outputs = inference_graph.top_k_outputs(cfg, batch, cfg.role(), 20, False,
                                            classes=classes)
    fetch = [outputs["top_scores"], outputs["top_indices"]]
    with tf1.Session(config=sessions.session_config(False)) as sess:
      sess.run(tf1.global_variables_initializer())
      sess.run(model_utils.column_caches_initializer())
      once = common.time_runs(sess, fetch, 1, warmup=2)
      runs = max(3, int(seconds / max(once, 1e-3)))
      per_batch = common.time_runs(sess, fetch, runs, warmup=0)
  return batch_size * frames / per_batch


def main():
  if sys.argv[1:2] == ["--model_only"]:  # a child: run, mode, batch size
    run, mode, batch_size = sys.argv[2:5]
    print(json.dumps({"frames_per_second": model_only(run, mode, int(batch_size))}))
    return
  print(common.cpu_line(), flush=True)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--segments", type=int, default=100000)
  parser.add_argument("--models", default="logistic,nextvlad")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--work_dir", default="")
  parser.add_argument("--repeats", type=int, default=3,
                      help="runs of each mode, interleaved; medians are reported")
  args = parser.parse_args()
  work = args.work_dir or tempfile.mkdtemp(prefix="bench_segments_")
  videos = -(-args.segments // (FRAMES_PER_VIDEO // 5))
  from tools import make_synthetic_yt8m
  data = os.path.join(work, "data")
  pattern = os.path.join(data, "frame", "test*.tfrecord")
  if not os.path.exists(os.path.join(data, "done")):
    make_synthetic_yt8m.write_dataset(
        data, splits=("test",), test_videos=videos, shards=4, video_level=False,
        seed=0, min_frames=FRAMES_PER_VIDEO, max_frames=FRAMES_PER_VIDEO,
        short_video_fraction=0.0, log=None)
    open(os.path.join(data, "done"), "w").close()
  frames = videos * FRAMES_PER_VIDEO
  print("%d test videos of %d frames: %d segments, %d frames (%s)"
        % (videos, FRAMES_PER_VIDEO, frames // 5, frames, pattern), flush=True)
  python = sys.executable
  rows = []
  for name in args.models.split(","):
    base = os.path.join(work, name)
    run = base + "_teacher"
    if not os.path.isdir(run):
      peak_of([python, os.path.join(common.ROOT, "train.py"),
               "--train_data_pattern=" + pattern, "--train_dir=" + base,
               "--model_type=teacher", "--k_frame=300", "--max_steps=1",
               "--batch_size=2", "--export_model_steps=1000"] + MODELS[name],
              os.path.join(work, name + "_train.log"))
    modes = (("video", ["--output_file=" + os.path.join(work, name + ".csv")]),
             ("segment", ["--segment_labels", "--output_file=" +
                          os.path.join(work, name + "_segments.csv")]))
    runs = {mode: [] for mode, _ in modes}
    for _ in range(args.repeats):  # interleaved, so that a noisy spell hits both modes
      for mode, extra in modes:
        runs[mode].append(peak_of(
            [python, os.path.join(common.ROOT, "inference.py"), "--train_dir=" + run,
             "--input_data_pattern=" + pattern, "--batch_size=%d" % args.batch_size]
            + extra, os.path.join(work, "%s_%s.log" % (name, mode))))
    medians = {}
    for mode, _ in modes:
      seconds, cpu = (statistics.median(r[i] for r in runs[mode]) for i in (0, 1))
      peak = max(r[2] for r in runs[mode])
      medians[mode] = seconds, cpu
      alone = common.run_child(__file__, ["--model_only", run, mode,
                                          str(args.batch_size)])["frames_per_second"]
      rows.append([name, mode, "%.1f" % seconds,
                   " ".join("%.1f" % r[0] for r in runs[mode]), "%.1f" % cpu,
                   "%.0f" % (frames / seconds), "%.0f" % alone,
                   "%.2f" % (frames / seconds / alone), "%.0f" % peak])
    rows[-1] += ["%.2f" % (medians["video"][0] / medians["segment"][0]),
                 "%.2f" % (medians["video"][1] / medians["segment"][1])]
    rows[-2] += ["", ""]
  print(common.table(rows, ["model", "CSV", "seconds (median)", "each run",
                            "CPU seconds (median)", "frames/s end to end",
                            "frames/s model only", "e2e / model", "peak RSS MB (max)",
                            "segment / video frames/s (e2e)",
                            "segment / video frames per CPU second"]))


if __name__ == "__main__":
  main()
