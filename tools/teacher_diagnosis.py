"""What a teacher hands its student: the scale and spread of its representation, the
calibration of its probabilities, and each KD term's share of the student's loss.

  python tools/teacher_diagnosis.py \\
      --teacher=NeXtVLAD:demo_out/teacher_cache_s0:demo_out/runs/demo_s0_KD_k_6 \\
      --teacher=MixNeXtVLAD:demo_out/student_runs/mix3_cache_s0:demo_out/student_runs/mix3_s0_full_KD_k_6 \\
      --data_pattern='demo_out/data/frame/train*.tfrecord' --output=demo_out/teacher_diagnosis

Each --teacher is label:cache:KD run (the run may be left empty). The teacher's outputs are read from its teacher
cache (train.py --teacher_cache), which holds exactly what its students match: its
predictions and representation for every training video. The labels come from
--data_pattern's records (the cache's training files). The KD run's event file gives
the loss terms it logged (unweighted L_CE, L_pred, L_rep and the total), from which
each weighted term's share of the total at its first and last logged step follows.
Writes <output>.md and <output>.json.

Representation: mean L2 norm per video, the mean over dimensions of each dimension's
standard deviation over videos, and the mean squared norm (what L_rep sums for a
student whose representation is near zero, as at its start). Probabilities: mean
probability of the true labels and of the other classes, the expected calibration
error over all (video, class) probabilities in 10 equal-width bins (ECE), the same on
each video's top-1 class, and the mean binary entropy per class.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from tools import demo  # noqa: E402

BINS = 10
KD_WEIGHTS = {"label_loss": "kd_ce_weight", "pred_loss": "kd_pred_weight",
              "rep_loss": "kd_rep_weight"}


def cache_outputs(tf, cache_dir):
  """{video id: (predictions [C], representation [H])} float32 of a video-level cache."""
  stored = json.load(open(os.path.join(cache_dir, "fingerprint.json")))
  dtype = np.dtype(stored["fingerprint"]["dtype"])
  outputs = {}
  for path in sorted(glob.glob(os.path.join(cache_dir, "teacher-*.tfrecord"))):
    for raw in tf.compat.v1.io.tf_record_iterator(path):
      feature = tf.train.Example.FromString(raw).features.feature
      outputs[feature["id"].bytes_list.value[0]] = tuple(
          np.frombuffer(feature[name].bytes_list.value[0], dtype).astype(np.float32)
          for name in ("predictions", "representation"))
  return outputs


def labels_of(tf, data_pattern, num_classes):
  """{video id: label vector [C] float32} of the records of data_pattern."""
  labels = {}
  for path in sorted(glob.glob(data_pattern)):
    for raw in tf.compat.v1.io.tf_record_iterator(path):
      context = tf.train.SequenceExample.FromString(raw).context.feature
      vector = np.zeros(num_classes, np.float32)
      vector[list(context["labels"].int64_list.value)] = 1
      labels[context["id"].bytes_list.value[0]] = vector
  return labels


def calibration_error(probabilities, outcomes, bins=BINS):
  """Expected calibration error: sum over equal-width bins of |mean probability -
  frequency| weighted by the bin's share of the values. probabilities, outcomes: [N]."""
  which = np.minimum((probabilities * bins).astype(int), bins - 1)
  error = 0.0
  for b in range(bins):
    chosen = which == b
    if chosen.any():
      error += chosen.mean() * abs(probabilities[chosen].mean() - outcomes[chosen].mean())
  return float(error)


def output_statistics(predictions, representation, labels):
  """Statistics of a teacher's outputs. predictions, labels: [N, C]; representation:
  [N, H]."""
  norms = np.linalg.norm(representation, axis=1)
  p = np.clip(predictions, 1e-7, 1 - 1e-7)
  top = np.argmax(predictions, axis=1)
  rows = np.arange(len(top))
  return {
      "videos": int(len(predictions)),
      "representation_width": int(representation.shape[1]),
      "representation_norm": float(norms.mean()),
      "representation_dimension_std": float(representation.std(axis=0).mean()),
      "representation_squared_norm": float((norms ** 2).mean()),
      "probability_of_labels": float(predictions[labels == 1].mean()),
      "probability_of_others": float(predictions[labels == 0].mean()),
      "ece_all_classes": calibration_error(predictions.ravel(), labels.ravel()),
      "ece_top1": calibration_error(predictions[rows, top], labels[rows, top]),
      "entropy_per_class": float(-(p * np.log(p) + (1 - p) * np.log(1 - p)).mean()),
  }


def loss_shares(tf, run_dir):
  """The KD run's logged loss terms at its first and last logged step, and each
  weighted term's share of the total: {"first"|"last": {"step", term: value,
  term + "_share": share}}."""
  flags = json.load(open(os.path.join(run_dir, "model_flags.json")))
  steps = {}
  for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag.startswith("losses/"):
          steps.setdefault(event.step, {})[value.tag[len("losses/"):]] = value.simple_value
  logged = sorted(step for step, terms in steps.items() if "total" in terms)
  if not logged:
    raise SystemExit("teacher_diagnosis: %s logged no loss terms" % run_dir)
  shares = {}
  for which, step in (("first", logged[0]), ("last", logged[-1])):
    terms = steps[step]
    entry = {"step": int(step), "total": terms["total"]}
    for term, weight in KD_WEIGHTS.items():
      if term in terms:
        entry[term] = terms[term]
        entry[term + "_share"] = flags[weight] * terms[term] / terms["total"]
    shares[which] = entry
  return shares


def diagnose(tf, label, cache_dir, run_dir, data_pattern):
  """The statistics of one teacher (its cache) and the loss shares of its KD run."""
  outputs = cache_outputs(tf, cache_dir)
  num_classes = len(next(iter(outputs.values()))[0])
  labels = labels_of(tf, data_pattern, num_classes)
  missing = sorted(set(outputs) - set(labels))
  if missing:
    raise SystemExit("teacher_diagnosis: %d videos of %s are not in --data_pattern "
                     "(first: %r)" % (len(missing), cache_dir, missing[0]))
  ids = sorted(outputs)
  result = output_statistics(np.stack([outputs[i][0] for i in ids]),
                             np.stack([outputs[i][1] for i in ids]),
                             np.stack([labels[i] for i in ids]))
  result.update(label=label, cache=cache_dir, run=run_dir,
                loss=loss_shares(tf, run_dir) if run_dir else None)
  return result


def table_lines(results):
  """The Markdown table: one column per teacher."""
  rows = [("videos", "videos", "%d"),
          ("representation width", "representation_width", "%d"),
          ("representation L2 norm (mean)", "representation_norm", "%.3f"),
          ("per-dimension std (mean)", "representation_dimension_std", "%.4f"),
          ("squared norm (mean)", "representation_squared_norm", "%.2f"),
          ("probability of true labels", "probability_of_labels", "%.4f"),
          ("probability of other classes", "probability_of_others", "%.5f"),
          ("ECE, all classes", "ece_all_classes", "%.5f"),
          ("ECE, top-1 class", "ece_top1", "%.4f"),
          ("binary entropy per class (nats)", "entropy_per_class", "%.4f")]
  out = ["| | " + " | ".join(r["label"] for r in results) + " |",
         "|---|" + "---|" * len(results)]
  for name, key, form in rows:
    out.append("| %s | %s |" % (name, " | ".join(form % r[key] for r in results)))
  for which in ("first", "last"):
    for term, name in (("label_loss", "L_CE"), ("pred_loss", "L_pred"),
                       ("rep_loss", "L_rep")):
      cells = []
      for r in results:
        entry = (r["loss"] or {}).get(which, {})
        cells.append("%.4g (%.0f%%, step %d)" % (entry[term], 100 * entry[term + "_share"],
                                                entry["step"])
                     if term in entry else "-")
      out.append("| KD run, %s logged step: %s (share of total) | %s |"
                 % (which, name, " | ".join(cells)))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--teacher", action="append", default=[],
                      help="label:teacher cache directory:KD run directory, the run "
                      "optional (repeat)")
  parser.add_argument("--data_pattern", required=True,
                      help="the caches' training files (their labels)")
  parser.add_argument("--output", required=True, help="writes <output>.md and .json")
  args = parser.parse_args(argv)
  if not args.teacher:
    parser.error("--teacher: give at least one label:cache:run")
  tf = demo.import_tensorflow_quietly()
  results = []
  for spec in args.teacher:
    parts = spec.split(":")
    if len(parts) != 3 or not os.path.isfile(os.path.join(parts[1], "fingerprint.json")):
      parser.error("--teacher=%s: want label:cache:run, the cache holding "
                   "fingerprint.json" % spec)
    results.append(diagnose(tf, parts[0], parts[1], parts[2], args.data_pattern))
  text = "\n".join(table_lines(results))
  with open(args.output + ".md", "w") as f:
    f.write(text + "\n")
  with open(args.output + ".json", "w") as f:
    json.dump(results, f, indent=1)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
