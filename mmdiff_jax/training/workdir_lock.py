"""One training run per workdir: WORKDIR/.lock, held by process 0 for the whole run.

Two runs on one workdir would delete each other's checkpoints in flight and interleave their metrics.
The lock is an exclusive `flock` on WORKDIR/.lock, which the operating system releases when its
process ends, however it ends; the file holds who took it (host, pid, since when, command). A run
that finds it locked stops at once naming the holder; one that finds it unlocked but not empty (its
holder was killed) takes it over with a note. The file is emptied, never deleted, on release: deleting
it would let a waiting run lock the deleted file while a third locks a new one.

With several processes only process 0 locks, and the others learn its outcome through the distributed
runtime's key-value store, not a device collective (a run holds the lock once, not once per
process). Object-store workdirs (gs://...) have no flock: they are not locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Callable, Iterator

import jax

from mmdiff_jax.errors import BusyError

LOCK_NAME = ".lock"


class WorkdirBusyError(BusyError):
  """Another run holds the workdir."""


def _holder_text(holder: dict) -> str:
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since "
          f"{holder.get('since_utc', '?')} UTC")


def _read_holder(fd: int) -> dict | None:
  """What the lock file says about its holder (None: empty, i.e. released cleanly)."""
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 1 << 16).decode(errors="replace").strip()
  if not text:
    return None
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return {"host": "?", "pid": "?", "since_utc": f"? (unreadable lock file: {text[:80]!r})"}


def acquire(workdir: str, *, note: Callable[[str], None] = print) -> int:
  """Locks `workdir` for this process; returns the lock's file descriptor (see release).

  Raises:
    WorkdirBusyError: another live process holds it (the message names it).
  """
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _read_holder(fd) or {}
    os.close(fd)
    raise WorkdirBusyError(
        f"--workdir={workdir} is in use by another run ({_holder_text(holder)}: "
        f"{holder.get('command', '?')}). Two runs on one workdir would delete each other's "
        f"checkpoints; wait for it to end, stop it, or choose another --workdir.") from None
  previous = _read_holder(fd)
  if previous is not None:
    note(f"Took over the lock of --workdir={workdir} from a run that ended without releasing it "
         f"({_holder_text(previous)}; its process is gone).")
  me = {"host": socket.gethostname(), "pid": os.getpid(),
        "since_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": " ".join(sys.argv)}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
  os.fsync(fd)
  return fd


def release(fd: int) -> None:
  """Empties the lock file (a clean end) and unlocks it."""
  os.ftruncate(fd, 0)
  fcntl.flock(fd, fcntl.LOCK_UN)
  os.close(fd)


_shared_count = 0


def _share_from_process_0(value: str, timeout_s: float = 1800) -> str:
  """Process 0's `value`, on every process (through the coordination service)."""
  global _shared_count
  from jax._src import distributed as jax_distributed  # the runtime client has no public handle
  client = jax_distributed.global_state.client
  _shared_count += 1
  key = f"mmdiff_jax/workdir_lock/{_shared_count}"
  if jax.process_index() == 0:
    client.key_value_set(key, "busy:" + value if value else "free")
    return value
  shared = client.blocking_key_value_get(key, int(timeout_s * 1000))
  return shared[len("busy:"):] if shared.startswith("busy:") else ""


@contextlib.contextmanager
def hold(workdir: str, *, note: Callable[[str], None] = print) -> Iterator[None]:
  """Holds the workdir's lock for the body: process 0 locks, every process raises if it could not.

  With several processes this is a collective: every process must enter it.
  """
  fd, error = None, None
  if jax.process_index() == 0 and "://" not in workdir:
    try:
      fd = acquire(workdir, note=note)
    except WorkdirBusyError as e:
      error = e
  if jax.process_count() > 1:
    message = _share_from_process_0(str(error) if error else "")
    error = error or (WorkdirBusyError(message) if message else None)
  if error is not None:
    raise error
  try:
    yield
  finally:
    if fd is not None:
      release(fd)
