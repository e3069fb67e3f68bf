"""The documentation holds together: README.md and docs/*.md link only to files and
headings that exist, every docs/ page is reachable from the README, and the README stays
a front door (at most 300 lines). Pure Python: no TensorFlow."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
README_MAX_LINES = 300

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose_lines(path):
  """The lines of a Markdown file outside fenced code blocks."""
  lines, fenced = [], False
  with open(path, encoding="utf-8") as f:
    for line in f:
      if FENCE.match(line):
        fenced = not fenced
        continue
      if not fenced:
        lines.append(line.rstrip("\n"))
  return lines


def slug(heading):
  """GitHub's anchor for a heading text: lowercase, punctuation other than - and _
  dropped, each space a hyphen."""
  text = heading.strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path):
  """The anchors of a Markdown file's headings, with GitHub's -1, -2 suffixes for
  repeated ones."""
  seen, result = {}, set()
  for line in _prose_lines(path):
    match = HEADING.match(line)
    if not match:
      continue
    base = slug(match.group(2))
    count = seen.get(base, 0)
    seen[base] = count + 1
    result.add(base if count == 0 else "%s-%d" % (base, count))
  return result


def links(path):
  """The link targets of a Markdown file (outside code), in order."""
  targets = []
  for line in _prose_lines(path):
    targets.extend(LINK.findall(CODE_SPAN.sub("", line)))
  return targets


def _is_external(target):
  return re.match(r"^[a-z][a-z0-9+.-]*:", target) is not None


def test_slug_follows_github_rules():
  assert slug("Results on generated data (`make demo`)") == \
      "results-on-generated-data-make-demo"
  assert slug("Offline distillation: the teacher computed once (`--teacher_cache`)") \
      == "offline-distillation-the-teacher-computed-once---teacher_cache"
  assert slug("The original's MixNeXtVLAD") == "the-originals-mixnextvlad"
  assert slug("Students: which to serve (`tools/student_table.py`)") == \
      "students-which-to-serve-toolsstudent_tablepy"


@pytest.mark.parametrize("path", [README] + PAGES,
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_and_anchor_resolves(path):
  broken = []
  for target in links(path):
    if _is_external(target):
      continue
    file_part, _, anchor = target.partition("#")
    resolved = (os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                if file_part else path)
    if not os.path.exists(resolved):
      broken.append("%s: no file %s" % (target, os.path.relpath(resolved, ROOT)))
    elif anchor and (not resolved.endswith(".md") or anchor not in anchors(resolved)):
      broken.append("%s: no heading with anchor #%s in %s"
                    % (target, anchor, os.path.relpath(resolved, ROOT)))
  assert not broken, "%s:\n  %s" % (os.path.relpath(path, ROOT), "\n  ".join(broken))


def test_the_readme_is_at_most_300_lines():
  with open(README, encoding="utf-8") as f:
    count = sum(1 for _ in f)
  assert count <= README_MAX_LINES, (
      "README.md has %d lines (at most %d): move detail to a page in docs/"
      % (count, README_MAX_LINES))


def test_every_docs_page_is_linked_from_the_readme():
  assert PAGES, "docs/ holds no pages"
  linked = set()
  for target in links(README):
    if not _is_external(target):
      file_part = target.partition("#")[0]
      if file_part:
        linked.add(os.path.normpath(os.path.join(ROOT, file_part)))
  missing = [os.path.relpath(p, ROOT) for p in PAGES if p not in linked]
  assert not missing, "README.md links no %s" % ", ".join(missing)


def test_every_docs_page_opens_with_what_it_answers():
  for path in PAGES:
    lines = [line for line in _prose_lines(path) if line.strip()]
    assert HEADING.match(lines[0]) and not HEADING.match(lines[1]), (
        "%s should open with a title and a sentence saying what it answers"
        % os.path.relpath(path, ROOT))
