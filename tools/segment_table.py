"""The recipe at segment level (--segment_labels) on generated rated data: how few of a
segment's 5 frames a classifier needs, alone and distilled.

  python tools/segment_table.py --out_dir=demo_out/segments [--seed=0] [--scale=1.0]
      [--paired_seeds=1,2,3,4,5 --options=recipe,NAME] [--model_flags=...]

Generates shards with 2019-style ratings (tools/make_synthetic_yt8m.py
--segments_per_video), then trains with the demo's model and training flags
(tools/demo.py): a NeXtVLAD teacher over each rated segment's 5 frames, students on 1
and 2 of them trained alone, and the same students distilled offline from a teacher
cache (the 2-frame one also with a fiftieth of the recipe's KD weights). Each run is
scored on the validation ratings two ways: eval.py (GAP and mAP over the rated classes
of each rated segment, the starter's segment metrics) and the
2019 challenge's metric (inference.py --segment_labels ranks every segment of the
validation videos per class, tools/segment_eval_inference.py scores that CSV at
100,000). Writes results.md (the table, also printed) and commands.txt under --out_dir.

With --paired_seeds, the 2-frame student is also trained alone and distilled with each
of --options (tools/kd_table.py's option names) from the same teacher cache on each
of those seeds, and a second table gives each option's paired GAP difference over the
student alone (same seed: mean and standard error), eval.py's GAP on the rated
classes. Writes it to paired.md and paired.json.
"""

import argparse
import json
import os
import re
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from tools import demo  # noqa: E402
from tools import kd_table  # noqa: E402

NUM_CLASSES = 200
TRAIN_VIDEOS, VALIDATE_VIDEOS, SEGMENTS_PER_VIDEO = 1500, 300, 8
STEPS = 400
RUNS = [("teacher, 5 of 5 frames", ["--model_type=teacher", "--k_frame=300"], "_teacher"),
        ("student, 2 frames, alone", ["--model_type=student", "--k_frame=2"],
         "_student_k_2"),
        ("student, 2 frames, KD", ["--model_type=KD", "--k_frame=2"], "_KD_k_2"),
        # L_CE counts a segment's one or two rated classes, not a video's 200: the
        # recipe's weights (tuned against the latter) let L_pred and L_rep outweigh it
        # ~30 to 1. A fiftieth of them restores about the video-level balance.
        ("student, 2 frames, KD, weights / 50",
         ["--model_type=KD", "--k_frame=2", "--kd_pred_weight=0.0002",
          "--kd_rep_weight=0.00002"], "_KD_k_2"),
        ("student, 1 frame, alone", ["--model_type=student", "--k_frame=1"],
         "_student_k_1"),
        ("student, 1 frame, KD", ["--model_type=KD", "--k_frame=1"], "_KD_k_1")]


def generate(runner, data_dir, scale, seed):
  if os.path.exists(os.path.join(data_dir, "dataset_info.json")):
    print("data: reusing %s" % data_dir)
    return
  runner.run("tools/make_synthetic_yt8m.py", [
      "--output_dir=" + data_dir, "--train_videos=%d" % int(TRAIN_VIDEOS * scale),
      "--validate_videos=%d" % int(VALIDATE_VIDEOS * scale), "--shards=4",
      "--seed=%d" % seed, "--no_video_level", "--num_classes=%d" % NUM_CLASSES,
      "--segments_per_video=%d" % SEGMENTS_PER_VIDEO])


def scores(runner, run, validate, rated_file, out_dir, name):
  """(eval.py's metrics record, the 2019 mAP of the run's Class,Segments CSV)."""
  runner.run("eval.py", ["--train_dir=" + run, "--eval_data_pattern=" + validate,
                         "--run_once"], quiet=True)
  record = demo.read_jsonl(os.path.join(run, "eval.jsonl"))[-1]
  csv_path = os.path.join(out_dir, "segments_%s.csv" % name)
  runner.run("inference.py", ["--train_dir=" + run, "--input_data_pattern=" + validate,
                              "--output_file=" + csv_path,
                              "--segment_label_ids_file=" + rated_file], quiet=True)
  out = runner.run("tools/segment_eval_inference.py", [
      "--eval_data_pattern=" + validate, "--submission_file=" + csv_path,
      "--num_classes=%d" % NUM_CLASSES, "--top_n=100000"], quiet=True)
  return record, float(re.search(r"mAP@\d+: ([0-9.]+)", out).group(1))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", default="demo_out/segments")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--scale", type=float, default=1.0,
                      help="multiplies the videos and the steps (tests use a tiny one)")
  parser.add_argument("--paired_seeds", default="",
                      help="seeds of the paired comparison (empty: none)")
  parser.add_argument("--options", default="recipe",
                      help="tools/kd_table.py options of the paired comparison")
  parser.add_argument("--model_flags", default="",
                      help="train.py flags that override the demo's model and training "
                      "flags (tests use a tiny model)")
  args = parser.parse_args(argv)
  options = [o for o in args.options.split(",") if o]
  for option in options:
    kd_table.option_flags(option)
  os.makedirs(args.out_dir, exist_ok=True)
  runner = demo.Runner(args.out_dir)
  data = os.path.join(args.out_dir, "data")
  generate(runner, data, args.scale, args.seed)
  train = os.path.join(data, "frame", "train*.tfrecord")
  validate = os.path.join(data, "frame", "validate*.tfrecord")
  rated_file = os.path.join(args.out_dir, "rated_classes.csv")
  with open(rated_file, "w") as f:  # every class may be rated in generated data
    f.write("Index\n" + "".join("%d\n" % c for c in range(NUM_CLASSES)))
  base = os.path.join(args.out_dir, "runs", "seg_s%d" % args.seed)
  cache = os.path.join(args.out_dir, "teacher_cache_s%d" % args.seed)
  steps = max(int(STEPS * args.scale), 2)
  model_flags = [f for f in demo.MODEL_FLAGS if not f.startswith("--num_classes")]
  train_flags = demo.TRAIN_FLAGS + shlex.split(args.model_flags)
  rows = []
  for label, kind_flags, suffix in RUNS:
    extra = ["--teacher_cache=" + cache] if "--model_type=KD" in kind_flags else []
    print("train: %s (%d steps)" % (label, steps), flush=True)
    runner.run("train.py", model_flags + train_flags + kind_flags + extra + [
        "--num_classes=%d" % NUM_CLASSES, "--segment_labels",
        "--train_data_pattern=" + train, "--train_dir=" + base, "--seed=%d" % args.seed,
        "--max_steps=%d" % steps, "--export_model_steps=%d" % steps,
        "--start_new_model=True"], quiet=True)
    name = re.sub(r"\W+", "_", label)
    record, segment_map = scores(runner, base + suffix, validate, rated_file,
                                 args.out_dir, name)
    gap, labelled_map = record["gap"], record["map_labelled_classes"]
    rows.append([label, "%.4f" % gap, "%.4f" % labelled_map, "%.4f" % segment_map])
    print("  %s: GAP %.4f, mAP %.4f, 2019 mAP@100000 %.4f"
          % (label, gap, labelled_map, segment_map), flush=True)
  table = demo_table(rows, steps, args)
  demo.write_atomically(os.path.join(args.out_dir, "results.md"), table + "\n")
  print(table)
  if args.paired_seeds:
    common = model_flags + train_flags + [
        "--num_classes=%d" % NUM_CLASSES, "--segment_labels", "--k_frame=2",
        "--train_data_pattern=" + train, "--max_steps=%d" % steps,
        "--export_model_steps=%d" % steps, "--start_new_model=True"]
    paired(runner, args, common, base + "_teacher", cache, validate, options)
  return 0


def paired(runner, args, common, teacher, cache, validate, options):
  """The paired comparison (--paired_seeds): the 2-frame student alone and distilled
  with each option on each seed; writes paired.md and paired.json."""
  gaps = {}  # (option or "alone", seed): GAP
  for seed in [int(s) for s in args.paired_seeds.split(",")]:
    for option in ["alone"] + options:
      kd_flags = [] if option == "alone" else kd_table.option_flags(option)
      flags = ["--model_type=student"] if option == "alone" else [
          "--model_type=KD", "--teacher_checkpoint=" + teacher,
          "--teacher_cache=" + kd_table.cache_for(cache, kd_flags)] + kd_flags
      base = os.path.join(args.out_dir, "paired_runs", "%s_s%d" % (
          option.replace("+", "_"), seed))
      run = base + ("_student_k_2" if option == "alone" else "_KD_k_2")
      if not os.path.exists(os.path.join(run, "eval.jsonl")):
        runner.run("train.py", common + flags + ["--train_dir=" + base,
                                                 "--seed=%d" % seed], quiet=True)
      gaps[(option, seed)] = demo.evaluate(runner, run, validate)["gap"]
      print("  paired: %s seed %d GAP %.4f" % (option, seed, gaps[(option, seed)]),
            flush=True)
  seeds = sorted({seed for _, seed in gaps})
  alone = {s: gaps[("alone", s)] for s in seeds}
  lines = ["| 2-frame student | GAP (mean of %d seeds) | paired gain over alone |"
           % len(seeds), "|---|---|---|",
           "| alone | %.4f | |" % (sum(alone.values()) / len(seeds))]
  results = {"gaps": [{"option": o, "seed": s, "gap": g} for (o, s), g in gaps.items()],
             "paired": {}}
  for option in options:
    kd = {s: gaps[(option, s)] for s in seeds}
    results["paired"][option] = kd_table.paired(kd, alone)
    lines.append("| distilled, %s | %.4f | %s |" % (
        option, sum(kd.values()) / len(seeds),
        kd_table.format_paired(results["paired"][option])))
  text = "\n".join(lines)
  demo.write_atomically(os.path.join(args.out_dir, "paired.md"), text + "\n")
  demo.write_atomically(os.path.join(args.out_dir, "paired.json"),
                        json.dumps(results, indent=1))
  print(text)


def demo_table(rows, steps, args):
  lines = ["| run | GAP (rated classes) | mAP (rated classes with a positive) | "
           "2019 mAP@100000 |", "|---|---|---|---|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  lines.append("")
  lines.append("Generated rated data (seed %d, scale %g): %d train / %d validation "
               "videos, %d rated segments each at most, %d classes; %d steps of batch "
               "80 segments per run." % (args.seed, args.scale,
                                         int(TRAIN_VIDEOS * args.scale),
                                         int(VALIDATE_VIDEOS * args.scale),
                                         SEGMENTS_PER_VIDEO, NUM_CLASSES, steps))
  if args.model_flags:
    lines.append("Model and training flags overridden by: %s" % args.model_flags)
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
