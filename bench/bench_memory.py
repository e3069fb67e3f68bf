"""Resident memory of train.py over a long run of small steps.

  python bench/bench_memory.py [--steps=1000] [--every=100] [--validate] [train.py flags]

Runs train.py on a tiny NeXtVLAD (generated shards) with a checkpoint every --every
steps and reads the process's VmRSS from /proc/<pid>/status whenever it prints its
step line (every --every steps). With --validate it also runs the periodic validation
pass (--eval_data_pattern) at every checkpoint. Prints the series and the growth from
step 200 to the last step: flat memory means no graph is built inside the loop (the
graph is finalized; tests/test_reliability.py asserts that).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import common

TINY = ["--nextvlad_cluster_size=4", "--nextvlad_hidden_size=16", "--groups=2",
        "--expansion=1", "--gating_reduction=4", "--num_classes=20"]


def rss_mb(pid):
  """VmRSS of process `pid` in MB (None once it has exited)."""
  try:
    with open("/proc/%d/status" % pid) as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    return None
  return None


def main():
  print(common.cpu_line(), flush=True)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--every", type=int, default=100)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--checkpoint_every", type=int, default=None,
                      help="--export_model_steps (default: --every)")
  parser.add_argument("--validate", action="store_true")
  parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(),
                                                         "yt8m_bench_memory"))
  args, train_flags = parser.parse_known_args()

  pattern = common.generated_data(os.path.join(args.work_dir, "data"), 64, num_classes=20,
                                  shards=2, num_verticals=4, min_frames=10,
                                  max_frames=60)
  command = [sys.executable, os.path.join(common.ROOT, "train.py"),
             "--train_data_pattern=" + pattern,
             "--train_dir=" + os.path.join(args.work_dir, "run"),
             "--start_new_model=True", "--max_steps=%d" % args.steps,
             "--num_epochs=1000000", "--batch_size=%d" % args.batch_size,
             "--export_model_steps=%d" % (args.checkpoint_every or args.every),
             "--log_every_n_steps=%d" % args.every, "--num_readers=2", "--seed=1"] + \
      TINY + train_flags
  if args.validate:
    command.append("--eval_data_pattern=" + pattern)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=common.ROOT)
  start = time.time()
  process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1)
  series = []  # (step, RSS MB, seconds since start)
  output = []
  for line in process.stdout:
    output.append(line)
    step = None
    if line.startswith("Starting at step"):
      step = int(line.split()[3].rstrip("."))
    elif line.startswith("step ") and "| loss" in line:
      step = int(line.split()[1])
    if step is not None:
      rss = rss_mb(process.pid)
      if rss is not None:
        series.append((step, rss, time.time() - start))
  process.wait()
  if process.returncode != 0:
    sys.stdout.write("".join(output[-30:]))
    raise SystemExit("train.py failed (%d)" % process.returncode)

  print("train.py, tiny NeXtVLAD, batch %d, %d steps, checkpoint%s every %d steps %s"
        % (args.batch_size, args.steps, " and validation" if args.validate else "",
           args.checkpoint_every or args.every, " ".join(train_flags)))
  print(common.table([[s, "%.1f" % r, "%.1f" % t] for s, r, t in series],
                     ["step", "VmRSS MB", "seconds"]))
  by_step = dict((s, r) for s, r, _ in series)
  first = min([s for s in by_step if s >= 200] or [series[0][0]])
  last = series[-1][0]
  growth = by_step[last] - by_step[first]
  print("growth from step %d to %d: %+.1f MB (%+.1f KB per step)"
        % (first, last, growth, growth * 1024.0 / max(last - first, 1)))


if __name__ == "__main__":
  main()
