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
