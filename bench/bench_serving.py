"""Serving the documented-config students and teacher: float32 checkpoint, --bf16, and
each export_model.py --tflite file, end to end as inference.py runs them.

  python bench/bench_serving.py [--cases=student_k6,student_k30,teacher]
      [--batch_sizes=80,1024] [--repeats=2] [--seconds=12] [--quick]

Each case (the documented NeXtVLAD config, random weights: a 1-step train.py run on
generated data) is exported with export_model.py --tflite=float32, dynamic and int8
(int8 calibrated on the generated train shards). Then, in alternation within each
repeat, inference.py itself runs as a child process over generated shards in the
YouTube-8M layout (symlinked copies of one set, enough for about --seconds of
steady state), once per serving mode and batch size:
  checkpoint  --train_dir=<run>          (float32 session)
  bf16        --train_dir=<run> --bf16
  tfl_<mode>  --tflite_model=<export>/model.tflite  (--tflite_threads default)
  reader      --tflite_model=<a trivial file with the case's sidecar>: inference.py's
              reader, top-k and CSV writer with a model that costs nothing (the
              reader's bound)
  tfl_dynamic_t1  the same as tfl_dynamic with --tflite_threads=1.
videos/s and CPU ms per video are the steady state: from the child's first progress
line (--progress_every_secs=1, after its first batch) to its last line, with the
child's user+sys CPU read from /proc at those two moments; peak RSS is the child's
(os.wait4). Model only (a child of this script each): the interpreter on in-memory
batches of the reader's shapes (tflite_model.TFLiteModel.predict, the serving code)
against a float32 session of kd_model.inference_outputs, and the pinned TensorFlow's
tf.lite.Interpreter against LiteRT's (ai-edge-litert) on the same file.

Targets (issue 29; ratios are medians over repeats of ratios within one repeat):
  k=6 dynamic / float32 checkpoint, batch 80: model only >= 3.5x, end to end >= 2.5x
  (Intel Xeon AMX class) or, where the reader and the interpreter bound it lower on
  the machine's cores, >= 0.85 of that bound; k=30 end to end >= 2x; k=6 dynamic /
  float32 teacher >= 30x model only and >= 20x end to end; dynamic file <= 0.27 of
  the float32 file.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import common

CASES = {"student_k6": ["--model_type=student", "--k_frame=6"],
         "student_k30": ["--model_type=student", "--k_frame=30"],
         "teacher": ["--model_type=teacher", "--k_frame=300"]}
RUN_NAMES = {"student_k6": "run_student_k_6", "student_k30": "run_student_k_30",
             "teacher": "run_teacher"}
TFLITE_MODES = ("float32", "dynamic", "int8")
E2E_MODES = ("checkpoint", "bf16") + tuple("tfl_" + m for m in TFLITE_MODES)
STUDENT_ONLY = ("reader", "tfl_dynamic_t1")  # end-to-end modes of the students alone
MODEL_MODES = ("checkpoint", "tfl_float32", "tfl_dynamic", "tfl_int8",
               "litert_dynamic", "tfl_dynamic_t1")
# First guesses of end-to-end videos/s (then each key's last measurement): how many
# videos a run needs for --seconds of steady state.
GUESS = {("student_k6", "checkpoint"): 500, ("student_k6", "bf16"): 500,
         ("student_k6", "tfl_float32"): 150, ("student_k6", "tfl_dynamic"): 1200,
         ("student_k6", "tfl_int8"): 900, ("student_k6", "reader"): 1500,
         ("student_k6", "tfl_dynamic_t1"): 1000, ("student_k30", "tfl_float32"): 60,
         ("student_k30", "tfl_dynamic"): 600, ("student_k30", "tfl_int8"): 500,
         ("student_k30", "reader"): 1500, ("student_k30", "tfl_dynamic_t1"): 500,
         ("teacher", "checkpoint"): 60, ("teacher", "bf16"): 60,
         ("teacher", "tfl_float32"): 10, ("teacher", "tfl_dynamic"): 30,
         ("teacher", "tfl_int8"): 30}
SHARDS = 4  # of the generated data
PYTHON = sys.executable
PROGRESS = re.compile(r"^(\d+) of \d+ videos")
FINAL = re.compile(r"^(\d+) videos, [\d.]+ videos/s")
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- preparation


def make_run(root, case, data_pattern):
  """A run directory of `case` (documented flags, 1 training step at batch 8 on the
  generated data: random weights) -> its path; reused when present."""
  from bench_train import DOCUMENTED
  run = os.path.join(root, RUN_NAMES[case])
  if os.path.exists(os.path.join(run, "checkpoint")):
    return run
  command = ([PYTHON, os.path.join(common.ROOT, "train.py")] + DOCUMENTED + CASES[case]
             + ["--train_data_pattern=" + data_pattern,
                "--train_dir=" + os.path.join(root, "run"), "--batch_size=8",
                "--max_step=1", "--start_new_model=True", "--seed=1"])
  _check_call(command)
  return run


def export(root, case, run, mode, data_pattern):
  """export_model.py --tflite=mode of `run` -> the model.tflite path (reused)."""
  output = os.path.join(root, "export_%s_%s" % (case, mode))
  path = os.path.join(output, "model.tflite")
  if os.path.exists(path + ".json"):
    return path
  command = [PYTHON, os.path.join(common.ROOT, "export_model.py"), "--train_dir=" + run,
             "--output_dir=" + output, "--tflite=" + mode]
  if mode == "int8":
    command += ["--calibration_data_pattern=" + data_pattern, "--calibration_batches=4"]
  _check_call(command)
  return path


def _check_call(command):
  child = subprocess.run(command, capture_output=True, text=True, cwd=common.ROOT)
  if child.returncode != 0:
    raise SystemExit("failed (exit %d): %s\n%s" % (child.returncode, " ".join(command),
                                                   child.stderr[-3000:]))


def trivial_file(root, case, like):
  """A .tflite file with `like`'s sidecar (its inputs, role, flags) whose model costs
  nothing: [B, C] zeros that depend on the inputs. inference.py serving it is the
  reader's (and top-k's and the CSV writer's) bound."""
  path = os.path.join(root, "trivial_%s" % case, "model.tflite")
  if not os.path.exists(path + ".json"):
    common.run_child(__file__, ["--child=trivial", "--tflite=" + like, "--out=" + path])
  return path


def write_trivial(like, path):
  """Child: writes the trivial file of trivial_file()."""
  import hashlib
  import tensorflow as tf
  with open(like + ".json") as f:
    meta = json.load(f)
  frames_shape = meta["inputs"]["frames"]["shape"]
  classes = meta["output"]["shape"][-1]

  @tf.function(input_signature=[
      tf.TensorSpec([None] + frames_shape[1:], tf.uint8, name="frames"),
      tf.TensorSpec([None], tf.int32, name="num_frames")])
  def trivial(frames, num_frames):
    touch = (tf.cast(frames[:, 0, 0], tf.float32) + tf.cast(num_frames, tf.float32)) * 0
    return {"predictions": tf.zeros([1, classes]) + touch[:, None]}

  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [trivial.get_concrete_function()], trivial)
  blob = converter.convert()
  interpreter = tf.lite.Interpreter(model_content=blob)
  names = {d["name"] for d in interpreter.get_input_details()}
  for key in ("frames", "num_frames"):
    meta["inputs"][key]["index_name"] = next(n for n in names if key in n and (
        key != "frames" or "num_frames" not in n))
  meta["output"]["index_name"] = interpreter.get_output_details()[0]["name"]
  meta.update(quantization="float32", tflite_bytes=len(blob),
              tflite_sha256=hashlib.sha256(blob).hexdigest(), calibration=None)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(blob)
  with open(path + ".json", "w") as f:
    json.dump(meta, f)
  return {"bytes": len(blob)}


def data_copies(root, pattern, shards):
  """A glob of `shards` symlinks cycling over the shards of `pattern` (one set in the
  page cache, as many videos as a case needs)."""
  import glob
  sources = sorted(glob.glob(pattern))
  directory = os.path.join(root, "shards_%d" % shards, "frame")
  if not os.path.isdir(directory):
    os.makedirs(directory + ".tmp", exist_ok=True)
    for i in range(shards):
      os.symlink(os.path.realpath(sources[i % len(sources)]),
                 os.path.join(directory + ".tmp", "train%04d.tfrecord" % i))
    os.rename(directory + ".tmp", directory)
  return os.path.join(directory, "train*.tfrecord")


# ---------------------------------------------------------------- end to end


def _cpu_seconds(pid):
  """user+sys CPU seconds of a live process (all its threads), from /proc."""
  with open("/proc/%d/stat" % pid) as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def run_inference(flags, pattern, batch_size, scratch):
  """inference.py with `flags` over `pattern` at batch_size, as a child process ->
  {videos_per_second, cpu_ms_per_video (steady state), peak_rss_mb, wall_s, videos,
  whole_cpu_ms_per_video (start-up included)}."""
  output = os.path.join(scratch, "predictions.csv")
  command = [PYTHON, os.path.join(common.ROOT, "inference.py"),
             "--input_data_pattern=" + pattern, "--output_file=" + output,
             "--batch_size=%d" % batch_size, "--progress_every_secs=1"] + flags
  errors = open(os.path.join(scratch, "stderr.txt"), "w+")
  start = time.time()
  child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True,
                           cwd=common.ROOT)
  first = last = None
  for line in child.stdout:
    now = time.time()
    match = PROGRESS.match(line) or FINAL.match(line)
    if match:
      mark = (now, int(match.group(1)), _cpu_seconds(child.pid))
      if first is None and PROGRESS.match(line):
        first = mark
      last = mark
  _, status, usage = os.wait4(child.pid, 0)
  child.returncode = os.waitstatus_to_exitcode(status)
  wall = time.time() - start
  if child.returncode != 0 or last is None:
    errors.seek(0)
    raise SystemExit("inference.py failed (exit %d): %s\n%s" % (
        child.returncode, " ".join(command), errors.read()[-3000:]))
  errors.close()
  if first is None or last[1] <= first[1]:  # too short for a progress line
    first = (start, 0, 0.0)
  videos = last[1] - first[1]
  return {"videos_per_second": videos / (last[0] - first[0]),
          "cpu_ms_per_video": 1000.0 * (last[2] - first[2]) / videos,
          "whole_cpu_ms_per_video": 1000.0 * (usage.ru_utime + usage.ru_stime) / last[1],
          "peak_rss_mb": usage.ru_maxrss / 1024.0, "wall_s": wall, "videos": last[1]}


def e2e_flags(mode, run, files):
  """inference.py's flags serving `run` (or its files) in `mode`."""
  if mode == "checkpoint":
    return ["--train_dir=" + run]
  if mode == "bf16":
    return ["--train_dir=" + run, "--bf16"]
  if mode == "reader":
    return ["--tflite_model=" + files["reader"]]
  if mode == "tfl_dynamic_t1":
    return ["--tflite_model=" + files["dynamic"], "--tflite_threads=1"]
  return ["--tflite_model=" + files[mode[len("tfl_"):]]]


# ---------------------------------------------------------------- model only


def model_only(run, files, mode, batch_size, seconds):
  """Child: seconds per batch of the model alone on in-memory batches of the reader's
  shapes -> {videos_per_second, cpu_ms_per_video, peak_rss_mb}."""
  import numpy as np
  with open(files["dynamic"] + ".json") as f:
    shape = json.load(f)["inputs"]["frames"]["shape"]
  rng = np.random.RandomState(0)
  frames = rng.randint(0, 256, [batch_size] + shape[1:]).astype(np.uint8)
  num_frames = np.full([batch_size], shape[1], np.int32)
  if mode == "checkpoint":
    import tensorflow as tf
    import kd_model
    import model_utils
    import run_dir
    import sessions
    tf1 = tf.compat.v1
    cfg = run_dir.load(run)
    graph = tf.Graph()
    with graph.as_default():
      matrix = tf1.Variable(frames, trainable=False)
      batch = {"video_matrix": tf.identity(matrix),
               "num_frames": tf.constant(num_frames),
               "video_ids": tf.constant(["v%d" % i for i in range(batch_size)])}
      predictions = kd_model.inference_outputs(cfg, batch, cfg.role())["predictions"]
      session = tf1.Session(config=sessions.session_config(False))
      session.run(tf1.global_variables_initializer())
      session.run(model_utils.column_caches_initializer())
    step = lambda: session.run(predictions)
  else:
    import tflite_model
    threads = 1 if mode.endswith("_t1") else 2
    if mode.startswith("litert"):
      from ai_edge_litert.interpreter import Interpreter
      tflite_model._interpreter_class = lambda: Interpreter
    served = tflite_model.TFLiteModel(files[mode.split("_")[1]], threads)
    step = lambda: served.predict(frames, num_frames)
  for _ in range(2):
    step()
  runs, start, cpu = 0, time.time(), time.process_time()
  while runs < 3 or time.time() - start < seconds:
    step()
    runs += 1
  wall, cpu = time.time() - start, time.process_time() - cpu
  return {"videos_per_second": runs * batch_size / wall,
          "cpu_ms_per_video": 1000.0 * cpu / (runs * batch_size),
          "peak_rss_mb": common.peak_rss_mb()}


# ---------------------------------------------------------------- the report


def main():
  print(common.cpu_line(), flush=True)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--batch_sizes", default="80,1024")
  parser.add_argument("--teacher_batch_sizes", default="",
                      help="the teacher's end-to-end batch sizes (default --batch_sizes)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=12.0,
                      help="steady-state seconds per end-to-end run (at least)")
  parser.add_argument("--model_seconds", type=float, default=4.0)
  parser.add_argument("--quick", action="store_true",
                      help="a smoke check: batch 80, 1 repeat, 3 s per run")
  parser.add_argument("--root", default="/tmp/yt8m_bench_serving")
  parser.add_argument("--data_dir", default="/tmp/yt8m_bench_data_300")
  parser.add_argument("--videos", type=int, default=400)
  # A child's own flags.
  parser.add_argument("--child", choices=["trivial", "model"])
  parser.add_argument("--tflite", default="")
  parser.add_argument("--out", default="")
  parser.add_argument("--run", default="")
  parser.add_argument("--files", default="")
  parser.add_argument("--mode", default="")
  parser.add_argument("--batch_size", type=int, default=80)
  args = parser.parse_args()
  if args.child == "trivial":
    print(json.dumps(write_trivial(args.tflite, args.out)))
    return
  if args.child == "model":
    print(json.dumps(model_only(args.run, json.loads(args.files), args.mode,
                                args.batch_size, args.model_seconds)))
    return
  if args.quick:
    args.batch_sizes, args.repeats, args.seconds, args.model_seconds = "80", 1, 2.0, 1.0
  cases = args.cases.split(",")
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  teacher_batches = ([int(b) for b in args.teacher_batch_sizes.split(",")]
                     if args.teacher_batch_sizes else batch_sizes)
  os.makedirs(args.root, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix="bench_serving_")
  data = common.generated_data(args.data_dir, args.videos, min_frames=300,
                               short_video_fraction=0.0, shards=SHARDS)

  started = time.time()
  runs, files = {}, {}
  for case in cases:
    runs[case] = make_run(args.root, case, data)
    files[case] = {mode: export(args.root, case, runs[case], mode, data)
                   for mode in TFLITE_MODES}
    if case != "teacher":
      files[case]["reader"] = trivial_file(args.root, case, files[case]["dynamic"])
  print("runs and exports ready (%.0f s)" % (time.time() - started), flush=True)

  e2e = []  # (case, mode, batch size)
  for case in cases:
    for batch in (teacher_batches if case == "teacher" else batch_sizes):
      e2e += [(case, mode, batch) for mode in E2E_MODES]
      if case != "teacher":
        e2e += [(case, mode, batch) for mode in STUDENT_ONLY]
  models = [(case, mode, 80) for case in cases for mode in MODEL_MODES
            if case == "student_k6" or mode in ("checkpoint", "tfl_dynamic")]
  results = {key: [] for key in e2e + [("model",) + m for m in models]}
  rate = {}  # a case's videos/s so far: how many copies of the data it needs
  for repeat in range(args.repeats):
    for key in e2e:
      guess = rate.get(key, GUESS.get(key[:2], 300.0))
      videos = guess * args.seconds * 1.2 + 3 * key[2]
      per_shard = args.videos // SHARDS
      pattern = data_copies(args.root, data, max(1, int(videos / per_shard + 0.999)))
      found = run_inference(e2e_flags(key[1], runs[key[0]], files[key[0]]), pattern,
                            key[2], scratch)
      results[key].append(found)
      rate[key] = found["videos_per_second"]
      print("repeat %d: %-11s %-14s batch %4d  %7.1f videos/s  %6.2f CPU ms/video  "
            "%5.0f MB  (%d videos, %.0f s)" % (
                repeat + 1, key[0], key[1], key[2], found["videos_per_second"],
                found["cpu_ms_per_video"], found["peak_rss_mb"], found["videos"],
                found["wall_s"]), flush=True)
    for case, mode, batch in models:
      found = common.run_child(__file__, [
          "--child=model", "--run=" + runs[case], "--files=" + json.dumps(files[case]),
          "--mode=" + mode, "--batch_size=%d" % batch,
          "--model_seconds=%g" % args.model_seconds])
      results[("model", case, mode, batch)].append(found)
      print("repeat %d: %-11s %-14s batch %4d  %7.1f videos/s  %6.2f CPU ms/video  "
            "%5.0f MB  (model only)" % (repeat + 1, case, mode, batch,
                                        found["videos_per_second"],
                                        found["cpu_ms_per_video"],
                                        found["peak_rss_mb"]), flush=True)
  shutil.rmtree(scratch, ignore_errors=True)
  report(args, cases, e2e, models, results, files)


def report(args, cases, e2e, models, results, files):
  """Prints the tables, the file sizes and the ratios against the targets."""
  def median(key, field="videos_per_second"):
    return statistics.median(r[field] for r in results[key])

  def paired(a, b):
    """Median over repeats of a's videos/s / b's, measured in the same repeat."""
    if a not in results or b not in results:
      return None
    return statistics.median(x["videos_per_second"] / y["videos_per_second"]
                             for x, y in zip(results[a], results[b]))

  print("\n%s; %d repeat(s), medians (ratios: medians of ratios within a repeat)"
        % (time.strftime("%Y-%m-%d"), args.repeats))
  print("\nEnd to end (inference.py, steady state after the first batch):")
  rows = []
  for key in e2e:
    rows.append([key[0], key[1], key[2], "%.1f" % median(key),
                 "%.2f" % median(key, "cpu_ms_per_video"),
                 "%.0f" % max(r["peak_rss_mb"] for r in results[key])])
  print(common.table(rows, ["model", "serving", "batch", "videos/s", "CPU ms/video",
                            "peak RSS MB"]))
  print("\nModel only (in-memory batches of the reader's shapes):")
  rows = []
  for case, mode, batch in models:
    key = ("model", case, mode, batch)
    rows.append([case, mode, batch, "%.1f" % median(key),
                 "%.2f" % median(key, "cpu_ms_per_video"),
                 "%.0f" % max(r["peak_rss_mb"] for r in results[key])])
  print(common.table(rows, ["model", "serving", "batch", "videos/s", "CPU ms/video",
                            "peak RSS MB"]))
  print("\nFile sizes (MB):")
  for case in cases:
    sizes = {m: os.path.getsize(files[case][m]) / 1e6 for m in TFLITE_MODES}
    print("  %-11s float32 %.1f, dynamic %.1f (%.3f of float32), int8 %.1f" % (
        case, sizes["float32"], sizes["dynamic"], sizes["dynamic"] / sizes["float32"],
        sizes["int8"]))

  def check(name, value, target):
    if value is None:
      return
    print("  %s: %.2fx (target >= %gx: %s)" % (name, value, target,
                                               "met" if value >= target else "NOT met"))

  def show(name, value):
    if value is not None:
      print("  %s: %.2fx" % (name, value))

  print("\nRatios at batch 80:")
  m = lambda case, mode: ("model", case, mode, 80)
  k6, k30, teacher = "student_k6", "student_k30", "teacher"
  check("k=6 dynamic / float32 checkpoint, model only", paired(
      m(k6, "tfl_dynamic"), m(k6, "checkpoint")), 3.5)
  check("k=6 dynamic / float32 checkpoint, end to end", paired(
      (k6, "tfl_dynamic", 80), (k6, "checkpoint", 80)), 2.5)
  check("k=30 dynamic / float32 checkpoint, end to end", paired(
      (k30, "tfl_dynamic", 80), (k30, "checkpoint", 80)), 2.0)
  show("k=30 dynamic / float32 checkpoint, model only", paired(
      m(k30, "tfl_dynamic"), m(k30, "checkpoint")))
  check("k=6 dynamic / float32 teacher, model only", paired(
      m(k6, "tfl_dynamic"), m(teacher, "checkpoint")), 30)
  check("k=6 dynamic / float32 teacher, end to end", paired(
      (k6, "tfl_dynamic", 80), (teacher, "checkpoint", 80)), 20)
  show("k=6 dynamic / dynamic teacher, model only", paired(
      m(k6, "tfl_dynamic"), m(teacher, "tfl_dynamic")))
  show("k=6 dynamic / dynamic teacher, end to end", paired(
      (k6, "tfl_dynamic", 80), (teacher, "tfl_dynamic", 80)))
  show("k=6 dynamic / --bf16 teacher, end to end", paired(
      (k6, "tfl_dynamic", 80), (teacher, "bf16", 80)))
  show("k=6 dynamic / --bf16 k=6 student, end to end", paired(
      (k6, "tfl_dynamic", 80), (k6, "bf16", 80)))
  show("k=6 --bf16 / float32 checkpoint, end to end", paired(
      (k6, "bf16", 80), (k6, "checkpoint", 80)))
  show("k=6 int8 / dynamic, end to end", paired(
      (k6, "tfl_int8", 80), (k6, "tfl_dynamic", 80)))
  show("k=6 dynamic, --tflite_threads 1 / 2, end to end", paired(
      (k6, "tfl_dynamic_t1", 80), (k6, "tfl_dynamic", 80)))
  show("k=6 dynamic, --tflite_threads 1 / 2, model only", paired(
      m(k6, "tfl_dynamic_t1"), m(k6, "tfl_dynamic")))
  show("k=6 dynamic, LiteRT / tf.lite.Interpreter, model only", paired(
      m(k6, "litert_dynamic"), m(k6, "tfl_dynamic")))
  for case in (k6, k30):
    if (case, "reader", 80) not in results or ("model", case, "tfl_dynamic", 80) \
        not in results:
      continue
    # On `cores` cores, reading and the interpreter overlap at best: the bound is the
    # slower of the two alone, and their summed CPU per video spread over the cores.
    cores = os.cpu_count() or 1
    reader = median((case, "reader", 80))
    interpreter = median(m(case, "tfl_dynamic"))
    cpu = (median((case, "reader", 80), "cpu_ms_per_video")
           + median(m(case, "tfl_dynamic"), "cpu_ms_per_video"))
    bound = min(reader, interpreter, 1000.0 * cores / cpu)
    value = median((case, "tfl_dynamic", 80))
    print("  %s dynamic end to end: %.1f videos/s; bound %.1f videos/s = min(reader "
          "alone %.1f, interpreter alone %.1f, %d cores / (%.2f CPU ms/video)): "
          "%.2f of it (target >= 0.85: %s)" % (
              case, value, bound, reader, interpreter, cores, cpu, value / bound,
              "met" if value >= 0.85 * bound else "NOT met"))


if __name__ == "__main__":
  main()
