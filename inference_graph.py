"""The one inference path: records -> a role's model -> top-k classes.

Validation during training, eval.py, inference.py and export_model.py all build their
model with `top_k_outputs`, restore with `restore_checked`, and (validation and eval)
count metrics with `evaluate` and write them with `report_metrics`, so what they
compute and record cannot drift apart.
"""

import contextlib
import time

import numpy as np
import tensorflow as tf

import cli
import eval_util
import file_io
import kd_model
import losses
import model_utils
import readers
import run_dir
import sessions
import summaries

tf1 = tf.compat.v1
METRIC_KEYS = ("gap", "map_all_classes", "map_labelled_classes", "hit_at_one", "perr",
               "loss")


def input_batches(cfg, role, files, batch_size, num_readers, require_labels=True,
                  skipped=None):
  """One unshuffled pass over every record of `files` (a readers.DataFiles), in a fixed
  order, read for `role` (the student's frames alone are decoded).

  Returns:
    (reader, iterator initializer op, batch dict of tensors, see readers).
  """
  reader = readers.get_reader(cfg, require_labels=require_labels, dequantize=False,
                              student_only=role == kd_model.STUDENT)
  dataset = readers.make_dataset(reader, files, batch_size, num_readers, num_epochs=1,
                                 shuffle=False, skipped=skipped)
  iterator = tf1.data.make_initializable_iterator(dataset)
  return reader, iterator.initializer, iterator.get_next()


def top_k_outputs(cfg, batch, role, top_k, with_labels, reuse=False, classes=None,
                  predictions=None):
  """The role's model in inference mode on a reader batch -> its top classes.

  Args:
    cfg: the GraphConfig; role: kd_model.TEACHER or STUDENT.
    batch: reader dict (video_ids, video_matrix, num_frames, labels).
    top_k: classes per video.
    with_labels: also compute what the metrics need from batch["labels"].
    classes: None, or the class ids (a list) the top k is taken among (the rated
      classes of `inference.py --segment_labels`); the model computes only those.
      Not with with_labels (the metrics count every class).
    predictions: None (the role's model is built), or the model's predictions [B, C]
      computed elsewhere (a TFLite file's, tflite_model).
  Returns:
    dict of tensors: video_ids [B] string; top_scores [B, K] float32 and top_indices
    [B, K] int32, each video's best classes by descending score (equal scores by
    ascending class). Without labels K = min(top_k, C). With labels K = min(max(top_k,
    most labels of a video in the batch), C), so PERR sees each video's n best
    classes, plus top_is_positive [B, K], num_positives [B], class_positive_counts [C]
    (the arguments of EvaluationMetrics.accumulate_top_k) and loss (the label loss).
    A segment batch adds segment_start_times [B].
  """
  if classes is not None:
    if with_labels:
      raise ValueError("top_k_outputs: classes= is for inference without labels")
    classes = [int(c) for c in classes]
  if predictions is None:
    predictions = kd_model.inference_outputs(cfg, batch, role, reuse=reuse,
                                             class_ids=classes)["predictions"]
  if classes is not None and predictions.shape[1] != len(classes):
    # A model of one's own that computes every class: same values, taken afterwards.
    predictions = tf.gather(predictions, classes, axis=1)
  label_weights = batch.get("label_weights") if with_labels else None
  if label_weights is not None:
    # --segment_labels: a segment is scored on its rated classes only (the starter's
    # eval multiplies the predictions by the label weights the same way).
    predictions *= label_weights
  num_classes = tf.shape(predictions)[1]
  k = tf.minimum(top_k, num_classes)
  if with_labels:
    labels = batch["labels"]
    num_positives = tf.reduce_sum(labels, axis=1)
    k = tf.minimum(tf.maximum(top_k, tf.cast(tf.reduce_max(num_positives), tf.int32)),
                   num_classes)
  if classes is not None:
    k = tf.minimum(top_k, len(classes))
  top_scores, top_indices = tf.math.top_k(predictions, k=k, sorted=True)
  if classes is not None:
    top_indices = tf.gather(tf.constant(classes, tf.int32), top_indices)
  outputs = {"video_ids": batch["video_ids"], "top_scores": top_scores,
             "top_indices": top_indices}
  if "segment_start_times" in batch:
    outputs["segment_start_times"] = batch["segment_start_times"]
  if with_labels:
    outputs.update(
        top_is_positive=tf.gather(labels, top_indices, batch_dims=1),
        num_positives=num_positives, class_positive_counts=tf.reduce_sum(labels, axis=0),
        loss=losses.get_label_loss(cfg.label_loss).calculate_loss(
            predictions, labels, label_weights=label_weights))
  return outputs


def restore_checked(session, saver, variables, checkpoint, what="checkpoint"):
  """Restores `checkpoint` after checking it holds every variable in the right shape.

  Raises:
    UsageError naming the checkpoint and the variables at fault, or that it was
    deleted while being read.
  """
  run_dir.check_checkpoint_matches(variables, checkpoint, what)
  run_dir.restore_checkpoint(saver, session, checkpoint)


def role_outputs(cfg, batch, role, reuse=False, with_logits=False):
  """The role's model in inference mode on a reader batch -> what a teacher cache keeps.

  Returns:
    dict of tensors: video_ids [B] string, predictions [B, C] and representation
    [B, H] float32, logits [B, C] when asked (with_logits) and the model defines them
    (fetching them may change how the graph fuses the classifier, and so the
    predictions' last bits: only a cache that stores them asks); a segment batch adds
    segment_start_times [B], record_index [B] (the record of the batch each segment
    came from) and, when the batch has them, record_ids [R] (the ids of the batch's
    records).
  """
  outputs = kd_model.inference_outputs(cfg, batch, role, reuse=reuse)
  fetched = {"video_ids": batch["video_ids"], "predictions": outputs["predictions"],
             "representation": outputs["representation"]}
  if with_logits and outputs.get("logits") is not None:
    fetched["logits"] = outputs["logits"]
  for name in ("segment_start_times", "record_index", "record_ids"):
    if name in batch:
      fetched[name] = batch[name]
  return fetched


def _record_ids(serialized):
  """[R] serialized SequenceExamples -> their context `id`s [R] string."""
  context, _, _ = tf.io.parse_sequence_example(
      serialized, context_features={"id": tf.io.FixedLenFeature([], tf.string)})
  return context["id"]


def one_file_batches(reader, path, size, batch_size, skipped=None):
  """One file's records in their order, parsed batch_size records at a time.

  path, size: scalar tensors (the file and its size in bytes, for skipped's check of
  a cut file). A segment reader's batches add record_ids (see role_outputs).
  """
  records = (skipped.valid_records(reader, path, size) if skipped
             else readers.record_dataset(path))
  dataset = records.batch(batch_size)
  if isinstance(reader, readers.YT8MSegmentReader):
    dataset = dataset.map(readers.traced(lambda serialized: dict(
        reader.parse_batch(serialized), record_ids=_record_ids(serialized))),
                          num_parallel_calls=tf.data.AUTOTUNE)
  else:
    for stage in reader.parse_stages():
      dataset = dataset.map(readers.traced(stage), num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(2)


class InferenceGraph(object):
  """A graph of its own: a role's model in inference mode over records.

  Two ways to read: one unshuffled pass over every file of a readers.DataFiles
  (eval.py, inference.py), or one file at a time (a teacher cache: files None, each
  pass begun by start_file). Fetches: the top classes (top_k_outputs) when top_k is
  set, else role_outputs.
  Attributes: graph, reader, files, fetches, skipped (a SkippedRecords or None).
  """

  def __init__(self, cfg, role, files, batch_size, num_readers, top_k=None,
               with_labels=False, skip_corrupt_records=False, classes=None,
               require_labels=None, teacher=None, served=None, with_logits=False):
    """require_labels: records must have labels (default: with_labels);
    teacher: with role TEACHER, the kd_model.Teacher whose checkpoint session() gets
    (its variables may have another scope there: a student's run teaching); served: a
    tflite_model.TFLiteModel computing the predictions in place of the role's model
    (top_k only; session() then restores nothing); with_logits: without top_k, fetch
    the role's logits too (role_outputs)."""
    self.graph = tf.Graph()
    self.files = files
    self._one_file_at_a_time = files is None
    with self.graph.as_default():
      self.skipped = readers.SkippedRecords() if skip_corrupt_records else None
      require_labels = with_labels if require_labels is None else require_labels
      if self._one_file_at_a_time:
        self.reader = readers.get_reader(cfg, require_labels=require_labels,
                                         dequantize=False,
                                         student_only=role == kd_model.STUDENT)
        self._path = tf1.placeholder(tf.string, [])
        self._size = tf1.placeholder(tf.int64, [])
        iterator = tf1.data.make_initializable_iterator(one_file_batches(
            self.reader, self._path, self._size, batch_size, self.skipped))
        self._initializer, batch = iterator.initializer, iterator.get_next()
      else:
        self.reader, self._initializer, batch = input_batches(
            cfg, role, files, batch_size, num_readers, require_labels=require_labels,
            skipped=self.skipped)
      if top_k is None:
        self.fetches = role_outputs(cfg, batch, role, with_logits=with_logits)
      else:
        self.fetches = top_k_outputs(
            cfg, batch, role, top_k, with_labels, classes=classes,
            predictions=served.predictions_op(batch) if served else None)
      self._variables = tf1.global_variables()
      if teacher is not None:  # its checkpoint names the teacher/ variables its way
        self._variables = dict(
            {v.op.name: v for v in self._variables
             if not v.op.name.startswith(kd_model.TEACHER + "/")},
            **teacher.var_list(kd_model.teacher_variables()))
      self._saver = tf1.train.Saver(self._variables) if self._variables else None
      # After the restore: copies of the restored weights (model_utils).
      self._local_init = tf.group(tf1.local_variables_initializer(),
                                  model_utils.column_caches_initializer())
      self.graph.finalize()

  @contextlib.contextmanager
  def session(self, checkpoint, bf16=False, what="checkpoint"):
    """A session with `checkpoint` restored (checked; None: a served model's graph
    has no variables) and, reading a data pattern, the data at its start."""
    with tf1.Session(graph=self.graph, config=sessions.session_config(bf16)) as sess:
      if checkpoint is not None:
        restore_checked(sess, self._saver, self._variables, checkpoint, what)
      sess.run(self._local_init)
      if not self._one_file_at_a_time:
        sess.run(self._initializer)
      yield sess

  def start_file(self, session, path, size):
    """Begins a pass over one file (`size` bytes) in one-file-at-a-time mode."""
    session.run(self._initializer, {self._path: path, self._size: size})

  def batches(self, session):
    """Yields the fetches' values, a batch at a time, to the end of the pass."""
    while True:
      try:
        yield session.run(self.fetches)
      except tf.errors.OutOfRangeError:
        return


def evaluate(session, fetches, num_classes, top_k, initializer=None, skipped=None,
             progress=None, what="the model being trained"):
  """Runs `fetches` (top_k_outputs with labels) to the end of the data; the metrics.

  initializer: the input iterator's initializer, run first (with the skip counters'
  reset) when the pass is repeated, as validation during training does.
  progress: a Progress to count the videos in, or None.
  what: the model, as named by the error if it predicts NaN.
  Returns:
    eval_util's get() dict plus examples_per_second, and skipped_records / cut_shards
    with --skip_corrupt_records; None when the data held no record.
  """
  if initializer is not None:
    session.run([initializer] + ([skipped.reset] if skipped else []))
  metrics = eval_util.EvaluationMetrics(num_classes, top_k)
  start = time.time()
  while True:
    try:
      out = session.run(fetches)
    except tf.errors.OutOfRangeError:
      break
    if np.isnan(out["top_scores"]).any():  # a broken checkpoint, not a data problem
      raise cli.UsageError("%s predicts NaN (after %d videos): unusable weights or "
                           "batch-norm statistics" % (what, metrics.num_examples))
    metrics.accumulate_top_k(out["top_scores"], out["top_indices"],
                             out["top_is_positive"], out["num_positives"],
                             out["class_positive_counts"], out["loss"])
    if progress:
      progress.add(len(out["top_scores"]))
  if not metrics.num_examples:
    return None
  result = metrics.get()
  result["examples_per_second"] = result["num_examples"] / max(time.time() - start, 1e-9)
  if skipped:
    result["skipped_records"], result["cut_shards"] = skipped.report(session)
  return result


def report_metrics(split, step, metrics, writer, jsonl_path, **extra):
  """One metrics record, written the same way everywhere.

  The console gets the starter's line (prefixed by `split`), TensorBoard the scalars
  `<split>/<key>` for METRIC_KEYS (writer None: none), and jsonl_path (None: none)
  one JSON line with step, those keys, num_examples, examples_per_second,
  skipped_records and `extra`.
  Returns the record.
  """
  record = {"step": int(step), "gap": float(metrics["gap"]),
            "map_all_classes": float(metrics["map_all_classes"]),
            "map_labelled_classes": float(metrics["map_labelled_classes"]),
            "hit_at_one": float(metrics["avg_hit_at_one"]),
            "perr": float(metrics["avg_perr"]), "loss": float(metrics["avg_loss"]),
            "num_examples": int(metrics["num_examples"]),
            "examples_per_second": float(metrics["examples_per_second"]),
            "skipped_records": metrics.get("skipped_records")}
  record.update(extra)
  print("%s: %s" % (split, summaries.FormatEvalInfo(step, metrics,
                                                    metrics["examples_per_second"])),
        flush=True)
  if "skipped_records" in metrics:
    print("--skip_corrupt_records: %d corrupt records and the unreadable rest of %d "
          "damaged shards are not in these metrics" % (metrics["skipped_records"],
                                                       metrics["cut_shards"]), flush=True)
  if writer is not None:
    summaries.AddScalarSummaries(writer, {"%s/%s" % (split, key): record[key]
                                          for key in METRIC_KEYS}, step)
  if jsonl_path:
    file_io.append_jsonl(jsonl_path, record)
  return record
