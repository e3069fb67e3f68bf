"""Where the reader's CPU time goes, op by op: one batch held in memory, one thread.

  python bench/bench_reader_ops.py [--batch_size=80] [--runs=30]

bench_reader.py times whole pipelines; this times each stage of ours on one in-memory
batch of generated records (300 frames each), single-threaded, with graph rewrites off
so that nothing is folded away: the parse (what the floor does), the full decode
(checks, decode of every frame, concatenation, padding), its parts, and a k=6 student's
whole batch (record_layout locates the frames in place; only 6 are copied and decoded)
and its parts. Run it on the CPU you care about: the stages are plain
TensorFlow kernels (no oneDNN), so ONEDNN_MAX_CPU_ISA does not change them.
"""
import argparse
import time

import common
import tensorflow as tf

import readers
import record_layout

tf1 = tf.compat.v1


def milliseconds(session, tensors, runs):
  """Milliseconds per run of everything `tensors` needs (outputs not fetched)."""
  op = tf.group(*tf.nest.flatten(tensors))
  session.run(op)
  start = time.perf_counter()
  for _ in range(runs):
    session.run(op)
  return 1000 * (time.perf_counter() - start) / runs


def main():
  print(common.cpu_line(), flush=True)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=80)
  parser.add_argument("--runs", type=int, default=30)
  parser.add_argument("--data_dir", default="/tmp/yt8m_bench_data_300")
  args = parser.parse_args()
  pattern = common.generated_data(args.data_dir, 400, min_frames=300,
                                  short_video_fraction=0.0)
  records = []
  for path in readers.list_data_files(pattern).paths:
    for record in tf1.io.tf_record_iterator(path):
      records.append(record)
  records = records[:args.batch_size]
  full = readers.YT8MFrameFeatureReader(dequantize=False)
  student = readers.YT8MFrameFeatureReader(dequantize=False, selected_frames=(6, "uniform"))
  config = tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
  config.graph_options.rewrite_options.disable_meta_optimizer = True
  with tf.Graph().as_default():
    parsed = full.parse_records(tf.constant(records))  # not folded: rewrites are off
    # The parse's outputs held in variables, so that decoding is timed alone.
    context, frames, lengths = parsed
    held = [tf1.Variable(t, trainable=False, validate_shape=False)
            for t in [context["id"], context["labels"].indices, context["labels"].values,
                      context["labels"].dense_shape] + [frames[n] for n in full.feature_names]
            + [lengths[n] for n in full.feature_names]]
    values = [v.read_value() for v in held]
    names = full.feature_names
    batch = tf.shape(values[0])[0]
    frames_in = {n: tf.reshape(v, [batch, -1]) for n, v in zip(names, values[4:6])}
    lengths_in = {n: v for n, v in zip(names, values[6:8])}
    context_in = {"id": values[0], "labels": tf.SparseTensor(values[1], values[2], values[3])}
    decoded = [tf.io.decode_raw(frames_in[n], tf.uint8, fixed_length=size)
               for n, size in zip(names, full.feature_sizes)]
    serialized = tf1.Variable(tf.constant(records), trainable=False).read_value()
    stages = [
        ("parse (tf.io.parse_sequence_example: the floor's work)", parsed),
        ("decode, all 300 frames (checks, decode, concat, pad, labels)",
         full.decode_parsed(context_in, frames_in, lengths_in)),
        ("  decode_raw rgb", decoded[0]),
        ("  decode_raw audio", decoded[1]),
        ("  decode_raw both + concat", tf.concat(decoded, axis=2)),
        ("  byte-count checks (strings.length)", [tf.strings.length(frames_in[n])
                                                  for n in names]),
        ("  dense labels", readers._labels_to_dense(context_in["labels"], 3862)),
        ("a k=6 student's batch from the records (parse_selected)",
         student.parse_selected(serialized)),
        ("  the context alone (tf.io.parse_sequence_example)",
         tf.io.parse_sequence_example(serialized, context_features=full._context_features())),
        ("  locate_frames (layout walk and every frame's header)",
         record_layout.locate_frames(serialized, names, full.feature_sizes)),
    ]
    with tf1.Session(config=config) as sess:
      sess.run(tf1.global_variables_initializer())
      rows = [[name, "%.2f" % milliseconds(sess, tensors, args.runs)]
              for name, tensors in stages]
  print("one batch of %d generated videos (300 frames), 1 thread, %d runs"
        % (len(records), args.runs))
  print(common.table(rows, ["stage", "ms per batch"]))


if __name__ == "__main__":
  tf1.disable_eager_execution()
  main()
