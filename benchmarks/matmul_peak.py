r"""Is a 2048 x 2048 float32 jnp.dot a fair "matmul peak" for this machine? Square float32 matmuls of
several sizes through XLA (jnp.dot), NumPy's BLAS and PyTorch (if installed), timed in alternation.

  python3 -m benchmarks.matmul_peak
  python3 -m benchmarks.matmul_peak --sizes=1024,2048,4096 --json=/tmp/matmul_peak.json
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

from benchmarks import common
from mmdiff_jax import tcmalloc


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="1024,2048,4096")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--json", default=common.default_json("matmul_peak"))
  args = parser.parse_args()
  try:
    torch = common.import_torch("passive")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
  except ImportError:
    torch = None
  machine = common.machine()
  print(common.describe(machine), flush=True)
  rows, results = [], []
  for n in [int(s) for s in args.sizes.split(",")]:
    peak = common.MatmulPeak(n)
    a, b = np.asarray(peak.a), np.asarray(peak.b)
    contenders = {"jnp.dot (XLA)": peak, "numpy @": lambda a=a, b=b: a @ b}
    if torch is not None:
      ta, tb = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
      contenders["torch.mm"] = lambda ta=ta, tb=tb: torch.mm(ta, tb)
    reps = max(1, int(2e10 // peak.flops))
    timing = common.alternate(contenders, rounds=args.rounds, reps=reps)
    for name, seconds in timing["seconds"].items():
      rate = [peak.flops / s for s in seconds]
      results.append({"n": n, "implementation": name, "flops_per_s": rate,
                      "load_per_round": timing["load"]})
      rows.append([n, name, f"{statistics.median(rate) / 1e9:.0f}", f"{max(rate) / 1e9:.0f}",
                   f"{min(timing['load'])}-{max(timing['load'])}"])
  common.print_table(f"float32 matmul, {machine['nproc']} cores, {args.rounds} alternating rounds",
                     ["n", "implementation", "GFLOP/s median", "GFLOP/s best round", "load"], rows)
  common.write_json(args.json, {"machine": machine, "results": results, "args": vars(args)})


if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  main()
