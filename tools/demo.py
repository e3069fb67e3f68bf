"""The recipe end to end on generated data: teacher, k-frame baseline, distilled student.

The distilled student learns offline: the teacher's outputs are computed once into a
teacher cache (train.py --teacher_cache) that later students share
(tools/frame_selection_table.py, tools/student_table.py).

  python tools/demo.py --out_dir=demo_out [--seeds=0] [--scale=1.0] [--model_flags=...]

Everything goes through the same commands a user runs (tools/make_synthetic_yt8m.py,
train.py, eval.py, inference.py), only at demo sizes. Writes under --out_dir:
  data/                 the generated YouTube-8M-layout shards
  runs/demo_s<seed>_*   the three run directories (checkpoints, events, validation.jsonl)
  teacher_cache_s<seed>/  the teacher's outputs for every training video
  predictions.csv       Kaggle CSV of the distilled student on the validation videos
  exports/KD_s<seed>_dynamic/  the distilled student exported (export_model.py
                        --tflite=dynamic: model.tflite, int8 weights, and its sidecar),
                        evaluated and timed as a file (eval.py and inference.py
                        --tflite_model)
  results.md            the results table (also printed)
  results.json          the table's records (eval metrics, videos/s, GFLOPs per row)
  gap_vs_step.png       validation GAP of the three runs against training steps
  commands.txt          every command that was run, in order
With several --seeds the table also gives the spread over seeds.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

K = 6
# Generated data in the YouTube-8M layout: 24 verticals, long-tailed labels, scenes;
# 200 classes so that 2000 training videos give the teacher ~30 examples per class.
DATA_FLAGS = ["--num_classes=200"]
TRAIN_VIDEOS, VALIDATE_VIDEOS = 2000, 1000
# The documented recipe at the documented batch (80) and hidden size (2048), so its
# loss weights (0.01, 0.001, summed over the batch) apply unchanged; a smaller VLAD
# (32 clusters, expansion 1) keeps the teacher's 300-frame passes affordable.
MODEL_FLAGS = ["--model=NeXtVLADModel", "--num_classes=200",
               "--nextvlad_cluster_size=32", "--nextvlad_hidden_size=2048",
               "--groups=8", "--expansion=1", "--gating_reduction=8", "--drop_rate=0.5",
               "--video_level_classifier_model=LogisticModel", "--l2_penalty=1e-5",
               # No PCA scaling: generated rgb is a random projection of a latent space,
               # not PCA components, so YouTube-8M's eigenvalues would only weight its
               # dimensions arbitrarily (0.12 to 3.8). On real data keep the default.
               "--pca_eigenvals="]
TRAIN_FLAGS = ["--batch_size=80", "--base_learning_rate=0.002", "--learning_rate_decay=0.7",
               "--learning_rate_decay_examples=6400", "--num_epochs=1000",
               "--num_readers=2", "--log_every_n_steps=70"]
STEPS = {"teacher": 280, "student": 280, "KD": 280}
VALIDATE_EVERY = 70
RUN_KINDS = [("teacher", ["--model_type=teacher", "--k_frame=300"], "_teacher"),
             ("student", ["--model_type=teacher", "--k_frame=%d" % K], "_student_k_%d" % K),
             ("KD", ["--model_type=KD", "--k_frame=%d" % K], "_KD_k_%d" % K)]
LABELS = {"teacher": "NeXtVLAD teacher", "student": "student baseline (hard labels)",
          "KD": "distilled student (L_CE + 0.01 L_pred + 0.001 L_rep)",
          "KD_dynamic": "distilled student, dynamic int8 file"}
# The table's rows: the runs, then the distilled student served from its --tflite file.
TFLITE_MODE = "dynamic"
ROW_KINDS = [kind for kind, _, _ in RUN_KINDS] + ["KD_dynamic"]
# eval.py --tflite_model's metric line: "eval (dynamic): global_step N | ... GAP: ..."
EVAL_LINE = re.compile(r"^eval \((\w+)\): (.*)$", re.M)


def import_tensorflow_quietly():
  """Imports TensorFlow with its start-up log lines (C++, on fd 2) silenced."""
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import tensorflow as tf
  finally:
    os.dup2(saved, 2)
    os.close(devnull)
    os.close(saved)
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  return tf


class Runner(object):
  """Runs the project's CLIs, logging each command under out_dir.

  fork: run each command in a child forked from one process that imported TensorFlow
  and the project once (tools/forked_cli.py), which saves ~5 s of imports per command;
  False: an interpreter of its own for each.
  """

  def __init__(self, out_dir, fork=True):
    self.out_dir = out_dir
    self.log = open(os.path.join(out_dir, "commands.txt"), "a")
    self.fork = fork
    self.server = None

  def run(self, script, args, quiet=False):
    """Runs `python <script> args` (script relative to the repository); its stdout.
    A failure stops the demo with the end of its output."""
    start = time.time()
    process = self.attempt(script, args)
    if process.returncode != 0:
      sys.stderr.write(process.stdout[-2000:] + process.stderr[-3000:])
      raise SystemExit("demo: %s failed (exit %d)" % (script, process.returncode))
    if not quiet:
      print("  %s done in %.0f s" % (script, time.time() - start), flush=True)
    return process.stdout

  def attempt(self, script, args):
    """Runs `python <script> args`, logged; its CompletedProcess, whatever its exit."""
    command = [sys.executable, os.path.join(ROOT, script)] + list(args)
    self.log.write(" ".join(shlex.quote(c) for c in command[1:]) + "\n")
    self.log.flush()
    return self.execute(script, list(args))

  def execute(self, script, args):
    """The CompletedProcess of `python <script> args`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if self.fork:
      from tools import forked_cli
      if self.server is None or not self.server.alive():
        self.server = forked_cli.Server(env)
      return self.server.run(script, args, env=env)
    return subprocess.run([sys.executable, os.path.join(ROOT, script)] + args,
                          capture_output=True, text=True, env=env)


def generate_data(runner, data_dir, scale):
  if os.path.exists(os.path.join(data_dir, "dataset_info.json")):
    print("data: reusing %s" % data_dir)
    return
  print("data: generating %d train / %d validate videos" % (
      TRAIN_VIDEOS * scale, VALIDATE_VIDEOS * scale), flush=True)
  runner.run("tools/make_synthetic_yt8m.py", [
      "--output_dir=" + data_dir, "--train_videos=%d" % int(TRAIN_VIDEOS * scale),
      "--validate_videos=%d" % int(VALIDATE_VIDEOS * scale), "--shards=4", "--seed=0",
      "--no_video_level"] + DATA_FLAGS)


def write_atomically(path, text):
  """Writes text to path through file_io.atomic_output: never half a file."""
  import_tensorflow_quietly()  # file_io imports TensorFlow
  import file_io
  with file_io.atomic_output(path) as f:
    f.write(text)


def read_jsonl(path):
  """Records of a JSON-lines file (none when it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def finished(run_dir, steps):
  """True when run_dir holds a checkpoint of step `steps` (a completed earlier run)."""
  records = read_jsonl(os.path.join(run_dir, "validation.jsonl"))
  return bool(records) and records[-1]["step"] == steps and os.path.exists(
      os.path.join(run_dir, "model.ckpt-%d.index" % steps))


def teacher_cache_dir(out_dir, seed):
  """Where the demo keeps the outputs of its seed's teacher (train.py --teacher_cache)."""
  return os.path.join(out_dir, "teacher_cache_s%d" % seed)


def train_runs(runner, data_dir, runs_dir, seed, scale, fresh, model_flags=()):
  """The three train.py runs of the documented recipe; returns {kind: run dir}.

  The KD run distils offline from a teacher cache next to runs_dir (built by its first
  step, reused while the teacher stays the same).
  model_flags: train.py flags after MODEL_FLAGS and TRAIN_FLAGS (they override them).
  """
  base = os.path.join(runs_dir, "demo_s%d" % seed)
  cache = teacher_cache_dir(os.path.dirname(runs_dir), seed)
  train_pattern = os.path.join(data_dir, "frame", "train*.tfrecord")
  validate_pattern = os.path.join(data_dir, "frame", "validate*.tfrecord")
  run_dirs = {}
  for kind, kind_flags, suffix in RUN_KINDS:
    steps = max(int(STEPS[kind] * scale), 2)
    run_dirs[kind] = base + suffix
    if not fresh and finished(run_dirs[kind], steps):
      print("train: reusing the finished run %s" % run_dirs[kind])
      continue
    print("train: %s (seed %d, %d steps)" % (LABELS[kind], seed, steps), flush=True)
    if kind == "teacher":  # a new teacher: its old outputs are stale
      shutil.rmtree(cache, ignore_errors=True)
    if kind == "KD":
      kind_flags = kind_flags + ["--teacher_cache=" + cache]
    runner.run("train.py", MODEL_FLAGS + TRAIN_FLAGS + list(model_flags) + kind_flags + [
        "--train_data_pattern=" + train_pattern, "--eval_data_pattern=" + validate_pattern,
        "--train_dir=" + base, "--seed=%d" % seed, "--max_steps=%d" % steps,
        "--export_model_steps=%d" % max(1, min(VALIDATE_EVERY, steps)),
        "--start_new_model=True"])
  return run_dirs


def run_config(run_dir):
  """(the run's GraphConfig as eval.py reads it, the run_dir module)."""
  tf1 = import_tensorflow_quietly().compat.v1
  import run_dir as run_dirs
  if not tf1.flags.FLAGS.is_parsed():
    tf1.flags.FLAGS(["demo"])  # defaults for what an older run did not record
  return run_dirs.load(run_dir), run_dirs


def evaluate(runner, run_dir, validate_pattern):
  """eval.py --run_once on the run's latest checkpoint; returns its eval.jsonl record
  (the newest one already there when that checkpoint was evaluated on these data, so a
  run scored on two splits is evaluated once on each)."""
  path = os.path.join(run_dir, "eval.jsonl")
  records = read_jsonl(path)
  if records:
    cfg, run_dirs = run_config(run_dir)
    checkpoint = run_dirs.find_checkpoint(run_dir)
    for record in reversed(records):
      if (checkpoint and record.get("checkpoint") == os.path.basename(checkpoint) and
          record.get("data") == validate_pattern and not record.get("bf16") and
          record.get("role") == cfg.role()):
        return record
  runner.run("eval.py", ["--train_dir=" + run_dir, "--eval_data_pattern=" +
                         validate_pattern, "--run_once", "--batch_size=100"])
  return read_jsonl(path)[-1]


def train_and_evaluate(runner, demo_dir, base, suffix, flags, seed, steps, model_flags=()):
  """Trains one run of the demo's model, data and training settings (unless it was
  evaluated before), evaluates it with eval.py; returns its eval.jsonl record.

  base: --train_dir; suffix: the run-kind suffix train.py adds; flags: the run's own
  train.py flags (model type, k, teacher, ...), after model_flags and the demo's.
  """
  run_dir = base + suffix
  validate = os.path.join(demo_dir, "data", "frame", "validate*.tfrecord")
  if not os.path.exists(os.path.join(run_dir, "eval.jsonl")):
    runner.run("train.py", MODEL_FLAGS + TRAIN_FLAGS + list(model_flags) + list(flags) + [
        "--train_data_pattern=" + os.path.join(demo_dir, "data", "frame",
                                               "train*.tfrecord"),
        "--train_dir=" + base, "--seed=%d" % seed, "--max_steps=%d" % steps,
        "--export_model_steps=%d" % steps, "--start_new_model=True"], quiet=True)
  return evaluate(runner, run_dir, validate)


def table_setup(tool, demo_dir, seed, table_dir_name, scale=1.0):
  """What a table of runs on the demo's data needs: (its teacher run directory, a
  Runner logging into demo_dir, the directory of the table's runs, the demo's steps
  per run kind times `scale`, at least 2). Exits naming `tool` when demo_dir has no
  teacher of that seed."""
  teacher_dir = os.path.join(demo_dir, "runs", "demo_s%d_teacher" % seed)
  if not os.path.isdir(teacher_dir):
    raise SystemExit("%s: no teacher run at %s; run tools/demo.py --out_dir=%s first"
                     % (tool, teacher_dir, demo_dir))
  steps = {kind: max(int(n * scale), 2) for kind, n in STEPS.items()}
  return teacher_dir, Runner(demo_dir), os.path.join(demo_dir, table_dir_name), steps


def inference_rate(runner, run_dir, validate_pattern, output_file, tflite_file=None):
  """inference.py over the validation videos (of the run's checkpoint, or of
  tflite_file with --tflite_model); returns its videos/s."""
  model = (["--tflite_model=" + tflite_file] if tflite_file
           else ["--train_dir=" + run_dir])
  out = runner.run("inference.py", model + ["--input_data_pattern=" + validate_pattern,
                                            "--output_file=" + output_file,
                                            "--batch_size=100"])
  rates = re.findall(r"(\d+) videos, ([0-9.]+) videos/s", out)
  return float(rates[-1][1])


def export_tflite(runner, run_dir, export_dir, mode, calibration_pattern=""):
  """export_model.py --tflite=mode of the run's latest checkpoint into export_dir
  (kept when an earlier call exported that checkpoint in that mode there).

  Returns:
    (the path of model.tflite, None), or (None, export_model.py's one-line error) when
    the model does not convert (TensorFlow Lite's refusal, e.g. of int8).
  """
  path = os.path.join(export_dir, "model.tflite")
  sidecar = read_json(path + ".json")
  cfg, run_dirs = run_config(run_dir)
  checkpoint = run_dirs.find_checkpoint(run_dir)
  if (sidecar and os.path.exists(path) and checkpoint and sidecar.get("quantization") ==
      mode and sidecar.get("checkpoint") == os.path.basename(checkpoint)):
    return path, None
  args = ["--train_dir=" + run_dir, "--output_dir=" + export_dir, "--tflite=" + mode]
  if calibration_pattern:
    args.append("--calibration_data_pattern=" + calibration_pattern)
  start = time.time()
  process = runner.attempt("export_model.py", args)
  if process.returncode == 2:  # a one-line UsageError: the model does not convert
    lines = process.stderr.strip().splitlines()
    return None, lines[-1] if lines else "export_model.py failed"
  if process.returncode != 0:
    sys.stderr.write(process.stdout[-2000:] + process.stderr[-3000:])
    raise SystemExit("demo: export_model.py failed (exit %d)" % process.returncode)
  print("  export_model.py --tflite=%s done in %.0f s" % (mode, time.time() - start),
        flush=True)
  return path, None


def read_json(path):
  """The JSON object of a file, or None when it does not exist or is not JSON."""
  try:
    with open(path) as f:
      return json.load(f)
  except (IOError, OSError, ValueError):
    return None


def evaluate_tflite(runner, tflite_file, validate_pattern):
  """eval.py --tflite_model over the validation videos (it writes nothing); returns
  its metric line as a record: quantization, gap, map_all_classes,
  map_labelled_classes, hit_at_one, perr, loss."""
  out = runner.run("eval.py", ["--tflite_model=" + tflite_file, "--eval_data_pattern=" +
                               validate_pattern, "--batch_size=100"])
  return parse_eval_line(out)


def parse_eval_line(out):
  """The last `eval (<quantization>): global_step N | Avg_Hit@1: ... | GAP: ...` line
  of eval.py --tflite_model's stdout as a record (see evaluate_tflite)."""
  lines = EVAL_LINE.findall(out)
  if not lines:
    raise SystemExit("demo: eval.py --tflite_model printed no metric line:\n"
                     + out[-2000:])
  quantization, line = lines[-1]
  fields = dict(part.strip().split(": ", 1) for part in line.split("|")
                if ": " in part)
  keys = {"gap": "GAP", "map_all_classes": "MAP_all_classes",
          "map_labelled_classes": "MAP_labelled_classes", "hit_at_one": "Avg_Hit@1",
          "perr": "Avg_PERR", "loss": "Avg_Loss"}
  record = {key: float(fields[name]) for key, name in keys.items()}
  record["quantization"] = quantization
  return record


def flops_per_video(run_dir):
  """Inference FLOPs per video of the run's model, counted from its graph."""
  tf = import_tensorflow_quietly()
  import inference_graph
  tf1 = tf.compat.v1
  cfg = run_config(run_dir)[0].replace(frame_packing="never")  # static shapes
  batch_size = 8
  graph = tf.Graph()
  with graph.as_default():
    batch = {"video_ids": tf.fill([batch_size], "id"),
             "video_matrix": tf.zeros([batch_size, cfg.max_frames,
                                       sum(cfg.feature_sizes)], tf.uint8),
             "num_frames": tf.fill([batch_size], cfg.max_frames)}
    inference_graph.top_k_outputs(cfg, batch, cfg.role(), 20, with_labels=False)
    options = tf1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf1.profiler.profile(graph, options=options).total_float_ops / batch_size


def plot(run_dirs_by_seed, path):
  """GAP vs step of every run from validation.jsonl; False when matplotlib is missing."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  colors = {"teacher": "tab:blue", "student": "tab:red", "KD": "tab:green"}
  figure, axes = plt.subplots(figsize=(7, 4.5))
  for seed, run_dirs in sorted(run_dirs_by_seed.items()):
    for kind, run_dir in run_dirs.items():
      records = read_jsonl(os.path.join(run_dir, "validation.jsonl"))
      axes.plot([r["step"] for r in records], [r["gap"] for r in records],
                color=colors[kind], alpha=1.0 if seed == min(run_dirs_by_seed) else 0.45,
                label=LABELS[kind] if seed == min(run_dirs_by_seed) else None,
                marker="o", markersize=3)
  axes.set_xlabel("training step (batch 80)")
  axes.set_ylabel("validation GAP")
  axes.set_title("Teacher on 300 frames vs students on %d frames (generated data)" % K)
  axes.grid(alpha=0.3)
  axes.legend(loc="lower right")
  figure.tight_layout()
  tmp = path + ".tmp.png"
  figure.savefig(tmp, dpi=110)
  os.replace(tmp, path)
  return True


def served_file_row(runner, kd_dir, out_dir, seed, validate_pattern, gflops):
  """The distilled student exported as a TFLITE_MODE file, evaluated (eval.py) and
  timed (inference.py) through --tflite_model as its checkpoint was; its table record:
  eval.py's metrics, videos_per_second, gflops (the model's, as its checkpoint's),
  file and file_bytes."""
  print("export: %s (seed %d)" % (LABELS["KD_dynamic"], seed), flush=True)
  path, error = export_tflite(runner, kd_dir, os.path.join(
      out_dir, "exports", "KD_s%d_%s" % (seed, TFLITE_MODE)), TFLITE_MODE)
  if error:
    raise SystemExit("demo: the distilled student does not convert: " + error)
  record = evaluate_tflite(runner, path, validate_pattern)
  record["videos_per_second"] = inference_rate(
      runner, None, validate_pattern, os.path.join(
          out_dir, "predictions_KD_%s_s%d.csv" % (TFLITE_MODE, seed)), tflite_file=path)
  record.update(gflops=gflops, file=path, file_bytes=os.path.getsize(path))
  return record


def results_table(rows_by_kind):
  """Markdown table: one row per model kind, mean (and spread) over seeds."""
  lines = ["| model | frames seen | GAP | mAP (all classes) | Hit@1 | PERR | GFLOP/video | "
           "inference videos/s |", "|---|---|---|---|---|---|---|---|"]
  for kind in ROW_KINDS:
    rows = rows_by_kind[kind]

    def cell(key, fmt="%.4f"):
      values = [r[key] for r in rows]
      mean = sum(values) / len(values)
      if len(values) == 1:
        return fmt % mean
      return (fmt + " ± " + fmt) % (mean, (max(values) - min(values)) / 2)
    lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
        LABELS[kind], "300" if kind == "teacher" else str(K), cell("gap"),
        cell("map_all_classes"),
        cell("hit_at_one"), cell("perr"), cell("gflops", "%.3f"),
        cell("videos_per_second", "%.0f")))
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", default="demo_out")
  parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
  parser.add_argument("--scale", type=float, default=1.0,
                      help="scales videos and steps (the smoke test uses ~0.01)")
  parser.add_argument("--fresh", action="store_true",
                      help="retrain runs that an earlier demo finished")
  parser.add_argument("--model_flags", default="",
                      help="train.py flags that override the demo's model and training "
                      "flags, e.g. a smaller model for a quick look (the smoke test's)")
  parser.add_argument("--no_fork", action="store_true",
                      help="run every command in an interpreter of its own (default: "
                      "forked from one that imported TensorFlow once)")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  out_dir = os.path.abspath(args.out_dir)
  data_dir = os.path.join(out_dir, "data")
  runs_dir = os.path.join(out_dir, "runs")
  os.makedirs(runs_dir, exist_ok=True)
  runner = Runner(out_dir, fork=not args.no_fork)
  start = time.time()
  generate_data(runner, data_dir, args.scale)
  validate_pattern = os.path.join(data_dir, "frame", "validate*.tfrecord")

  rows_by_kind = {kind: [] for kind in ROW_KINDS}
  run_dirs_by_seed = {}
  for seed in seeds:
    run_dirs = train_runs(runner, data_dir, runs_dir, seed, args.scale, args.fresh,
                          shlex.split(args.model_flags))
    run_dirs_by_seed[seed] = run_dirs
    for kind, run_dir in run_dirs.items():
      print("evaluate: %s (seed %d)" % (LABELS[kind], seed), flush=True)
      record = evaluate(runner, run_dir, validate_pattern)
      csv = os.path.join(out_dir, "predictions.csv" if kind == "KD" and seed == seeds[0]
                         else "predictions_%s_s%d.csv" % (kind, seed))
      record["videos_per_second"] = inference_rate(runner, run_dir, validate_pattern, csv)
      record["gflops"] = flops_per_video(run_dir) / 1e9
      rows_by_kind[kind].append(record)
    rows_by_kind["KD_dynamic"].append(served_file_row(
        runner, run_dirs["KD"], out_dir, seed, validate_pattern,
        rows_by_kind["KD"][-1]["gflops"]))

  table = results_table(rows_by_kind)
  header = ("Generated data: %d train / %d validate videos; seeds %s; total %.1f min\n\n"
            % (TRAIN_VIDEOS * args.scale, VALIDATE_VIDEOS * args.scale, args.seeds,
               (time.time() - start) / 60))
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(header + table + "\n")
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump({"seeds": seeds, "scale": args.scale,
               "rows": [{"kind": kind, "label": LABELS[kind],
                         "records": rows_by_kind[kind]} for kind in ROW_KINDS]},
              f, indent=1)
  print()
  print(header + table)
  if plot(run_dirs_by_seed, os.path.join(out_dir, "gap_vs_step.png")):
    print("\nplot: %s" % os.path.join(out_dir, "gap_vs_step.png"))
  else:
    print("\n(matplotlib not installed: no plot)")
  print("predictions: %s" % os.path.join(out_dir, "predictions.csv"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
