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

--torch (with --image_only: the twin has no label head) adds the same DDIM chain over the PyTorch twin
(benchmarks/torch_unet.py DDIMSampler: the same timesteps, parameterization and clipping, a Python loop
of eager calls) to the DDIM contenders, and with --torch_compile the twin through torch.compile; its
parameter count must equal the JAX model's. --device=cuda puts PyTorch on the GPU, --autocast_bf16 runs
its network under bf16 autocast, --dtype=bfloat16 sets the JAX config's model.dtype (the two bf16
policies differ in GroupNorm: see "precision_caveat" in the JSON). --no_python_loop drops the JAX Python
loop (and with it the speedup and dispatch columns) where only images/s matter.

In phases, the JSON rewritten after each ("complete": true at the end), so that a time limit or a
failure of PyTorch leaves what was measured: JAX alone first (torch not yet imported), then the eager
twin alternating with JAX's compiled loop, then the compiled twin alternating with it (its first call
is Inductor's compilation). A PyTorch contender that fails is recorded ("torch_errors") and skipped:

  python3 -m benchmarks.sampling --config=default --image_only --dtype=bfloat16 --samplers=ddim \
      --batch_sizes=256 --no_python_loop --torch --torch_compile --autocast_bf16 --device=cuda  # a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import jax
import numpy as np

from benchmarks import common, setups
from mmdiff_jax import tcmalloc
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


class Twins:
  """The PyTorch twin's DDIM samplers over torch_unet.DDIMSampler, "torch_eager" and "torch_compile"
  (through torch.compile), each built on first use: torch is imported only after JAX's figures are
  written, so that its failure costs none of them."""

  def __init__(self, args, config, experiment, num_params: int, machine: dict):
    self.args, self.config, self.experiment = args, config, experiment
    self.num_params, self.machine = num_params, machine
    self.samplers: dict = {}

  def get(self, name: str):
    if name in self.samplers:
      return self.samplers[name]
    args = self.args
    torch = common.import_torch()
    from benchmarks import torch_unet
    self.machine["torch"] = torch.__version__
    if args.device == "cuda":
      if not torch.cuda.is_available():
        raise RuntimeError("--device=cuda: torch sees no CUDA device")
      torch.backends.cudnn.benchmark = True
      torch.set_float32_matmul_precision("high")  # TF32, as JAX's default precision on a GPU
    sampler = torch_unet.DDIMSampler(
        self.config, np.asarray(self.experiment.schedule.alpha_bars),
        self.experiment.sampler("ddim", args.ddim_steps).timesteps(),
        parameterization=self.experiment.parameterization, device=args.device,
        autocast_bf16=args.autocast_bf16,
        compile_backend=args.torch_compile_backend if name == "torch_compile" else None)
    print(f"{name}: {sampler.num_params} parameters (JAX {self.num_params}); torch {torch.__version__} "
          f"on {args.device}", flush=True)
    if sampler.num_params != self.num_params:
      raise ValueError(f"parameter counts differ: JAX {self.num_params}, {name} {sampler.num_params}")
    self.samplers[name] = sampler
    return sampler


def bench(args, batch_size: int, kind: str, sampler_steps: int, experiment, params, result: dict, write,
          twins: Twins | None = None) -> None:
  """One sampler at one batch size, into `result`, in phases, write() after each: "jax" times the
  compiled loop (and the Python loop, unless --no_python_loop) in alternation; then, for DDIM with
  twins, "torch_eager" and "torch_compile" each time their PyTorch sampler in alternation with the
  compiled loop. Each contender's figures come from the phase that added it; a PyTorch contender that
  fails is recorded in result["torch_errors"] and the next phase runs."""
  base = experiment.sampler(kind, sampler_steps)
  full_steps = len(base.timesteps()) - 1
  segment = args.ancestral_steps if kind == "ancestral" and args.ancestral_steps < full_steps else 0
  sampler = SegmentSampler(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Sampler)},
                           segment=segment)
  timed_steps = segment or full_steps
  scale = full_steps / timed_steps
  compiled_fn = jax.jit(sampler.sample, static_argnums=(2,))
  rng = jax.random.PRNGKey(0)
  compiled = lambda: compiled_fn(params, rng, batch_size)
  result.update({"sampler": f"{kind}-{full_steps}", "batch_size": batch_size, "timed_steps": timed_steps,
                 "estimated_from_segment": bool(segment), "first_call_s": {}, "seconds_per_chain": {},
                 "images_per_s": {}, "ms_per_step": {}, "phase_of": {}, "phases": {}})

  def timed(phase: str, contenders: dict) -> dict:
    """Alternates the contenders; each one's figures (except "compiled" after the first phase) go into
    the result as this phase's; returns the seconds per chain."""
    timing = common.alternate(contenders, rounds=args.rounds, reps=1, warmup=0)
    seconds = {k: [s * scale for s in v] for k, v in timing["seconds"].items()}
    result["phases"][phase] = {"seconds_per_chain": seconds, "load_per_round": timing["load"]}
    for name, values in seconds.items():
      if name == "compiled" and phase != "jax":
        continue  # the reference of this phase's ratio; its own figure is the JAX phase's
      result["seconds_per_chain"][name] = values
      result["images_per_s"][name] = batch_size / statistics.median(values)
      result["ms_per_step"][name] = 1e3 * statistics.median(values) / full_steps
      result["phase_of"][name] = phase
    return seconds

  start = time.perf_counter()
  jax.block_until_ready(compiled())
  result["first_call_s"]["compiled"] = time.perf_counter() - start
  contenders = {"compiled": compiled}
  max_diff = None
  if not args.no_python_loop:
    loop_fn = python_loop(sampler)
    start = time.perf_counter()
    jax.block_until_ready(loop_fn(params, rng, batch_size))
    result["first_call_s"]["python_loop"] = time.perf_counter() - start
    # Same numbers from both (the loop bodies are the same computation).
    a = np.asarray(compiled()["image"])
    b = np.asarray(loop_fn(params, rng, batch_size)["image"])
    max_diff = float(np.max(np.abs(a - b)))
    loop_fn.host_seconds.clear()
    contenders["python_loop"] = lambda: loop_fn(params, rng, batch_size)
  seconds = timed("jax", contenders)
  result["load_per_round"] = result["phases"]["jax"]["load_per_round"]
  if "python_loop" in seconds:
    speedup = common.ratios(seconds["python_loop"], seconds["compiled"])
    result.update({
        "speedup_compiled_over_loop": common.summary(speedup), "speedup_per_round": speedup,
        "max_abs_diff_compiled_vs_loop": max_diff,
        "python_loop_host_ms_per_step": 1e3 * statistics.median(loop_fn.host_seconds) / timed_steps,
        "dispatch_floor_ms_per_step": dispatch_floor(params, timed_steps,
                                                     (batch_size, *experiment.model.z_shape), args.rounds),
    })
  write()
  print(f"[{result['sampler']} batch {batch_size}] images/s "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["images_per_s"].items())
        + (f"; compiled/loop speed {result['speedup_compiled_over_loop']['median']:.3f} (rounds "
           f"{[round(s, 3) for s in result['speedup_per_round']]})" if "python_loop" in seconds else "")
        + f"; load {result['load_per_round']}", flush=True)

  names = ["torch_eager"] + (["torch_compile"] if args.torch_compile else [])
  for name in names if twins is not None and kind == "ddim" else []:
    try:
      twin = twins.get(name)
      start = time.perf_counter()
      twin(batch_size).block_until_ready()  # torch.compile compiles here
      result["first_call_s"][name] = time.perf_counter() - start
      seconds = timed(name, {"compiled": compiled, name: functools.partial(twin, batch_size)})
    except Exception as error:  # noqa: BLE001 (recorded: the figures before it stand)
      message = common.error_text(error)
      result.setdefault("torch_errors", {})[name] = message
      print(f"[{result['sampler']} batch {batch_size}] {name} failed: {message}", flush=True)
      write()
      continue
    speed = result[f"{name}_over_compiled_speed"] = common.summary(
        common.ratios(seconds["compiled"], seconds[name]))
    write()
    print(f"[{result['sampler']} batch {batch_size}] {name}: images/s "
          f"{result['images_per_s'][name]:.2f}, speed / JAX compiled {speed['median']:.3f}; load "
          f"{result['phases'][name]['load_per_round']}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="small", help="variant of configs/imglabel.py")
  parser.add_argument("--image_only", action="store_true",
                      help="configs/baseline_uncond.py instead (no label modality: the twin's model)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="the JAX config's model.dtype")
  parser.add_argument("--batch_sizes", default="8", help="comma-separated")
  parser.add_argument("--ddim_steps", type=int, default=50)
  parser.add_argument("--ancestral_steps", type=int, default=1000,
                      help="ancestral steps actually timed (fewer than T: extrapolated, see above)")
  parser.add_argument("--samplers", default="ddim,ancestral")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--no_python_loop", action="store_true", help="time the compiled JAX loop only")
  parser.add_argument("--torch", action="store_true", help="add the PyTorch twin's DDIM loop (--image_only)")
  parser.add_argument("--torch_compile", action="store_true", help="and the twin through torch.compile")
  parser.add_argument("--torch_compile_backend", default="inductor")
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="PyTorch's device")
  parser.add_argument("--autocast_bf16", action="store_true", help="the twin under bf16 autocast")
  parser.add_argument("--json", default=common.default_json("sampling"))
  args = parser.parse_args()
  if args.torch and not args.image_only:
    parser.error("--torch needs --image_only (the PyTorch twin has no label head)")

  machine = common.machine()
  print(common.describe(machine), flush=True)
  config = setups.get_config("" if args.config == "default" else args.config, image_only=args.image_only,
                             **{"model.dtype": args.dtype})
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = state_lib.make_optimizer(config)
  _, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=False)
  params = state_lib.create_train_state(experiment.model, tx, shardings, config.seed).params
  num_params = int(sum(x.size for x in jax.tree.leaves(params)))
  twins = Twins(args, config, experiment, num_params, machine) if args.torch else None
  caveat = common.bf16_policy_caveat(args.dtype, args.autocast_bf16) if args.torch else None
  results = []
  # Rewritten after each phase of each sampler ("complete": every one ran), so that a time limit leaves
  # what was measured.
  write = lambda complete=False: common.write_json(args.json, {
      "machine": machine, "load_at_end": common.load(), "config": args.config,
      "image_only": args.image_only, "dtype": args.dtype, "num_params": num_params,
      "precision_caveat": caveat, "results": results, "complete": complete, "args": vars(args)})
  for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
    for kind in args.samplers.split(","):
      results.append({})
      bench(args, batch_size, kind, args.ddim_steps, experiment, params, results[-1], write, twins)
  write(complete=True)

  model = f"config {args.config}{' image-only' if args.image_only else ''} ({num_params / 1e6:.3f}M parameters)"
  if not args.no_python_loop:
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
        f"Sampling, {model}, {args.dtype}, {args.rounds} alternating rounds",
        ["sampler", "batch", "steps timed", "images/s compiled", "images/s Python loop",
         "ms/step compiled", "ms/step loop", "loop host ms/step",
         "no-network floor ms/step compiled / loop", "compiled speed / loop (min-max)",
         "load (1 min)"], rows)
  rows = []
  for r in results:
    for name, rate in r["images_per_s"].items():
      vs = r.get(f"{name}_over_compiled_speed")
      loads = r["phases"][r["phase_of"][name]]["load_per_round"]
      label = {"compiled": "jax (compiled loop)", "python_loop": "jax (Python loop)"}.get(name, name)
      rows.append([r["sampler"], r["batch_size"], label, f"{rate:.2f}", f"{r['ms_per_step'][name]:.3f}",
                   f"{r['first_call_s'][name]:.1f}",
                   f"{vs['median']:.3f} ({vs['min']:.3f}-{vs['max']:.3f})" if vs else "-",
                   f"{min(loads)}-{max(loads)}"])
    for name, message in r.get("torch_errors", {}).items():
      rows.append([r["sampler"], r["batch_size"], name, f"failed: {message[:160]}", "-", "-", "-", "-"])
  torch_note = (f"; PyTorch on {args.device}{', bf16 autocast' if args.autocast_bf16 else ''}"
                + (common.BF16_POLICY_TITLE_NOTE if caveat else "")
                if args.torch else "")
  common.print_table(
      f"Sampling throughput, {model}, JAX {args.dtype}{torch_note}, {args.rounds} alternating rounds "
      "(each PyTorch contender alternating with the JAX compiled loop in a phase of its own)",
      ["sampler", "batch", "contender", "images/s", "ms/step", "first call s (compile)",
       "this speed / JAX compiled speed, same phase", "load (1 min)"], rows)


if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  main()
