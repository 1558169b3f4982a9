"""Bringing arrays to the host: the one gather every part of the package uses."""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils


def fetch(tree):
  """Host numpy copies of (possibly multi-process, sharded) arrays, on every process.

  With several processes the arrays are global, spread over all of them, and this is a collective:
  every process must call it (and every process gets the whole arrays).
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
