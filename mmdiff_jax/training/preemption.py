"""Preemption: SIGTERM (what TPU, SLURM and cloud schedulers send before they take a machine), and in
a single process Ctrl-C (SIGINT), turn into a request that the training loop honours after the current
step, by saving and exiting."""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
from jax.experimental import multihost_utils


class StopRequest:
  """Turns SIGTERM (a preemption notice) into a request that the loop honours after the current step.

  One process: a SIGTERM handler sets the request, read after every step; so does the first Ctrl-C
  (SIGINT), where a second one interrupts at once (KeyboardInterrupt, losing the steps since the last
  save). Several: JAX's preemption service (on by default with jax.distributed) catches SIGTERM on any
  process, tells the others, and picks the first step that no process has passed yet; every process
  asks after every step, without a collective, and all of them stop at that step, so they save the
  same one. Ctrl-C there is the launcher's to handle.
  """

  def __init__(self, *, first_step: int = 0):
    """first_step: the step the loop starts after (the resumed one; the same on every process)."""
    self._asked = False
    self._first_step = int(first_step)
    self.signal_name = "SIGTERM"  # what asked to stop (a preemption unless Ctrl-C)

  @contextlib.contextmanager
  def on_signals(self):
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
      # Several processes: JAX's preemption notifier holds SIGTERM, which a Python handler would
      # replace. (Signal handlers can only be installed from the main thread.)
      yield self
      return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_asked", True))
    signal.signal(signal.SIGINT, self._on_ctrl_c)
    try:
      yield self
    finally:
      for signum, handler in previous.items():
        signal.signal(signum, handler)

  def _on_ctrl_c(self, signum, frame):
    del frame
    self._asked, self.signal_name = True, "Ctrl-C (SIGINT)"
    signal.signal(signum, signal.default_int_handler)  # a second Ctrl-C interrupts at once
    print("Ctrl-C: saving a checkpoint after this step, then exiting (Ctrl-C again to stop at once, "
          "losing the steps since the last save)", flush=True)

  def requested(self, *, step: int) -> bool:
    """Whether to save at `step` and stop; ask after every step (several processes: with the same
    steps on each)."""
    if jax.process_count() == 1:
      return self._asked
    # JAX counts the steps of this run from 1: a notice before the first one (while a resumed run
    # restores or compiles) makes step 1 the stop, which an absolute step would never equal.
    return multihost_utils.reached_preemption_sync_point(step - self._first_step)
