r"""The largest batch whose train step fits on the device, without and with rematerialisation.

For config.model.remat False and True (remat: the U-Net's residual and attention blocks recompute their
activations in the backward pass instead of keeping them): probes global batch sizes of the library's
train step (state_lib.make_train_step, as train_step.py times it, one device). A probe compiles the step
for that batch, reads XLA's memory analysis of the compiled program (temporaries + outputs not aliased to
the donated state: what a step needs beyond the resident state and batch), then runs two steps on a
random batch; it fits if compilation and both steps succeed. An out-of-memory error (RESOURCE_EXHAUSTED /
"out of memory", at compilation or at run time) is caught, everything the probe held is dropped and the
search goes on; any other error stops that setting's search (reported).

The search. Each probe costs a compilation (tens of seconds for the default config on a GPU), so blind
doubling and bisection would spend most of a short lease compiling. Where the device reports its memory
(a GPU: memory_stats()["bytes_limit"]; or --limit_gib, which simulates a limit on the CPU), the need is
affine in the batch, and the next candidate is where the line through the last two probes' needs
(through the origin after the first probe, which overestimates the slope: a conservative first guess)
meets the free memory; a candidate at or below the largest fit steps up by a multiple that doubles each
time; once a failure brackets the answer, candidates alternate between the line's (clamped inside the
bracket) and the bracket's midpoint. Without memory figures: doubling until the first failure, then
bisection, as usual. Candidates are multiples of --multiple; the search stops when the bracket is one
multiple wide, at --max_batch, after --max_probes probes, or when --budget_s (per setting) would be
exceeded by another probe as long as the last one. Only run probes count as "fits": the line's value is
reported as a prediction.

  python3 -m benchmarks.max_batch                             # default config, float32, start 512
  python3 -m benchmarks.max_batch --dtype=bfloat16 --budget_s=120
  python3 -m benchmarks.max_batch --config=smoke --start=4 --multiple=4 --limit_gib=0.05 --max_probes=3
                                                              # the search logic on the CPU

On a GPU set XLA_PYTHON_CLIENT_MEM_FRACTION (JAX preallocates 75% of the memory by default; gpu_all.sh
uses 0.9) so that "fits" means the card, not the default pool; the pool's size is in the JSON.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import time
from typing import Any

import jax

from benchmarks import common, setups
from mmdiff_jax import tcmalloc
from mmdiff_jax.config_validation import validate_config
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib

GIB = 2.0 ** 30
OOM_MARKERS = ("resource_exhausted", "out of memory", "oom when allocating", "failed to allocate")


def is_oom(error: BaseException) -> bool:
  """XLA's out-of-memory errors (RESOURCE_EXHAUSTED: Out of memory while trying to allocate ...)."""
  text = f"{type(error).__name__} {error}".lower()
  return any(marker in text for marker in OOM_MARKERS)


def memory_stats() -> dict | None:
  try:
    return jax.devices()[0].memory_stats() or None
  except Exception:  # not implemented on every backend
    return None


class Setting:
  """One remat setting: its config, mesh, optimizer, jitted step and one resident train state (created
  once and carried from probe to probe: the parameters do not depend on the batch)."""

  def __init__(self, base: Any, remat: bool):
    self.config = copy.deepcopy(base)
    self.config.model.remat = remat
    self.remat = remat
    self.experiment = build_experiment(self.config)
    self.mesh = sharding_lib.make_mesh(self.config.mesh)
    self.tx = state_lib.make_optimizer(self.config)
    self.abstract, self.shardings = state_lib.state_shardings(self.experiment.model, self.tx, self.mesh,
                                                              fsdp=self.config.fsdp, seed=self.config.seed)
    self.jitted = state_lib.make_train_step(self.experiment.objective(), self.tx,
                                            ema_decay=self.config.training.ema_decay, mesh=self.mesh,
                                            shardings=self.shardings)
    self.state = None
    self.num_params = int(sum(x.size for x in jax.tree.leaves(self.abstract.params)))
    self.state_bytes = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.abstract)))

  def resident_state(self):
    """The train state, (re)created if a failed run consumed the donated one."""
    if self.state is None or any(x.is_deleted() for x in jax.tree.leaves(self.state)):
      self.state = None
      gc.collect()
      self.state = state_lib.create_train_state(self.experiment.model, self.tx, self.shardings,
                                                self.config.seed)
    return self.state

  def probe(self, batch_size: int, limit_bytes: float | None) -> dict:
    """Compiles and runs the step at `batch_size`: {"batch_size", "outcome": "fits" | "oom" | "error",
    "compile_s", "need_bytes" (XLA: temporaries + unaliased outputs + code), "run_s" (first step),
    "step_s" (second), "seconds" (the whole probe), "error" (first line)}."""
    record: dict[str, Any] = {"batch_size": batch_size}
    start = time.perf_counter()
    compiled = batch = None
    try:
      config = copy.deepcopy(self.config)
      config.training.batch_size = batch_size
      validate_config(config, num_devices=jax.device_count())
      shapes = state_lib.example_batch(self.experiment.model, batch_size)
      compiled = self.jitted.lower(self.abstract, shapes).compile()
      record["compile_s"] = time.perf_counter() - start
      analysis = compiled.memory_analysis()
      if analysis is not None:
        record["need_bytes"] = int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes
                                   - analysis.alias_size_in_bytes + analysis.generated_code_size_in_bytes)
        record["argument_bytes"] = int(analysis.argument_size_in_bytes)
        record["temp_bytes"] = int(analysis.temp_size_in_bytes)
      if limit_bytes is not None and record.get("need_bytes", 0) + self.state_bytes > limit_bytes:
        record.update(outcome="oom", error=f"simulated: need + state over --limit_gib "
                                           f"({limit_bytes / GIB:.3f} GiB)")
        return record
      state = self.resident_state()
      batch = sharding_lib.global_batch(setups.random_batch(self.experiment.model, batch_size), self.mesh)
      stats = memory_stats()
      if stats:
        record["in_use_before_bytes"] = int(stats.get("bytes_in_use", 0))
      self.state = None  # donated below
      run_start = time.perf_counter()
      state, _ = compiled(state, batch)
      jax.block_until_ready(state)
      record["run_s"] = time.perf_counter() - run_start
      run_start = time.perf_counter()
      state, _ = compiled(state, batch)
      jax.block_until_ready(state)
      record["step_s"] = time.perf_counter() - run_start
      self.state = state
      record["outcome"] = "fits"
    except Exception as error:  # noqa: BLE001 (classified, not swallowed: "error" stops the search)
      record["outcome"] = "oom" if is_oom(error) else "error"
      record["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}" if str(
          error).strip() else type(error).__name__
    finally:
      del compiled, batch
      gc.collect()
      record["seconds"] = time.perf_counter() - start
    return record


def free_bytes(setting: Setting, limit_bytes: float | None) -> float | None:
  """Memory a step may take beyond the resident state and batch: the simulated limit less the state,
  or the device pool's limit less what is in use (the state, once created, and anything else)."""
  if limit_bytes is not None:
    return limit_bytes - setting.state_bytes
  stats = memory_stats()
  if not stats or "bytes_limit" not in stats:
    return None
  in_use = int(stats.get("bytes_in_use", 0))
  if setting.state is None:
    in_use += setting.state_bytes  # created at the first run
  return float(stats["bytes_limit"] - in_use)


def predict(points: list[tuple[int, int]], free: float | None) -> int | None:
  """The batch at which the need line reaches `free`: through the last two (batch, need) points, or
  through the origin and the only one (an upper bound on the slope, so a conservative batch)."""
  if free is None or not points:
    return None
  if len(points) == 1 or points[-1][0] == points[-2][0]:
    b, need = points[-1]
    slope, intercept = need / b, 0.0
  else:
    (b0, n0), (b1, n1) = sorted(points[-2:])
    slope = (n1 - n0) / (b1 - b0)
    intercept = n0 - slope * b0
  if slope <= 0:
    return None
  return int(math.floor((free - intercept) / slope))


def search(setting: Setting, args, limit_bytes: float | None, on_probe) -> dict:
  """The search of the module docstring for one setting; on_probe(result) after every probe."""
  mult = args.multiple
  down = lambda b: max(mult, b // mult * mult)
  probes, points = [], []
  lo = hi = None  # largest batch that fit, smallest that did not
  candidate, gallop, bracketed_steps, prediction = down(args.start), mult, 0, None
  start, stop = time.perf_counter(), None
  result = {"remat": setting.remat, "num_params": setting.num_params, "state_bytes": setting.state_bytes,
            "probes": probes}
  while candidate is not None:
    elapsed = time.perf_counter() - start
    if probes and elapsed + probes[-1]["seconds"] > args.budget_s:
      stop = f"budget: {elapsed:.0f} s spent, another probe would pass --budget_s={args.budget_s:.0f}"
      break
    if len(probes) >= args.max_probes:
      stop = f"--max_probes={args.max_probes}"
      break
    record = setting.probe(candidate, limit_bytes)
    record["free_bytes"] = free_bytes(setting, limit_bytes)
    probes.append(record)
    print(f"[remat={setting.remat}] batch {candidate}: {record['outcome']}"
          + (f", need {record['need_bytes'] / GIB:.2f} GiB" if "need_bytes" in record else "")
          + (f", step {record['step_s']:.3f} s" if "step_s" in record else "")
          + (f" ({record['error']})" if "error" in record else "")
          + f"; probe {record['seconds']:.1f} s", flush=True)
    if record["outcome"] == "error":
      stop = f"error at batch {candidate}: {record['error']}"
      break
    if "need_bytes" in record:
      points.append((candidate, record["need_bytes"]))
    if record["outcome"] == "fits":
      lo = max(lo or 0, candidate)
    else:
      hi = min(hi or candidate, candidate)
    prediction = predict(points, record["free_bytes"])
    result.update(largest_fit=lo, smallest_failure=hi, predicted_max=prediction)
    on_probe(result)
    # The next candidate.
    if lo is None:  # nothing fits yet: below the failure
      if hi <= mult:
        stop = f"nothing fits: batch {hi} failed"
        break
      guess = down(prediction) if prediction else down(hi // 2)
      candidate = guess if guess < hi else down(hi // 2)
      continue
    if hi is not None and hi - lo <= mult:
      stop = f"converged: {lo} fits, {hi} does not"
      break
    if hi is None:
      if prediction is None:
        candidate = 2 * lo
      elif down(prediction) > lo:
        candidate, gallop = down(prediction), mult
      else:  # the line says lo is the limit, yet it fit: step up, further each time
        candidate, gallop = lo + gallop, 2 * gallop
    else:
      bracketed_steps += 1
      midpoint = down((lo + hi) // 2)
      if prediction is not None and bracketed_steps % 2 == 1:
        candidate = min(max(down(prediction), lo + mult), hi - mult)
      else:
        candidate = midpoint if midpoint > lo else lo + mult
    if args.max_batch and candidate > args.max_batch:
      candidate = down(args.max_batch)
      if candidate <= lo:
        stop = f"--max_batch={args.max_batch}"
        break
  result.update(largest_fit=lo, smallest_failure=hi, predicted_max=prediction,
                stopped=stop or "converged", seconds=time.perf_counter() - start)
  fit = [p for p in probes if p["batch_size"] == lo and p["outcome"] == "fits"]
  if fit:
    result["at_largest_fit"] = {k: fit[-1].get(k) for k in ("need_bytes", "step_s", "compile_s")}
    if fit[-1].get("step_s"):
      result["at_largest_fit"]["examples_per_s"] = lo / fit[-1]["step_s"]
  on_probe(result)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="default", help="variant of configs/imglabel.py")
  parser.add_argument("--dtype", default="", choices=["", "float32", "bfloat16"],
                      help="model.dtype ('': the config's, float32)")
  parser.add_argument("--remat", default="false,true", help="settings of config.model.remat, in order")
  parser.add_argument("--start", type=int, default=512, help="the first batch probed")
  parser.add_argument("--multiple", type=int, default=8, help="batches probed are multiples of this")
  parser.add_argument("--max_batch", type=int, default=0, help="never probe above this (0: no cap)")
  parser.add_argument("--max_probes", type=int, default=12, help="per setting")
  parser.add_argument("--budget_s", type=float, default=240.0, help="seconds per setting")
  parser.add_argument("--limit_gib", type=float, default=0.0,
                      help="simulate a device of this many GiB (need + state over it: 'oom'; for the CPU)")
  parser.add_argument("--json", default=common.default_json("max_batch"))
  args = parser.parse_args()

  machine = common.machine()
  print(common.describe(machine), flush=True)
  variant = "" if args.config == "default" else args.config
  base = setups.get_config(variant, **({"model.dtype": args.dtype} if args.dtype else {}))
  limit_bytes = args.limit_gib * GIB if args.limit_gib else None
  stats = memory_stats()
  device = {"bytes_limit": (stats or {}).get("bytes_limit"), "simulated_limit_bytes": limit_bytes}
  pool = f"pool {stats['bytes_limit'] / GIB:.2f} GiB" if stats and "bytes_limit" in stats else "not reported"
  print(f"device memory: {pool}" + (f"; simulated limit {args.limit_gib} GiB" if limit_bytes else ""), flush=True)
  results: list[dict] = []
  payload = lambda: {"machine": machine, "load_at_end": common.load(), "config": args.config or "default",
                     "dtype": base.model.dtype, "device_memory": device, "settings": results,
                     "args": vars(args)}

  for remat in [r.strip().lower() == "true" for r in args.remat.split(",") if r.strip()]:
    setting = Setting(base, remat)
    current: dict = {}
    results.append(current)

    def on_probe(result, current=current):
      current.clear()
      current.update(result)
      common.write_json(args.json, payload())  # after every probe: a time limit leaves what was found

    search(setting, args, limit_bytes, on_probe)
    setting.state = None
    del setting
    gc.collect()

  gib = lambda b: f"{b / GIB:.2f}" if b else "-"
  rows = []
  for r in results:
    at = r.get("at_largest_fit", {})
    rows.append([str(r["remat"]), r.get("largest_fit") or "none", r.get("smallest_failure") or "-",
                 r.get("predicted_max") or "-", len(r["probes"]), gib(at.get("need_bytes")),
                 f"{at['step_s']:.3f}" if at.get("step_s") else "-",
                 f"{at['examples_per_s']:.0f}" if at.get("examples_per_s") else "-",
                 f"{r.get('seconds', 0):.0f}", r.get("stopped", "?")])
  limit = (f"pool {device['bytes_limit'] / GIB:.1f} GiB" if device["bytes_limit"] else
           f"simulated {args.limit_gib} GiB" if limit_bytes else "no memory limit reported")
  common.print_table(
      f"Largest train-step batch, config {args.config} ({base.model.dtype}), one device "
      f"({machine['devices']}, {limit}), multiples of {args.multiple}",
      ["remat", "largest batch that ran", "smallest that failed", "predicted limit (XLA memory line)",
       "probes", "need at largest GiB (XLA)", "step s there", "examples/s there", "search s", "stopped"],
      rows)
  common.print_table(
      "Probes", ["remat", "batch", "outcome", "compile s", "need GiB (XLA)", "step s", "probe s"],
      [[str(r["remat"]), p["batch_size"], p["outcome"], f"{p.get('compile_s', float('nan')):.1f}",
        gib(p.get("need_bytes")), f"{p['step_s']:.3f}" if "step_s" in p else "-", f"{p['seconds']:.1f}"]
       for r in results for p in r["probes"]])
  common.write_json(args.json, payload())


if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  main()
