"""Runs the command-line entry points with TCMalloc as the allocator, where it is installed.

On every call, XLA's CPU runtime allocates a fresh temporary buffer for the whole program (182 MB for
the `small` training step), and its convolutions allocate scratch buffers of 40-65 MB. glibc's malloc
serves blocks that large with mmap and returns them with munmap, so every step faults in about 45,000
new pages. On a 2-core AMD EPYC that cost 80-95 ms of kernel time per 280 ms step. TCMalloc keeps freed
blocks and reuses them. Under it the step was 1.21-1.24x faster (A/Bs of alternating worker processes)
and XLA's compile took about a fifth less time; BENCHMARKS.md has the figures. glibc's own settings cannot
do the same: a single arena avoids the mmaps but serialises XLA's threads (the step then took 1.1-1.5x
as long).

A process cannot change its allocator once it runs, so the entry points (`python -m mmdiff_jax.main`,
`python -m mmdiff_jax.evaluate` and the benchmarks) call `rerun_with_tcmalloc()` first. It replaces the
process with the same command, with TCMalloc on LD_PRELOAD. It does nothing where TCMalloc is not
installed (Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`), where one is preloaded already, off
Linux, or with MMDIFF_JAX_NO_TCMALLOC=1. Importing the library never re-runs anything: in a notebook or
a script of your own, start Python with LD_PRELOAD=libtcmalloc_minimal.so.4 for the same effect.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Callable, Mapping

LIBRARY_NAMES = ("tcmalloc_minimal", "tcmalloc")  # libtcmalloc_minimal.so.4 first: no profiler in it
OPT_OUT = "MMDIFF_JAX_NO_TCMALLOC"


def find_tcmalloc() -> str | None:
  """The installed TCMalloc's file name as the dynamic loader finds it (e.g. libtcmalloc_minimal.so.4),
  or None."""
  for name in LIBRARY_NAMES:
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def preloaded(environ: Mapping[str, str]) -> bool:
  """Whether LD_PRELOAD in `environ` names a TCMalloc already."""
  return "tcmalloc" in environ.get("LD_PRELOAD", "")


def opted_out(environ: Mapping[str, str]) -> bool:
  """Whether `environ` sets MMDIFF_JAX_NO_TCMALLOC (to anything but "" or "0")."""
  return environ.get(OPT_OUT, "") not in ("", "0")


def preload_environment(environ: Mapping[str, str], *, library: str | None = None,
                        platform: str = sys.platform) -> dict[str, str] | None:
  """A copy of `environ` with TCMalloc (`library`, default: the installed one) added to LD_PRELOAD, or
  None where nothing should change: opted out, a TCMalloc preloaded already, not Linux, none installed."""
  if opted_out(environ) or preloaded(environ) or not platform.startswith("linux"):
    return None
  library = library or find_tcmalloc()
  if library is None:
    return None
  return dict(environ, LD_PRELOAD=" ".join(filter(None, [environ.get("LD_PRELOAD", ""), library])))


def rerun_with_tcmalloc(*, environ: Mapping[str, str] = os.environ,
                        execve: Callable[..., None] = os.execve) -> None:
  """Replaces this process with its own command line under TCMalloc (see the module docstring), or
  returns where `preload_environment` changes nothing. Call it first in an entry point, before any
  work that would be lost; it needs the command to be re-runnable (a module or a script, not stdin)."""
  environment = preload_environment(environ)
  if environment is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  execve(sys.executable, sys.orig_argv, environment)


def missing_hint(environ: Mapping[str, str] = os.environ) -> str | None:
  """One console line for CPU runs without TCMalloc (how much it costs and how to get it), or None."""
  if preloaded(environ) or opted_out(environ):
    return None
  return ("TCMalloc is not in use: training steps on the CPU take about 1.2x as long (Debian/Ubuntu: "
          "apt-get install libtcmalloc-minimal4; see mmdiff_jax/tcmalloc.py)")
