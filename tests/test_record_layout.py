"""record_layout finds frames in place exactly where parse_sequence_example would, and
says "not located" for every other encoding, so a student's reader gives the same batch
whichever path a record takes."""
import numpy as np
import pytest
import tensorflow as tf

import frame_selection
import readers
import record_layout

tf1 = tf.compat.v1
NAMES, SIZES = ["rgb", "audio"], [5, 130]  # 130: a two-byte length in every header


def varint(number, extra_bytes=0):
  """Protobuf varint; extra_bytes > 0 gives a valid but non-minimal encoding."""
  out = bytearray(record_layout._varint(number))
  if extra_bytes:
    out[-1] |= 0x80
    out += b"\x80" * (extra_bytes - 1) + b"\x00"
  return bytes(out)


def field(tag, payload, extra_bytes=0):
  return bytes([tag]) + varint(len(payload), extra_bytes) + payload


def feature_list(frames):
  """A serialized FeatureList of bytes features, one per frame."""
  return b"".join(field(0x0A, field(0x0A, field(0x0A, frame))) for frame in frames)


def context(video_id=b"vid", labels=(3,)):
  return tf.train.Features(feature={
      "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[video_id])),
      "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=list(labels))),
  }).SerializeToString()


def frames(count, size, seed):
  rng = np.random.RandomState(seed)
  return [rng.randint(0, 256, size, dtype=np.uint8).tobytes() for _ in range(count)]


def record(lists, video_id=b"vid", context_first=True, context_extra_bytes=0, tail=b""):
  """A SequenceExample written field by field: lists is [(key, [frame bytes])]."""
  body = b"".join(field(0x0A, field(0x0A, key) + field(0x12, feature_list(values)))
                  for key, values in lists)
  parts = [field(0x0A, context(video_id), context_extra_bytes), field(0x12, body)]
  return b"".join(parts if context_first else parts[::-1]) + tail


def standard(count, video_id=b"vid", seed=0):
  return record([(b"rgb", frames(count, 5, seed)), (b"audio", frames(count, 130, seed + 1))],
                video_id)


def test_the_writer_above_writes_what_protobuf_writes():
  example = tf.train.SequenceExample(context=tf.train.Features.FromString(context()))
  for key, size, seed in [("rgb", 5, 0), ("audio", 130, 1)]:
    for frame in frames(3, size, seed):
      example.feature_lists.feature_list[key].feature.add().bytes_list.value.append(frame)
  assert record_layout.frame_header(1024) == b"\x0a\x86\x08\x0a\x83\x08\x0a\x80\x08"
  assert example.SerializeToString() in (standard(3), record(
      [(b"audio", frames(3, 130, 1)), (b"rgb", frames(3, 5, 0))]))


def _located_and_parsed(records):
  """Runs locate_frames and parse_sequence_example on the same records."""
  with tf.Graph().as_default():
    serialized = tf.constant(records)
    located, starts, counts = record_layout.locate_frames(serialized, NAMES, SIZES)
    _, parsed, lengths = tf.io.parse_sequence_example(
        serialized, sequence_features={n: tf.io.FixedLenSequenceFeature([], tf.string)
                                       for n in NAMES})
    width = tf.cast(tf.reduce_max(tf.concat([counts[n] for n in NAMES], 0)), tf.int32)
    indices = tf.tile(tf.range(width)[None, :], [len(records), 1])
    in_place = {n: record_layout.frames_at(
        serialized, starts[n], indices, indices < tf.cast(counts[n], tf.int32)[:, None],
        size) for n, size in zip(NAMES, SIZES)}
    with tf1.Session() as sess:
      return sess.run([located, counts, in_place, parsed, lengths])


def test_standard_records_are_located_with_the_frames_the_parse_gives():
  records = [standard(n, seed=n) for n in (1, 2, 7, 40)]
  records.append(record([(b"audio", frames(4, 130, 1)), (b"rgb", frames(4, 5, 2))]))
  records.append(record([(b"rgb", frames(4, 5, 0)), (b"audio", frames(4, 130, 1))],
                        context_extra_bytes=2))  # non-minimal lengths are read right
  records.append(record([(b"rgb", []), (b"audio", frames(2, 130, 1))]))  # no rgb frames
  located, counts, in_place, parsed, lengths = _located_and_parsed(records)
  assert located.all()
  for name in NAMES:
    np.testing.assert_array_equal(counts[name], lengths[name])
    assert list(counts[name]) == [1, 2, 7, 40, 4, 4, 0 if name == "rgb" else 2]
    width = parsed[name].shape[1]
    np.testing.assert_array_equal(in_place[name][:, :width], parsed[name])


def _non_minimal_frame_header():
  """A valid record whose second rgb frame's bytes length takes an extra byte."""
  rgb = frames(2, 5, 0)
  rgb_list = feature_list(rgb[:1]) + field(
      0x0A, field(0x0A, field(0x0A, rgb[1], extra_bytes=1)))
  lists = field(0x0A, field(0x0A, b"rgb") + field(0x12, rgb_list))
  lists += field(0x0A, field(0x0A, b"audio") + field(0x12, feature_list(frames(2, 130, 1))))
  return field(0x0A, context()) + field(0x12, lists)


OTHER_ENCODINGS = {
    "context after the lists": record([(b"rgb", frames(3, 5, 0)),
                                       (b"audio", frames(3, 130, 1))], context_first=False),
    "a third feature list": record([(b"rgb", frames(3, 5, 0)), (b"audio", frames(3, 130, 1)),
                                    (b"other", frames(3, 5, 2))]),
    "an unknown field after the lists": standard(3, seed=4) + field(0x1A, b"extra"),
    "a non-minimal frame header": _non_minimal_frame_header(),
}
BAD_RECORDS = {
    "a frame of 4 bytes": record([(b"rgb", frames(2, 5, 0) + frames(1, 4, 1)),
                                  (b"audio", frames(3, 130, 2))]),
    "a frame of 6 bytes then one of 4": record([(b"rgb", frames(1, 6, 0) + frames(1, 4, 1)),
                                                (b"audio", frames(2, 130, 2))]),
    "no audio list": record([(b"rgb", frames(3, 5, 0))]),
    "rgb twice": record([(b"rgb", frames(3, 5, 0)), (b"rgb", frames(3, 5, 0))]),
    "cut short": standard(3)[:-7],
    "a length past the end": b"\x0a\xff\xff\xff\x0f" + standard(3)[2:],  # the context's
    "empty": b"",
    "not a protobuf": b"\xff" * 40,
}


@pytest.mark.parametrize("name", sorted(OTHER_ENCODINGS) + sorted(BAD_RECORDS))
def test_every_other_encoding_is_not_located(name):
  other = OTHER_ENCODINGS.get(name, BAD_RECORDS.get(name))
  with tf.Graph().as_default():
    located, _, _ = record_layout.locate_frames(tf.constant([standard(3), other]),
                                                NAMES, SIZES)
    with tf1.Session() as sess:
      assert list(sess.run(located)) == [True, False]


@pytest.mark.parametrize("strategy", frame_selection.STRATEGIES)
def test_a_student_reader_gives_the_full_decode_whichever_path_a_batch_takes(strategy):
  standard_batch = [standard(n, b"v%d" % n, seed=n) for n in (2, 9, 13, 30)]
  # Located in place; then every other encoding in one batch, which is parsed whole
  # (each of them alone is "not located": the test above).
  batches = [standard_batch, standard_batch[:2] + [OTHER_ENCODINGS[name]
                                                   for name in sorted(OTHER_ENCODINGS)]]
  k, max_frames = 4, 20
  full = readers.YT8MFrameFeatureReader(feature_sizes=SIZES, feature_names=NAMES,
                                        max_frames=max_frames, dequantize=False)
  student = readers.YT8MFrameFeatureReader(feature_sizes=SIZES, feature_names=NAMES,
                                           max_frames=max_frames, dequantize=False,
                                           selected_frames=(k, strategy))
  with tf.Graph().as_default():
    results = []
    for batch in batches:
      reference = full.parse_batch(tf.constant(batch))
      picked, num_frames = frame_selection.select_frames(
          reference["video_matrix"], reference["num_frames"], k, strategy,
          video_ids=reference["video_ids"])
      ours = student.parse_batch(tf.constant(batch))
      results.append(([picked, num_frames, reference["labels"]],
                      [ours["video_matrix"], ours["num_frames"], ours["labels"]]))
    with tf1.Session() as sess:
      for expected, got in sess.run(results):
        for a, b in zip(expected, got):
          assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("records, message", [
    ([standard(3), BAD_RECORDS["a frame of 4 bytes"]],
     r"frame of feature \\?'rgb\\?' does not have 5 bytes"),
    ([record([(b"rgb", []), (b"audio", [])])], "video with 0 frames"),  # located
    ([record([(b"rgb", []), (b"audio", [])], context_first=False)], "video with 0 frames"),
])
def test_bad_records_are_the_same_errors_for_a_student_reader(records, message):
  student = readers.YT8MFrameFeatureReader(feature_sizes=SIZES, feature_names=NAMES,
                                           max_frames=20, dequantize=False,
                                           selected_frames=(2, "uniform"))
  with tf.Graph().as_default():
    batch = student.parse_batch(tf.constant(records))
    with tf1.Session() as sess:
      with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        sess.run(batch)
