"""Shared benchmark helpers: generated data, child processes, timing, peak memory,
FLOP counting. TensorFlow is imported only by the helpers that need it, so numpy-only
benchmarks (bench_metrics) measure their memory without it.
"""
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def generated_data(directory, videos, num_classes=3862, seed=0, shards=4, **knobs):
  """Frame-level train shards of `videos` generated videos (reused when present).

  Returns the glob pattern of the shards.
  """
  from tools import make_synthetic_yt8m
  pattern = os.path.join(directory, "frame", "train*.tfrecord")
  stamp = os.path.join(directory, "bench_%d_%d_%d.done" % (videos, num_classes, seed))
  if not os.path.exists(stamp):
    make_synthetic_yt8m.write_dataset(directory, splits=("train",), train_videos=videos,
                                      num_classes=num_classes, seed=seed, shards=shards,
                                      video_level=False, **knobs)
    open(stamp, "w").close()
  return pattern


def run_child(script, args):
  """Runs `python script args` -> the JSON object its last stdout line prints.

  A failing child stops the benchmark with its command and the end of its stderr.
  """
  command = [sys.executable, os.path.abspath(script)] + list(args)
  child = subprocess.run(command, capture_output=True, text=True)
  if child.returncode != 0:
    tail = "\n".join(child.stderr.strip().splitlines()[-15:])
    raise SystemExit("benchmark child failed (exit %d): %s\n%s"
                     % (child.returncode, " ".join(command), tail))
  return json.loads(child.stdout.strip().splitlines()[-1])


def peak_rss_mb():
  """Peak resident memory of this process so far, in MB.

  VmHWM restarts at exec; ru_maxrss (the fallback) would keep a forked parent's peak.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_runs(session, fetches, runs, warmup=2, feed_dict=None):
  """Seconds per session.run of `fetches`, after `warmup` untimed runs."""
  for _ in range(warmup):
    session.run(fetches, feed_dict)
  start = time.time()
  for _ in range(runs):
    session.run(fetches, feed_dict)
  return (time.time() - start) / runs


def float_ops(graph):
  """FLOPs of one run of `graph` as counted by tf.compat.v1.profiler (static shapes)."""
  import tensorflow as tf
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def matmul_flops_per_second(session_config=None, size=4096, runs=10):
  """FLOP/s of a large fp32 matmul on this machine (the roofline for a dense model)."""
  import tensorflow as tf
  tf1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    a = tf.Variable(tf.random.normal([size, size]))
    b = tf.Variable(tf.random.normal([size, size]))
    product = tf.reduce_sum(tf.matmul(a, b))
    with tf1.Session(config=session_config) as sess:
      sess.run(tf1.global_variables_initializer())
      seconds = time_runs(sess, product, runs)
  return 2.0 * size ** 3 / seconds


def table(rows, headers):
  """A Markdown table of `rows` (lists of cells) under `headers`."""
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def cpu_line():
  """'CPU: <model>; AVX-512 yes/no; AVX512_BF16 yes/no; AMX yes/no' (from /proc/cpuinfo),
  printed first by every benchmark: speeds differ by CPU class."""
  model, flags = "unknown", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and model == "unknown":
          model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
          flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  yes = lambda present: "yes" if present else "no"
  isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
  return "CPU: %s; AVX-512 %s; AVX512_BF16 %s; AMX %s; %d cores%s" % (
      model, yes("avx512f" in flags), yes("avx512_bf16" in flags),
      yes("amx_tile" in flags), os.cpu_count() or 0,
      "; ONEDNN_MAX_CPU_ISA=" + isa if isa else "")
