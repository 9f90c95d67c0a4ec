"""One writer per workdir: an exclusive lock that a run writing into a workdir (training,
fine-tuning into it, n-gram estimation into it) takes before it writes anything.

The lock is WORKDIR/writer.lock (workdir.WRITER_LOCK_FILE), a JSON record of its holder: host,
pid, start time, command and (on a bucket) a heartbeat. A second writer is refused at once with
`WorkdirLocked`, whose message names the holder. Readers (decode.py, `bpdjax.load`) never take
it: checkpoints appear whole (orbax renames a finished step into place), so a reader needs no
lock.

Local folder (or a network file system): the file is held with flock(2), which the kernel
releases when the holder exits, however it exits. A lock whose holder is gone (kill -9, a
preempted pod) is therefore free: the next writer takes it over, with a warning naming the old
holder. A clean release empties the file.

Bucket (gs://): there are no flocks, so the lock is an object created only if absent (a
generation precondition, ifGenerationMatch=0) and refreshed by a heartbeat thread every
lease / 4 seconds; a lock whose heartbeat is older than its lease (BPDJAX_LOCK_LEASE_S, default
600 s) belongs to a holder that is gone and is taken over with a warning. A clean release
deletes the object.

Multi-host runs: process 0 holds the lock for the run; every process learns whether it got it.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Iterator, Optional

from absl import logging
import fsspec
import jax
from jax.experimental import multihost_utils
import numpy as np

from bpdjax import fileio
from bpdjax import workdir as workdir_lib

LEASE_ENV = "BPDJAX_LOCK_LEASE_S"


class WorkdirLocked(RuntimeError):
  """Another run writes into this workdir; the message names it."""


def _lease_seconds() -> float:
  value = os.environ.get(LEASE_ENV, "")
  try:
    lease = float(value) if value else 600.0
  except ValueError:
    raise ValueError(f"{LEASE_ENV}={value!r} is not a number of seconds") from None
  if lease <= 0:
    raise ValueError(f"{LEASE_ENV}={value!r} must be > 0 seconds")
  return lease


def _record(what: str) -> dict:
  now = time.time()
  return {"host": socket.gethostname(), "pid": os.getpid(), "what": what,
          "command": " ".join(sys.argv)[:500],
          "started": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(
              timespec="seconds"),
          "heartbeat": now, "token": uuid.uuid4().hex}


def describe(holder: dict) -> str:
  """"pid 123 on host h (train.py, started 2026-...)" of a lock record."""
  return (f"pid {holder.get('pid')} on host {holder.get('host')!r} ({holder.get('what')}, "
          f"started {holder.get('started')}: {holder.get('command')!r})")


def _parse(text: str) -> Optional[dict]:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


class WorkdirLock:
  """The writer lock of `workdir` (module docstring). Use as a context manager or call
  acquire() / release(). `what` names the writer in the record (e.g. "train.py")."""

  def __init__(self, workdir: str, what: str):
    self.workdir = workdir
    self.what = what
    self.path = workdir_lib.path(workdir, workdir_lib.WRITER_LOCK_FILE)
    self.record: Optional[dict] = None
    self._fd: Optional[int] = None
    self._stop = threading.Event()
    self._heartbeat: Optional[threading.Thread] = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def _refused(self, holder: Optional[dict]) -> WorkdirLocked:
    who = describe(holder) if holder else "another process (its record is unreadable)"
    return WorkdirLocked(
        f"Workdir {self.workdir!r} is being written by {who}: one writer per workdir. Wait for "
        f"it to finish or stop it, or use another workdir (the lock is {self.path}).")

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirLocked naming its holder."""
    self.record = _record(self.what)
    if fileio.is_remote(self.workdir):
      self._acquire_object()
    else:
      self._acquire_file()

  # --- local: flock
  def _acquire_file(self) -> None:
    try:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # A read-only or full workdir: say where.
      raise OSError(e.errno, f"Cannot create the writer lock of workdir {self.workdir!r} (is it "
                    f"writable?): {e.strerror}", self.path) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      text = os.pread(fd, 1 << 16, 0).decode("utf-8", "replace")
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise self._refused(_parse(text)) from None
      raise
    previous = os.pread(fd, 1 << 16, 0).decode("utf-8", "replace").strip()
    if previous:  # Not released: its holder is gone (the kernel dropped its flock).
      old = _parse(previous)
      logging.warning("Taking over the writer lock of %s: %s is gone without releasing it "
                      "(killed? or the workdir was copied with its lock file).", self.workdir,
                      describe(old) if old else "its holder")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(self.record).encode("utf-8"), 0)
    os.fsync(fd)
    self._fd = fd

  # --- bucket: an object created only if absent, with a heartbeat
  def _read_object(self) -> Optional[dict]:
    try:
      return _parse(fileio.read_text(self.path))
    except FileNotFoundError:
      return None

  def _acquire_object(self) -> None:
    path = fileio.as_path(self.path)
    lease = _lease_seconds()
    if path.exists():
      holder = self._read_object()
      age = time.time() - float((holder or {}).get("heartbeat", 0))
      if holder and age < float(holder.get("lease", lease)):
        raise self._refused(holder)
      logging.warning("Taking over the writer lock of %s: %s sent no heartbeat for %.0f s "
                      "(lease %.0f s), it is gone.", self.workdir,
                      describe(holder) if holder else "its holder", age, lease)
      path.unlink()
    self.record["lease"] = lease
    fs = fsspec_filesystem(self.path)
    try:  # ifGenerationMatch=0: fails if another writer created it since.
      fs.pipe_file(self.path, json.dumps(self.record).encode("utf-8"), mode="create")
    except FileExistsError:
      raise self._refused(self._read_object()) from None
    self._heartbeat = threading.Thread(target=self._beat, args=(lease / 4,), daemon=True,
                                       name="bpdjax-lock-heartbeat")
    self._heartbeat.start()

  def _beat(self, every: float) -> None:
    while not self._stop.wait(every):
      try:
        holder = self._read_object()
        if not holder or holder.get("token") != self.record["token"]:
          logging.error("The writer lock %s is no longer this run's (now %s).", self.path,
                        describe(holder) if holder else "gone")
          return
        self.record["heartbeat"] = time.time()
        fileio.write_atomic(self.path, json.dumps(self.record))
      except Exception as e:  # pylint: disable=broad-except  # Retried at the next beat.
        logging.warning("Writer lock heartbeat of %s failed: %s", self.path, e)

  def release(self) -> None:
    """Lets the lock go (idempotent)."""
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    if self._heartbeat is not None:
      self._stop.set()
      self._heartbeat.join(timeout=5)
      self._heartbeat = None
      holder = self._read_object()
      if holder and holder.get("token") == self.record["token"]:
        fileio.remove(self.path)


def fsspec_filesystem(url: str):
  """The fsspec file system of a URL (gcsfs for gs://), configured as `fileio` configures it."""
  return fsspec.filesystem(fileio.scheme(url))


@contextlib.contextmanager
def hold(workdir: str, what: str) -> Iterator[Optional[WorkdirLock]]:
  """Holds the writer lock of `workdir` for a run: process 0 takes it, and every process
  raises WorkdirLocked when process 0 could not (so no process starts writing)."""
  lock, error = None, None
  if jax.process_index() == 0:
    lock = WorkdirLock(workdir, what)
    try:
      lock.acquire()
    except WorkdirLocked as e:
      error, lock = e, None
  if jax.process_count() > 1:
    refused = multihost_utils.process_allgather(np.int32(error is not None))
    if error is None and np.any(refused):
      error = WorkdirLocked(f"Workdir {workdir!r}: process 0 could not take the writer lock "
                            "(see its log for the holder)")
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
