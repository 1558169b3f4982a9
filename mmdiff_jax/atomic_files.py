"""Files replaced at once: a reader, or a run killed while writing, sees the old contents or the new,
never a part. Local paths are written beside the file and renamed over it; an object store's URL
(gs://...) is written directly, one upload being atomic by itself (a rename there is a copy)."""

from __future__ import annotations

import contextlib
import os
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
  tmp = path.parent / (path.name + ".tmp")
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
