r"""Sampling speed: the compiled loop (Sampler.sample, one lax.fori_loop) vs a Python loop of jitted steps.

The Python loop is the fair alternative: one jitted call per step (Sampler.predict + the step's noise +
Sampler.step, the same work as one iteration of the compiled loop), plus one jitted call each for the
initial noise and the final read-out; the step index and key are traced arguments, so nothing
recompiles. Both run joint (unconditional) generation with random parameters of the config (speed does
not depend on the weights). The two variants are timed in alternation within the run.

  python3 -m benchmarks.sampling                                   # small config, batch 8
  python3 -m benchmarks.sampling --batch_sizes=1,8 --ancestral_steps=200 --json=/tmp/sampling.json

The last columns bound what compiling the loop can save: the host time the Python loop spends issuing
its calls (overlapped with the computation), and the same two loops around a step that only scales z.

--ancestral_steps=K < T times the first K of the T ancestral steps (both variants, same segment) and
reports images/s for the full chain as K/T of the measured rate (every ancestral step costs the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import numpy as np

from benchmarks import common, setups
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.sampling.samplers import Sampler
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib


@dataclasses.dataclass(frozen=True)
class SegmentSampler(Sampler):
  """A sampler that runs only the first `segment` steps of its chain (for timing long chains)."""
  segment: int = 0

  def timesteps(self) -> np.ndarray:
    steps = super().timesteps()
    return steps if not self.segment else steps[:self.segment + 1]


def python_loop(sampler: Sampler):
  """sample(params, rng, batch_size) as a Python loop over one jitted step per timestep."""
  timesteps = sampler.timesteps()
  z_shape = sampler.model.z_shape

  @jax.jit
  def init(rng, noise_like):
    init_rng, loop_rng = jax.random.split(rng)
    return jax.random.normal(init_rng, noise_like.shape), loop_rng

  @jax.jit
  def one_step(params, z, t, s, loop_rng, i):
    z0, eps, encodings, outputs = sampler.predict(params, z, t, {}, None)
    noise = jax.random.normal(jax.random.fold_in(loop_rng, i), z.shape)
    return sampler.step(z0, eps, encodings, z, t, s, noise), outputs

  collect = jax.jit(lambda z, outputs: sampler._collect(z, outputs, {}))

  def sample(params, rng, batch_size: int):
    start = time.perf_counter()
    z, loop_rng = init(rng, np.empty((batch_size, *z_shape), np.float32))
    outputs = None
    for i in range(len(timesteps) - 1):
      z, outputs = one_step(params, z, timesteps[i], timesteps[i + 1], loop_rng, i)
    result = collect(z, outputs)
    # Host time to issue every call (dispatch is asynchronous: it overlaps the device's work).
    sample.host_seconds.append(time.perf_counter() - start)
    return result

  sample.host_seconds = []
  return sample


def dispatch_floor(params, num_steps: int, z_shape, rounds: int) -> dict:
  """The loops without the network: a step that takes the parameters (as the real step does, so the
  per-call argument handling is the same) but only scales z, as a Python loop of jitted calls and as
  one compiled fori_loop. Their difference per step is what compiling the loop can save at most."""
  z = jax.numpy.zeros(z_shape)
  tiny = lambda params, z, t: z * 0.999 + 1e-3 * t
  tiny_step = jax.jit(tiny, keep_unused=True)

  def loop():
    out = z
    for i in range(num_steps):
      out = tiny_step(params, out, i)
    return out

  compiled = jax.jit(lambda params, z: jax.lax.fori_loop(
      0, num_steps, lambda i, z: tiny(params, z, i), z), keep_unused=True)
  timing = common.alternate({"compiled": lambda: compiled(params, z), "python_loop": loop},
                            rounds=rounds, reps=3)
  return {k: 1e3 * statistics.median(v) / num_steps for k, v in timing["seconds"].items()}


def bench(args, batch_size: int, kind: str, sampler_steps: int, experiment, params, machine_rows):
  base = experiment.sampler(kind, sampler_steps)
  full_steps = len(base.timesteps()) - 1
  segment = args.ancestral_steps if kind == "ancestral" and args.ancestral_steps < full_steps else 0
  sampler = SegmentSampler(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Sampler)},
                           segment=segment)
  timed_steps = segment or full_steps
  compiled_fn = jax.jit(sampler.sample, static_argnums=(2,))
  loop_fn = python_loop(sampler)
  rng = jax.random.PRNGKey(0)

  start = time.perf_counter()
  jax.block_until_ready(compiled_fn(params, rng, batch_size))
  first_compiled = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(loop_fn(params, rng, batch_size))
  first_loop = time.perf_counter() - start
  # Same numbers from both (the loop bodies are the same computation).
  a = np.asarray(compiled_fn(params, rng, batch_size)["image"])
  b = np.asarray(loop_fn(params, rng, batch_size)["image"])
  max_diff = float(np.max(np.abs(a - b)))

  loop_fn.host_seconds.clear()
  timing = common.alternate(
      {"compiled": lambda: compiled_fn(params, rng, batch_size),
       "python_loop": lambda: loop_fn(params, rng, batch_size)},
      rounds=args.rounds, reps=1, warmup=0)
  scale = full_steps / timed_steps
  seconds = {k: [s * scale for s in v] for k, v in timing["seconds"].items()}
  speedup = common.ratios(seconds["python_loop"], seconds["compiled"])
  result = {
      "sampler": f"{kind}-{full_steps}", "batch_size": batch_size, "timed_steps": timed_steps,
      "estimated_from_segment": bool(segment),
      "first_call_s": {"compiled": first_compiled, "python_loop": first_loop},
      "seconds_per_chain": seconds,
      "images_per_s": {k: batch_size / statistics.median(v) for k, v in seconds.items()},
      "ms_per_step": {k: 1e3 * statistics.median(v) / full_steps for k, v in seconds.items()},
      "speedup_compiled_over_loop": common.summary(speedup), "speedup_per_round": speedup,
      "max_abs_diff_compiled_vs_loop": max_diff, "load_per_round": timing["load"],
      "python_loop_host_ms_per_step": 1e3 * statistics.median(loop_fn.host_seconds) / timed_steps,
      "dispatch_floor_ms_per_step": dispatch_floor(params, timed_steps, (batch_size, *experiment.model.z_shape),
                                                   args.rounds),
  }
  print(f"[{result['sampler']} batch {batch_size}] images/s compiled "
        f"{result['images_per_s']['compiled']:.2f}, python loop "
        f"{result['images_per_s']['python_loop']:.2f}; compiled/loop speed "
        f"{result['speedup_compiled_over_loop']['median']:.3f} (rounds "
        f"{[round(s, 3) for s in speedup]}); load {timing['load']}", flush=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="small", help="variant of configs/imglabel.py")
  parser.add_argument("--batch_sizes", default="8", help="comma-separated")
  parser.add_argument("--ddim_steps", type=int, default=50)
  parser.add_argument("--ancestral_steps", type=int, default=1000,
                      help="ancestral steps actually timed (fewer than T: extrapolated, see above)")
  parser.add_argument("--samplers", default="ddim,ancestral")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--json", default=common.default_json("sampling"))
  args = parser.parse_args()

  machine = common.machine()
  print(common.describe(machine), flush=True)
  config = setups.get_config("" if args.config == "default" else args.config)
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = state_lib.make_optimizer(config)
  _, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=False)
  params = state_lib.create_train_state(experiment.model, tx, shardings, config.seed).params
  num_params = int(sum(x.size for x in jax.tree.leaves(params)))
  results = []
  for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
    for kind in args.samplers.split(","):
      results.append(bench(args, batch_size, kind, args.ddim_steps, experiment, params, None))

  rows = [[r["sampler"], r["batch_size"],
           f"{r['timed_steps']}" + (" (extrapolated)" if r["estimated_from_segment"] else ""),
           f"{r['images_per_s']['compiled']:.2f}", f"{r['images_per_s']['python_loop']:.2f}",
           f"{r['ms_per_step']['compiled']:.2f}", f"{r['ms_per_step']['python_loop']:.2f}",
           f"{r['python_loop_host_ms_per_step']:.3f}",
           f"{r['dispatch_floor_ms_per_step']['compiled']:.3f} / "
           f"{r['dispatch_floor_ms_per_step']['python_loop']:.3f}",
           f"{r['speedup_compiled_over_loop']['median']:.3f} "
           f"({r['speedup_compiled_over_loop']['min']:.3f}-{r['speedup_compiled_over_loop']['max']:.3f})",
           f"{min(r['load_per_round'])}-{max(r['load_per_round'])}"] for r in results]
  common.print_table(
      f"Sampling, config {args.config} ({num_params / 1e6:.3f}M parameters), {args.rounds} "
      f"alternating rounds",
      ["sampler", "batch", "steps timed", "images/s compiled", "images/s Python loop",
       "ms/step compiled", "ms/step loop", "loop host ms/step",
       "no-network floor ms/step compiled / loop", "compiled speed / loop (min-max)",
       "load (1 min)"], rows)
  common.write_json(args.json, {"machine": machine, "load_at_end": common.load(),
                                "config": args.config, "num_params": num_params,
                                "results": results, "args": vars(args)})


if __name__ == "__main__":
  main()
