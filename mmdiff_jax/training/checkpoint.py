"""Orbax checkpoints of the train state and the input position, saved asynchronously, last K kept.

Layout: WORKDIR/checkpoints/<step>/{state, data, integrity}. Orbax writes each step into a temporary
directory and renames it when complete, so an interrupted save is never listed or restored.

Integrity: a state is saved only when every value in it is finite, with a checksum per array
("integrity": the sum of its bits modulo 2**32, computed on the host from each process's shards) and a
digest of the input position. A restored checkpoint is checked against all three; one that fails
(orbax cannot read it, or its values are not what was saved) is moved to
WORKDIR/checkpoints/corrupt/<step>, never deleted, once an older one restores intact (if none does,
all stay), and the next older one is tried.
Rotation never deletes the newest checkpoint that was read back intact: each save first reads back the
previous one, and only steps older than the newest intact one are rotated away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from mmdiff_jax.errors import BadValueError, StorageError
from mmdiff_jax.training import distributed

CORRUPT_DIR = "corrupt"
_ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"


class NonFiniteStateError(FloatingPointError):
  """The state to be saved holds NaN or infinite values (it was not saved)."""


class ModelMismatchError(BadValueError):
  """A checkpoint holds arrays of other names or shapes than the model being restored."""


def _leaf_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _owned_blocks(x) -> list[np.ndarray]:
  """The host copies of the parts of leaf `x` that this process counts: each element of a global
  jax.Array once over all processes (the shards that hold replica 0 of it); other leaves on process 0
  only. (An array that each process holds separately, not one global array, would be counted once
  per process; a train state has none.)"""
  if isinstance(x, jax.Array):
    return [np.asarray(shard.data) for shard in x.addressable_shards if shard.replica_id == 0]
  return [np.asarray(x)] if jax.process_index() == 0 else []


def _bit_sum(block: np.ndarray) -> int:
  """The sum of the block's bits, as unsigned integers of its width (64-bit values as two 32-bit
  words, so that every bit counts), modulo 2**32."""
  flat = block.reshape(-1)
  words = (flat.view(np.uint32) if flat.dtype.itemsize == 8
           else flat.view(np.dtype(f"uint{flat.dtype.itemsize * 8}")).astype(np.uint32))
  return int(np.sum(words, dtype=np.uint32))


def integrity(tree) -> tuple[bool, dict[str, int]]:
  """(all floating values finite, {leaf name: the sum of the leaf's bits modulo 2**32}).

  The sums wrap around modulo 2**32: integer addition is associative, so the result does not depend
  on how the array is sharded or reduced, and any single flipped bit changes it. Each process sums the
  shards it owns on the host and the processes add their sums. A jitted version of this took ~5 s of
  XLA compile per run for the ~700 arrays of a small train state, for milliseconds of work; the cost
  here is a copy of the state to the host at each save (which orbax makes too, to write it). With
  several processes, every process must call it.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  finite, sums = True, np.zeros(len(leaves), np.uint32)
  for i, (_, x) in enumerate(leaves):
    for block in _owned_blocks(x):
      if jnp.issubdtype(block.dtype, jnp.floating):
        finite = finite and bool(np.all(np.isfinite(block)))
      sums[i] = (int(sums[i]) + _bit_sum(block)) % 2**32
  if jax.process_count() > 1:  # uint32 travels as it is (JAX would narrow uint64 without x64)
    finite = bool(np.all(multihost_utils.process_allgather(np.asarray(finite))))
    gathered = np.asarray(multihost_utils.process_allgather(sums), np.uint64)
    sums = np.sum(gathered, axis=0) % 2**32
  return finite, {_leaf_name(path): int(total) for (path, _), total in zip(leaves, sums)}


def _json_digest(value: Any) -> str:
  """sha256 of a JSON value, keys sorted (the data-iterator state, as saved and as read back)."""
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _is_model_mismatch(error: Exception) -> bool:
  """Whether orbax refused the restore because the requested tree differs from the stored one (a
  model change, not damage: the checkpoint stays where it is)."""
  message = str(error)
  return isinstance(error, ValueError) and any(words in message for words in (
      "Structure mismatch",  # the requested tree has a leaf the stored one lacks
      "tree structures do not match",  # the stored tree has a leaf the requested one lacks
      "is not compatible with the stored shape"))


class Checkpointer:
  """Saves and restores (train state, data-iterator state) pairs under `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int, async_save: bool = True):
    # Local paths are made absolute; URLs (gs://...) go to orbax as they are.
    self.directory = str(directory) if "://" in str(directory) else os.path.abspath(directory)
    self._max_to_keep = max_to_keep
    self._intact: int | None = None  # the newest step read back intact by this object
    self._abstract = None  # the saved state's shapes and shardings (to read the last save back)
    self._closed = False
    # Rotation is ours (_rotate), so that it can spare the newest intact step.
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_names=("state", "data", "integrity"),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict | None) -> None:
    """Starts an (async) save of `state` and the input position at `step`.

    Raises NonFiniteStateError (saving nothing) when `state` holds non-finite values. Before the save,
    the previous checkpoint is read back and checked, and rotation removes the steps beyond the newest
    `max_to_keep`, sparing the newest intact one. A failed earlier async save (disk full, workdir gone)
    surfaces here or in wait(), as an OSError that names the directory and the checkpoints still
    intact.
    """
    finite, sums = integrity(state)
    if not finite:
      raise NonFiniteStateError(
          f"the train state at step {step} holds non-finite values; it was not saved (the complete "
          f"checkpoints {self.all_steps()} in {self.directory} are unchanged)")
    self.wait()
    self._abstract = _abstract(state)
    self._verify_and_rotate(self._abstract, keep=self._max_to_keep - 1)
    with self._explain_failures():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {}),
          integrity=ocp.args.JsonSave({"finite": True, "checksums": sums,
                                       "data_digest": _json_digest(data_state or {})})))

  def _verify_and_rotate(self, abstract: Any, *, keep: int) -> None:
    """Reads back the newest step if it is newer than the newest intact one (moving it aside if
    damaged), then deletes all but the newest `keep` steps and the newest intact one."""
    steps = self.all_steps()
    if steps and (self._intact is None or steps[-1] > self._intact):
      # This run's own last save: if it reads back damaged, the state in memory is intact.
      _, damaged = self._first_intact(abstract, steps[-1:])
      self._report_damaged(damaged, move=True, note=print)
      steps = self.all_steps()
    if self._intact is None:
      return  # nothing read back intact yet: nothing may go
    for step in steps[:max(len(steps) - keep, 0)]:
      if step < self._intact:
        self._manager.delete(step)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores into `abstract_state`'s shapes, dtypes and shardings (any mesh shape)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"] or {})

  def restore_newest_intact(self, abstract_state: Any, *, move_damaged: bool,
                            note: Callable[[str], None] = print) -> tuple[int, Any, dict] | None:
    """(step, state, data state) of the newest checkpoint that restores and checks out; None when
    there is no checkpoint.

    A damaged one is reported through `note` (one line) and, with `move_damaged`, moved to
    `<directory>/corrupt/<step>` once an older one has restored intact. Raises ModelMismatchError
    when a checkpoint holds another model (nothing is moved), and OSError when none restores (all
    are left in place: what fails alike on every checkpoint may be this run's, not theirs). With
    several processes, every process must call it.
    """
    steps = self.all_steps()
    if not steps:
      return None
    found, damaged = self._first_intact(abstract_state, steps[::-1])
    if found is None:
      self._report_damaged(damaged, move=False, note=note)
      raise StorageError(
          f"No checkpoint in {self.directory} ({steps}) restores intact; all were left in place. If "
          f"this run's config differs from theirs, run with theirs (the workdir's config.json); if "
          f"they are damaged, move them away (e.g. to {os.path.join(self.directory, CORRUPT_DIR)}) "
          f"to start from step 0, or put back intact copies.")
    self._report_damaged(damaged, move=move_damaged, note=note)
    return found

  def _first_intact(self, abstract_state, steps) -> tuple[tuple | None, list[tuple[int, str]]]:
    """((step, state, data state) of the first of `steps` that restores intact, or None; the
    [(step, problem)] of those before it that did not). Moves nothing."""
    damaged = []
    for step in steps:
      problem, restored = self._check(step, abstract_state)
      if problem is None:
        self._intact = step
        return (step, *restored), damaged
      damaged.append((step, problem))
    return None, damaged

  def _report_damaged(self, damaged, *, move: bool, note: Callable[[str], None]) -> None:
    for step, problem in damaged:
      if move:
        note(f"Checkpoint {step} is damaged ({problem}): moved to {self._move_aside(step)}.")
      else:
        note(f"Checkpoint {step} is damaged ({problem}).")

  def _check(self, step: int, abstract_state) -> tuple[str | None, tuple | None]:
    """(None, (state, data state)) when `step` restores and matches what was saved, else (the
    problem in a few words, None). All processes agree on the outcome."""
    problem = restored = stored = None
    try:
      restored = self.restore(step, abstract_state)
      stored = self._stored_integrity(step)
    except Exception as e:  # orbax/tensorstore raise many types; any is damage, but a model change
      if _is_model_mismatch(e):
        raise ModelMismatchError(
            f"Checkpoint {step} in {self.directory} holds another model than this config builds "
            f"({str(e).splitlines()[0][:300]}). Give the run's model keys (its config.json) or use "
            f"another --workdir.") from e
      problem = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no message'}"
    if jax.process_count() > 1:  # one process's read error must stop all before the collective
      distributed.barrier(f"checkpoint_read_{step}")
      failed = bool(np.any(multihost_utils.process_allgather(np.asarray(problem is not None))))
      problem = problem or ("unreadable on another process" if failed else None)
    if problem is not None:
      return problem, None
    finite, sums = integrity(restored[0])
    if not finite:
      return "it holds non-finite values", None
    if stored is not None:
      differing = [k for k, v in stored["checksums"].items() if sums.get(k) != v]
      if differing or set(sums) != set(stored["checksums"]):
        return (f"checksums differ from those saved in {len(differing)} arrays, e.g. "
                f"{differing[:2]}"), None
      if "data_digest" in stored and _json_digest(restored[1]) != stored["data_digest"]:
        return "the input position differs from the one saved", None
    return None, restored

  def _stored_integrity(self, step: int) -> dict | None:
    """The checksums saved with `step`; None for checkpoints written before they were saved."""
    if not (epath.Path(self.directory) / str(step) / "integrity").exists():
      return None
    return self._manager.restore(step, args=ocp.args.Composite(
        integrity=ocp.args.JsonRestore()))["integrity"]

  def _move_aside(self, step: int) -> str:
    """Moves `<directory>/<step>` to `<directory>/corrupt/<step>[.N]` (process 0); returns that."""
    corrupt = epath.Path(self.directory) / CORRUPT_DIR
    target = corrupt / str(step)
    suffix = 1
    while target.exists():
      target, suffix = corrupt / f"{step}.{suffix}", suffix + 1
    if jax.process_index() == 0:
      corrupt.mkdir(parents=True, exist_ok=True)
      (epath.Path(self.directory) / str(step)).rename(target)
    distributed.barrier(f"checkpoint_moved_aside_{step}")
    self._manager.reload()
    return str(target)

  def remove_stale_tmp(self, note: Callable[[str], None] = print) -> list[str]:
    """Deletes orbax's temporary step directories left by an interrupted save (process 0). Only
    safe while no other run writes here: call it with the workdir lock held."""
    root = epath.Path(self.directory)
    stale = sorted(str(p) for p in root.glob(f"*{_ORBAX_TMP_MARKER}*")) if root.exists() else []
    if stale and jax.process_index() == 0:
      for path in stale:
        epath.Path(path).rmtree()
      note(f"Removed {len(stale)} unfinished checkpoint save(s) left by an interrupted run: {stale}")
    return stale

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
      raise StorageError(
          f"Writing a checkpoint under {self.directory} failed ({reason}). "
          f"The complete checkpoints {self.all_steps()} are intact and the next run resumes from "
          f"the newest; free disk space or choose another --workdir.") from e

  def wait(self) -> None:
    with self._explain_failures():
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the last save, reads it back, rotates, and closes (once: later calls do nothing)."""
    if self._closed:
      return
    self._closed = True
    self.wait()
    if self._abstract is not None:
      self._verify_and_rotate(self._abstract, keep=self._max_to_keep)
    self._manager.close()


def _abstract(state: Any) -> Any:
  """Shapes, dtypes and shardings of `state` (what it restores into)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)

