"""What every benchmark shares: the machine description, load averages, the matmul peak, alternating
timing (so that a shared machine's load affects the contenders alike), the table and the JSON file.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import offline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")


def import_torch(wait_policy: str = "passive"):
  """Imports torch with OpenMP's wait policy set first (libgomp reads it when its threads start).

  libgomp's default, active, spins waiting threads: on a shared machine, when another job holds a core,
  that makes PyTorch's multi-threaded ops many times slower. "passive" (the default here) gives PyTorch
  its best showing there; "default" leaves the environment as it is.
  """
  if wait_policy != "default":
    os.environ["OMP_WAIT_POLICY"] = wait_policy.upper()
  import torch
  return torch


def default_json(name: str) -> str:
  return os.path.join(RESULTS_DIR, f"{name}.json")


def load() -> list[float]:
  """1, 5 and 15 minute load averages (the machine is shared: read every figure with them)."""
  return [round(x, 2) for x in os.getloadavg()]


def _lscpu() -> dict[str, str]:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return {}
  return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


COMMIT_ENV = "MMDIFF_BENCH_COMMIT"


def _git() -> str:
  """The commit measured: $MMDIFF_BENCH_COMMIT where set (a copy of the tree without .git, e.g. on a lent
  GPU machine: the caller passes the hash), else git's short hash, marked where tracked files differ."""
  if os.environ.get(COMMIT_ENV):
    return os.environ[COMMIT_ENV]
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return commit + ("+local changes" if dirty else "")


# Settings that change the figures, recorded in every file: XLA's flags (e.g. YNN fusion off on the CPU),
# OpenMP's wait policy and threads (PyTorch on the CPU), JAX's GPU allocator (preallocated fraction).
ENV_KEYS = ("XLA_FLAGS", "LD_PRELOAD", "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "JAX_PLATFORMS",
            "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR")


def device_memory_gib() -> float | None:
  """The memory JAX's allocator may use on device 0 (GiB), or None where the backend does not say (CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # not implemented on every backend
    return None
  return round(stats["bytes_limit"] / 2**30, 2) if stats and "bytes_limit" in stats else None


def machine() -> dict[str, Any]:
  """CPU model and cores (lscpu, nproc), memory, versions, date, commit."""
  cpu = _lscpu()
  flags = cpu.get("Flags", "").split()
  import flax
  import jaxlib
  import optax
  return {
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
      "cpu": cpu.get("Model name", platform.processor()),
      # Cloud VMs often name only the vendor line ("AMD EPYC"); family and model tell the generation
      # apart (AMD family 25: model 1 is Zen 3 without AVX-512, 17 Zen 4 with it).
      "cpu_family_model": (f"{cpu['CPU family']}/{cpu['Model']}"
                           if "CPU family" in cpu and "Model" in cpu else None),
      "nproc": len(os.sched_getaffinity(0)),
      "isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
      "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
      "python": platform.python_version(),
      "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
      "optax": optax.__version__,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "commit": _git(),
      # ENV_KEYS as this process saw them.
      "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
      "device_memory_gib": device_memory_gib(),
      "data_stand_ins": list(offline.STOOD_IN),  # packages benchmarks/offline.py stood in for
  }


def describe(m: Mapping[str, Any]) -> str:
  family_model = f" (family/model {m['cpu_family_model']})" if m.get("cpu_family_model") else ""
  return (f"{m['date_utc']} UTC | {m['cpu']}{family_model}, {m['nproc']} cores ({'/'.join(m['isa'])}), "
          f"{m['memory_gib']} GiB | jax {m['jax']}, flax {m['flax']} | {m['devices']} | "
          f"commit {m['commit']}" + (f" | env {m['env']}" if m.get("env") else ""))


# The caveat's short form, for table titles.
BF16_POLICY_TITLE_NOTE = " (GroupNorm output and SiLU: bf16 in JAX, float32 in torch)"


def error_text(error: BaseException) -> str:
  """A contender's failure as the JSON records it: its type and (the start of) its message."""
  return f"{type(error).__name__}: {str(error).strip()[:2000]}"


def bf16_policy_caveat(jax_dtype: str, torch_autocast_bf16: bool) -> str | None:
  """Where the two mixed-precision policies differ (None where they are not both bf16): recorded in the
  JSON and the table titles of the JAX vs PyTorch comparisons."""
  if jax_dtype != "bfloat16" or not torch_autocast_bf16:
    return None
  return ("bf16 policies differ: Flax's GroupNorm (model.dtype=bfloat16) takes float32 statistics but "
          "returns bf16, so the SiLU after it runs in bf16; under autocast PyTorch runs group_norm in "
          "float32 and returns float32, so its SiLU runs in float32 (cast to bf16 at the next conv)")


class MatmulPeak:
  """This machine's matmul rate right now: an n x n float32 jnp.dot (2 n^3 FLOPs per call)."""

  def __init__(self, n: int = 2048, dtype=jnp.float32):
    self.n = n
    keys = jax.random.split(jax.random.PRNGKey(0))
    self.a = jax.random.normal(keys[0], (n, n), dtype)
    self.b = jax.random.normal(keys[1], (n, n), dtype)
    self.dot = jax.jit(jnp.dot)
    jax.block_until_ready(self.dot(self.a, self.b))

  @property
  def flops(self) -> float:
    return 2.0 * self.n ** 3

  def __call__(self):
    return self.dot(self.a, self.b)


def block(x: Any) -> Any:
  """Waits until x is computed: JAX arrays and pytrees of them (jax.block_until_ready), or an object with
  its own block_until_ready method (torch_unet.Synchronizer: torch.cuda.synchronize, as CUDA kernels run
  asynchronously), so that a clock read after it counts all the work."""
  if hasattr(x, "block_until_ready") and not isinstance(x, jax.Array):
    return x.block_until_ready()
  return jax.block_until_ready(x)


def time_per_call(fn: Callable[[], Any], reps: int) -> float:
  """Seconds per call of `reps` back-to-back calls (dispatch overlapped, as in a training loop), up to
  the last call's result being ready (block)."""
  out = None
  start = time.perf_counter()
  for _ in range(reps):
    out = fn()
  block(out)
  return (time.perf_counter() - start) / reps


def alternate(contenders: Mapping[str, Callable[[], Any]], *, rounds: int,
              reps: int | Mapping[str, int] = 1, warmup: int = 1) -> dict[str, Any]:
  """Times the contenders in alternation: each round runs each of them `reps` times (the order
  reversed every other round), so that load changes on a shared machine hit all of them alike.

  Returns {"seconds": {name: [seconds per call, one per round]}, "load": [1-min load per round]}.
  """
  reps_of = (lambda name: reps[name]) if isinstance(reps, Mapping) else (lambda name: reps)
  for name, fn in contenders.items():
    for _ in range(warmup):
      block(fn())
  seconds: dict[str, list[float]] = {name: [] for name in contenders}
  loads = []
  names = list(contenders)
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      seconds[name].append(time_per_call(contenders[name], reps_of(name)))
    loads.append(round(os.getloadavg()[0], 2))
  return {"seconds": seconds, "load": loads}


def summary(values: Sequence[float]) -> dict[str, float]:
  """Median, min and max of per-round values."""
  return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
  """Per-round ratios (each pair measured back to back, under the same load)."""
  return [a / b for a, b in zip(numerator, denominator)]


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """Prints (and returns) a Markdown table."""
  fmt = lambda v: (f"{v:.3g}" if isinstance(v, float) and abs(v) < 1e3 else
                   f"{v:,.0f}" if isinstance(v, float) else str(v))
  text_rows = [[fmt(v) for v in row] for row in rows]
  lines = [f"### {title}", "", "| " + " | ".join(columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in text_rows]
  text = "\n".join(lines)
  print(text + "\n", flush=True)
  return text


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, default=lambda x: np.asarray(x).tolist())
  print(f"Wrote {path}", flush=True)


def cost_flops(program) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of one call of a lowered or compiled XLA program (XLA's cost analysis)."""
  analysis = program.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  if not analysis:
    return float("nan"), float("nan")
  return float(analysis.get("flops", float("nan"))), float(analysis.get("bytes accessed", float("nan")))
