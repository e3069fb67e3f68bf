"""The documented train.py command, read from the one place it is written: README.md
(section "The recipe").

Tests run it verbatim and benchmarks take their configuration from it, so the README
cannot drift from what is tested and measured.
"""

import os
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PREFIX = "python train.py --feature_names="


def documented_command(readme=README):
  """The README's long `python train.py ...` line, exactly as written there."""
  with open(readme) as f:
    lines = [line.strip() for line in f if line.startswith(PREFIX)]
  if len(lines) != 1:
    raise ValueError("%s should hold the documented command once (a line starting with "
                     "%r), found %d" % (readme, PREFIX, len(lines)))
  return lines[0]


def documented_flags(readme=README):
  """The command's flags as an argv list (without `python train.py`), as a shell splits
  them."""
  return shlex.split(documented_command(readme))[2:]
