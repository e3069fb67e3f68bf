"""Shared test setup: graph mode, quiet TensorFlow, parsed (default) flags, repo on sys.path."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import tensorflow as tf  # noqa: E402

tf.compat.v1.disable_eager_execution()
tf.compat.v1.flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def restore_flags():
  """Tests may set FLAGS (e.g. kd_model.load_run does); every test starts from defaults."""
  flags = tf.compat.v1.flags.FLAGS
  saved = {name: flags[name].value for name in flags}
  yield
  for name, value in saved.items():
    if flags[name].value != value:
      flags[name].value = value


# The files that take longest go first: `make test` deals whole files to its two
# workers in collection order, and a long file dealt last leaves one worker idle.
LONGEST_FIRST = ("test_batch_invariance.py", "test_demo.py", "test_reliability.py", "test_train.py",
                 "test_teacher_cache.py", "test_movable_runs.py",
                 "test_frame_level_models.py", "test_any_teacher.py",
                 "test_cloud_paths.py", "test_real_frames.py", "test_eval_inference.py",
                 "test_fresh_cli.py",
                 "test_segment_recipe.py", "test_real_data.py",
                 "test_tflite_serving.py", "test_tflite_export.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)),
                                       len(rank)))
