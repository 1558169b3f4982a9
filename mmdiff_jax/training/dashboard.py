"""TensorBoard event files in WORKDIR/tensorboard: every metrics row's scalars and every sample grid.

WORKDIR/metrics.jsonl stays the canonical record; the event files are a view of it for watching a
run (`tensorboard --logdir WORKDIR/tensorboard`). tensorboardX writes them without TensorFlow. Only
process 0 writes. gs:// (and any other path etils.epath opens) works.
"""

from __future__ import annotations

import io
import numbers
import os
import re
from typing import Any

import jax
import numpy as np
from etils import epath
from PIL import Image

SUBDIR = "tensorboard"


class _EpathRecordFile:
  """A write-only event file on any filesystem epath knows (gs:// through gcsfs, like the rest of
  the package; tensorboardX's own gs:// writer needs google-cloud-storage). Object stores cannot
  append, so each flush rewrites the file from the buffer (tensorboardX's gs:// writer does too)."""

  def __init__(self, path: str):
    self.path, self.buffer = epath.Path(path), io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    self.path.write_bytes(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EpathRecordFiles:
  """tensorboardX's writer-factory interface over _EpathRecordFile."""

  def open(self, path: str) -> _EpathRecordFile:
    return _EpathRecordFile(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _grid_tag(path: str) -> str:
  """samples/joint_step200.png -> "samples/joint" (one image series per kind of grid)."""
  return "samples/" + re.sub(r"_step\d+$", "", os.path.splitext(os.path.basename(path))[0])


class Dashboard:
  """Scalars and images for TensorBoard, from process 0 (a no-op on the others)."""

  def __init__(self, workdir: str):
    self.logdir = os.path.join(workdir, SUBDIR)
    self._writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter, record_writer  # pylint: disable=g-import-not-at-top
      scheme = self.logdir.split("://", 1)[0] if "://" in self.logdir else None
      if scheme:
        record_writer.register_writer_factory(scheme, _EpathRecordFiles())
      self._writer = SummaryWriter(logdir=self.logdir)

  def scalars(self, step: int, metrics: dict[str, Any]) -> None:
    """Every real number in `metrics` (a metrics.jsonl row) under its key; other values are skipped
    (lists, strings, like "eval/evaluated")."""
    if self._writer is None:
      return
    for key, value in metrics.items():
      value = np.asarray(value).item() if np.ndim(value) == 0 else value
      if isinstance(value, numbers.Real) and not isinstance(value, bool):
        self._writer.add_scalar(key, float(value), global_step=int(step))
    self._writer.flush()

  def images(self, step: int, paths: list[str]) -> None:
    """The PNG sample grids at `paths` (save_sample_grids'), one image series per kind of grid."""
    if self._writer is None:
      return
    for path in paths:
      image = np.asarray(Image.open(io.BytesIO(epath.Path(path).read_bytes())).convert("RGB"))
      self._writer.add_image(_grid_tag(path), image, global_step=int(step), dataformats="HWC")
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
