r"""The largest batch whose train step fits on the device, without and with rematerialisation.

For config.model.remat False and True (remat: the U-Net's residual and attention blocks recompute their
activations in the backward pass instead of keeping them): probes global batch sizes of the library's
train step (state_lib.make_train_step, as train_step.py times it, one device). A probe compiles the step
for that batch and reads XLA's memory analysis of the compiled program: its need, what a step takes
beyond the resident train state (the batch, temporaries, outputs not aliased to the donated state, code).
How a probe is decided (each probe's "decided_by" in the JSON says which way it went):
  --decide=run (the default): the probe then runs two steps on a random batch; it fits if compilation
    and both steps succeed. An out-of-memory error (RESOURCE_EXHAUSTED / "out of memory", at
    compilation or at run time) is caught, everything the probe held is dropped and the search goes on.
  --decide=memory: the probe is decided by the analysis alone (need <= (1 - --margin) x the free memory:
    the device pool's limit less what is in use and the state), which saves the state's creation and
    the steps, and an out-of-memory run, at every probe; when the search ends, the largest batch the
    analysis let through is run for real (two steps: "run (verification)"). If that fails, the analysis
    was optimistic: the batch counts as a failure and the search goes on with --decide=run. Where the
    device reports no memory (and no --limit_gib), probes are run as with --decide=run.
Any error other than out-of-memory stops that setting's search (reported).

The search. Each probe costs a compilation (~50 s for the default config on an H100), so blind doubling
and bisection would spend most of a short lease compiling. Where the device reports its memory (a GPU:
memory_stats()["bytes_limit"]; or --limit_gib, which simulates a limit on the CPU), the need is affine
in the batch, and the next candidate is where the line through the last two probes' needs (through the
origin after the first probe, which overestimates the slope: a conservative first guess) meets the free
memory; a candidate at or below the largest fit steps up by a multiple that doubles each time; once a
failure brackets the answer, candidates alternate between the line's (clamped inside the bracket) and
the bracket's midpoint. Without memory figures: doubling until the first failure, then bisection, as
usual. Candidates are multiples of --multiple; the search stops when the bracket is one multiple wide,
at --max_batch, or after --max_probes compilations. The line's value is reported as a prediction.

Time. The settings share one deadline (--deadline_unix, or --budget_s from the start): after its first
probe a setting starts another only if that one (the longest probe so far, plus the verification's cost
once known) and one probe and verification for each later setting fit before it. A setting's first probe
runs whenever the deadline has not passed (its cost is only guessed from another setting's, and nothing
after this script would use the time; the JSON holds what came before). A setting with remat after one
without starts from that one's largest fit or predicted limit, whichever is larger (remat needs less
memory), instead of --start; the train state (the same parameters and optimizer either way) is kept for
it. The JSON is rewritten after every probe, so that a time limit leaves what was found.

  python3 -m benchmarks.max_batch                             # default config, float32, start 512
  python3 -m benchmarks.max_batch --dtype=bfloat16 --budget_s=240 --decide=memory
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
  """One remat setting: its config, optimizer, jitted step and one resident train state (created at the
  first real step and carried from probe to probe, and to the next setting: the parameters depend on
  neither the batch nor remat)."""

  def __init__(self, base: Any, remat: bool, mesh, state=None):
    self.config = copy.deepcopy(base)
    self.config.model.remat = remat
    self.remat = remat
    self.experiment = build_experiment(self.config)
    self.mesh = mesh
    self.tx = state_lib.make_optimizer(self.config)
    self.abstract, self.shardings = state_lib.state_shardings(self.experiment.model, self.tx, self.mesh,
                                                              fsdp=self.config.fsdp, seed=self.config.seed)
    self.jitted = state_lib.make_train_step(self.experiment.objective(), self.tx,
                                            ema_decay=self.config.training.ema_decay, mesh=self.mesh,
                                            shardings=self.shardings)
    layout = lambda tree: (jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)])
    self.state = state if state is not None and layout(state) == layout(self.abstract) else None
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

  def compile(self, batch_size: int) -> tuple[dict, Any]:
    """Compiles the step at `batch_size`: ({"batch_size", "compile_s", "need_bytes" (XLA: what a step
    needs beyond the state), "argument_bytes", "temp_bytes"; on failure "outcome": "oom" | "error",
    "decided_by": "compile", "error" (first line)}, the compiled program or None)."""
    record: dict[str, Any] = {"batch_size": batch_size}
    start = time.perf_counter()
    try:
      config = copy.deepcopy(self.config)
      config.training.batch_size = batch_size
      validate_config(config, num_devices=jax.device_count())
      shapes = state_lib.example_batch(self.experiment.model, batch_size)
      compiled = self.jitted.lower(self.abstract, shapes).compile()
    except Exception as error:  # noqa: BLE001 (classified, not swallowed: "error" stops the search)
      record.update(failure(error), decided_by="compile", compile_s=time.perf_counter() - start)
      return record, None
    record["compile_s"] = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    if analysis is not None:
      record["need_bytes"] = int(analysis.argument_size_in_bytes - self.state_bytes
                                 + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
                                 - analysis.alias_size_in_bytes + analysis.generated_code_size_in_bytes)
      record["argument_bytes"] = int(analysis.argument_size_in_bytes)
      record["temp_bytes"] = int(analysis.temp_size_in_bytes)
    return record, compiled

  def run(self, compiled, record: dict) -> None:
    """Two steps of `compiled` on a random batch of record["batch_size"], into `record`: "outcome"
    ("fits" | "oom" | "error"), "run_s" (the first step, with the state's creation where it was not
    resident), "step_s" (the second), "error"."""
    batch = None
    try:
      run_start = time.perf_counter()
      state = self.resident_state()
      batch = sharding_lib.global_batch(
          setups.random_batch(self.experiment.model, record["batch_size"]), self.mesh)
      stats = memory_stats()
      if stats:
        record["in_use_before_bytes"] = int(stats.get("bytes_in_use", 0))
      self.state = None  # donated below
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
      record.update(failure(error))
    finally:
      del batch
      gc.collect()


def print_probe(setting: Setting, record: dict) -> None:
  """One line per probe (or verification): its outcome, how it was decided, need, step time, error."""
  print(f"[remat={setting.remat}] batch {record['batch_size']}: {record['outcome']} "
        f"({record['decided_by']})"
        + (f", need {record['need_bytes'] / GIB:.2f} GiB" if "need_bytes" in record else "")
        + (f", step {record['step_s']:.3f} s" if "step_s" in record else "")
        + (f" ({record['error']})" if "error" in record else "")
        + f"; {record['seconds']:.1f} s", flush=True)


def failure(error: BaseException) -> dict:
  """{"outcome": "oom" | "error", "error": its type and first line}."""
  text = str(error).strip()
  name = type(error).__name__
  return {"outcome": "oom" if is_oom(error) else "error",
          "error": f"{name}: {text.splitlines()[0][:300]}" if text else name}


def free_bytes(setting: Setting, limit_bytes: float | None) -> float | None:
  """Memory a step may take beyond the resident state: the simulated limit less the state, or the
  device pool's limit less what is in use (the state, once created, and anything else)."""
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


def search(setting: Setting, args, limit_bytes: float | None, on_probe, *, start_batch: int,
           deadline: float, later_settings: int, costs: dict) -> dict:
  """The search of the module docstring for one setting; on_probe(result) after every probe. costs:
  {"probe": the longest probe's seconds, "verify": the last verification's}, shared by the settings."""
  mult = args.multiple
  down = lambda b: max(mult, b // mult * mult)
  decide = args.decide
  probes, points = [], []
  lo = hi = None  # largest batch that fit, smallest that did not
  verified = None  # largest batch at which a real step ran
  unverified = None  # (batch, compiled program) where the memory analysis alone let lo through
  candidate, gallop, bracketed_steps, prediction = down(start_batch), mult, 0, None
  start, stop = time.perf_counter(), None
  result = {"remat": setting.remat, "num_params": setting.num_params, "state_bytes": setting.state_bytes,
            "start": candidate, "probes": probes}
  # The memory a probe may need: with --decide=memory, less the margin (decide changes in the loop).
  usable = lambda free: free * (1 - args.margin) if free is not None and decide == "memory" else free
  decided = lambda batch: next((p["decided_by"] for p in reversed(probes) if p["batch_size"] == batch),
                               None)

  def update():
    result.update(largest_fit=lo, largest_fit_decided_by=decided(lo), largest_verified=verified,
                  smallest_failure=hi, smallest_failure_decided_by=decided(hi), predicted_max=prediction)
    on_probe(result)

  def next_candidate() -> tuple[int | None, str | None]:
    """(the next batch to probe, None) or (None, why the search stops)."""
    nonlocal gallop, bracketed_steps
    if lo is None:  # nothing fits yet: below the failure
      if hi <= mult:
        return None, f"nothing fits: batch {hi} failed"
      guess = down(prediction) if prediction else down(hi // 2)
      return (guess if guess < hi else down(hi // 2)), None
    if hi is not None and hi - lo <= mult:
      return None, f"converged: {lo} fits, {hi} does not"
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
        return None, f"--max_batch={args.max_batch}"
    return candidate, None

  while True:
    left = deadline - time.time()
    compiled_count = sum(1 for p in probes if p["decided_by"] != "run (verification)")
    # Another probe's cost, its verification's (where the analysis would decide it), and a probe and
    # verification for each later setting.
    needed = (costs["probe"] + (costs["verify"] if decide == "memory" else 0)
              + later_settings * (costs["probe"] + costs["verify"]))
    if stop is None and candidate is not None and compiled_count >= args.max_probes:
      stop = f"--max_probes={args.max_probes}"
    elif stop is None and candidate is not None and (left <= 0 or probes and needed > left):
      # A setting's first probe runs whenever the deadline has not passed: its cost is only guessed
      # from another setting's, nothing after this script would use the time, and the JSON is written.
      stop = (f"time: {left:.0f} s left before the deadline, another probe needs ~{needed:.0f} s"
              + (" (with a probe for each later setting)" if later_settings else ""))
    if stop is not None or candidate is None:
      if unverified is None:
        break
      # The analysis alone let lo through: run it for real before reporting it.
      batch, compiled = unverified
      unverified = None
      record = {"batch_size": batch, "decided_by": "run (verification)"}
      verify_start = time.perf_counter()
      setting.run(compiled, record)
      del compiled
      record["seconds"] = costs["verify"] = time.perf_counter() - verify_start
      probes.append(record)
      print_probe(setting, record)
      if record["outcome"] == "fits":
        verified = batch
        update()
        break
      ended_by_error = stop is not None and stop.startswith("error")
      if record["outcome"] == "error":
        stop = f"error at batch {batch}: {record['error']}"
      else:  # out of memory where the analysis said it fits: from here on every probe runs
        hi, lo, decide = min(hi or batch, batch), verified, "run"
      update()
      if record["outcome"] == "error" or ended_by_error:
        break
      candidate, stop = next_candidate()
      continue

    probe_start = time.perf_counter()
    record, compiled = setting.compile(candidate)
    if "outcome" not in record:
      free = record["free_bytes"] = free_bytes(setting, limit_bytes)
      room = record["usable_bytes"] = usable(free)
      need = record.get("need_bytes")
      if limit_bytes is not None and need is not None and need > room:
        record.update(outcome="oom", decided_by="memory analysis (simulated --limit_gib)",
                      error=f"simulated: need + state over --limit_gib ({limit_bytes / GIB:.3f} GiB)")
      elif decide == "memory" and need is not None and room is not None:
        record.update(outcome="fits" if need <= room else "oom", decided_by="memory analysis")
      else:
        setting.run(compiled, record)
        record["decided_by"] = "run"
    record["seconds"] = time.perf_counter() - probe_start
    costs["probe"] = max(costs["probe"], record["seconds"])
    probes.append(record)
    print_probe(setting, record)
    if record["outcome"] == "error":
      stop = f"error at batch {candidate}: {record['error']}"
      del compiled
      update()
      continue  # to the verification of an earlier fit, if any
    if "need_bytes" in record:
      points.append((candidate, record["need_bytes"]))
    if record["outcome"] == "fits" and (lo is None or candidate > lo):
      lo = candidate
      if record["decided_by"] == "memory analysis":
        unverified = (candidate, compiled)
      else:
        verified, unverified = candidate, None
    elif record["outcome"] != "fits":
      hi = min(hi or candidate, candidate)
    del compiled
    prediction = predict(points, record.get("usable_bytes"))
    update()
    candidate, stop = next_candidate()

  result.update(stopped=stop or "converged", seconds=time.perf_counter() - start)
  fit = [p for p in probes if p["batch_size"] == lo and p["outcome"] == "fits"]
  if fit:  # the compile-side figures from its probe, the step time from a run (maybe the verification)
    first = lambda key: next((p[key] for p in fit if key in p), None)
    result["at_largest_fit"] = {key: first(key) for key in ("need_bytes", "compile_s", "step_s")}
    if result["at_largest_fit"]["step_s"]:
      result["at_largest_fit"]["examples_per_s"] = lo / result["at_largest_fit"]["step_s"]
  update()
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
  parser.add_argument("--max_probes", type=int, default=12, help="compilations per setting")
  parser.add_argument("--decide", default="run", choices=["run", "memory"],
                      help="how a probe is decided: two real steps, or XLA's memory analysis (the "
                           "largest fit then verified by a real step)")
  parser.add_argument("--margin", type=float, default=0.03,
                      help="--decide=memory: the fraction of the free memory kept back (allocator "
                           "fragmentation, what XLA allocates outside its analysis)")
  parser.add_argument("--budget_s", type=float, default=480.0, help="seconds for all the settings")
  parser.add_argument("--deadline_unix", type=float, default=0.0,
                      help="the deadline as a Unix time (instead of --budget_s; gpu_all.sh passes it)")
  parser.add_argument("--limit_gib", type=float, default=0.0,
                      help="simulate a device of this many GiB (need + state over it: 'oom'; for the CPU)")
  parser.add_argument("--json", default=common.default_json("max_batch"))
  args = parser.parse_args()
  deadline = args.deadline_unix or time.time() + args.budget_s

  machine = common.machine()
  print(common.describe(machine), flush=True)
  variant = "" if args.config == "default" else args.config
  base = setups.get_config(variant, **({"model.dtype": args.dtype} if args.dtype else {}))
  limit_bytes = args.limit_gib * GIB if args.limit_gib else None
  stats = memory_stats()
  device = {"bytes_limit": (stats or {}).get("bytes_limit"), "simulated_limit_bytes": limit_bytes}
  pool = f"pool {stats['bytes_limit'] / GIB:.2f} GiB" if stats and "bytes_limit" in stats else "not reported"
  print(f"device memory: {pool}" + (f"; simulated limit {args.limit_gib} GiB" if limit_bytes else "")
        + f"; {deadline - time.time():.0f} s to the deadline", flush=True)
  results: list[dict] = []
  payload = lambda complete=False: {
      "machine": machine, "load_at_end": common.load(), "config": args.config or "default",
      "dtype": base.model.dtype, "device_memory": device, "settings": results, "complete": complete,
      "args": vars(args)}

  remats = [r.strip().lower() == "true" for r in args.remat.split(",") if r.strip()]
  mesh = sharding_lib.make_mesh(base.mesh)
  costs = {"probe": 0.0, "verify": 0.0}
  state = None
  for i, remat in enumerate(remats):
    setting = Setting(base, remat, mesh, state)
    start_batch, start_from = args.start, "--start"
    previous = results[-1] if results else None
    if previous is not None and remat and not previous["remat"]:
      known = [b for b in (previous.get("largest_fit"), previous.get("predicted_max")) if b]
      if known:
        start_batch, start_from = max(known), "remat=False's largest fit or predicted limit"
    current: dict = {"start_from": start_from}
    results.append(current)

    def on_probe(result, current=current, start_from=start_from):
      current.clear()
      current.update(result, start_from=start_from)
      common.write_json(args.json, payload())  # after every probe: a time limit leaves what was found

    search(setting, args, limit_bytes, on_probe, start_batch=start_batch, deadline=deadline,
           later_settings=len(remats) - 1 - i, costs=costs)
    state, setting.state = setting.state, None
    del setting
    gc.collect()

  gib = lambda b: f"{b / GIB:.2f}" if b else "-"
  how = lambda batch, by: f"{batch}: {by}" if batch else "none"
  rows = []
  for r in results:
    at = r.get("at_largest_fit", {})
    rows.append([str(r["remat"]), how(r.get("largest_fit"), r.get("largest_fit_decided_by")),
                 r.get("largest_verified") or "none",
                 how(r.get("smallest_failure"), r.get("smallest_failure_decided_by")),
                 r.get("predicted_max") or "-", len(r["probes"]), gib(at.get("need_bytes")),
                 f"{at['step_s']:.3f}" if at.get("step_s") else "-",
                 f"{at['examples_per_s']:.0f}" if at.get("examples_per_s") else "-",
                 f"{r.get('seconds', 0):.0f}", r.get("stopped", "?")])
  limit = (f"pool {device['bytes_limit'] / GIB:.1f} GiB" if device["bytes_limit"] else
           f"simulated {args.limit_gib} GiB" if limit_bytes else "no memory limit reported")
  common.print_table(
      f"Largest train-step batch, config {args.config} ({base.model.dtype}), one device "
      f"({machine['devices']}, {limit}), multiples of {args.multiple}, --decide={args.decide}",
      ["remat", "largest batch that fits (decided by)", "largest a real step ran at",
       "smallest that does not (decided by)", "predicted limit (XLA memory line)", "probes",
       "need at largest GiB (XLA)", "step s there", "examples/s there", "search s", "stopped"],
      rows)
  common.print_table(
      "Probes", ["remat", "batch", "outcome", "decided by", "compile s", "need GiB (XLA)", "step s",
                 "probe s"],
      [[str(r["remat"]), p["batch_size"], p["outcome"], p["decided_by"],
        f"{p['compile_s']:.1f}" if "compile_s" in p else "-", gib(p.get("need_bytes")),
        f"{p['step_s']:.3f}" if "step_s" in p else "-", f"{p['seconds']:.1f}"]
       for r in results for p in r["probes"]])
  common.write_json(args.json, payload(complete=True))

if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  main()
