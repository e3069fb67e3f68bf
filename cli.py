"""The entry points' command-line runner: flags parsed once, and a mistake the
user can fix (UsageError, a file system that refuses access) shown as one
line on stderr with exit code 2, without a traceback."""

import os
import sys

import tensorflow as tf

tf1 = tf.compat.v1
flags = tf1.flags
FLAGS = flags.FLAGS  # parsed by run_main only: the entry points read the flags


class UsageError(Exception):
  """A mistake the user can fix (bad flag, path, file, checkpoint).

  Entry points print its message as one line and exit non-zero, without a traceback.
  """


def run_main(main, argv=None):
  """Parses flags and runs `main(argv)`; user mistakes become one line on stderr.

  Exit codes: 0 success, 2 usage error (bad flag, file or checkpoint, or a file system
  that refuses access), 130 interrupted.
  """
  argv = list(sys.argv if argv is None else argv)
  prog = os.path.basename(argv[0])
  tf1.logging.set_verbosity(tf1.logging.ERROR)  # no deprecation chatter on the console
  try:
    remaining = FLAGS(argv)
  except flags.Error as e:
    print("%s: error: %s" % (prog, str(e).splitlines()[0]), file=sys.stderr)
    sys.exit(2)
  try:
    sys.exit(main(remaining) or 0)
  except UsageError as e:
    print("%s: error: %s" % (prog, e), file=sys.stderr)
    sys.exit(2)
  except tf.errors.OpError as e:
    line = file_system_failure(e)
    if line is None:
      raise
    print("%s: error: %s" % (prog, line), file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("%s: interrupted" % prog, file=sys.stderr)
    sys.exit(130)


def file_system_failure(error):
  """The one line to show for a file-system error the user can act on (no access, no
  credentials or network for a cloud store, an unknown scheme), else None."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  if isinstance(error, (tf.errors.PermissionDeniedError, tf.errors.UnauthenticatedError)):
    return text or "permission denied"
  if text.startswith("File system scheme") or "Error executing an HTTP request" in text:
    return text
  return None
