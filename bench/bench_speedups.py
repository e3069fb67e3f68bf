"""Two speed-ups, bf16 and real frames only, each as a ratio measured in one run.

  python bench/bench_speedups.py [--steps=5] [--batches=6] [--videos=400]

At the documented NeXtVLAD config (batch 80, 3862 classes), every case in its own
process through the graphs train.py and eval.py build (bench_train, bench_inference):

  bf16: teacher inference and teacher training step, model only (in-graph random
        input, all 300 frames real), float32 vs --bf16 (oneDNN bfloat16 rewrite).
        Targets: inference >= 1.6x, training >= 1.5x.
  real frames only: teacher training end to end over generated shards whose lengths
        mix like YouTube-8M's (videos last 120-500 s, capped at 300 frames: about half
        at 300, the rest spread over 120-299), --frame_packing=never (dense
        [B, 300, F]) vs auto (per-frame layers on real frames only). Target >= 1.15x.
"""
import argparse

import bench_inference
import bench_train
import common


def main():
  print(common.cpu_line(), flush=True)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5, help="timed training steps")
  parser.add_argument("--batches", type=int, default=6, help="timed inference batches")
  parser.add_argument("--videos", type=int, default=400)
  parser.add_argument("--data_dir", default="/tmp/yt8m_bench_data_yt8m_mix")
  args = parser.parse_args()
  pattern = common.generated_data(args.data_dir, args.videos, short_video_fraction=0.0)
  rows = []

  def compare(what, measure, base_flags, fast_flags, target):
    base, fast = measure(base_flags), measure(fast_flags)
    ratio = fast["videos_per_second"] / base["videos_per_second"]
    rows.append([what, " ".join(base_flags) or "float32",
                 "%.1f" % base["videos_per_second"], " ".join(fast_flags),
                 "%.1f" % fast["videos_per_second"], "%.2fx" % ratio,
                 ">= %.2fx" % target])
    print(rows[-1], flush=True)

  compare("teacher inference, model only",
          lambda flags: bench_inference.run_in_subprocess("teacher", "model", 80,
                                                          args.batches, pattern, flags),
          [], ["--bf16"], 1.6)
  compare("teacher training, model only",
          lambda flags: bench_train.run_in_subprocess("teacher", "model", args.steps,
                                                      pattern, flags),
          [], ["--bf16"], 1.5)
  compare("teacher training, end to end, YT8M length mix",
          lambda flags: bench_train.run_in_subprocess("teacher", "e2e", args.steps,
                                                      pattern, flags),
          ["--frame_packing=never"], ["--frame_packing=auto"], 1.15)
  print(common.table(rows, ["case (batch 80)", "baseline", "videos/s", "ours",
                            "videos/s", "speed-up", "target"]))


if __name__ == "__main__":
  main()
