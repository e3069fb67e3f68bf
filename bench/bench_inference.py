"""Inference throughput and FLOPs: teacher (300 frames) vs k=30 and k=6 students.

  python bench/bench_inference.py [--batch_size=80] [--batches=15] [--repeats=5]

The documented NeXtVLAD config (cluster 128, hidden 2048, groups 8, expansion 2, 3862
classes), in inference mode, exactly as eval.py and inference.py build it
(inference_graph.top_k_outputs, top-20, with the default PCA scaling of rgb): model only (in-graph random uint8 input) and end
to end (reading, parsing and decoding generated shards included). FLOPs per video are
counted from the graph, and parameters. Each case runs in its own process. Also the
original's MixNeXtVLAD (3 branches) as a teacher. Targets: FLOPs
k=6 <= 10% and k=30 <= 16% of the teacher's; model-only videos/s k=30 >= 5x and k=6
>= 10x the teacher's; end to end k=30 >= 4x and k=6 >= 8x; end to end >= 0.9
of model only for both students (a student's reader decodes only its k frames), so
that the k=6 student's end-to-end speed-up over the teacher reaches >= 12x. Every case
runs once per repeat, in alternation; ratios are medians over repeats of the ratio
measured within one repeat.
"""
import argparse
import json
import statistics
import time

import common
import tensorflow as tf

tf1 = tf.compat.v1

CASES = {"teacher": ["--model_type=teacher", "--k_frame=300"],
         "student_k30": ["--model_type=student", "--k_frame=30"],
         "student_k6": ["--model_type=student", "--k_frame=6"],
         # The original's 3-branch MixNeXtVLAD.
         "mix3_teacher": ["--model=MixNeXtVladModel", "--mix_number=3",
                          "--model_type=teacher", "--k_frame=300"]}


def run_case(case, source, batch_size, batches, data_pattern, extra_flags):
  """Builds and times one case in this process; returns a dict of measurements."""
  import config
  import inference_graph
  import kd_model
  import readers
  import sessions
  from bench_train import DOCUMENTED, random_input
  # The documented command's graph flags; its training flags mean nothing here.
  cfg = config.from_flags(config.private_flags(DOCUMENTED + CASES[case] + extra_flags))

  result = {"case": case, "source": source}

  def build(cfg):
    graph = tf.Graph()
    with graph.as_default():
      if source == "model":
        batch = random_input(batch_size)(batch_size)
      else:
        # eval.py's and inference.py's reader (a student's frames alone are decoded),
        # repeating the files so that the timed batches never run out.
        reader = readers.get_reader(cfg, dequantize=False,
                                    student_only=cfg.role() == kd_model.STUDENT)
        batch = readers.get_input_data_tensors(
            reader, readers.list_data_files(data_pattern), batch_size, num_readers=2,
            num_epochs=None, shuffle=False)
      outputs = inference_graph.top_k_outputs(cfg, batch, cfg.role(), 20,
                                              with_labels=False)
      result["parameters"] = sum(v.shape.num_elements()
                                 for v in tf1.trainable_variables())
      return graph, [outputs["top_scores"], outputs["top_indices"]], \
          tf1.global_variables_initializer()

  if source == "model":
    # The profiler needs static shapes: count on the padded graph (the same FLOPs
    # when every frame is real, as here).
    result["flops_per_video"] = common.float_ops(
        build(cfg.replace(frame_packing="never"))[0]) / batch_size
  graph, fetch, init = build(cfg)
  with graph.as_default():
    with tf1.Session(config=sessions.session_config(cfg.bf16)) as sess:
      sess.run(init)
      seconds = common.time_runs(sess, fetch, batches)
  result["videos_per_second"] = batch_size / seconds
  result["peak_rss_mb"] = common.peak_rss_mb()
  return result


def run_in_subprocess(case, source, batch_size, batches, data_pattern, extra_flags=()):
  """Runs one case in a child process -> its dict of measurements."""
  return common.run_child(__file__, ["--case=" + case, "--source=" + source,
                                     "--batch_size=%d" % batch_size,
                                     "--batches=%d" % batches,
                                     "--data_pattern=" + data_pattern] + list(extra_flags))


def main():
  print(common.cpu_line(), flush=True)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=80)
  parser.add_argument("--batches", type=int, default=15)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--videos", type=int, default=400)
  parser.add_argument("--data_dir", default="/tmp/yt8m_bench_data_300")
  parser.add_argument("--case", choices=sorted(CASES))
  parser.add_argument("--cases", default=",".join(CASES),
                      help="the cases to run (teacher first; targets need all three "
                      "NeXtVLAD cases)")
  parser.add_argument("--source", choices=["model", "e2e"], default="model")
  parser.add_argument("--data_pattern", default="")
  args, extra_flags = parser.parse_known_args()
  if args.case:
    print(json.dumps(run_case(args.case, args.source, args.batch_size, args.batches,
                              args.data_pattern, extra_flags)))
    return
  pattern = common.generated_data(args.data_dir, args.videos, min_frames=300,
                                  short_video_fraction=0.0)
  cases = args.cases.split(",")
  runs = {(case, source): [] for case in cases for source in ("model", "e2e")}
  for repeat in range(args.repeats):  # in alternation, so drifts in machine speed hit all
    for (case, source), results in runs.items():
      results.append(run_in_subprocess(case, source, args.batch_size, args.batches,
                                       pattern, extra_flags))
      print("repeat %d: %-12s %-6s %.1f videos/s" % (
          repeat + 1, case, source, results[-1]["videos_per_second"]), flush=True)

  def rates(case, source):
    return [r["videos_per_second"] for r in runs[(case, source)]]

  def paired(numerator, denominator):
    """Median over repeats of numerator / denominator measured in the same repeat."""
    return statistics.median(a / b for a, b in zip(rates(*numerator), rates(*denominator)))

  teacher_flops = runs[("teacher", "model")][0]["flops_per_video"]
  rows = []
  for case in cases:
    flops = runs[(case, "model")][0]["flops_per_video"]
    rss = max(r["peak_rss_mb"] for source in ("model", "e2e") for r in runs[(case, source)])
    rows.append([case, "%.1f" % (runs[(case, "model")][0]["parameters"] / 1e6),
                 "%.2f" % (flops / 1e9), "%.1f%%" % (100 * flops / teacher_flops),
                 "%.1f" % statistics.median(rates(case, "model")),
                 "%.1fx" % paired((case, "model"), ("teacher", "model")),
                 "%.1f" % statistics.median(rates(case, "e2e")),
                 "%.1fx" % paired((case, "e2e"), ("teacher", "e2e")),
                 "%.2f" % paired((case, "e2e"), (case, "model")),
                 "%.1f" % (rss / 1024)])
  print("batch %d, %d repeats (medians; ratios are medians of ratios within a repeat), %s"
        % (args.batch_size, args.repeats, time.strftime("%Y-%m-%d")))
  print(common.table(rows, ["model", "parameters (M)", "GFLOP/video", "of teacher",
                            "videos/s model only",
                            "speed-up", "videos/s end to end", "speed-up",
                            "e2e / model", "peak RSS GB"]))
  if not {"student_k30", "student_k6"} <= set(cases):
    return
  print("targets: FLOPs k=6 <= 10%, k=30 <= 16%; model only k=30 >= 5x, k=6 >= 10x; "
        "end to end k=30 >= 4x, k=6 >= 8x")
  checks = [("end to end / model only, k=30", paired(("student_k30", "e2e"),
                                                     ("student_k30", "model")), 0.9),
            ("end to end / model only, k=6", paired(("student_k6", "e2e"),
                                                    ("student_k6", "model")), 0.9),
            ("k=6 end-to-end speed-up over the teacher", paired(("student_k6", "e2e"),
                                                                 ("teacher", "e2e")), 12.0)]
  for name, value, target in checks:
    print("target: %s >= %g: %s (%.2f)" % (name, target,
                                           "met" if value >= target else "NOT met", value))


if __name__ == "__main__":
  tf1.disable_eager_execution()
  main()
