"""Frame-level reader throughput against a floor: bare TFRecordDataset + parse.

  python bench/bench_reader.py [--videos=1600] [--batch_size=80] [--num_readers=2]

Ours: readers.make_dataset (parse, byte-length checks, decode, pad to 300 frames,
dense labels), in uint8 (what train/eval/inference use) and float32 output, and as a
k=6 student reads (its frames found in place by record_layout, every frame's header
checked, 6 frames decoded).
Floor: the same files through TFRecordDataset, the same interleave, batching and
threads, and only tf.io.parse_sequence_example. The last two rows read the records
alone (no parse), through TF's read buffer and unbuffered as ours reads local files:
what any reader of these files pays, a k-frame student's included. All
are timed over the same number of epochs, in alternation; the ratio is the median
over repeats of a pipeline / the floor measured next to it. Target: ours >= 0.9 x floor. The CPU column is this process's CPU
time per 1000 videos: on a machine whose cores a model keeps busy, that (not the
videos/s of the reader alone) is what reading costs.
"""
import argparse
import statistics
import time

import common  # noqa: F401  (sets up sys.path and quiet TensorFlow)
import tensorflow as tf

import readers

tf1 = tf.compat.v1


def floor_dataset(pattern, batch_size, num_readers, parsed=True, unbuffered=False):
  """TFRecordDataset + parse_sequence_example only, shaped like readers.make_dataset;
  parsed=False: the records alone (file reads, checksums, batching); unbuffered: read
  as ours reads local files (readers.record_dataset), not through TF's read buffer."""
  files = list(readers.list_data_files(pattern).paths)
  read = tf.data.TFRecordDataset
  if unbuffered:
    read = readers.record_dataset
  dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
      read, cycle_length=num_readers, block_length=1,
      num_parallel_calls=num_readers, deterministic=True)

  def parse(serialized):
    context, frames, _ = tf.io.parse_sequence_example(
        serialized,
        context_features={"id": tf.io.FixedLenFeature([], tf.string),
                          "labels": tf.io.VarLenFeature(tf.int64)},
        sequence_features={n: tf.io.FixedLenSequenceFeature([], tf.string)
                           for n in ("rgb", "audio")})
    return context["id"], frames["rgb"], frames["audio"]

  dataset = dataset.batch(batch_size)
  if parsed:
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(2)


def videos_per_second(make, epochs):
  """Reads `epochs` passes of the dataset `make()` builds -> (videos/s, CPU seconds of
  this process per 1000 videos: what reading takes from a model sharing the cores)."""
  with tf.Graph().as_default():
    dataset = make().repeat(epochs)
    element = tf1.data.make_one_shot_iterator(dataset).get_next()
    first = tf.nest.flatten(element)[0]
    count = tf.shape(first)[0]
    videos = 0
    with tf1.Session() as sess:
      sess.run(count)  # warm up: threads and the first files
      start, cpu_start = time.time(), time.process_time()
      while True:
        try:
          videos += sess.run(count)
        except tf.errors.OutOfRangeError:
          break
      return (videos / (time.time() - start),
              1000 * (time.process_time() - cpu_start) / videos)


def main():
  print(common.cpu_line(), flush=True)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--videos", type=int, default=1600)
  parser.add_argument("--batch_size", type=int, default=80)
  parser.add_argument("--num_readers", type=int, default=2)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--data_dir", default="/tmp/yt8m_bench_data")
  args = parser.parse_args()
  pattern = common.generated_data(args.data_dir, args.videos)

  def ours(dequantize, selected_frames=None):
    reader = readers.YT8MFrameFeatureReader(dequantize=dequantize,
                                            selected_frames=selected_frames)
    return lambda: readers.make_dataset(reader, readers.list_data_files(pattern),
                                        args.batch_size,
                                        args.num_readers, num_epochs=1, shuffle=False)

  contenders = {"floor (TFRecordDataset + parse)": lambda: floor_dataset(
      pattern, args.batch_size, args.num_readers),
                "ours, uint8 (train/eval/inference)": ours(False),
                "ours, float32 (dequantized)": ours(True),
                "ours, k=6 student's frames only (uint8)": ours(False, (6, "uniform")),
                "records alone, not parsed (TFRecordDataset)": lambda: floor_dataset(
                    pattern, args.batch_size, args.num_readers, parsed=False),
                "records alone, unbuffered as ours reads them": lambda: floor_dataset(
                    pattern, args.batch_size, args.num_readers, parsed=False,
                    unbuffered=True)}
  floor_name = "floor (TFRecordDataset + parse)"
  rates = {name: [] for name in contenders}
  cpu = {name: [] for name in contenders}
  for _ in range(args.repeats):  # in alternation, so drifts in machine speed hit all
    for name, make in contenders.items():
      rate, cpu_seconds = videos_per_second(make, args.epochs)
      rates[name].append(rate)
      cpu[name].append(cpu_seconds)

  def paired_ratio(name):
    """Median over repeats of (this pipeline / the floor measured next to it)."""
    return statistics.median(r / f for r, f in zip(rates[name], rates[floor_name]))

  rows = [[name, "%.0f" % statistics.median(rates[name]), "%.0f" % max(rates[name]),
           "%.2f" % paired_ratio(name), "%.2f" % statistics.median(cpu[name])]
          for name in contenders]
  print("%d generated videos (YouTube-8M layout, up to 300 frames), batch %d, %d readers, "
        "%d repeats" % (args.videos, args.batch_size, args.num_readers, args.repeats))
  print(common.table(rows, ["pipeline", "videos/s (median)", "videos/s (best)",
                            "ratio to floor (median of pairs)",
                            "CPU s per 1000 videos (median)"]))
  ratio = paired_ratio("ours, uint8 (train/eval/inference)")
  print("target: ours (uint8) >= 0.9 x floor: %s (%.2f)" % ("met" if ratio >= 0.9
                                                             else "NOT met", ratio))


if __name__ == "__main__":
  tf1.disable_eager_execution()
  main()
