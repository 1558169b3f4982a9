"""Orbax checkpoints of the train state and the input position, saved asynchronously, last K kept.

Layout: WORKDIR/checkpoints/<step>/{state, data}. Orbax writes each step into a temporary directory
and renames it when complete, so an interrupted save is never listed or restored.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores (train state, data-iterator state) pairs under `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int, async_save: bool = True):
    # Local paths are made absolute; URLs (gs://...) go to orbax as they are.
    self.directory = str(directory) if "://" in str(directory) else os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict | None) -> None:
    """Starts an (async) save of `state` and the input position at `step`.

    A failed earlier async save (disk full, workdir gone) surfaces here or in wait(), as an OSError
    that names the directory and the checkpoints still intact.
    """
    with self._explain_failures():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {})))

  @contextlib.contextmanager
  def _explain_failures(self):
    try:
      yield
    except (OSError, ValueError) as e:
      message = str(e)
      if not isinstance(e, OSError) and "RESOURCE_EXHAUSTED" not in message and (
          "Failed writing" not in message):
        raise
      reason = ("No space left on device" if "No space left on device" in message
                else message.splitlines()[-1][-300:])
      raise OSError(
          f"Writing a checkpoint under {self.directory} failed ({reason}). "
          f"The complete checkpoints {self.all_steps()} are intact and the next run resumes from "
          f"the newest; free disk space or choose another --workdir.") from e

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores into `abstract_state`'s shapes, dtypes and shardings (any mesh shape)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"] or {})

  def wait(self) -> None:
    with self._explain_failures():
      self._manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()


def is_primary() -> bool:
  return jax.process_index() == 0
