"""The paper's Table 1 for a model on given data: GAP of k-frame students by how their
frames are picked, next to the distilled student.

  python tools/frame_selection_table.py --demo_dir=demo_out [--ks=6,10,15,20,30]
      [--rows=uniform,random,...] [--scale=1.0]

Rows: Uniform-k, Random-k, First-k, Middle-k, Last-k, First-Middle-Last-k (students
trained alone on hard labels with that --frame_sampling) and the KD student (uniform
frames, distilled offline from the demo's teacher through the demo's teacher cache,
shared by every k); columns: k. Every cell is a train.py run followed by
eval.py --run_once, with the demo's model, data and training settings (tools/demo.py).
Prints a Markdown table and writes it to <demo_dir>/frame_selection_table.md.
"""

import argparse
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from tools import demo  # noqa: E402

ROWS = [("Uniform-k", "uniform"), ("Random-k", "random"), ("First-k", "first"),
        ("Middle-k", "middle"), ("Last-k", "last"),
        ("First-Middle-Last-k", "first_middle_last")]


def cell(runner, args, base, kind_flags, suffix, steps):
  """Trains one student (unless its run is complete) and returns its validation GAP."""
  return demo.train_and_evaluate(runner, args.demo_dir, base, suffix, kind_flags,
                                 args.seed, steps, shlex.split(args.model_flags))["gap"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--demo_dir", default="demo_out",
                      help="output directory of tools/demo.py (data and teacher run)")
  parser.add_argument("--ks", default="6,10,15,20,30")
  parser.add_argument("--rows", default=",".join(strategy for _, strategy in ROWS),
                      help="comma-separated --frame_sampling strategies of the rows")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--scale", type=float, default=1.0, help="scales training steps")
  parser.add_argument("--model_flags", default="",
                      help="train.py flags that override the demo's model and training "
                      "flags (as given to tools/demo.py)")
  args = parser.parse_args(argv)
  ks = [int(k) for k in args.ks.split(",")]
  strategies = args.rows.split(",")
  unknown = sorted(set(strategies) - {strategy for _, strategy in ROWS})
  if unknown:
    parser.error("--rows: unknown strategy %s" % unknown[0])
  rows = [(label, strategy) for label, strategy in ROWS if strategy in strategies]
  teacher_dir, runner, table_dir, steps = demo.table_setup(
      "frame_selection_table", args.demo_dir, args.seed, "table_runs", args.scale)
  gaps = {}
  for label, strategy in rows:
    for k in ks:
      base = os.path.join(table_dir, "%s_s%d" % (strategy, args.seed))
      gaps[(label, k)] = cell(runner, args, base, [
          "--model_type=student", "--k_frame=%d" % k, "--frame_sampling=" + strategy],
          "_student_k_%d" % k, steps["student"])
      print("%-20s k=%-3d GAP %.4f" % (label, k, gaps[(label, k)]), flush=True)
  # The KD row distils offline: the demo teacher's outputs are computed once into a
  # cache that the students of every k read (train.py --teacher_cache).
  kd_flags = ["--model_type=KD", "--teacher_checkpoint=" + teacher_dir,
              "--teacher_cache=" + demo.teacher_cache_dir(args.demo_dir, args.seed)]
  for k in ks:
    base = os.path.join(table_dir, "kd_s%d" % args.seed)
    gaps[("KD student", k)] = cell(runner, args, base, kd_flags + ["--k_frame=%d" % k],
                                   "_KD_k_%d" % k, steps["KD"])
    print("%-20s k=%-3d GAP %.4f" % ("KD student", k, gaps[("KD student", k)]),
          flush=True)
  teacher_gap = demo.evaluate(runner, teacher_dir, os.path.join(
      args.demo_dir, "data", "frame", "validate*.tfrecord"))["gap"]
  lines = ["Teacher (all frames): GAP %.4f" % teacher_gap, "",
           "| frames picked | " + " | ".join("k=%d" % k for k in ks) + " |",
           "|---|" + "---|" * len(ks)]
  for label in [label for label, _ in rows] + ["KD student"]:
    lines.append("| %s | %s |" % (label, " | ".join("%.4f" % gaps[(label, k)]
                                                     for k in ks)))
  table = "\n".join(lines)
  with open(os.path.join(args.demo_dir, "frame_selection_table.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
