"""Which student to serve: GAP against cost for students of every size, trained alone
and distilled from one teacher cache, on the demo's data and teacher.

  python tools/student_table.py --demo_dir=demo_out [--ks=6,30]
      [--students=full,half,quarter,logistic] [--mix_number=3] [--scale=1.0]
      [--quantized=dynamic,int8]

Students (each at every k of --ks): the demo's NeXtVLAD (full), the same with half and
a quarter of its hidden size and clusters (half, quarter), and FrameLevelLogistic (the
mean of the k frames into a logistic regression). Each is trained alone on labels
(--model_type=student) and distilled (--model_type=KD) from the demo's teacher cache,
with the demo's training settings. Another row distils the full NeXtVLAD at the first
k from the original's MixNeXtVLAD (--mix_number branches) trained as a teacher on the
same data (--mix_number=0 leaves it out).

Speed is end to end, as inference.py runs a model (reader, model, top 20), over the
demo's training shards, each model alone in a process of its own, at inference.py's
default batch (128) and a large one (--large_batch): videos/s, and CPU seconds per
video (the process's user + system time), the cost axis.

Quantized rows (--quantized; empty: none): each distilled student exported by
export_model.py --tflite in each mode (dynamic: int8 weights, float activations; int8:
weights and activations, calibrated on the demo's training shards; a model that does
not convert is named under the table), and the teacher's dynamic file, so that
speed-ups show at equal precision. Their GAP is eval.py --tflite_model's on the
validation shards, their speed measured as above through the file (inference.py
--tflite_model's graph, its default interpreter threads). Files go to
<demo_dir>/student_exports/. Writes
<demo_dir>/student_table.md, student_table.json and student_table.png (GAP against
cost, log scale, with the teacher and the frontiers of students trained alone and
distilled).
"""

import argparse
import json
import math
import os
import resource
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.join(ROOT, "bench")):
  if _path not in sys.path:
    sys.path.insert(0, _path)

from tools import demo  # noqa: E402

SMALL_BATCH = 128  # inference.py's --batch_size default
QUANTIZED_MODES = ("dynamic", "int8")
# (name, label, what the student changes: "hidden" and "cluster" are fractions of the
# demo model's; other entries are train.py flags)
STUDENTS = [("full", "NeXtVLAD", {}),
            ("half", "NeXtVLAD, half width", {"hidden": 2, "cluster": 2}),
            ("quarter", "NeXtVLAD, quarter width", {"hidden": 4, "cluster": 4}),
            ("logistic", "FrameLevelLogistic", {"flags": ["--model=FrameLevelLogisticModel"]})]


def _flag_value(flags, name):
  """The last value of --name in a list of flags (as train.py would take it)."""
  values = [f.split("=", 1)[1] for f in flags if f.startswith("--%s=" % name)]
  return values[-1] if values else None


def student_flags(spec, base_flags):
  """train.py flags of a student: the base model (demo's + --model_flags) resized."""
  flags = list(spec.get("flags", []))
  for key, flag in (("hidden", "nextvlad_hidden_size"), ("cluster", "nextvlad_cluster_size")):
    if key in spec:
      flags.append("--%s=%d" % (flag, max(1, int(_flag_value(base_flags, flag)) //
                                          spec[key])))
  return flags


def measure(run_dir, data_pattern, batch_sizes, videos, tflite_file=None):
  """End-to-end inference speed of a run's model, as inference.py builds it, at each
  batch size; of tflite_file's model (inference.py --tflite_model's graph) when given.

  Returns:
    {batch size: {"videos_per_second", "cpu_seconds_per_video", "cpu", and for a run
    "parameters", "gflops_per_video"}}.
  """
  speeds = {batch_size: _measure_one(run_dir, data_pattern, batch_size, videos,
                                     tflite_file)
            for batch_size in batch_sizes}
  if not tflite_file:
    gflops = demo.flops_per_video(run_dir) / 1e9
    for speed in speeds.values():
      speed["gflops_per_video"] = gflops
  return speeds


def _measure_one(run_dir, data_pattern, batch_size, videos, tflite_file=None):
  tf = demo.import_tensorflow_quietly()
  tf1 = tf.compat.v1
  tf1.disable_eager_execution()
  import common
  import inference_graph
  import kd_model
  import readers
  import sessions
  if tflite_file:
    import graph_flags  # noqa: F401  (defines --tflite_threads)
    import tflite_model
    served = tflite_model.TFLiteModel(
        tflite_file, tf1.flags.FLAGS["tflite_threads"].default)
    cfg, role, checkpoint = served.cfg, served.role, None
  else:
    cfg, run_dirs = demo.run_config(run_dir)
    role, served, checkpoint = cfg.role(), None, run_dirs.latest_checkpoint(run_dir)
  graph = tf.Graph()
  with graph.as_default():
    reader = readers.get_reader(cfg, dequantize=False, require_labels=False,
                                student_only=role == kd_model.STUDENT)
    batch = readers.get_input_data_tensors(
        reader, readers.list_data_files(data_pattern), batch_size, num_readers=1,
        num_epochs=None, shuffle=False)
    outputs = inference_graph.top_k_outputs(
        cfg, batch, role, 20, with_labels=False,
        predictions=served.predictions_op(batch) if served else None)
    fetches = [outputs["video_ids"], outputs["top_scores"], outputs["top_indices"]]
    parameters = sum(v.shape.num_elements() for v in tf1.trainable_variables())
    saver = tf1.train.Saver() if checkpoint else None
  with tf1.Session(graph=graph, config=sessions.session_config()) as sess:
    if saver:
      saver.restore(sess, checkpoint)
    runs = max(2, int(math.ceil(videos / float(batch_size))))
    for _ in range(2):
      sess.run(fetches)
    start, cpu = time.time(), _cpu_seconds()
    for _ in range(runs):
      sess.run(fetches)
    seconds, cpu = time.time() - start, _cpu_seconds() - cpu
  speed = {"videos_per_second": runs * batch_size / seconds,
           "cpu_seconds_per_video": cpu / (runs * batch_size), "cpu": common.cpu_line()}
  if not served:
    speed["parameters"] = parameters
  return speed


def _cpu_seconds():
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measured(runner, run_dir, data_pattern, batch_sizes, videos, tflite_file=None):
  """measure() in a process of its own (the model alone in it), run by `runner`."""
  out = runner.run("tools/student_table.py", [
      "--measure=" + (tflite_file or run_dir), "--data_pattern=" + data_pattern,
      "--batch_sizes=" + ",".join(map(str, batch_sizes)), "--videos=%d" % videos] +
      (["--measure_tflite"] if tflite_file else []), quiet=True)
  return {int(b): m for b, m in json.loads(out.strip().splitlines()[-1]).items()}


def quantized_rows(runner, modes, entries, speeds, export_root, train_pattern,
                   validate_pattern, batch_sizes, videos):
  """The quantized rows: every distilled entry exported in each of `modes`, and the
  teacher's entry (student "teacher") in dynamic, each evaluated with eval.py
  --tflite_model on validate_pattern and timed through its file on train_pattern.

  Args:
    entries: [(row dict, run dir)] as main() builds them, the teacher's first.
    speeds: {model key: measure() of its float32 checkpoint}, whose parameters and
      GFLOPs the file's rows repeat (the same model).
  Returns:
    [row dict + quantization, gap, map, file, file_bytes, batch, cost, speed], or
    + quantization, error (export_model.py's line) for a model that does not convert.
  """
  large = batch_sizes[-1]
  rows = []
  for row, run_dir in entries:
    teacher = row["student"] == "teacher"
    if not teacher and row["trained"] != "distilled":
      continue
    key = ("teacher",) if teacher else (row["student"], row["k"])
    for mode in modes:
      if teacher and mode != "dynamic":
        continue
      path, error = demo.export_tflite(
          runner, run_dir, os.path.join(export_root, "%s_%s" % (
              os.path.basename(run_dir), mode)), mode,
          train_pattern if mode == "int8" else "")
      quantized = dict(row, quantization=mode)
      name = "%-9s k=%-3d %s" % (row["student"], row["k"], mode)
      if error:
        print("%s does not convert: %s" % (name, error), flush=True)
        rows.append(dict(quantized, error=error))
        continue
      metrics = demo.evaluate_tflite(runner, path, validate_pattern)
      speed = measured(runner, None, train_pattern, batch_sizes, videos, path)
      for batch, measurement in speed.items():
        measurement.update(parameters=speeds[key][batch]["parameters"],
                           gflops_per_video=speeds[key][batch]["gflops_per_video"])
      rows.append(dict(quantized, gap=metrics["gap"], map=metrics["map_all_classes"],
                       file=path, file_bytes=os.path.getsize(path), batch=large,
                       cost=speed[large]["cpu_seconds_per_video"], speed=speed))
      print("%s GAP %.4f, %s" % (name, metrics["gap"], ", ".join(
          "batch %d: %.0f videos/s" % (b, s["videos_per_second"])
          for b, s in speed.items())), flush=True)
  return rows


def frontier(points):
  """[(cost, gap)] of the points no cheaper point matches: the best GAP at each cost."""
  best, steps = -1.0, []
  for cost, gap in sorted(points):
    if gap > best:
      best = gap
      steps.append((cost, gap))
  return steps


def frontier_at(steps, cost):
  """The frontier's GAP at `cost`: the best of the points costing at most that."""
  gaps = [gap for c, gap in steps if c <= cost]
  return max(gaps) if gaps else None


def frontier_check(rows):
  """Whether at every cost the distilled frontier is at or above the alone one; a
  line saying where it is not."""
  alone = frontier([(r["cost"], r["gap"]) for r in rows if r["trained"] == "alone"])
  distilled = frontier([(r["cost"], r["gap"]) for r in rows
                        if r["trained"] == "distilled" and r["teacher"] == "teacher"])
  failures = []
  for cost, gap in alone:  # the alone frontier only rises at its own points
    theirs = frontier_at(distilled, cost)
    if theirs is None or theirs < gap:
      failures.append("at %.3g CPU ms/video: alone %.4f, distilled %s"
                      % (cost * 1e3, gap, "none" if theirs is None else "%.4f" % theirs))
  return not failures, failures


def plot(rows, teacher, path):
  """GAP against CPU per video (log); False when matplotlib is missing."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  figure, axes = plt.subplots(figsize=(7.5, 4.8))
  axes.scatter([teacher["cost"] * 1e3], [teacher["gap"]], marker="*", s=180,
               color="tab:blue", label="teacher (NeXtVLAD, 300 frames)", zorder=3)
  styles = {"alone": ("tab:red", "students trained alone"),
            "distilled": ("tab:green", "students distilled")}
  for trained, (color, label) in styles.items():
    chosen = [r for r in rows if r["trained"] == trained and r["teacher"] == "teacher"]
    axes.scatter([r["cost"] * 1e3 for r in chosen], [r["gap"] for r in chosen],
                 color=color, s=25, zorder=3)
    steps = frontier([(r["cost"], r["gap"]) for r in chosen])
    xs, ys = [], []
    for i, (cost, gap) in enumerate(steps):
      xs += [cost * 1e3, (steps[i + 1][0] if i + 1 < len(steps) else teacher["cost"])
             * 1e3]
      ys += [gap, gap]
    axes.plot(xs, ys, color=color, label=label + " (frontier)", drawstyle="steps-post")
    for r in chosen:
      axes.annotate("%s k=%d" % (r["student"], r["k"]), (r["cost"] * 1e3, r["gap"]),
                    fontsize=6, xytext=(3, -8 if trained == "alone" else 3),
                    textcoords="offset points", color=color)
  mixed = [r for r in rows if r["teacher"] != "teacher"]
  if mixed:
    axes.scatter([r["cost"] * 1e3 for r in mixed], [r["gap"] for r in mixed],
                 marker="D", color="tab:purple", s=30, zorder=3,
                 label="distilled from the MixNeXtVLAD teacher")
  axes.set_xscale("log")
  axes.set_xlabel("end-to-end CPU ms per video (batch %d, log scale)" % rows[0]["batch"])
  axes.set_ylabel("validation GAP")
  axes.set_title("Students on generated data: GAP against serving cost")
  axes.grid(alpha=0.3, which="both")
  axes.legend(loc="lower right", fontsize=8)
  figure.tight_layout()
  tmp = path + ".tmp.png"
  figure.savefig(tmp, dpi=110)
  os.replace(tmp, path)
  return True


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--demo_dir", default="demo_out",
                      help="output directory of tools/demo.py (data, teacher, its cache)")
  parser.add_argument("--ks", default="6,30")
  parser.add_argument("--students", default=",".join(s[0] for s in STUDENTS))
  parser.add_argument("--mix_number", type=int, default=3,
                      help="branches of the MixNeXtVLAD teacher (0: no such row)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--scale", type=float, default=1.0, help="scales training steps")
  parser.add_argument("--large_batch", type=int, default=1024)
  parser.add_argument("--speed_videos", type=int, default=4096,
                      help="videos timed per model and batch size")
  parser.add_argument("--model_flags", default="",
                      help="train.py flags that override the demo's model and training "
                      "flags (as given to tools/demo.py)")
  parser.add_argument("--quantized", default=",".join(QUANTIZED_MODES),
                      help="export_model.py --tflite modes of the quantized rows: each "
                      "distilled student's file in each, the teacher's in dynamic "
                      "(empty: no quantized rows, the table's float32 rows only)")
  # One speed measurement (the child process of measured()).
  parser.add_argument("--measure", default="", help=argparse.SUPPRESS)
  parser.add_argument("--data_pattern", default="", help=argparse.SUPPRESS)
  parser.add_argument("--batch_sizes", default="", help=argparse.SUPPRESS)
  parser.add_argument("--videos", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--measure_tflite", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.measure:
    tflite_file = args.measure if args.measure_tflite else None
    print(json.dumps(measure(None if tflite_file else args.measure, args.data_pattern,
                             [int(b) for b in args.batch_sizes.split(",")], args.videos,
                             tflite_file)))
    return 0

  ks = [int(k) for k in args.ks.split(",")]
  chosen = args.students.split(",")
  unknown = sorted(set(chosen) - {name for name, _, _ in STUDENTS})
  if unknown:
    parser.error("--students: unknown student %s" % unknown[0])
  students = [s for s in STUDENTS if s[0] in chosen]
  modes = [m for m in args.quantized.split(",") if m]
  unknown = sorted(set(modes) - set(QUANTIZED_MODES))
  if unknown:
    parser.error("--quantized: unknown mode %s (choose from %s)"
                 % (unknown[0], ", ".join(QUANTIZED_MODES)))
  model_flags = shlex.split(args.model_flags)
  base_flags = demo.MODEL_FLAGS + model_flags
  teacher_dir, runner, table_dir, steps = demo.table_setup(
      "student_table", args.demo_dir, args.seed, "student_runs", args.scale)
  train_pattern = os.path.join(args.demo_dir, "data", "frame", "train*.tfrecord")

  def run(base, suffix, flags, steps):
    record = demo.train_and_evaluate(runner, args.demo_dir, base, suffix, flags,
                                     args.seed, steps, model_flags)
    return record, base + suffix

  teacher_record = demo.evaluate(runner, teacher_dir, os.path.join(
      args.demo_dir, "data", "frame", "validate*.tfrecord"))
  cache = demo.teacher_cache_dir(args.demo_dir, args.seed)
  kd = ["--model_type=KD", "--teacher_checkpoint=" + teacher_dir,
        "--teacher_cache=" + cache]
  entries = []  # (row dict, run dir)
  for name, label, spec in students:
    flags = student_flags(spec, base_flags)
    for k in ks:
      for trained, kind_flags, suffix in (
          ("alone", ["--model_type=student"], "_student_k_%d" % k),
          ("distilled", kd, "_KD_k_%d" % k)):
        base = os.path.join(table_dir, "%s_%s_s%d" % (name, trained, args.seed))
        record, run_dir = run(base, suffix, flags + kind_flags + ["--k_frame=%d" % k],
                              steps["student" if trained == "alone" else "KD"])
        entries.append(({"student": name, "label": label, "k": k, "trained": trained,
                         "teacher": "teacher", "gap": record["gap"],
                         "map": record["map_all_classes"]}, run_dir))
        print("%-9s k=%-3d %-9s GAP %.4f" % (name, k, trained, record["gap"]),
              flush=True)
  mix_entry = None
  if args.mix_number:
    mix_flags = ["--model=MixNeXtVladModel", "--mix_number=%d" % args.mix_number,
                 "--cl_temperature=2", "--cl_lambda=1"]
    mix_base = os.path.join(table_dir, "mix%d_s%d" % (args.mix_number, args.seed))
    mix_record, mix_dir = run(mix_base, "_teacher", mix_flags + [
        "--model_type=teacher", "--k_frame=300"], steps["teacher"])
    mix_entry = ({"student": "MixNeXtVLAD teacher", "k": 300, "gap": mix_record["gap"],
                  "map": mix_record["map_all_classes"]}, mix_dir)
    print("MixNeXtVLAD teacher (%d branches) GAP %.4f" % (args.mix_number,
                                                         mix_record["gap"]), flush=True)
    record, run_dir = run(mix_base + "_full", "_KD_k_%d" % ks[0], [
        "--model_type=KD", "--k_frame=%d" % ks[0], "--teacher_checkpoint=" + mix_dir,
        "--teacher_cache=" + os.path.join(table_dir, "mix%d_cache_s%d"
                                          % (args.mix_number, args.seed))],
        steps["KD"])
    entries.append(({"student": "full", "label": "NeXtVLAD", "k": ks[0],
                     "trained": "distilled", "teacher": "MixNeXtVLAD",
                     "gap": record["gap"], "map": record["map_all_classes"]}, run_dir))
    print("full      k=%-3d from the mixture GAP %.4f" % (ks[0], record["gap"]),
          flush=True)

  # Speed: one measurement per distinct model (a student alone and distilled are the
  # same inference graph).
  speeds = {}
  models = {("teacher",): teacher_dir}
  if mix_entry:
    models[("mix",)] = mix_entry[1]
  for row, run_dir in entries:
    models.setdefault((row["student"], row["k"]), run_dir)
  for key, run_dir in models.items():
    speeds[key] = measured(runner, run_dir, train_pattern,
                           (SMALL_BATCH, args.large_batch), args.speed_videos)
    print("speed %-22s %s" % (key, ", ".join(
        "batch %d: %.0f videos/s, %.3f CPU ms/video" % (
            b, s["videos_per_second"], s["cpu_seconds_per_video"] * 1e3)
        for b, s in speeds[key].items())), flush=True)

  validate_pattern = os.path.join(args.demo_dir, "data", "frame", "validate*.tfrecord")
  quantized = quantized_rows(
      runner, modes, [({"student": "teacher", "label": "NeXtVLAD teacher", "k": 300,
                        "trained": "alone", "teacher": None}, teacher_dir)] + entries,
      speeds, os.path.join(args.demo_dir, "student_exports"), train_pattern,
      validate_pattern, (SMALL_BATCH, args.large_batch), args.speed_videos)

  large = args.large_batch
  teacher_speed = speeds[("teacher",)]
  rows = []
  for row, _ in entries:
    speed = speeds[(row["student"], row["k"])]
    row = dict(row, batch=large, cost=speed[large]["cpu_seconds_per_video"],
               speed=speed)
    rows.append(row)
  teacher = {"gap": teacher_record["gap"], "map": teacher_record["map_all_classes"],
             "cost": teacher_speed[large]["cpu_seconds_per_video"], "speed": teacher_speed}
  lines = table_lines(teacher, mix_entry and dict(mix_entry[0], speed=speeds[("mix",)]),
                      rows, large, quantized)
  met, failures = frontier_check(rows)
  lines.append("")
  lines.append("Distilled frontier at or above the alone frontier at every cost: %s%s"
               % ("yes" if met else "NO", "" if met else " (" + "; ".join(failures) + ")"))
  cheap = [r for r in rows if r["trained"] == "distilled" and r["teacher"] == "teacher"
           and r["cost"] <= teacher["cost"] / 25]
  best = max(cheap, key=lambda r: r["gap"]) if cheap else None
  lines.append("Best distilled student at <= 1/25 of the teacher's CPU per video: %s" % (
      "%s k=%d, GAP %.4f = %.2f of the teacher's, at 1/%.0f of its cost" % (
          best["label"], best["k"], best["gap"], best["gap"] / teacher["gap"],
          teacher["cost"] / best["cost"]) if best else "none"))
  lines.append(speeds[("teacher",)][SMALL_BATCH]["cpu"])
  text = "\n".join(lines)
  with open(os.path.join(args.demo_dir, "student_table.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(args.demo_dir, "student_table.json"), "w") as f:
    json.dump({"teacher": teacher, "mix_teacher": mix_entry and mix_entry[0],
               "rows": rows, "quantized": quantized}, f, indent=1, default=str)
  print(text)
  if plot(rows, teacher, os.path.join(args.demo_dir, "student_table.png")):
    print("plot: %s" % os.path.join(args.demo_dir, "student_table.png"))
  return 0


def table_lines(teacher, mix, rows, large, quantized=()):
  """The Markdown table: the teacher(s), then every student, then the quantized rows
  (quantized_rows; their speed-up over the teacher's dynamic file when there is one),
  and a line for each model that did not convert."""
  def speed_cells(speed, reference):
    cells = []
    for batch in (SMALL_BATCH, large):
      cells += ["%.0f" % speed[batch]["videos_per_second"],
                "%.1fx" % (speed[batch]["videos_per_second"] /
                           reference[batch]["videos_per_second"])]
    cells.append("%.3f" % (speed[large]["cpu_seconds_per_video"] * 1e3))
    return cells

  header = ["model", "k", "trained", "GAP", "mAP", "parameters (M)", "GFLOP/video",
            "videos/s @%d" % SMALL_BATCH, "speed-up", "videos/s @%d" % large,
            "speed-up", "CPU ms/video @%d" % large]
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  teachers = [("NeXtVLAD teacher", teacher)] + ([("MixNeXtVLAD teacher", mix)]
                                                 if mix else [])
  for label, entry in teachers:
    speed = entry["speed"]
    out.append("| " + " | ".join([
        label, "300", "alone", "%.4f" % entry["gap"], "%.4f" % entry["map"],
        "%.1f" % (speed[large]["parameters"] / 1e6),
        "%.3f" % speed[large]["gflops_per_video"]] +
        speed_cells(speed, teacher["speed"])) + " |")
  for row in rows:
    speed = row["speed"]
    trained = row["trained"] if row["teacher"] == "teacher" else "from the mixture"
    out.append("| " + " | ".join([
        row["label"], str(row["k"]), trained, "%.4f" % row["gap"], "%.4f" % row["map"],
        "%.2f" % (speed[large]["parameters"] / 1e6),
        "%.3f" % speed[large]["gflops_per_video"]] +
        speed_cells(speed, teacher["speed"])) + " |")
  converted = [q for q in quantized if "error" not in q]
  reference = next((q["speed"] for q in converted if q["student"] == "teacher"),
                   teacher["speed"])
  for row in converted:
    speed = row["speed"]
    trained = ("from the mixture" if row["teacher"] not in ("teacher", None)
               else row["trained"])
    out.append("| " + " | ".join([
        row["label"], str(row["k"]), "%s, %s" % (trained, row["quantization"]),
        "%.4f" % row["gap"], "%.4f" % row["map"],
        ("%.1f" if row["student"] == "teacher" else "%.2f")
        % (speed[large]["parameters"] / 1e6),
        "%.3f" % speed[large]["gflops_per_video"]] +
        speed_cells(speed, reference)) + " |")
  if quantized:
    out.append("")
    over = ("NeXtVLAD teacher's dynamic file" if reference is not teacher["speed"]
            else "float32 NeXtVLAD teacher")
    out.append("Rows \"<trained>, dynamic\" / \"int8\": the run's export_model.py "
               "--tflite file (int8 weights; int8 also int8 activations), served "
               "through --tflite_model; their speed-up is over the %s." % over)
  for row in quantized:
    if "error" in row:
      out.append("Not converted (%s): %s k=%d %s: %s" % (
          row["quantization"], row["label"], row["k"], row["trained"], row["error"]))
  return out


if __name__ == "__main__":
  sys.exit(main())
