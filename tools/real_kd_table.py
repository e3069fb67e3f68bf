"""Distillation on real labels: a video-level teacher teaches a LogisticModel, on
official YouTube-8M video-level records.

  python tools/real_kd_table.py --data_dir=../shared/data/yt8m2018_video_sample \\
      --out_dir=real_kd_out [--seeds=0,1,2,3,4] [--mixtures=2,4,8] [--l2_penalties=1e-8]
      [--select=NAME,... --select_seeds=0,1,2] [--option=NAME]

The shards are split by index, once, before anything is trained (--train_shards,
--tune_shards, --held_out_shards; globs relative to --data_dir):
  train     validate0000-0059: every model trains on these;
  tune      validate0060-0069: the teacher (MoeModel: each of --mixtures with each of
            --l2_penalties) and the distillation option are chosen on these;
  held out  validate0120-0149: reported only, never trained or tuned on.
--teacher_shards trains the teachers on shards of their own instead, so that their
outputs on the students' training videos are predictions, not recollections of labels
they were fitted to. The chosen teacher (seed 0) builds a teacher cache over the
students' training shards. Then on
each seed the student (LogisticModel) is trained alone (--model_type=student, which
starts from the KD student's initial weights on the same seed) and distilled, all with
the same training settings.

The distillation option is chosen on the tune split too: each of --select (option
names of tools/kd_table.py or of SHARE_OPTIONS here, parts joined by '+') and the
recipe distil the student on --select_seeds, and the option with the largest mean
paired gain over the student alone on the tune split is chosen. The held-out table
then gives the recipe, the chosen option and --option (if given) on every seed of
--seeds: each one's held-out GAP and its paired difference over the student alone on
the same seed (mean and standard error). A video-level model's representation is its
input, the same for teacher and student, so L_rep is zero and only L_pred distils.
Runs finished before are reused, and each is evaluated once per split. Writes
<out_dir>/real_kd_table.md and real_kd_table.json (and study.json: the splits, the
teachers' grid and --train_flags its runs were trained with).
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
# Balanced weights with more of the total on L_pred than --kd_shares' default
# (0.5,0.25,0.25 gives L_pred half of L_CE's weight; L_rep's share is unused at video
# level): name: (what it changes, train.py flags).
SHARE_OPTIONS = {
    "pred_x1": ("balanced, L_pred starting at L_CE's size",
                ["--kd_weights=balanced", "--kd_shares=0.5,0.5,0"]),
    "pred_x3": ("balanced, L_pred starting at 3 times L_CE",
                ["--kd_weights=balanced", "--kd_shares=0.25,0.75,0"]),
    "pred_x9": ("balanced, L_pred starting at 9 times L_CE",
                ["--kd_weights=balanced", "--kd_shares=0.1,0.9,0"]),
}
STARTER_L2 = 1e-8  # video_level_models.L2_PENALTY, without importing TensorFlow here
SELECT = "balanced,pred_x1,pred_x3,pred_x9,pred_kl+pred_x1,logits_t2+pred_x1"
SPLITS = {"train": "validate00[0-5][0-9].tfrecord",
          "tune": "validate006[0-9].tfrecord",
          "held_out": "validate01[2-4][0-9].tfrecord"}


def split_patterns(data_dir, args):
  """{split: absolute glob}, after checking each matches files and none overlap; the
  teacher's split is the training split unless --teacher_shards names its own."""
  names = dict(SPLITS, teacher=args.teacher_shards) if args.teacher_shards else SPLITS
  patterns = {name: os.path.join(os.path.abspath(data_dir), getattr(args, name + "_shards"))
              for name in names}
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
  patterns.setdefault("teacher", patterns["train"])
  return patterns


def check_out_dir(out_dir, args):
  """Records the splits, the teachers' grid and --train_flags in <out_dir>/study.json;
  refuses an --out_dir whose runs were trained with others (they would be reused)."""
  study = {flag: getattr(args, flag) for flag in
           [name + "_shards" for name in list(SPLITS) + ["teacher"]] +
           ["mixtures", "l2_penalties", "train_flags"]}
  path = os.path.join(out_dir, "study.json")
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    changed = sorted(flag for flag in study if stored.get(flag) != study[flag])
    if changed:
      raise SystemExit("real_kd_table: --out_dir=%s holds runs with --%s=%s, not %s: "
                       "give another --out_dir" % (out_dir, changed[0],
                                                   stored.get(changed[0]),
                                                   study[changed[0]]))
  else:
    os.makedirs(out_dir, exist_ok=True)
    demo.write_atomically(path, json.dumps(study, indent=1))


def teacher_name(mixtures, l2):
  """A teacher's run and cache name: moe<mixtures>, with _l2_<value> unless the
  starter's L2 penalty."""
  if l2 == STARTER_L2:
    return "moe%d" % mixtures
  return "moe%d_l2_%g" % (mixtures, l2)


def option_flags(name):
  """train.py flags of an option name: parts of SHARE_OPTIONS or tools/kd_table.py's
  OPTIONS joined by '+'."""
  return [flag for part in name.split("+") for flag in (
      SHARE_OPTIONS[part][1] if part in SHARE_OPTIONS else kd_table.option_flags(part))]


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
  parser.add_argument("--teacher_shards", default="",
                      help="the teacher's training shards (default: --train_shards); "
                      "others give its outputs on videos it has not seen")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--mixtures", default="2,4,8",
                      help="MoeModel sizes the teacher is chosen from, on the tune split")
  parser.add_argument("--l2_penalties", default=repr(STARTER_L2),
                      help="the teacher's --l2_penalty values it is chosen from, on the "
                      "tune split (the starter's 1e-8 by default)")
  parser.add_argument("--select", default=SELECT,
                      help="options screened against the recipe on the tune split "
                      "(empty: none)")
  parser.add_argument("--select_seeds", default="0,1,2")
  parser.add_argument("--option", default="",
                      help="an option reported on the held-out split beside the recipe "
                      "and the selection's choice")
  parser.add_argument("--train_flags", default="--num_epochs=5",
                      help="train.py flags of every run (after the starter's)")
  args = parser.parse_args(argv)
  if not os.path.isdir(args.data_dir):
    parser.error("--data_dir=%s is not a directory" % args.data_dir)
  try:
    grid = [(int(m), float(v)) for m in args.mixtures.split(",")
            for v in args.l2_penalties.split(",")]
  except ValueError:
    parser.error("--mixtures takes integers and --l2_penalties numbers, comma-separated")
  screened = ["recipe"] + [o for o in args.select.split(",") if o and o != "recipe"]
  for name in screened + ([args.option] if args.option else []):
    option_flags(name)
  patterns = split_patterns(args.data_dir, args)
  check_out_dir(args.out_dir, args)
  runner = demo.Runner(args.out_dir)
  extra = shlex.split(args.train_flags)
  seeds = [int(s) for s in args.seeds.split(",")]
  select_seeds = [int(s) for s in args.select_seeds.split(",")] if args.select else []
  runs = os.path.join(args.out_dir, "runs")

  teachers = []
  for mixtures, l2 in grid:
    name = teacher_name(mixtures, l2)
    run_dir, record = train(runner, os.path.join(runs, name + "_s0"), [
        "--model=MoeModel", "--moe_num_mixtures=%d" % mixtures, "--l2_penalty=%r" % l2,
        "--model_type=teacher"], 0, extra, patterns["teacher"], patterns["tune"])
    teachers.append((record["gap"], name, run_dir))
    print("teacher %s: tune GAP %.4f" % (name, record["gap"]), flush=True)
  _, teacher, teacher_dir = max(teachers)
  teacher_record = demo.evaluate(runner, teacher_dir, patterns["held_out"])
  print("teacher: %s, held-out GAP %.4f" % (teacher, teacher_record["gap"]), flush=True)
  cache = os.path.join(args.out_dir, "teacher_cache_" + teacher)

  def student(kind, seed, split):
    """The LogisticModel's GAP on a split, trained alone or distilled with option kind."""
    flags = ["--model=LogisticModel"]
    if kind == "alone":
      flags.append("--model_type=student")  # under student/: the KD student's start
    else:
      kd_flags = option_flags(kind)
      flags += ["--model_type=KD", "--teacher_checkpoint=" + teacher_dir,
                "--teacher_cache=" + kd_table.cache_for(cache, kd_flags)] + kd_flags
    _, record = train(runner, os.path.join(runs, "logistic_%s_s%d" % (
        kind.replace("+", "_"), seed)), flags, seed, extra, patterns["train"],
        patterns[split])
    print("LogisticModel %-24s seed %d: %s GAP %.4f" % (kind, seed, split,
                                                         record["gap"]), flush=True)
    return record["gap"]

  selection = {}  # option: paired gain over alone on the tune split
  if select_seeds:
    alone = {s: student("alone", s, "tune") for s in select_seeds}
    for kind in screened:
      selection[kind] = kd_table.paired(
          {s: student(kind, s, "tune") for s in select_seeds}, alone)
  chosen = max(selection, key=lambda kind: selection[kind][0]) if selection else None
  reported = ["recipe"] + [kind for kind in (chosen, args.option)
                           if kind and kind != "recipe"]
  reported = sorted(set(reported), key=reported.index)

  gaps = {}  # (kind, seed): held-out GAP
  for seed in seeds:
    for kind in ["alone"] + reported:
      gaps[(kind, seed)] = student(kind, seed, "held_out")
  lines = ["Held-out split %s; teacher %s (trained on %s, chosen on %s among %s): GAP "
           "%.4f; students trained on %s" % (
               args.held_out_shards, teacher, args.teacher_shards or args.train_shards,
               args.tune_shards, ", ".join(name for _, name, _ in teachers),
               teacher_record["gap"], args.train_shards)]
  if selection:
    lines += ["", "Selection on the tune split %s, seeds %s (chosen: %s):" % (
        args.tune_shards, args.select_seeds, chosen), "",
              "| option | paired gain over alone (tune) |", "|---|---|"]
    lines += ["| %s | %s |" % (kind, kd_table.format_paired(stats))
              for kind, stats in selection.items()]
  alone = {s: gaps[("alone", s)] for s in seeds}
  lines += ["", "| student | held-out GAP (mean over %d seeds) | paired gain over "
            "alone |" % len(seeds), "|---|---|---|",
            "| LogisticModel alone | %.4f | |" % (sum(alone.values()) / len(alone))]
  results = {"teacher": {"name": teacher, "held_out_gap": teacher_record["gap"],
                         "tune": [{"name": n, "gap": g} for g, n, _ in teachers]},
             "splits": {name: getattr(args, name + "_shards")
                        for name in list(SPLITS) + ["teacher"]},
             "selection": selection, "chosen": chosen,
             "gaps": [{"kind": k, "seed": s, "gap": g} for (k, s), g in gaps.items()],
             "paired": {}}
  for kind in reported:
    kd = {s: gaps[(kind, s)] for s in seeds}
    stats = kd_table.paired(kd, alone)
    results["paired"][kind] = stats
    lines.append("| LogisticModel distilled (%s) | %.4f | %s |" % (
        kind, sum(kd.values()) / len(kd), kd_table.format_paired(stats)))
  text = "\n".join(lines)
  for name, content in (("real_kd_table.md", text + "\n"),
                        ("real_kd_table.json", json.dumps(results, indent=1))):
    demo.write_atomically(os.path.join(args.out_dir, name), content)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
