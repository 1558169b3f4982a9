"""Where the small train step's compile time goes: tracing, lowering to StableHLO, XLA's compile, and
how many kernels XLA emitted (each is compiled on its own: on the CPU backend the compile grows with
their number), and the compiled step's temporary memory.

  python3 -m benchmarks.compile_split [variant]      # prints one JSON line (seconds, counts, MiB)
"""

import collections
import json
import re
import sys
import time

from benchmarks import setups
from mmdiff_jax import tcmalloc


# Instructions that launch no kernel of their own (bookkeeping, or control flow whose bodies are
# counted instead).
_NOT_KERNELS = {"parameter", "get-tuple-element", "bitcast", "constant", "tuple", "conditional",
                "while", "call", "after-all", "partition-id", "replica-id"}
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) [^\n]*\{$", re.M)
_OPCODE = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = .*? ([\w\-]+)\(", re.M)
_CALLED = re.compile(r"(?:branch_computations=\{|true_computation=|false_computation=|body=|"
                     r"condition=|to_apply=)%?([\w.\-, %]+)")


def kernel_counts(hlo_text: str) -> dict[str, int]:
  """{opcode: how many} of the instructions that launch a kernel, in the entry computation and in
  the bodies of its conditionals, loops and calls (not inside fusions: a fusion is one kernel)."""
  bodies, entry, name = {}, None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      name = header.group(2)
      bodies[name] = []
      entry = name if header.group(1) else entry
    elif name is not None:
      bodies[name].append(line)
  counts, todo, seen = collections.Counter(), [entry], set()
  while todo:
    name = todo.pop()
    if name in seen or name not in bodies:
      continue
    seen.add(name)
    for line in bodies[name]:
      op = _OPCODE.match(line)
      if op and op.group(1) not in _NOT_KERNELS:
        counts[op.group(1)] += 1
      if op and op.group(1) in ("conditional", "while", "call"):
        for called in _CALLED.findall(line):
          todo += [c.strip(" %") for c in called.split(",")]
  return dict(counts.most_common())


def main(variant: str = "small") -> dict:
  step, abstract, batch = setups.host_step(setups.get_config(variant))
  t0 = time.perf_counter()
  traced = step.trace(abstract, batch)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  kernels = kernel_counts(compiled.as_text())
  return {"variant": variant, "trace_s": round(t1 - t0, 2), "lower_s": round(t2 - t1, 2),
          "compile_s": round(t3 - t2, 2), "stablehlo_lines": lowered.as_text().count("\n"),
          "kernels": sum(kernels.values()), "kernels_by_opcode": kernels,
          "temp_mb": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1)}


if __name__ == "__main__":
  if {"-h", "--help"} & set(sys.argv[1:]):
    sys.exit(print(__doc__))
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  print(json.dumps(main(*sys.argv[1:2])))
