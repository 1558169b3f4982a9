"""The small train step under each memory allocator: step time, page faults and kernel time per step.

Each setting runs the library's step in its own process (one after another, not in alternation: the
A/B of `benchmarks/ab.py --env_b=MMDIFF_JAX_NO_TCMALLOC=1` is the fair comparison of the default with
glibc). Settings: glibc's malloc; glibc with one arena and no mmap (no page faults, one lock); glibc
with transparent huge pages for its heap; TCMalloc and jemalloc where installed (Debian:
libtcmalloc-minimal4, libjemalloc2). What it shows: with glibc, XLA's per-step temporary buffer (182 MB
for the small step) is mmapped and unmapped on every step, and its pages are faulted in again each time.

  python3 -m benchmarks.allocator --rounds=3
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from mmdiff_jax import tcmalloc

GLIBC_ONE_ARENA = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"


def settings() -> dict[str, dict[str, str]]:
  """{name: environment changes}; the preloads only where the library is installed."""
  out = {"glibc": {}, "glibc_one_arena": {"GLIBC_TUNABLES": GLIBC_ONE_ARENA},
         "glibc_hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}
  for name, found in (("tcmalloc", tcmalloc.find_tcmalloc()), ("jemalloc", ctypes.util.find_library("jemalloc"))):
    if found:
      out[name] = {"LD_PRELOAD": found}
  return out


def _worker(config: str, rounds: int, reps: int) -> None:
  import jax

  from benchmarks import setups
  step = setups.TrainStep(setups.get_config(config))
  for _ in range(3):
    jax.block_until_ready(step())
  rows = []
  for _ in range(rounds):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(reps):
      state = step()
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    rows.append({"step_s": seconds / reps, "minor_faults": (after.ru_minflt - before.ru_minflt) / reps,
                 "kernel_s": (after.ru_stime - before.ru_stime) / reps,
                 "user_s": (after.ru_utime - before.ru_utime) / reps})
  print(json.dumps({"compile_s": step.compile_s, "rounds": rows}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="small")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--json", default="")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    _worker(args.config, args.rounds, args.reps)
    return
  from benchmarks import common
  machine = common.machine()
  print(common.describe(machine), flush=True)
  results, rows = {}, []
  for name, changes in settings().items():
    # Each process under exactly this allocator: no inherited preload, the library's re-run off.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    env.update(changes, **{tcmalloc.OPT_OUT: "1"})
    out = subprocess.run([sys.executable, "-m", "benchmarks.allocator", "--worker", f"--config={args.config}",
                          f"--rounds={args.rounds}", f"--reps={args.reps}"], env=env, capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    result = dict(json.loads(out), environment=changes, load=common.load())
    results[name] = result
    median = lambda key: statistics.median(r[key] for r in result["rounds"])
    rows.append([name, f"{median('step_s'):.4f}", f"{median('minor_faults'):,.0f}",
                 f"{1e3 * median('kernel_s'):.0f}", f"{1e3 * median('user_s'):.0f}",
                 f"{result['compile_s']:.1f}", result["load"][0]])
    print(name, result, flush=True)
  common.print_table(
      f"Train step ({args.config}) under each allocator, one process each, medians of {args.rounds} "
      f"rounds of {args.reps} steps",
      ["allocator", "step s", "minor page faults / step", "kernel ms / step", "user ms / step",
       "compile s", "load (1 min)"], rows)
  common.write_json(args.json or common.default_json("allocator"),
                    {"machine": machine, "config": args.config, "settings": results, "args": vars(args)})


if __name__ == "__main__":
  main()
