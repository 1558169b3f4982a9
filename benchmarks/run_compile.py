r"""What a short run of the entry point spends compiling, program by program, for one or two source
trees in alternation.

Each run is the real command a user types, `python -m mmdiff_jax.main` (under the allocator it
chooses), with an empty persistent compilation cache (a first run) and JAX_LOG_COMPILES=1; the compile
times are read from JAX's log lines ("Finished XLA compilation of jit(NAME) in S sec").

  python3 -m benchmarks.run_compile                       # this checkout, 2 runs
  python3 -m benchmarks.run_compile --trees=/tmp/old,. --rounds=2
  python3 -m benchmarks.run_compile --config=configs/imglabel.py:smoke --set=training.num_steps=20

Prints a table per tree (program, compiles, seconds: medians over the rounds) and writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import common

# JAX's own log lines (written from jax/_src/pjit.py and interpreters/pxla.py); the parse fails loudly
# if their wording changes.
_PHASES = {
    "trace": re.compile(r"Finished tracing (\S+) for jit in ([0-9.e-]+) sec"),
    "lower": re.compile(r"Finished jaxpr to MLIR module conversion jit\((\S+)\) in ([0-9.e-]+) sec"),
    "compile": re.compile(r"Finished XLA compilation of jit\((\S+)\) in ([0-9.e-]+) sec"),
}


def parse_log(text: str) -> dict[str, dict[str, list[float]]]:
  """{phase: {program name: [seconds of each compile]}} from a run's stderr."""
  found = {phase: collections.defaultdict(list) for phase in _PHASES}
  for line in text.splitlines():
    for phase, pattern in _PHASES.items():
      if match := pattern.search(line):
        found[phase][match.group(1)].append(float(match.group(2)))
  if not found["compile"]:
    raise RuntimeError("no 'Finished XLA compilation' line in the run's log: did JAX's wording of "
                       "JAX_LOG_COMPILES change? The log ends:\n" + text[-2000:])
  return {phase: dict(v) for phase, v in found.items()}


def run_once(tree: str, config: str, overrides: list[str]) -> dict:
  """One cold run of the entry point from `tree`: its compile log, parsed, and its wall time."""
  with tempfile.TemporaryDirectory(prefix="run_compile_") as scratch:
    env = dict(os.environ, JAX_LOG_COMPILES="1",
               JAX_COMPILATION_CACHE_DIR=os.path.join(scratch, "xla_cache"))
    command = [sys.executable, "-m", "mmdiff_jax.main", f"--config={config}",
               f"--workdir={os.path.join(scratch, 'workdir')}"] + [f"--config.{s}" for s in overrides]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
  if result.returncode:
    raise RuntimeError(f"{' '.join(command)} (in {tree}) failed:\n{result.stderr[-3000:]}")
  return {"wall_s": wall, **parse_log(result.stderr)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--trees", default=".", help="comma-separated source trees (each holds "
                      "mmdiff_jax/ and configs/), run in alternation")
  parser.add_argument("--config", default="configs/imglabel.py:small")
  parser.add_argument("--set", action="append", default=None,
                      help="config overrides (default: training.num_steps=60, "
                      "training.save_every=50: two saves, each reading the previous one back)")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--json", default=common.default_json("run_compile"))
  args = parser.parse_args()
  overrides = args.set if args.set is not None else ["training.num_steps=60",
                                                     "training.save_every=50"]
  trees = [os.path.abspath(t) for t in args.trees.split(",")]
  machine = common.machine()
  print(common.describe(machine), flush=True)
  runs = {tree: [] for tree in trees}
  for r in range(args.rounds):
    for tree in (trees if r % 2 == 0 else trees[::-1]):
      runs[tree].append(run_once(tree, args.config, overrides))
      total = sum(sum(v) for v in runs[tree][-1]["compile"].values())
      print(f"round {r + 1}, {tree}: XLA compile {total:.1f} s in all, run {runs[tree][-1]['wall_s']:.0f} s, "
            f"load {common.load()[0]}", flush=True)
  summaries = {}
  for tree, tree_runs in runs.items():
    median_s = {name: statistics.median(sum(run["compile"].get(name, [])) for run in tree_runs)
                for name in {n for run in tree_runs for n in run["compile"]}}
    rows = [[name, len(tree_runs[0]["compile"].get(name, [])), f"{seconds:.2f}"]
            for name, seconds in sorted(median_s.items(), key=lambda item: -item[1])]
    phase_totals = {phase: statistics.median(sum(sum(v) for v in run[phase].values()) for run in tree_runs)
                    for phase in _PHASES}
    rows.append(["all programs: XLA compile", "", f"{phase_totals['compile']:.2f}"])
    rows.append(["all programs: tracing, lowering", "",
                 f"{phase_totals['trace']:.2f}, {phase_totals['lower']:.2f}"])
    rows.append(["the run's wall time", "", f"{statistics.median(r['wall_s'] for r in tree_runs):.1f}"])
    common.print_table(f"{tree}: {args.config} {' '.join(overrides)}, cold compilation cache, "
                       f"median of {len(tree_runs)} run(s)", ["program", "compiles", "seconds"], rows)
    summaries[tree] = phase_totals
  common.write_json(args.json, {"machine": machine, "config": args.config, "overrides": overrides,
                                "runs": runs, "median_totals": summaries, "args": vars(args)})


if __name__ == "__main__":
  main()
