"""Distillation on real labels: a video-level teacher teaches a LogisticModel, on
official YouTube-8M video-level records.

  python tools/real_kd_table.py --data_dir=../shared/data/yt8m2018_video_sample \\
      --out_dir=real_kd_out [--seeds=0,1,2,3,4] [--option=NAME] [--mixtures=2,4,8]

The shards are split by index, once, before anything is trained (--train_shards,
--tune_shards, --held_out_shards; globs relative to --data_dir):
  train     validate0000-0059: every model trains on these;
  tune      validate0060-0069: the teacher's size (MoeModel, each of --mixtures) is
            chosen on these, and nothing else is;
  held out  validate0120-0149: reported only, never trained or tuned on.
The chosen teacher (seed 0) builds a teacher cache over the training shards. Then on
each seed the student (LogisticModel) is trained alone (--model_type=student, which
starts from the KD student's initial weights on the same seed), distilled with the
recipe's weights, and distilled with --option (a tools/kd_table.py option, chosen there on
generated data; empty: the recipe only), all with the same training settings. The
table gives each one's held-out GAP and the paired difference of each distilled
student over the student alone on the same seed (mean and standard error). A video-
level model's representation is its input, the same for teacher and student, so
L_rep is zero and only L_pred distils. Runs finished before are reused. Writes
<out_dir>/real_kd_table.md and real_kd_table.json.
"""

import argparse
import glob
import json
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from tools import demo  # noqa: E402
from tools import kd_table  # noqa: E402

FEATURE_FLAGS = ["--frame_features=False", "--feature_names=mean_rgb,mean_audio",
                 "--feature_sizes=1024,128", "--num_classes=3862"]
# The starter's video-level settings (its README: batch 1024, learning rate 0.01).
TRAIN_FLAGS = ["--batch_size=1024", "--base_learning_rate=0.01", "--num_readers=2",
               "--export_model_steps=100000", "--log_every_n_steps=50"]
SPLITS = {"train": "validate00[0-5][0-9].tfrecord",
          "tune": "validate006[0-9].tfrecord",
          "held_out": "validate01[2-4][0-9].tfrecord"}


def split_patterns(data_dir, args):
  """{split: absolute glob}, after checking each matches files and none overlap."""
  patterns = {name: os.path.join(os.path.abspath(data_dir), getattr(args, name + "_shards"))
              for name in SPLITS}
  seen = {}
  for name, pattern in patterns.items():
    files = glob.glob(pattern)
    if not files:
      raise SystemExit("real_kd_table: --%s_shards=%s matches no file in --data_dir=%s"
                       % (name, getattr(args, name + "_shards"), data_dir))
    for path in files:
      if path in seen:
        raise SystemExit("real_kd_table: %s is in both the %s and the %s split"
                         % (path, seen[path], name))
      seen[path] = name
  return patterns


def train(runner, base, flags, seed, extra_flags, train_pattern, eval_pattern):
  """Trains one run (unless it was evaluated before on eval_pattern); returns its run
  directory and eval.py record on eval_pattern."""
  found = glob.glob(base + "_*/eval.jsonl")
  run_dir = os.path.dirname(found[0]) if found else None
  if run_dir is None:
    runner.run("train.py", FEATURE_FLAGS + TRAIN_FLAGS + extra_flags + list(flags) + [
        "--train_data_pattern=" + train_pattern, "--train_dir=" + base,
        "--seed=%d" % seed, "--start_new_model=True"], quiet=True)
    run_dir, = [d for d in glob.glob(base + "_*") if os.path.isdir(d)]
  return run_dir, demo.evaluate(runner, run_dir, eval_pattern)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True,
                      help="the official video-level shards (validateNNNN.tfrecord)")
  parser.add_argument("--out_dir", default="real_kd_out")
  for name, default in SPLITS.items():
    parser.add_argument("--%s_shards" % name, default=default)
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--mixtures", default="2,4,8",
                      help="MoeModel sizes the teacher is chosen from, on the tune split")
  parser.add_argument("--option", default="",
                      help="a tools/kd_table.py option to distil with beside the recipe")
  parser.add_argument("--train_flags", default="--num_epochs=5",
                      help="train.py flags of every run (after the starter's)")
  args = parser.parse_args(argv)
  if not os.path.isdir(args.data_dir):
    parser.error("--data_dir=%s is not a directory" % args.data_dir)
  options = ["recipe"] + ([args.option] if args.option and args.option != "recipe"
                          else [])
  for name in options:
    kd_table.option_flags(name)
  patterns = split_patterns(args.data_dir, args)
  os.makedirs(args.out_dir, exist_ok=True)
  runner = demo.Runner(args.out_dir)
  extra = shlex.split(args.train_flags)
  seeds = [int(s) for s in args.seeds.split(",")]
  runs = os.path.join(args.out_dir, "runs")

  teachers = []
  for mixtures in [int(m) for m in args.mixtures.split(",")]:
    run_dir, record = train(runner, os.path.join(runs, "moe%d_s0" % mixtures), [
        "--model=MoeModel", "--moe_num_mixtures=%d" % mixtures, "--model_type=teacher"],
        0, extra, patterns["train"], patterns["tune"])
    teachers.append((record["gap"], mixtures, run_dir))
    print("teacher MoeModel %d mixtures: tune GAP %.4f" % (mixtures, record["gap"]),
          flush=True)
  _, mixtures, teacher_dir = max(teachers)
  teacher_record = demo.evaluate(runner, teacher_dir, patterns["held_out"])
  print("teacher: MoeModel %d mixtures, held-out GAP %.4f" % (
      mixtures, teacher_record["gap"]), flush=True)
  cache = os.path.join(args.out_dir, "teacher_cache_moe%d" % mixtures)

  gaps = {}  # (kind, seed): held-out GAP
  for seed in seeds:
    for kind in ["alone"] + options:
      flags = ["--model=LogisticModel"]
      if kind == "alone":
        flags.append("--model_type=student")  # under student/: the KD student's start
      else:
        flags += ["--model_type=KD", "--teacher_checkpoint=" + teacher_dir,
                  "--teacher_cache=" + kd_table.cache_for(cache, kind)] + \
            kd_table.option_flags(kind)
      _, record = train(runner, os.path.join(runs, "logistic_%s_s%d" % (
          kind.replace("+", "_"), seed)), flags, seed, extra, patterns["train"],
          patterns["held_out"])
      gaps[(kind, seed)] = record["gap"]
      print("LogisticModel %-24s seed %d: held-out GAP %.4f" % (kind, seed,
                                                                 record["gap"]), flush=True)

  alone = {s: gaps[("alone", s)] for s in seeds}
  lines = ["Held-out split %s; teacher MoeModel (%d mixtures, chosen on %s among %s): "
           "GAP %.4f" % (args.held_out_shards, mixtures, args.tune_shards, args.mixtures,
                         teacher_record["gap"]), "",
           "| student | GAP (mean over %d seeds) | paired gain over alone |" % len(seeds),
           "|---|---|---|",
           "| LogisticModel alone | %.4f | |" % (sum(alone.values()) / len(alone))]
  results = {"teacher": {"mixtures": mixtures, "held_out_gap": teacher_record["gap"],
                         "tune": [{"mixtures": m, "gap": g} for g, m, _ in teachers]},
             "splits": {name: getattr(args, name + "_shards") for name in SPLITS},
             "gaps": [{"kind": k, "seed": s, "gap": g} for (k, s), g in gaps.items()],
             "paired": {}}
  for kind in options:
    kd = {s: gaps[(kind, s)] for s in seeds}
    stats = kd_table.paired(kd, alone)
    results["paired"][kind] = stats
    lines.append("| LogisticModel distilled (%s) | %.4f | %s |" % (
        kind, sum(kd.values()) / len(kd), kd_table.format_paired(stats)))
  text = "\n".join(lines)
  for name, content in (("real_kd_table.md", text + "\n"),
                        ("real_kd_table.json", json.dumps(results, indent=1))):
    with open(os.path.join(args.out_dir, name), "w") as f:
      f.write(content)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
