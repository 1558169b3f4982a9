"""Moving arrays between the host and (multi-process, sharded) devices: the one gather and the one
placement every part of the package uses."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def fetch(tree):
  """Host numpy copies of (possibly multi-process, sharded) arrays, on every process.

  With several processes the arrays are global, spread over all of them, and this is a collective:
  every process must call it (and every process gets the whole arrays).
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def place(host_tree, like):
  """Arrays with the shapes, dtypes and shardings of `like`'s, filled from the host copies
  `host_tree` (the same on every process: each fills its own shards). A new buffer per call, so it
  may be donated."""
  return jax.tree.map(
      lambda x, old: jax.make_array_from_callback(
          old.shape, old.sharding, lambda index: np.asarray(x, old.dtype)[index]),
      host_tree, like)
