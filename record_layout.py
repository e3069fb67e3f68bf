"""Finds the frames inside serialized YouTube-8M SequenceExamples without parsing them.

A k-frame student needs k of a video's up to 300 frames, but tf.io.parse_sequence_example
copies every frame's bytes into a string of its own, which adds half again to the CPU
that reading the record costs. The records YouTube-8M and every protobuf serializer write have one fixed
layout, though: the context, then the feature lists, each list a run of frames that
all start with the same few header bytes, e.g. for 1024-byte rgb frames

  0x0A 0x86 0x08   Feature (field 1 of the FeatureList), 1030 bytes
  0x0A 0x83 0x08   BytesList (field 1 of Feature), 1027 bytes
  0x0A 0x80 0x08   bytes (field 1 of BytesList), 1024 bytes, then the frame.

`locate_frames` walks that layout with string ops (a few bytes read per field), checks
every frame's header, and gives where each feature's frames start and how many there
are; a frame is then one tf.strings.substr. A record in any other valid encoding (other
field order, extra fields, non-minimal lengths, a frame of another size) is reported as
not located, and the caller parses it the ordinary way, so results never depend on which
path a record took.
"""
import tensorflow as tf

_MAX_VARINT_BYTES = 5  # enough for any length below 2**35


def _varint(number):
  """Protobuf base-128 varint encoding of a non-negative int -> bytes."""
  out = bytearray()
  while True:
    low, number = number & 0x7F, number >> 7
    out.append(low | (0x80 if number else 0))
    if not number:
      return bytes(out)


def frame_header(size):
  """The bytes before each `size`-byte frame in a FeatureList, as serializers write them."""
  payload = _varint(size)
  bytes_list = b"\x0a" + payload                     # BytesList.value
  feature = b"\x0a" + _varint(len(bytes_list) + size)  # Feature.bytes_list
  entry = b"\x0a" + _varint(len(feature) + len(bytes_list) + size)  # FeatureList.feature
  return entry + feature + bytes_list


def frame_stride(size):
  """Bytes per frame in a FeatureList: header plus the frame itself."""
  return len(frame_header(size)) + size


def _read_field(records, position, record_lengths, tag):
  """Reads the header of a length-delimited field (a one-byte tag, then a varint length).

  Args:
    records: [B] string. position, record_lengths: [B] int64 byte offsets.
    tag: the tag byte expected, e.g. 0x0A for field 1.
  Returns:
    (start of the payload [B] int64, its end [B] int64, ok [B] bool): ok where the tag
    is `tag` and the payload lies inside the record. Offsets are clamped to the record,
    so that reading on from a record that is not ok stays in range.
  """
  width = 1 + _MAX_VARINT_BYTES
  raw = tf.io.decode_raw(
      tf.strings.substr(records, position, tf.fill(tf.shape(position),
                                                   tf.constant(width, tf.int64))),
      tf.uint8, fixed_length=width)  # zero-padded past the end of the record
  digits = tf.cast(raw[:, 1:], tf.int64)
  continues = tf.cast(digits >= 128, tf.int64)
  used = 1 + tf.reduce_sum(tf.math.cumprod(continues, axis=1), axis=1)
  in_use = tf.range(_MAX_VARINT_BYTES, dtype=tf.int64)[None, :] < used[:, None]
  weights = tf.constant([1 << (7 * i) for i in range(_MAX_VARINT_BYTES)], tf.int64)
  length = tf.reduce_sum(tf.where(in_use, (digits % 128) * weights, 0), axis=1)
  start = position + 1 + used
  end = start + length
  ok = tf.reduce_all(tf.stack([tf.equal(raw[:, 0], tag), used <= _MAX_VARINT_BYTES,
                               end <= record_lengths]), axis=0)
  return tf.minimum(start, record_lengths), tf.minimum(end, record_lengths), ok


def locate_frames(records, feature_names, feature_sizes):
  """Where each feature's frames are in each serialized SequenceExample.

  Args:
    records: [B] string, serialized tf.train.SequenceExample.
    feature_names, feature_sizes: the feature lists wanted and bytes per frame.
  Returns:
    (located [B] bool, starts {name: [B] int64}, counts {name: [B] int64}). Where
    located, frame i of a feature is the `size` bytes at starts + i * frame_stride(size)
    + len(frame_header(size)), and counts is its number of frames (possibly 0), exactly
    what tf.io.parse_sequence_example would give. Elsewhere the other two are meaningless.
  """
  record_lengths = tf.cast(tf.strings.length(records), tf.int64)
  # SequenceExample: context (field 1), then feature_lists (field 2), then nothing.
  _, context_end, context_ok = _read_field(records, tf.zeros_like(record_lengths),
                                           record_lengths, 0x0A)
  position, lists_end, lists_ok = _read_field(records, context_end, record_lengths, 0x12)
  checks = [context_ok, lists_ok, tf.equal(lists_end, record_lengths)]
  names = [name.encode() for name in feature_names]
  starts = {name: tf.zeros_like(record_lengths) for name in feature_names}
  lengths = {name: tf.fill(tf.shape(record_lengths), tf.constant(-1, tf.int64))
             for name in feature_names}
  # FeatureLists: map entries {key (field 1), value (field 2): a FeatureList}.
  # YouTube-8M records hold two lists; a record with more than this takes the parse.
  for _ in range(max(2, len(feature_names))):
    present = position < lists_end
    entry_start, entry_end, entry_ok = _read_field(records, position, record_lengths, 0x0A)
    key_start, key_end, key_ok = _read_field(records, entry_start, record_lengths, 0x0A)
    key = tf.strings.substr(records, key_start, key_end - key_start)
    value_start, value_end, value_ok = _read_field(records, key_end, record_lengths, 0x12)
    entry_valid = tf.reduce_all(tf.stack([entry_ok, key_ok, value_ok,
                                          tf.equal(value_end, entry_end)]), axis=0)
    checks.append(tf.logical_or(tf.logical_not(present), entry_valid))
    for name, key_bytes in zip(feature_names, names):
      match = tf.logical_and(present, tf.equal(key, key_bytes))
      checks.append(tf.logical_not(tf.logical_and(match, lengths[name] >= 0)))  # twice
      starts[name] = tf.where(match, value_start, starts[name])
      lengths[name] = tf.where(match, value_end - value_start, lengths[name])
    position = tf.where(present, entry_end, position)
  checks.append(tf.equal(position, lists_end))  # no lists left unwalked
  counts = {}
  for name, size in zip(feature_names, feature_sizes):
    stride = frame_stride(size)
    checks.append(lengths[name] >= 0)
    checks.append(tf.equal(lengths[name] % stride, 0))
    counts[name] = tf.maximum(lengths[name], 0) // stride
  located = tf.reduce_all(tf.stack(checks), axis=0)
  for name, size in zip(feature_names, feature_sizes):
    checks_all = _headers_match(records, starts[name],
                                tf.where(located, counts[name], 0), size)
    located = tf.logical_and(located, checks_all)
  return located, starts, counts


def _headers_match(records, starts, counts, size):
  """[B] bool: each of the `counts` frames from `starts` begins with frame_header(size)."""
  header = frame_header(size)
  frame = tf.range(tf.reduce_max(tf.concat([counts, [0]], 0)), dtype=tf.int64)[None, :]
  is_frame = frame < counts[:, None]
  position = tf.where(is_frame, starts[:, None] + frame * frame_stride(size), 0)
  found = tf.strings.substr(records[:, None], position,
                            tf.where(is_frame, tf.constant(len(header), tf.int64), 0))
  return tf.reduce_all(tf.logical_or(tf.equal(found, header), tf.logical_not(is_frame)),
                       axis=1)


def frames_at(records, starts, indices, is_real, size):
  """The byte strings of frames `indices` ([B, k] int) -> [B, k] string ("" where not
  is_real), from locate_frames' starts of one feature."""
  indices = tf.cast(indices, tf.int64)
  position = starts[:, None] + indices * frame_stride(size) + len(frame_header(size))
  return tf.strings.substr(records[:, None], tf.where(is_real, position, 0),
                           tf.where(is_real, tf.constant(size, tf.int64), 0))
