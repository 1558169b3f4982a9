"""Files replaced at once: a reader, or a run killed while writing, sees the old contents or the new,
never a part. Local paths are written beside the file and renamed over it; an object store's URL
(gs://...) is written directly, one upload being atomic by itself (a rename there is a copy).
A file that several processes read, merge into and replace (two evaluations of one workdir) is
merged under `merging`'s lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from typing import IO, Iterator

from etils import epath


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
  """Yields a file open for writing ("w" or "wb") beside `path`, renamed over `path` when the block
  ends without an exception (removed when it raises); for a URL, `path` itself."""
  if mode not in ("w", "wb"):
    raise ValueError(f"mode: got {mode!r}; expected 'w' or 'wb'")
  if "://" in os.fspath(path):
    with epath.Path(path).open(mode) as f:
      yield f
    return
  path = epath.Path(path)
  # A name of its own: two writers of one file must not write into each other's temporary file.
  tmp = path.parent / f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
  try:
    with tmp.open(mode) as f:
      yield f
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  tmp.replace(path)


def replace_file(path: str | os.PathLike, contents: str | bytes) -> None:
  """Replaces the file at `path` with `contents` at once (see `replacing`)."""
  with replacing(path, "wb" if isinstance(contents, bytes) else "w") as f:
    f.write(contents)


@contextlib.contextmanager
def merging(path: str | os.PathLike) -> Iterator[None]:
  """Holds an exclusive lock for reading, merging into and replacing `path`: a blocking `flock` on
  the hidden file .NAME.lock beside it, released when the block ends or the process dies. Without
  it, two processes that both read the old contents would each write back only their own values.
  Object-store URLs have no flock: not locked."""
  if "://" in os.fspath(path):
    yield
    return
  path = epath.Path(path)
  fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the lock
