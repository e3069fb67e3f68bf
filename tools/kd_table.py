"""Which distillation option pays: KD options chosen on a split carved from the demo's
training data, then confirmed on fresh seeds against the same students trained alone.

  python tools/kd_table.py --demo_dir=demo_out [--phases=select,confirm]
      [--select_seeds=0,1,2] [--confirm_seeds=10,11,12,13,14] [--option=NAME]
      [--students=full,quarter,logistic] [--mix_number=3] [--scale=1.0]

Selection (--phases=select) never touches the demo's validation videos: the last
training shard is held out (SELECT_HELD_OUT) and both teachers (the demo's NeXtVLAD and
the original's MixNeXtVLAD) and every student are trained on the other shards. The
k=6 NeXtVLAD student is distilled with each option of OPTIONS from each teacher on
each --select_seeds, and trained alone on the same seeds. The design is one factor at
a time from the recipe (the prediction loss, the representation loss, the weights: 9
cells), then one cell combining each factor's best level: a full factorial (5 x 4 x 2
levels) would be 40 cells, and the screen measures each factor's effect at the
recipe's levels of the others. The chosen option is the cell with the largest paired
gain over the student alone (same seed), averaged over teachers and seeds.

Confirmation (--phases=confirm) uses the demo's own split and teacher: each student of
--students at k=6 (NeXtVLAD, NeXtVLAD at a quarter width, FrameLevelLogistic) is
trained alone, distilled with the recipe and with the chosen option (--option, or the
selection's) from the demo's teacher on each --confirm_seeds; the full NeXtVLAD also
from the mixture. Each distilled run is paired with the same student alone on the same
seed (teachers fixed: seed 0); the table reports the mean paired difference and its
standard error. Every KD run distils offline through its teacher's cache. Runs finished
before are reused, so the phases may run in different sessions. Writes
<demo_dir>/kd_table.md and kd_table.json.
"""

import argparse
import json
import math
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from tools import demo  # noqa: E402
from tools import student_table  # noqa: E402

K = 6
SELECT_HELD_OUT = "train0003.tfrecord"  # the demo's last training shard (of 4)
# name: (what it changes, train.py flags beyond --model_type=KD); "recipe" first.
OPTIONS = {
    "recipe": ("L_CE + 0.01 L_pred (squared error) + 0.001 L_rep (squared error)", []),
    "pred_kl": ("L_pred: per-class KL on probabilities", ["--kd_pred_loss=kl"]),
    "logits_t1": ("L_pred: per-class KL on logits, T=1",
                  ["--kd_pred_loss=logits_kl", "--kd_temperature=1"]),
    "logits_t2": ("L_pred: per-class KL on logits, T=2",
                  ["--kd_pred_loss=logits_kl", "--kd_temperature=2"]),
    "logits_t4": ("L_pred: per-class KL on logits, T=4",
                  ["--kd_pred_loss=logits_kl", "--kd_temperature=4"]),
    "rep_none": ("L_rep off", ["--kd_rep_loss=none"]),
    "rep_cosine": ("L_rep: 1 - cosine similarity", ["--kd_rep_loss=cosine"]),
    "rep_standardized": ("L_rep: squared error of dimensions standardised by the "
                         "teacher's statistics", ["--kd_rep_loss=standardized"]),
    "balanced": ("weights set so the terms start at --kd_shares of the total",
                 ["--kd_weights=balanced"]),
}
FACTORS = {"pred": ("pred_kl", "logits_t1", "logits_t2", "logits_t4"),
           "rep": ("rep_none", "rep_cosine", "rep_standardized"),
           "weights": ("balanced",)}
TEACHERS = ("nextvlad", "mix")
CONFIRM_STUDENTS = ("full", "quarter", "logistic")


def combined(gains):
  """The option combining each factor's best level (where it beats the recipe).

  gains: {option name: mean paired gain}. Returns (name, flags) or None when no factor
  has a level better than the recipe's, or only one factor has.
  """
  parts = []
  for levels in FACTORS.values():
    best = max(levels, key=lambda name: gains.get(name, -math.inf))
    if gains.get(best, -math.inf) > gains.get("recipe", -math.inf):
      parts.append(best)
  if len(parts) < 2:
    return None
  return "+".join(parts), [flag for part in parts for flag in OPTIONS[part][1]]


def option_flags(name):
  """train.py flags of an option name (one of OPTIONS, or parts joined by '+')."""
  unknown = [part for part in name.split("+") if part not in OPTIONS]
  if unknown:
    raise SystemExit("kd_table: unknown option %r (choose from %s, or parts joined "
                     "by '+')" % (unknown[0], ", ".join(OPTIONS)))
  return [flag for part in name.split("+") for flag in OPTIONS[part][1]]


def cache_for(cache, flags):
  """The teacher cache directory of runs with these train.py flags: `cache`, or beside
  it one that stores the teacher's logits for runs comparing them (a cache holds them
  only when the run building it compares them)."""
  return cache + "_logits" if "--kd_pred_loss=logits_kl" in flags else cache


def paired(kd, alone):
  """Mean and standard error of kd[seed] - alone[seed] over the seeds both have, and
  their number. kd, alone: {seed: GAP}."""
  differences = [kd[s] - alone[s] for s in sorted(set(kd) & set(alone))]
  n = len(differences)
  if not n:
    return None, None, 0
  mean = sum(differences) / n
  if n < 2:
    return mean, None, n
  variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
  return mean, math.sqrt(variance / n), n


def select_data(demo_dir):
  """The selection split, as a demo-layout directory of links: its train shards are
  the demo's but SELECT_HELD_OUT, its validate shard is SELECT_HELD_OUT."""
  source = os.path.abspath(os.path.join(demo_dir, "data", "frame"))
  held_out = os.path.join(source, SELECT_HELD_OUT)
  if not os.path.exists(held_out):
    raise SystemExit("kd_table: no %s to hold out; run tools/demo.py --out_dir=%s first"
                     % (held_out, demo_dir))
  select_dir = os.path.join(demo_dir, "kd_select")
  frames = os.path.join(select_dir, "data", "frame")
  os.makedirs(frames, exist_ok=True)
  links = {name: name for name in os.listdir(source)
           if name.startswith("train") and name != SELECT_HELD_OUT}
  links["validate0000.tfrecord"] = SELECT_HELD_OUT
  for link, target in links.items():
    path = os.path.join(frames, link)
    if not os.path.lexists(path):
      os.symlink(os.path.join(source, target), path)
  return select_dir


class Study(object):
  """Trains and evaluates the study's runs (reused when finished) on one data split.

  data_dir: a demo-layout directory (data/frame/train*, validate*) the runs read;
  runs_dir: where they go.
  """

  def __init__(self, runner, data_dir, runs_dir, steps, base_flags, model_flags,
               mix_number, teachers=None):
    self.runner, self.data_dir, self.runs_dir = runner, data_dir, runs_dir
    self.steps, self.base_flags, self.model_flags = steps, base_flags, model_flags
    self.mix_number = mix_number
    self.teachers = dict(teachers or {})  # name: (run directory, its teacher cache)
    self.records = []

  def teacher(self, name):
    """(run directory, teacher cache) of teacher `name` (trained here, seed 0, unless
    given)."""
    if name not in self.teachers:
      flags = ["--model_type=teacher", "--k_frame=300"]
      if name == "mix":
        flags = ["--model=MixNeXtVladModel", "--mix_number=%d" % self.mix_number,
                 "--cl_temperature=2", "--cl_lambda=1"] + flags
      base = os.path.join(self.runs_dir, "teacher_%s_s0" % name)
      demo.train_and_evaluate(self.runner, self.data_dir, base, "_teacher", flags, 0,
                              self.steps["teacher"], self.model_flags)
      self.teachers[name] = (base + "_teacher", base + "_cache")
    return self.teachers[name]

  def run(self, student, seed, teacher=None, option=None):
    """GAP on the split's validate shards of `student` at k=6 trained alone (teacher
    None) or distilled from `teacher` with `option`; recorded in self.records."""
    spec = next(s for s in student_table.STUDENTS if s[0] == student)[2]
    flags = student_table.student_flags(spec, self.base_flags) + ["--k_frame=%d" % K]
    if teacher is None:
      base = os.path.join(self.runs_dir, "%s_alone_s%d" % (student, seed))
      flags, suffix, steps = flags + ["--model_type=student"], "_student_k_%d" % K, \
          self.steps["student"]
    else:
      teacher_dir, cache = self.teacher(teacher)
      base = os.path.join(self.runs_dir, "%s_%s_%s_s%d" % (
          student, teacher, option.replace("+", "_"), seed))
      kd_flags = option_flags(option)
      flags = flags + ["--model_type=KD", "--teacher_checkpoint=" + teacher_dir,
                       "--teacher_cache=" + cache_for(cache, kd_flags)] + kd_flags
      suffix, steps = "_KD_k_%d" % K, self.steps["KD"]
    record = demo.train_and_evaluate(self.runner, self.data_dir, base, suffix, flags,
                                     seed, steps, self.model_flags)
    self.records.append({"student": student, "teacher": teacher, "option": option,
                         "seed": seed, "gap": record["gap"], "run": base + suffix})
    print("%-9s %-9s %-28s seed %-3d GAP %.4f" % (
        student, teacher or "alone", option or "", seed, record["gap"]), flush=True)
    return record["gap"]


def select(study, seeds, teachers, options=tuple(OPTIONS)):
  """The selection phase over `options` (and their combination); returns (chosen
  option, {option: {teacher: (mean, se, n)}})."""
  alone = {seed: study.run("full", seed) for seed in seeds}
  gains = {}

  def screen(name):
    gains[name] = {}
    for teacher in teachers:
      kd = {seed: study.run("full", seed, teacher, name) for seed in seeds}
      gains[name][teacher] = paired(kd, alone)

  def mean_gain(name):
    return sum(gains[name][t][0] for t in teachers) / len(teachers)

  for name in options:
    screen(name)
  both = combined({name: mean_gain(name) for name in gains})
  if both:
    screen(both[0])
  return max(gains, key=mean_gain), gains


def confirm(study, seeds, option, students):
  """The confirmation phase: rows (student, teacher, option, (mean, se, n) of the paired
  difference over the student alone), and the chosen option from the mixture against
  it from the NeXtVLAD teacher (mean, se, n)."""
  options = ["recipe"] + ([option] if option != "recipe" else [])
  rows = []
  by_run = {}
  for student in students:
    alone = {seed: study.run(student, seed) for seed in seeds}
    teachers = ("nextvlad", "mix") if student == "full" and study.mix_number else (
        "nextvlad",)
    for teacher in teachers:
      for name in options:
        kd = {seed: study.run(student, seed, teacher, name) for seed in seeds}
        by_run[(student, teacher, name)] = kd
        rows.append((student, teacher, name, alone, kd, paired(kd, alone)))
  mix_vs_single = None
  if ("full", "mix", option) in by_run:
    mix_vs_single = paired(by_run[("full", "mix", option)],
                           by_run[("full", "nextvlad", option)])
  return rows, mix_vs_single


def format_paired(stats):
  """A paired() result as the tables print it, e.g. '+0.0123 ± 0.0040 (n=5)'."""
  mean, se, n = stats
  if mean is None:
    return "-"
  return "%+.4f" % mean + (" ± %.4f" % se if se is not None else "") + " (n=%d)" % n


def _verdict(stats):
  mean, se, _ = stats
  if mean is None or se is None:
    return "-"
  return "yes" if mean >= 2 * se and mean > 0 else "no"


def table_lines(chosen, gains, rows, mix_vs_single, teachers):
  """The Markdown report: the selection's cells, then the confirmation's rows."""
  out = []
  if gains:
    out += ["Selection (held-out training shard %s; k=%d NeXtVLAD, paired gain in GAP "
            "over the student alone, mean ± standard error over seeds):" % (
                SELECT_HELD_OUT, K), "",
            "| option | " + " | ".join("from %s" % t for t in teachers) + " | mean |",
            "|---|" + "---|" * (len(teachers) + 1)]
    for name, by_teacher in gains.items():
      means = [by_teacher[t][0] for t in teachers]
      out.append("| %s | %s | %+.4f |" % (
          name, " | ".join(format_paired(by_teacher[t]) for t in teachers),
          sum(means) / len(means)))
    out += ["", "Chosen: %s" % chosen, ""]
  if rows:
    label = {name: lab for name, lab, _ in student_table.STUDENTS}
    out += ["Confirmation (demo validation videos; k=%d; distilled minus alone, same "
            "seed):" % K, "",
            "| student | teacher | option | GAP alone | GAP distilled | paired gain | "
            ">= 2 SE |", "|---|---|---|---|---|---|---|"]
    for student, teacher, name, alone, kd, stats in rows:
      out.append("| %s | %s | %s | %.4f | %.4f | %s | %s |" % (
          label[student], "MixNeXtVLAD" if teacher == "mix" else "NeXtVLAD", name,
          sum(alone.values()) / len(alone), sum(kd.values()) / len(kd), format_paired(stats),
          _verdict(stats)))
    if mix_vs_single:
      out += ["", "NeXtVLAD k=%d distilled from MixNeXtVLAD minus from NeXtVLAD (%s): %s"
              % (K, chosen, format_paired(mix_vs_single))]
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--demo_dir", default="demo_out",
                      help="output directory of tools/demo.py (data, teacher, its cache)")
  parser.add_argument("--phases", default="select,confirm")
  parser.add_argument("--select_seeds", default="0,1,2")
  parser.add_argument("--confirm_seeds", default="10,11,12,13,14")
  parser.add_argument("--options", default=",".join(OPTIONS),
                      help="the cells the selection screens (the recipe always)")
  parser.add_argument("--option", default="",
                      help="the option to confirm (default: the selection's choice)")
  parser.add_argument("--students", default=",".join(CONFIRM_STUDENTS))
  parser.add_argument("--mix_number", type=int, default=3,
                      help="branches of the MixNeXtVLAD teacher (0: no such teacher)")
  parser.add_argument("--scale", type=float, default=1.0, help="scales training steps")
  parser.add_argument("--model_flags", default="",
                      help="train.py flags that override the demo's model and training "
                      "flags (as given to tools/demo.py)")
  args = parser.parse_args(argv)
  phases = set(p for p in args.phases.split(",") if p)
  if not phases or phases - {"select", "confirm"}:
    parser.error("--phases: select, confirm or both")
  if "select" not in phases and not args.option:
    parser.error("--phases=confirm needs --option (the selection's choice)")
  if args.option:
    option_flags(args.option)
  options = ["recipe"] + [o for o in args.options.split(",") if o and o != "recipe"]
  for name in options:
    option_flags(name)
  students = args.students.split(",")
  unknown = sorted(set(students) - {name for name, _, _ in student_table.STUDENTS})
  if unknown:
    parser.error("--students: unknown student %s" % unknown[0])
  model_flags = shlex.split(args.model_flags)
  base_flags = demo.MODEL_FLAGS + model_flags
  teacher_dir, runner, runs_dir, steps = demo.table_setup(
      "kd_table", args.demo_dir, 0, "kd_runs", args.scale)
  teachers = TEACHERS if args.mix_number else TEACHERS[:1]
  chosen, gains, records = args.option, {}, []
  if "select" in phases:
    study = Study(runner, select_data(args.demo_dir), os.path.join(runs_dir, "select"),
                  steps, base_flags, model_flags, args.mix_number)
    selected, gains = select(study, [int(s) for s in args.select_seeds.split(",")],
                             teachers, options)
    chosen = chosen or selected
    records += [dict(r, phase="select") for r in study.records]
  rows, mix_vs_single = [], None
  if "confirm" in phases:
    study = Study(runner, args.demo_dir, os.path.join(runs_dir, "confirm"), steps,
                  base_flags, model_flags, args.mix_number,
                  {"nextvlad": (teacher_dir, demo.teacher_cache_dir(args.demo_dir, 0))})
    rows, mix_vs_single = confirm(study, [int(s) for s in args.confirm_seeds.split(",")],
                                  chosen, students)
    records += [dict(r, phase="confirm") for r in study.records]
  lines = table_lines(chosen, gains, rows, mix_vs_single, teachers)
  text = "\n".join(lines)
  demo.write_atomically(os.path.join(args.demo_dir, "kd_table.md"), text + "\n")
  demo.write_atomically(os.path.join(args.demo_dir, "kd_table.json"), json.dumps(
      {"chosen": chosen, "selection": gains, "records": records,
       "confirmation": [{"student": r[0], "teacher": r[1], "option": r[2],
                         "paired_gain": r[5]} for r in rows],
       "mix_minus_single": mix_vs_single}, indent=1))
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
