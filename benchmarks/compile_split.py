"""Where the small train step's compile time goes: tracing, lowering to StableHLO, XLA's compile, and
how many kernels XLA emitted (each is compiled on its own: on the CPU backend the compile grows with
their number) and what they compute, and the compiled step's temporary memory.

  python3 -m benchmarks.compile_split [variant]      # prints one JSON line (seconds, counts, MiB)
"""

import json
import sys
import time

from benchmarks import setups
from benchmarks.profile_step import HloIndex
from mmdiff_jax import tcmalloc


def main(variant: str = "small") -> dict:
  step, abstract, batch = setups.host_step(setups.get_config(variant))
  t0 = time.perf_counter()
  traced = step.trace(abstract, batch)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  index = HloIndex(compiled.as_text())
  kernels = index.kernel_counts()
  by_kind = index.kernel_counts(fusion_bodies=True)
  return {"variant": variant, "trace_s": round(t1 - t0, 2), "lower_s": round(t2 - t1, 2),
          "compile_s": round(t3 - t2, 2), "stablehlo_lines": lowered.as_text().count("\n"),
          "kernels": sum(kernels.values()), "kernels_by_opcode": kernels,
          # what the kernels compute (a fusion by the operations it fuses), the 12 most frequent
          "kernels_by_kind": dict(list(by_kind.items())[:12]),
          "temp_mb": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1)}


if __name__ == "__main__":
  if {"-h", "--help"} & set(sys.argv[1:]):
    sys.exit(print(__doc__))
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  print(json.dumps(main(*sys.argv[1:2])))
