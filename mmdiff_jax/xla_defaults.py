"""XLA settings the library measured to be faster: flags applied before any JAX backend starts, and
the compile options of programs that run once.

XLA's CPU backend fuses some operations into YNNPACK kernels by default. On the 2-core x86 machines
this library is developed on, with jaxlib 0.10.2 (the newest for Python 3.11), turning that off made
the `small` training step 1.24x faster on an AMD EPYC Zen 4 and 1.54x on a Zen 3 (A/Bs of alternating
worker processes; BENCHMARKS.md), and earlier A/Bs on an Intel Xeon agreed. With jaxlib 0.12.1 (Python
3.12) XLA's own setting was the faster, by 4% (two A/Bs on a Zen 4, 15 of 16 rounds), so the flag is
set only for jaxlib below 0.12 (YNN_OFF_BELOW). It is a CPU-backend flag: GPU and TPU programs are
unaffected.

An XLA flag that the installed jaxlib does not define aborts the process when the backend starts, and
this one is experimental (it may be renamed or removed), so it is set only where jaxlib's own binary
defines it. A user's XLA_FLAGS that already name it are left alone, and
MMDIFF_JAX_KEEP_XLA_FLAGS=1 turns all of this off.
"""

from __future__ import annotations

import functools
import glob
import importlib.metadata
import importlib.util
import mmap
import os
import re
from collections.abc import Callable, MutableMapping

YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_DEFAULTS = (f"--{YNN_FLAG}=",)  # an empty fusion-type list: no YNNPACK fusions
OPT_OUT = "MMDIFF_JAX_KEEP_XLA_FLAGS"
YNN_OFF_BELOW = (0, 12)  # jaxlib versions below this get CPU_DEFAULTS (measured: 0.10.2 and 0.12.1)


def jaxlib_binary() -> str | None:
  """Path of the installed jaxlib's largest shared library (the one holding XLA), or None."""
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or spec.origin is None:
    return None
  libraries = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.so"))
  return max(libraries, key=os.path.getsize) if libraries else None


def binary_defines(flag: str, binary: str | None) -> bool:
  """Whether the shared library `binary` contains the flag's name (XLA registers flags by name)."""
  if binary is None:
    return False
  with open(binary, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    return data.find(flag.encode()) >= 0


def jaxlib_version() -> tuple[int, ...] | None:
  """The installed jaxlib's version as numbers, e.g. (0, 10, 2), read from its metadata without
  importing it; None where it is not installed or its version does not start with a number."""
  try:
    version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None
  numbers = re.match(r"\d+(\.\d+)*", version)
  return tuple(int(n) for n in numbers.group().split(".")) if numbers else None


def apply_cpu_defaults(environ: MutableMapping[str, str] = os.environ, *, binary: str | None = None,
                       version: tuple[int, ...] | None = None) -> tuple[str, ...]:
  """Appends CPU_DEFAULTS to environ["XLA_FLAGS"] unless the user set the flag or opted out, the
  jaxlib `version` (default: the installed one's) is not below YNN_OFF_BELOW, or the jaxlib `binary`
  (default: the installed one) does not define the flag. Returns the flags it added.

  Takes effect only if no JAX backend has started in this process yet (XLA reads XLA_FLAGS then);
  child processes inherit it through the environment."""
  current = environ.get("XLA_FLAGS", "")
  if environ.get(OPT_OUT, "") not in ("", "0") or YNN_FLAG in current:
    return ()
  version = jaxlib_version() if version is None else version
  if version is None or version >= YNN_OFF_BELOW:
    return ()
  if not binary_defines(YNN_FLAG, jaxlib_binary() if binary is None else binary):
    return ()
  environ["XLA_FLAGS"] = " ".join(filter(None, [current, *CPU_DEFAULTS]))
  return CPU_DEFAULTS


def run_once_compiler_options() -> dict:
  """jit's compiler_options for a program that runs once (the initial state, the schedule's checks):
  on XLA's CPU backend, LLVM optimisation level 0 (XLA's default is 3), which compiles it in a
  quarter to two thirds of the time (the small config's initial state: 8.3 s -> 2.1 s) for a program that
  then runs for milliseconds. Values are bitwise the same or a few float roundings apart (summation
  order; e.g. the initial state's class-mean label codes, ~2e-7, which training replaces with codes
  from the host). {} on other backends, and where XLA_FLAGS names a level (a per-program option would
  override the user's choice). The train step keeps XLA's level: level 2 compiled it 7-12% faster but
  ran ~3% slower in one of three A/Bs (BENCHMARKS.md)."""
  import jax  # here, not above: importing the package must not import JAX (configs load without it)
  if jax.default_backend() != "cpu" or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
    return {}
  return {"xla_backend_optimization_level": 0}


def _staging(args, kwargs) -> bool:
  """Whether this call is part of a program JAX is staging (jit, scan, eval_shape, ...): a traced
  argument, or, for values closed over from outside, a new constant that comes out as a tracer."""
  import jax
  import jax.numpy as jnp
  return (any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs)))
          or isinstance(jnp.zeros(()), jax.core.Tracer))


def jit_run_once(fun: Callable, **jit_kwargs) -> Callable:
  """jax.jit(fun, **jit_kwargs) with run_once_compiler_options, chosen at the call (the backend must
  be known then, not when the module defining `fun` is imported). Called while another program is
  staged it is jax.jit without them, part of that program: JAX refuses compiler options on a nested
  jit."""
  jitted: dict[object, Callable] = {}

  @functools.wraps(fun)
  def call(*args, **kwargs):
    import jax
    if _staging(args, kwargs):
      key, options = "nested", None
    else:
      options = run_once_compiler_options()
      key = tuple(sorted(options.items()))
    if key not in jitted:
      jitted[key] = jax.jit(fun, **jit_kwargs, **({} if options is None else
                                                   {"compiler_options": options}))
    return jitted[key](*args, **kwargs)

  return call
