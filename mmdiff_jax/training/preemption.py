"""Preemption: SIGTERM (what TPU, SLURM and cloud schedulers send before they take a machine) turns
into a request that the training loop honours after the current step, by saving and exiting."""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopRequest:
  """Turns SIGTERM (a preemption notice) into a request that the loop honours after the current step.

  With several processes, the request is agreed on by all of them (any process asked), so that every
  process saves the same step.
  """

  def __init__(self):
    self._asked = False

  @contextlib.contextmanager
  def on_sigterm(self):
    if threading.current_thread() is not threading.main_thread():
      yield self  # signal handlers can only be installed from the main thread
      return
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_asked", True))
    try:
      yield self
    finally:
      signal.signal(signal.SIGTERM, previous)

  def requested(self, *, synchronise: bool) -> bool:
    """Single process: whether SIGTERM arrived. Several: only when `synchronise` (a collective)."""
    if jax.process_count() == 1:
      return self._asked
    if not synchronise:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self._asked))))
