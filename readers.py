"""YouTube-8M readers: the module the rest of the project imports to read data.

`get_reader(config)` gives the reader a GraphConfig describes. Every reader turns a
batch of serialized records into a dict of tensors:
  video_ids    [B] string
  video_matrix [B, max_frames, F] float32 (frame level) or [B, F] (video level)
  num_frames   [B] int32 (frames before padding, at most max_frames; 1 for video level)
  labels       [B, num_classes] float32, 0/1
(segment readers: one row per segment, see YT8MSegmentReader).

The work is done beside this module, one job each:
  record_checks     the rules of a valid record, each stated once;
  record_parsing    video-level (Example) and frame-level (SequenceExample) readers;
  segment_parsing   the segment reader (--segment_labels);
  input_pipeline    DataFiles (a data flag's files, listed once) and the tf.data
                    pipeline over them (make_dataset, get_input_data_tensors);
  corrupt_records   --skip_corrupt_records (SkippedRecords) and the one-line naming of
                    a bad record (data_errors_named, find_bad_record).
"""

# (_video_record_problem and _labels_to_dense: for tests/ and bench/ only.)
from corrupt_records import (SkippedRecords, _video_record_problem, data_error,
                             data_errors_named, find_bad_record)
from input_pipeline import (DataFiles, count_records, get_input_data_tensors,
                            list_data_files, make_dataset, record_dataset, traced)
from record_parsing import (REQUIRE_IN_PLACE_ENV, YT8MAggregatedFeatureReader,
                            YT8MFrameFeatureReader, _labels_to_dense, dequantize_frames)
from segment_parsing import YT8MSegmentReader

__all__ = ["DataFiles", "REQUIRE_IN_PLACE_ENV", "SkippedRecords",
           "YT8MAggregatedFeatureReader", "YT8MFrameFeatureReader", "YT8MSegmentReader",
           "count_records", "data_error", "data_errors_named", "dequantize_frames",
           "find_bad_record", "get_input_data_tensors", "get_reader", "list_data_files",
           "make_dataset", "record_dataset", "traced"]


def get_reader(config, require_labels=True, dequantize=True, student_only=False):
  """The reader a GraphConfig describes (frame or video level, features, classes,
  max_frames; with segment_labels, a YT8MSegmentReader: rated segments when labels are
  required, every segment of a video otherwise).

  require_labels: every record must have at least one label (train/eval); False for
    the unlabeled test partition. dequantize: see YT8MFrameFeatureReader.
  student_only: only the k-frame student reads the batches (no teacher), so decode
    only its frames (see YT8MFrameFeatureReader's selected_frames).
  """
  if config.frame_features and config.segment_labels:
    return YT8MSegmentReader(segment_size=config.segment_size, rated=require_labels,
                             num_classes=config.num_classes,
                             feature_sizes=list(config.feature_sizes),
                             feature_names=list(config.feature_names),
                             max_frames=config.max_frames, dequantize=dequantize)
  if config.frame_features:
    selected = None
    if student_only and config.k_frame < config.max_frames:
      selected = (config.k_frame, config.frame_sampling)
    return YT8MFrameFeatureReader(num_classes=config.num_classes,
                                  feature_sizes=list(config.feature_sizes),
                                  feature_names=list(config.feature_names),
                                  max_frames=config.max_frames, dequantize=dequantize,
                                  require_labels=require_labels,
                                  selected_frames=selected)
  return YT8MAggregatedFeatureReader(num_classes=config.num_classes,
                                     feature_sizes=list(config.feature_sizes),
                                     feature_names=list(config.feature_names),
                                     require_labels=require_labels)
