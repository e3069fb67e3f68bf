"""Leases: builders sharing a directory claim its shards, each for a while it renews.

A lease is a small JSON file (`.lease-NNNNN.json`: the holder, host:pid:random, and an
expiry in Unix time) beside the shard it claims. Its builder renews it from a background
thread while it computes the shard and removes it when done; another builder takes a
shard only when it has no lease or an expired one, so a builder that dies leaves its
shard to be taken over LEASE_SECONDS after its last renewal. Expiry compares wall
clocks: the machines' clocks must agree within a small part of a lease (NTP does).

On a local or NFS disk a lease is created atomically (a complete file hard-linked to
its name) and an expired one taken over atomically (a rename that one builder wins).
Object stores (gs://) have no atomic create-if-absent, as they have no lock
(run_dir.lock): there a builder writes its lease, waits SETTLE_SECONDS and reads it
back, and two builders may still both take a shard in a race. Callers make such a
duplicate harmless (teacher_cache: a shard's final rename is atomic).
"""

import json
import os
import socket
import threading
import time
import uuid

import tensorflow as tf

import file_io

# How long a builder's claim on a shard lasts without renewal (renewed every quarter of
# it); a shard whose builder died is taken over this long after its last renewal.
LEASE_SECONDS = 120.0
LEASE_ENV = "YT8M_CACHE_LEASE_SECONDS"  # overrides LEASE_SECONDS (a testing aid)
# On an object store, how long a builder waits after writing a lease before reading it
# back to see whether a racing builder's write replaced it (longer than a write takes).
SETTLE_SECONDS = 0.5


def lease_seconds():
  """How long a lease lasts: LEASE_SECONDS, or $YT8M_CACHE_LEASE_SECONDS."""
  return float(os.environ.get(LEASE_ENV) or LEASE_SECONDS)


def create(path, text):
  """Writes `text` to `path` unless a file is there; whether this call created it.

  Locally (and on NFS) atomic: a complete temporary file hard-linked to `path`. On an
  object store there is no create-if-absent: a file written between the check and the
  write is replaced (the callers read back what they wrote).
  """
  if file_io.is_local(path):
    temporary = file_io.temporary_name(path)
    with open(temporary, "w") as f:
      f.write(text)
    try:
      os.link(temporary, path)
      return True
    except FileExistsError:
      return False
    finally:
      os.remove(temporary)
  if tf.io.gfile.exists(path):
    return False
  with file_io.atomic_output(path) as f:
    f.write(text)
  return True


class Leases(object):
  """One builder's leases on the shards of a cache directory (`.lease-NNNNN.json`:
  {"holder", "expires": Unix time}); see the module docstring.

  holder: this builder's name (host:pid:random); seconds: how long a lease lasts.
  """

  def __init__(self, directory, seconds=None):
    self.directory = directory
    self.seconds = lease_seconds() if seconds is None else seconds
    self.holder = "%s:%d:%s" % (socket.gethostname(), os.getpid(), uuid.uuid4().hex[:6])

  def path(self, index):
    """The lease file of shard `index`."""
    return os.path.join(self.directory, ".lease-%05d.json" % index)

  def read(self, index):
    """(the lease of shard `index` as a dict, its text), or (None, None) without one.
    An unreadable lease counts as expired."""
    try:
      with tf.io.gfile.GFile(self.path(index)) as f:
        text = f.read()
    except (FileNotFoundError, tf.errors.NotFoundError):
      return None, None
    try:
      return dict(json.loads(text)), text
    except (ValueError, TypeError):
      return {"holder": "?", "expires": 0}, text

  def _text(self):
    return json.dumps({"holder": self.holder, "expires": time.time() + self.seconds})

  def take(self, index):
    """Takes shard `index` when it has no lease or an expired one. Returns None when
    another builder holds it, else the holder of the expired lease taken over ("" for
    none)."""
    lease, seen = self.read(index)
    previous = ""
    if lease is not None:
      if lease.get("holder") == self.holder:
        return ""
      if float(lease.get("expires", 0)) > time.time():
        return None
      previous = str(lease.get("holder"))
      if not self._remove_expired(index, seen):
        return None
    if not create(self.path(index), self._text()):
      return None
    if not file_io.is_local(self.path(index)):
      time.sleep(min(SETTLE_SECONDS, self.seconds / 10))  # a racer's write lands
      if (self.read(index)[0] or {}).get("holder") != self.holder:
        return None
    return previous

  def _remove_expired(self, index, seen):
    """Removes the expired lease whose text is `seen`; False when another builder
    changed it meanwhile (renewed or taken over: theirs is kept)."""
    path = self.path(index)
    if not file_io.is_local(path):
      tf.io.gfile.remove(path)  # no compare-and-delete: a racer may lose its lease
      return True
    tomb = file_io.temporary_name(path, ".expired")
    try:
      os.rename(path, tomb)
    except FileNotFoundError:
      return True
    with open(tomb) as f:
      ours = f.read() == seen
    if not ours:  # a fresh lease renamed away: put it back
      try:
        os.link(tomb, path)
      except FileExistsError:
        pass
    os.remove(tomb)
    return ours

  def renew(self, index):
    """Extends this builder's lease of shard `index`; False when it is not ours any
    more (taken over after it expired)."""
    lease, _ = self.read(index)
    if lease is None or lease.get("holder") != self.holder:
      return False
    file_io.write_json(self.path(index), json.loads(self._text()))
    return True

  def release(self, index):
    """Removes this builder's lease of shard `index` (another's stays)."""
    lease, _ = self.read(index)
    if lease is not None and lease.get("holder") == self.holder:
      try:
        tf.io.gfile.remove(self.path(index))
      except tf.errors.NotFoundError:
        pass

  def held(self, index):
    """A context manager: shard `index` renewed by a background thread while inside,
    released at the end."""
    return _Held(self, index)


class _Held(object):
  """Leases.held: renews one lease every quarter of its duration until exited."""

  def __init__(self, leases, index):
    self.leases, self.index = leases, index
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._renew, daemon=True)

  def _renew(self):
    while not self.stop.wait(self.leases.seconds / 4):
      try:
        if not self.leases.renew(self.index):
          print("Teacher cache: another builder took shard %d over (this builder was "
                "too slow to renew its lease); finishing it anyway" % self.index,
                flush=True)
          return
      except (OSError, tf.errors.OpError) as e:  # the next renewal tries again
        print("Teacher cache: renewing the lease of shard %d failed: %s"
              % (self.index, str(e).splitlines()[0]), flush=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *unused):
    self.stop.set()
    self.thread.join()
    self.leases.release(self.index)
