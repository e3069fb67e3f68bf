"""The data files a flag names, and the tf.data pipeline that reads them in batches.

`list_data_files` lists a data pattern's files once, as a DataFiles that every later
step (the pipeline, the teacher cache, the diagnosis of a bad record) is given.
`make_dataset` reads them: files (shuffled) -> records (interleaved, optionally
filtered of corrupt ones, optionally joined to their teacher-cache entries) -> batches
-> the reader's parse stages -> (segments: regrouped into batches) -> prefetch.
"""

import dataclasses

import tensorflow as tf

import cli
import file_io

tf1 = tf.compat.v1


@dataclasses.dataclass(frozen=True)
class DataFiles(object):
  """The files of a data flag, listed once.

  pattern: the flag's value (comma-separated globs); flag_name: the flag, as errors
  name it (e.g. "--train_data_pattern"); paths: the sorted files it matches.
  """
  pattern: str
  flag_name: str
  paths: tuple


def list_data_files(data_pattern, flag_name="data pattern"):
  """The DataFiles of a comma-separated list of glob patterns (paths sorted).

  Raises:
    UsageError naming the flag and the pattern when nothing matches.
  """
  files = []
  for pattern in [p for p in data_pattern.split(",") if p.strip()]:
    files.extend(tf.io.gfile.glob(pattern.strip()))
  if not files:
    raise cli.UsageError("%s %r matches no file" % (flag_name, data_pattern))
  return DataFiles(data_pattern, flag_name, tuple(sorted(set(files))))


def count_records(files):
  """Records in TFRecord files (paths), counted from their framing (a 12-byte header
  read per record, the data skipped), through tf.io.gfile. A file cut short counts the
  records that are whole."""
  total = 0
  for path in files:
    with tf.io.gfile.GFile(path, "rb") as f:
      size, offset = f.size(), 0
      while offset + 12 <= size:
        f.seek(offset)
        length = int.from_bytes(f.read(8), "little")
        offset += 16 + length
        if offset > size:
          break
        total += 1
  return total


def traced(function):
  """`function` as a tf.data stage traced as written: it is graph code already (tf.cond,
  no Python branches on tensors), so AutoGraph's conversion would only cost time (about
  1.5 s of every command's start-up)."""
  return tf.autograph.experimental.do_not_convert(function)


def record_dataset(path):
  """tf.data.TFRecordDataset of the serialized records of one file (`path`: a string
  or a scalar string tensor).

  A file on the local disk (no scheme://, the rule of file_io.is_local) is read
  unbuffered: a record then goes from the page cache into its tensor in one copy
  instead of two through TensorFlow's 256 KB read buffer (a full-length video's record
  is ~350 KB): reading the records alone measured 0.14 CPU s per 1000 videos against
  0.16 (docs/performance.md). Other file systems keep TensorFlow's default buffer, which
  saves requests to a remote store.
  """
  remote = tf.strings.regex_full_match(path, ".*://.*")
  # -1: TensorFlow's default for the file system; 0: no buffer.
  buffer_size = tf.where(remote, tf.constant(-1, tf.int64), tf.constant(0, tf.int64))
  return tf.data.TFRecordDataset(path, buffer_size=buffer_size)


def get_input_data_tensors(reader, files, batch_size=1024, num_readers=1,
                           num_epochs=None, shuffle=True, seed=None,
                           drop_remainder=None, skipped=None, skip_batches=0,
                           teacher_cache=None):
  """Builds the tf.data pipeline over `files` and returns one batch of tensors.

  Args:
    reader: a reader of record_parsing or segment_parsing.
    files: the DataFiles to read (list_data_files).
    batch_size: videos per batch.
    num_readers: files read in parallel (interleaved).
    num_epochs: passes over the data; None repeats forever.
    shuffle: shuffle files and records (training). False reads every record exactly
      once per epoch in a deterministic order (eval, inference).
    seed: shuffling seed; with a seed the order of records is reproducible (None:
      nondeterministic, and faster: parallel reads deliver whatever is ready first).
    drop_remainder: drop a final partial batch; default: True when shuffling (training
      needs fixed batches to split across towers), False otherwise.
    skipped: a corrupt_records.SkippedRecords (--skip_corrupt_records), see
      make_dataset. Its iterator is then initialized with the tables
      (TABLE_INITIALIZERS), which a MonitoredSession's local_init_op runs.
    skip_batches: leave out the first this many batches (read but not parsed); with a
      seed, a resumed training continues the record order where it stopped.
    teacher_cache: see make_dataset.
  Returns:
    dict of batch tensors (see record_parsing).
  """
  dataset = make_dataset(reader, files, batch_size, num_readers, num_epochs, shuffle,
                         seed, drop_remainder, skipped, skip_batches,
                         teacher_cache)
  if skipped is None:
    return tf1.data.make_one_shot_iterator(dataset).get_next()
  # A pipeline that counts into variables cannot be a one-shot iterator.
  iterator = tf1.data.make_initializable_iterator(dataset)
  tf1.add_to_collection(tf1.GraphKeys.TABLE_INITIALIZERS, iterator.initializer)
  return iterator.get_next()


def make_dataset(reader, files, batch_size=1024, num_readers=1, num_epochs=None,
                 shuffle=True, seed=None, drop_remainder=None, skipped=None,
                 skip_batches=0, teacher_cache=None):
  """The tf.data.Dataset behind `get_input_data_tensors` (same arguments).

  skipped: a SkippedRecords to drop and count corrupt records instead of failing
    (--skip_corrupt_records; each record is then also validated on its own, which costs
    a second parse).
  teacher_cache: offline KD's teacher_cache.TeacherCache, or None. Each data file is
    read beside its cache shard (`teacher_cache.shard_of(file)`: one entry per valid
    record, in the same order), and each record travels with its entry through
    shuffling and batching; `teacher_cache.joined(batch)` then turns the batch's
    entries (`teacher_cache_entry` [B] string, "" past the end of a shard) into the
    teacher's outputs.
  """
  if batch_size <= 0:
    raise cli.UsageError("--batch_size must be positive, got %d" % batch_size)
  if drop_remainder is None:
    drop_remainder = shuffle
  deterministic = not shuffle or seed is not None
  dataset = _records(reader, files, min(num_readers, len(files.paths)), num_epochs,
                     shuffle, seed, deterministic, skipped, teacher_cache)
  if shuffle:
    dataset = dataset.shuffle(max(5 * batch_size, 256), seed=seed)
  with_cache_entries = teacher_cache is not None
  if getattr(reader, "emits_segments", False):
    dataset = _segment_batches(dataset, reader, batch_size, shuffle, seed,
                               drop_remainder, deterministic, skip_batches,
                               with_cache_entries)
  else:
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if skip_batches:
      dataset = dataset.skip(skip_batches)
    dataset = _parsed(dataset, reader, deterministic, with_cache_entries)
  if with_cache_entries:
    dataset = dataset.map(traced(teacher_cache.joined))
  return dataset.prefetch(2)


def _records(reader, files, num_readers, num_epochs, shuffle, seed, deterministic,
             skipped, teacher_cache):
  """The records of every file (a record and its teacher-cache entry with shards)."""
  num_readers = max(1, num_readers)
  columns = [list(files.paths)]
  if skipped is None:
    read_records = lambda path, *rest: record_dataset(path)
  else:
    columns.append(tf.constant([tf.io.gfile.stat(f).length for f in files.paths],
                               tf.int64))
    read_records = lambda path, size, *rest: skipped.valid_records(reader, path, size)
  if teacher_cache is None:
    read_file = read_records
  else:
    columns.append([teacher_cache.shard_of(f) for f in files.paths])

    def read_file(*column_values):
      entries = record_dataset(column_values[-1]).concatenate(
          tf.data.Dataset.from_tensors(tf.constant("")).repeat())
      return tf.data.Dataset.zip((read_records(*column_values), entries))
  dataset = tf.data.Dataset.from_tensor_slices(
      tuple(columns) if len(columns) > 1 else columns[0])
  if shuffle:
    dataset = dataset.shuffle(len(files.paths), seed=seed,
                              reshuffle_each_iteration=True)
  dataset = dataset.repeat(num_epochs)
  return dataset.interleave(traced(read_file), cycle_length=num_readers, block_length=1,
                            num_parallel_calls=num_readers, deterministic=deterministic)


def _parsed(dataset, reader, deterministic, with_cache_entries):
  """Batches of serialized records -> the reader's batch dicts (each stage a map)."""
  for stage in reader.parse_stages():
    if with_cache_entries:
      stage = _beside_cache_entries(stage)
    dataset = dataset.map(traced(stage), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=deterministic)
  if with_cache_entries:
    dataset = dataset.map(traced(_join_cache_entries))
  return dataset


def _segment_batches(dataset, reader, batch_size, shuffle, seed, drop_remainder,
                     deterministic, skip_batches, with_cache_entries):
  """Records -> batches of batch_size segments (a segment reader's records hold a
  varying number of segments each)."""
  # Records are parsed in batches of about as many frames as batch_size segments
  # hold (a 300-frame video holds 60 segments): in flight, a batch of batch_size
  # records would hold 60 times the frames (memory) for no gain in speed.
  dataset = dataset.batch(max(1, -(-batch_size * reader.segment_size //
                                   reader.max_frames)))
  dataset = _parsed(dataset, reader, deterministic, with_cache_entries)
  dataset = dataset.map(traced(_without_record_index)).unbatch()
  if shuffle:
    dataset = dataset.shuffle(max(4 * batch_size, 256), seed=seed)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  if skip_batches:
    dataset = dataset.skip(skip_batches)
  return dataset


def _beside_cache_entries(stage):
  """A parse stage for (its input, teacher-cache entries) elements."""
  return lambda values, entries: (
      stage(*values) if isinstance(values, tuple) else stage(values), entries)


def _join_cache_entries(batch, entries):
  """The batch dict with each row's teacher-cache entry (a segment's: its record's)."""
  if "record_index" in batch:
    entries = tf.gather(entries, batch["record_index"])
  return dict(batch, teacher_cache_entry=entries)


def _without_record_index(batch):
  return {key: value for key, value in batch.items() if key != "record_index"}
