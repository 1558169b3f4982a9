r"""A/B of the library's train step between two source trees (e.g. this checkout and a patched copy),
timed in alternation within one run: each tree's step lives in its own worker process (its own
mmdiff_jax, compiled once), and the workers take turns, so load on a shared machine hits both alike.

  # an XLA flag (B = this tree with the flag on top of the library's XLA defaults):
  python3 -m benchmarks.ab --config=small --env_b=XLA_FLAGS=--xla_cpu_use_onednn=true
  # the library's XLA defaults (A) against XLA's own (B; see mmdiff_jax/xla_defaults.py):
  python3 -m benchmarks.ab --config=small --env_b=MMDIFF_JAX_KEEP_XLA_FLAGS=1
  # TCMalloc, where installed (A, as the entry points run) against glibc's malloc (B):
  python3 -m benchmarks.ab --config=small --env_b=MMDIFF_JAX_NO_TCMALLOC=1
  # a config choice for B alone (e.g. bf16 activations):
  python3 -m benchmarks.ab --config=small --set_b=model.dtype=bfloat16
  # another jax/jaxlib for B: B's worker runs under another interpreter (a venv that has the
  # package's dependencies; the tree's mmdiff_jax is imported either way), e.g. Python 3.12's newer jax:
  python3 -m benchmarks.ab --config=small --python_b=/path/to/venv312/bin/python
  # a library change (benchmarks/patches/ holds the ones tried):
  mkdir /tmp/patched && git archive HEAD | tar -x -C /tmp/patched && \
      (cd /tmp/patched && patch -p1 < "$OLDPWD/benchmarks/patches/group_norm_two_stage.diff")
  python3 -m benchmarks.ab --a=. --b=/tmp/patched --config=small --rounds=10

Each worker re-runs itself under TCMalloc first, as the library's entry point does (mmdiff_jax/tcmalloc.py).
Prints each tree's compile time, FLOPs and parameter count, the per-round step times and the ratio
A/B (above 1: B is faster). Writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))


def _worker(tree: str, variant: str, image_only: bool, overrides: dict) -> None:
  """Serves "run N" (prints seconds per step) and "quit" on stdin/stdout."""
  import importlib.util
  sys.path.insert(0, os.path.abspath(tree))
  # This file's benchmarks package, whatever the tree holds under that name.
  spec = importlib.util.spec_from_file_location(
      "benchmarks", os.path.join(BENCHMARKS_DIR, "__init__.py"),
      submodule_search_locations=[BENCHMARKS_DIR])
  package = importlib.util.module_from_spec(spec)
  sys.modules["benchmarks"] = package
  spec.loader.exec_module(package)
  import mmdiff_jax
  from benchmarks import common, setups
  step = setups.TrainStep(setups.get_config(variant, image_only=image_only, **overrides))
  step()
  import jax
  jax.block_until_ready(step())
  print(json.dumps({"tree": os.path.dirname(os.path.dirname(mmdiff_jax.__file__)),
                    "python": sys.version.split()[0], "jax": jax.__version__,
                    "compile_s": step.compile_s, "flops": step.flops,
                    "num_params": step.num_params, "batch_size": step.batch_size}), flush=True)
  for line in sys.stdin:
    command = line.split()
    if command[0] == "quit":
      return
    print(json.dumps({"seconds": common.time_per_call(step, int(command[1]))}), flush=True)


def _tcmalloc():
  """This checkout's mmdiff_jax/tcmalloc.py, loaded alone: both workers run under the allocator this
  checkout chooses, whatever their trees hold (an older tree has no such module)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "_ab_tcmalloc", os.path.join(os.path.dirname(BENCHMARKS_DIR), "mmdiff_jax", "tcmalloc.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--a", default=".", help="source tree A (holds mmdiff_jax/ and configs/)")
  parser.add_argument("--b", required=False, help="source tree B")
  parser.add_argument("--env_b", action="append", default=[],
                      help="NAME=VALUE for B's worker only (e.g. XLA_FLAGS); B defaults to A's tree")
  parser.add_argument("--python_b", default=sys.executable,
                      help="the Python interpreter of B's worker (default: this one)")
  parser.add_argument("--config", default="small")
  parser.add_argument("--image_only", action="store_true")
  parser.add_argument("--set", action="append", default=[],
                      help="config override for both, e.g. --set=training.batch_size=32")
  parser.add_argument("--set_b", action="append", default=[],
                      help="config override for B only, e.g. --set_b=model.dtype=bfloat16")
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--json", default="")
  parser.add_argument("--worker", nargs=3, metavar=("TREE", "VARIANT", "IMAGE_ONLY"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  overrides = {}
  for item in args.set + args.set_b:
    key, _, value = item.partition("=")
    try:
      overrides[key] = json.loads(value)
    except json.JSONDecodeError:
      overrides[key] = value
  if args.worker:
    _tcmalloc().rerun_with_tcmalloc()  # as the library's entry point does (MMDIFF_JAX_NO_TCMALLOC=1: not)
    tree, variant, image_only = args.worker
    _worker(tree, "" if variant == "default" else variant, image_only == "1", overrides)
    return

  sys.path.insert(0, os.path.dirname(BENCHMARKS_DIR))
  from benchmarks import common
  machine = common.machine()
  print(common.describe(machine), flush=True)
  trees = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b or args.a)}
  env_b = dict(os.environ, **dict(item.partition("=")[::2] for item in args.env_b))
  workers, info = {}, {}
  for name, tree in trees.items():
    python = args.python_b if name == "B" else sys.executable
    command = [python, os.path.abspath(__file__), "--worker", tree, args.config,
               "1" if args.image_only else "0"] + [f"--set={s}" for s in args.set] + (
                   [f"--set_b={s}" for s in args.set_b] if name == "B" else [])
    workers[name] = subprocess.Popen(command, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env_b if name == "B" else None)
    info[name] = json.loads(workers[name].stdout.readline())  # one at a time: compile alone
    print(f"{name}: {info[name]}", flush=True)
  seconds = {"A": [], "B": []}
  loads = []
  for r in range(args.rounds):
    for name in (("A", "B") if r % 2 == 0 else ("B", "A")):
      workers[name].stdin.write(f"run {args.reps}\n")
      workers[name].stdin.flush()
      seconds[name].append(json.loads(workers[name].stdout.readline())["seconds"])
    loads.append(common.load()[0])
  for w in workers.values():
    w.stdin.write("quit\n")
    w.stdin.flush()
    w.wait()
  ratio = common.ratios(seconds["A"], seconds["B"])

  def versions(name):
    return f"Python {info[name]['python']}, jax {info[name]['jax']}"

  print(f"A step s per round: {[round(s, 4) for s in seconds['A']]}")
  print(f"B step s per round: {[round(s, 4) for s in seconds['B']]}")
  print(f"A/B per round: {[round(x, 3) for x in ratio]}; load {loads}")
  common.print_table(
      f"A/B train step, config {args.config}{' image-only' if args.image_only else ''}, "
      f"{args.rounds} alternating rounds of {args.reps} steps",
      ["tree", "compile s", "GFLOP/step", "step s (median)", "A/B time ratio median (min-max)",
       "load"],
      [[f"A {trees['A']} ({versions('A')})", f"{info['A']['compile_s']:.1f}",
        f"{info['A']['flops'] / 1e9:.2f}",
        f"{statistics.median(seconds['A']):.4f}", "", ""],
       [f"B {trees['B']} ({versions('B')}) {' '.join(args.env_b + args.set_b)}",
        f"{info['B']['compile_s']:.1f}",
        f"{info['B']['flops'] / 1e9:.2f}", f"{statistics.median(seconds['B']):.4f}",
        f"{statistics.median(ratio):.3f} ({min(ratio):.3f}-{max(ratio):.3f})",
        f"{min(loads)}-{max(loads)}"]])
  if args.json:
    common.write_json(args.json, {"machine": machine, "trees": trees, "env_b": args.env_b,
                                  "info": info, "seconds": seconds, "ratio_a_over_b": ratio,
                                  "load_per_round": loads, "args": vars(args)})


if __name__ == "__main__":
  main()
