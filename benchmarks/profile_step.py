r"""Where a train step's time goes: per-op timings from a jax.profiler trace, joined with the compiled HLO
(op kinds and, for convolutions and dots, their FLOPs); optionally the PyTorch step's per-op profile.

  python3 -m benchmarks.profile_step --config=small                 # the library's imglabel step
  python3 -m benchmarks.profile_step --config=small --image_only --torch --json=/tmp/profile.json

Categories: "conv" and "dot" (an XLA fusion holding a convolution or dot, with its FLOPs), "reduce"
(GroupNorm statistics and other reductions), "transpose/copy", "elementwise" (loop fusions), "control"
(while, conditional, call: their own time is the wait for their bodies). Times are summed over the
XLA worker threads, so with 2 threads the total can exceed the wall time; each op's time is its median
over the traced steps (a shared machine preempts ops now and then).

Check "coverage" (op-seconds over wall seconds x cores) before reading the conv row: the trace events of
XLA:CPU's YNN fusions cover their work, but with YNN fusion off
(XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=) a convolution runs asynchronously on Eigen's thread
pool and its event holds only the launch (GFLOP/s far above the matmul peak, coverage well below 1).
Then take the convolutions' time from benchmarks/conv_roofline.py instead; the other categories still
hold.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np

from benchmarks import common, setups
from mmdiff_jax import tcmalloc

_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")
# Instructions that launch no kernel of their own (bookkeeping; control flow's bodies are counted).
_NOT_KERNELS = {"parameter", "get-tuple-element", "bitcast", "constant", "tuple", "after-all",
                "partition-id", "replica-id"}
# The computations a conditional, loop or call runs, in the attributes after its operands.
_CALLED = re.compile(r"(?:branch_computations=\{[^}]*\}|(?:true|false)_computation=%?[\w.\-]+|"
                     r"body=%?[\w.\-]+|condition=%?[\w.\-]+|to_apply=%?[\w.\-]+)")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*?)\)(.*)$")


def _dims(text: str) -> list[int]:
  m = _SHAPE.search(text)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


class HloIndex:
  """Instructions of a compiled module's text: kind and FLOPs of each (fusions: of their bodies)."""

  def __init__(self, text: str):
    self.shapes: dict[str, list[int]] = {}
    self.lines: dict[str, tuple[str, str, str, str]] = {}
    self.sources: dict[str, str] = {}
    self.computations: dict[str, list[str]] = collections.defaultdict(list)
    self.entry = current = None
    for line in text.splitlines():
      header = re.match(r"^(ENTRY )?%?([\w.\-]+) \((.*)\) -> .*\{$", line)
      if header:
        current = header.group(2)
        self.entry = current if header.group(1) else self.entry
        for name, shape in re.findall(r"([\w.\-]+): (\w+\[[\d,]*\])", header.group(3)):
          self.shapes[name] = _dims(shape)
        continue
      m = _INSTR.match(line)
      if m and current:
        name, shape, op, operands, rest = m.groups()
        self.shapes[name] = _dims(shape)
        self.lines[name] = (shape, op, operands, rest)
        source = re.search(r'op_name="([^"]+)"', rest)
        if source:
          self.sources[name] = source.group(1)
        self.computations[current].append(name)

  def kernel_counts(self, *, fusion_bodies: bool = False) -> dict[str, int]:
    """{opcode: how many} of the instructions that launch a kernel, in the entry computation and in
    the bodies of its conditionals, loops and calls (not inside fusions: a fusion is one kernel).
    With fusion_bodies, a fusion counts under the operations it fuses, e.g. "fusion(slice)"."""
    counts, todo, seen = collections.Counter(), [self.entry], set()
    while todo:
      computation = todo.pop()
      if computation in seen:
        continue
      seen.add(computation)
      for name in self.computations.get(computation, []):
        _, op, _, rest = self.lines[name]
        if op in ("conditional", "while", "call"):
          todo += re.findall(r"%([\w.\-]+)", "".join(_CALLED.findall(rest)))
        elif op == "fusion" and fusion_bodies:
          counts[f"fusion({','.join(self._fused_operations(name))})"] += 1
        elif op not in _NOT_KERNELS:
          counts[op] += 1
    return dict(counts.most_common())

  def _fused_operations(self, name: str) -> list[str]:
    """The sorted distinct operations a fusion computes (not its parameters, reshapes or tuples)."""
    called = re.search(r"calls=%?([\w.\-]+)", self.lines[name][3])
    body = self.computations.get(called.group(1), []) if called else []
    return sorted({self.lines[n][1] for n in body} - _NOT_KERNELS - {"reshape"})

  def _flops(self, name: str) -> float:
    shape, op, operands, rest = self.lines[name]
    out = math.prod(_dims(shape))
    refs = re.findall(r"%([\w.\-]+)", operands)
    if op == "convolution" and len(refs) == 2:
      kernel = self.shapes.get(refs[1], [])
      labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
      if kernel and labels:
        o = labels.group(1).index("o")
        return 2.0 * out * math.prod(kernel) / kernel[o]
    if op == "dot" and refs:
      lhs = self.shapes.get(refs[0], [])
      contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
      if lhs and contracting:
        return 2.0 * out * math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d)
    return 0.0

  def _body(self, name: str) -> list[str]:
    called = re.search(r"calls=%?([\w.\-]+)", self.lines[name][3])
    if self.lines[name][1] == "fusion" and called:
      return self.computations.get(called.group(1), [])
    return [name]

  def part(self, name: str) -> str:
    """The model part an op computes (from the JAX source names in its metadata)."""
    if name not in self.lines:
      return "other"
    sources = " ".join(self.sources.get(n, "") for n in [name] + self._body(name)).strip()
    for key, part in (("GroupNorm", "group norm"), ("AttentionBlock", "attention"),
                      ("dot_product_attention", "attention"), ("Conv", "conv"), ("Dense", "dense"),
                      ("silu", "silu"), ("MTDiffusion", "model, other")):
      if key in sources:
        return part
    if not sources:
      return "unnamed (conv gradients, layout copies)"
    return "loss, optimizer, metrics"

  def describe(self, name: str) -> tuple[str, float]:
    """(category, FLOPs of convolutions and dots) of one instruction."""
    if name not in self.lines:
      return "other", 0.0
    _, op, _, rest = self.lines[name]
    body_ops = [op]
    names = [name]
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    if op == "fusion" and called:
      names = self.computations.get(called.group(1), [])
      body_ops = [self.lines[n][1] for n in names]
    flops = sum(self._flops(n) for n in names if self.lines[n][1] in ("convolution", "dot"))
    if "convolution" in body_ops:
      return "conv", flops
    if "dot" in body_ops:
      return "dot", flops
    if op in ("while", "conditional", "call"):
      return "control", 0.0
    if "reduce" in body_ops or "reduce-window" in body_ops:
      return "reduce", 0.0
    if set(body_ops) <= {"transpose", "copy", "bitcast", "parameter", "reshape"}:
      return "transpose/copy", 0.0
    return "elementwise", 0.0


def trace_ops(fn, steps: int) -> tuple[list[dict], float]:
  """(op events of `steps` calls of fn from a jax.profiler trace, wall seconds per call)."""
  jax.block_until_ready(fn())
  directory = tempfile.mkdtemp(prefix="mmdiff_profile_")
  try:
    start = time.perf_counter()
    with jax.profiler.trace(directory):
      out = None
      for _ in range(steps):
        out = fn()
      jax.block_until_ready(out)
    wall = (time.perf_counter() - start) / steps
    path = [p for p in glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
            if "perfetto" not in p][0]
    events = json.load(gzip.open(path))["traceEvents"]
  finally:
    shutil.rmtree(directory, ignore_errors=True)
  return [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})], wall


def jax_profile(step: setups.TrainStep, steps: int, top: int) -> dict:
  index = HloIndex(step.compiled.as_text())
  ops, wall = trace_ops(step, steps)
  durations = collections.defaultdict(list)
  for e in ops:
    durations[e["args"]["hlo_op"]].append(e["dur"] * 1e-6)
  categories = collections.defaultdict(lambda: {"seconds": 0.0, "flops": 0.0, "ops": 0})
  parts = collections.defaultdict(lambda: {"seconds": 0.0, "ops": 0})
  rows = []
  for name, values in durations.items():
    # Per step: each op's median over the traced steps (robust to preemption on a shared machine).
    per_step = max(1, round(len(values) / steps))
    seconds = per_step * statistics.median(values)
    category, flops = index.describe(name)
    c = categories[category]
    c["seconds"] += seconds
    c["flops"] += flops
    c["ops"] += per_step
    if category != "control":
      parts[index.part(name)]["seconds"] += seconds
      parts[index.part(name)]["ops"] += per_step
    rows.append((seconds, name, category, flops))
  rows.sort(reverse=True)
  busy = sum(c["seconds"] for k, c in categories.items() if k != "control")
  return {
      "wall_s_per_step_traced": wall, "op_seconds_per_step": busy,
      "coverage": busy / (wall * len(os.sched_getaffinity(0))),
      "ops_per_step": len(ops) / steps, "xla_flops_per_step": step.flops,
      "categories": {k: dict(v) for k, v in sorted(categories.items(), key=lambda kv: -kv[1]["seconds"])},
      "parts": {k: dict(v) for k, v in sorted(parts.items(), key=lambda kv: -kv[1]["seconds"])},
      "top_ops": [{"op": n, "category": c, "seconds": s, "gflops": f / 1e9,
                   "gflop_per_s": f / s / 1e9 if s else 0.0} for s, n, c, f in rows[:top]],
  }


def torch_profile(config, alpha_bars, steps: int, top: int, channels_last: bool,
                  threads: int) -> dict:
  torch = common.import_torch("passive")
  from torch.profiler import ProfilerActivity, profile

  from benchmarks import torch_unet
  torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
  step = torch_unet.TrainStep(config, alpha_bars, channels_last=channels_last)
  step()
  start = time.perf_counter()
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  wall = (time.perf_counter() - start) / steps
  averages = prof.key_averages()
  rows = sorted(((a.self_cpu_time_total * 1e-6 / steps, a.key, a.count // steps) for a in averages),
                reverse=True)
  return {"wall_s_per_step_traced": wall, "threads": torch.get_num_threads(),
          "self_seconds_per_step": sum(r[0] for r in rows),
          "top_ops": [{"op": k, "self_seconds": s, "calls": c} for s, k, c in rows[:top]]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="small")
  parser.add_argument("--image_only", action="store_true")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--torch", action="store_true", help="also profile the PyTorch step")
  parser.add_argument("--channels_last", action="store_true")
  parser.add_argument("--torch_threads", type=int, default=0, help="0: the core count")
  parser.add_argument("--json", default=common.default_json("profile_step"))
  args = parser.parse_args()

  machine = common.machine()
  print(common.describe(machine), flush=True)
  variant = "" if args.config == "default" else args.config
  step = setups.TrainStep(setups.get_config(variant, image_only=args.image_only))
  result = {"machine": machine, "config": args.config, "image_only": args.image_only,
            "load_before": common.load(), "jax": jax_profile(step, args.steps, args.top)}
  j = result["jax"]
  print(f"JAX step: {j['wall_s_per_step_traced']:.3f} s/step traced, {j['ops_per_step']:.0f} ops, "
        f"{j['op_seconds_per_step']:.3f} op-seconds/step (summed over threads), coverage "
        f"{j['coverage']:.2f} of wall x cores", flush=True)
  common.print_table(
      "JAX step by op category (per step; op time summed over XLA threads)",
      ["category", "ops", "seconds", "share", "GFLOP", "GFLOP/s"],
      [[k, f"{v['ops']:.0f}", f"{v['seconds']:.4f}",
        f"{100 * v['seconds'] / j['op_seconds_per_step']:.1f}%", f"{v['flops'] / 1e9:.2f}",
        f"{v['flops'] / v['seconds'] / 1e9:.1f}" if v["flops"] else ""]
       for k, v in j["categories"].items() if k != "control"])
  common.print_table(
      "JAX step by model part (from the ops' source names; a fusion counts where its first named "
      "part is)", ["part", "ops", "seconds", "share"],
      [[k, f"{v['ops']:.0f}", f"{v['seconds']:.4f}", f"{100 * v['seconds'] / j['op_seconds_per_step']:.1f}%"]
       for k, v in j["parts"].items()])
  common.print_table("JAX step: top ops", ["op", "category", "ms", "GFLOP", "GFLOP/s"],
                     [[o["op"], o["category"], f"{1e3 * o['seconds']:.2f}", f"{o['gflops']:.3f}",
                       f"{o['gflop_per_s']:.1f}" if o["gflops"] else ""] for o in j["top_ops"]])
  if args.torch:
    result["torch"] = torch_profile(step.config, np.asarray(step.experiment.schedule.alpha_bars),
                                    args.steps, args.top, args.channels_last,
                                    args.torch_threads)
    t = result["torch"]
    common.print_table(
        f"PyTorch step ({t['threads']} threads): top ops by self time "
        f"({t['wall_s_per_step_traced']:.3f} s/step traced)",
        ["op", "calls/step", "ms/step"],
        [[o["op"], o["calls"], f"{1e3 * o['self_seconds']:.2f}"] for o in t["top_ops"]])
  result["load_after"] = common.load()
  common.write_json(args.json, result)


if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  main()
