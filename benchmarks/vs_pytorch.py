r"""The same U-Net, batch and optimizer in JAX and in PyTorch: train-step time, measured alternately.

Contenders (all on the image-only config: the library's U-Net and image head; no label modality):
  jax_library: mmdiff_jax's own train step (state_lib.make_train_step: loss, the bound terms as metrics,
               clipping, AdamW, EMA, the non-finite guard; jitted, donated);
  jax_bare:    the minimal JAX step, exactly the PyTorch step's work (loss, clipping, AdamW, EMA);
               left out with --no_jax_bare (a second compilation of the model, as long as the first);
  torch:       benchmarks/torch_unet.py, eager (on the CPU torch.set_num_threads = --threads, default the
               cores), in the first memory layout of --layouts (default: contiguous, i.e. NCHW);
  torch_channels_last: the same step with the model and batch in channels_last (NHWC) memory, oneDNN's
               preferred convolution layout (each further layout of --layouts is a contender of its own);
  torch_1thread: the same PyTorch step on one thread (CPU only), first layout;
  torch_compile: with --torch_compile, the same step with the model through torch.compile (a second
               copy of the model, same initialisation; first layout), timed in a second phase with all
               the others.
On the CPU, PyTorch's OpenMP threads spin while they wait (OMP_WAIT_POLICY=active, libgomp's default): on a
shared machine, when another job holds a core, the spinning threads make the multi-threaded step many times
slower. This script sets OMP_WAIT_POLICY=passive before importing torch (--omp_wait_policy=default
leaves libgomp's default), and the "faster torch setting" column takes the fastest of the PyTorch
contenders (layouts, thread counts, torch.compile) in each round: the comparison is against PyTorch's
best showing on this machine.
--device=cuda runs PyTorch on the GPU (JAX uses its default device: run with a CUDA jaxlib), with
cudnn.benchmark on, TF32 matmuls allowed (JAX's default precision for float32 on a GPU) and fused AdamW;
--dtype=bfloat16 sets the JAX config's model.dtype and --autocast_bf16 runs PyTorch's forward pass under
bf16 autocast (both: parameters and optimizer in float32). The two bf16 policies differ in one place,
recorded in the JSON ("precision_caveat") and the table title: Flax's GroupNorm returns bf16 (its
statistics in float32), so the SiLU after it runs in bf16, while autocast runs PyTorch's group_norm, and
so its SiLU, in float32. Every contender's last result is blocked on (jax.block_until_ready;
torch.cuda.synchronize for PyTorch) before the clock is read.
The parameter counts must agree (the script stops otherwise); batch and optimizer come from the same
config (torch_unet.TrainStep). The JSON is written after the set-up (compile times, FLOPs, parameter
counts) and after each phase ("phase": the last one written, "complete": all ran), so that a time limit
leaves what was measured; a torch.compile that fails is recorded ("torch_compile_error") and ends the run
with the eager phase's figures.
Needs torch: pip install -e '.[bench]'.

  python3 -m benchmarks.vs_pytorch                      # small config (batch 48)
  python3 -m benchmarks.vs_pytorch --config=smoke --rounds=9 --json=/tmp/vs_pytorch.json
  python3 -m benchmarks.vs_pytorch --config=default --device=cuda --dtype=bfloat16 --autocast_bf16 \
      --torch_compile --reps=10                         # a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common, setups
from mmdiff_jax import tcmalloc
from mmdiff_jax.training import state as state_lib


# --layouts names -> torch_unet.TrainStep's channels_last.
LAYOUTS = {"contiguous": False, "channels_last": True}


class BareJaxStep:
  """The PyTorch step's work in plain JAX, on the library's model: no metrics, no guard."""

  def __init__(self, library: setups.TrainStep):
    experiment, config = library.experiment, library.config
    model, schedule = experiment.model, experiment.schedule
    tx = state_lib.make_optimizer(config)
    decay = float(config.training.ema_decay)
    feature = model.specs[0].feature
    loss_fn = setups.denoising_loss(model, schedule)

    def step(carry, x0):
      params, ema, opt_state, step_index = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, x0, jax.random.fold_in(
          jax.random.PRNGKey(0), step_index))
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
      return (params, ema, opt_state, step_index + 1), loss

    params = jax.tree.map(jnp.copy, library.state.params)
    self.carry = (params, jax.tree.map(jnp.copy, params), tx.init(params), jnp.zeros((), jnp.int32))
    self.x0 = library.batch[feature]
    start = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0,)).lower(self.carry, self.x0)
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - start
    self.flops, _ = common.cost_flops(lowered)
    self.num_params = int(sum(x.size for x in jax.tree.leaves(params)))

  def __call__(self):
    self.carry, loss = self.compiled(self.carry, self.x0)
    return self.carry


def summarise(timing: dict, library: setups.TrainStep, bare: BareJaxStep | None, setup: dict, args,
              threads: int) -> dict:
  """The result of one phase: the set-up's fields (config, parameter counts, FLOPs, compile times),
  step times, and PyTorch's time over each contender's, per round."""
  s = timing["seconds"]
  torch_names = [name for name in s if name.startswith("torch")]
  # The fastest PyTorch setting of each round (one thread wins on the CPU when another job holds a core):
  # a minimum over several noisy contenders, so it leans PyTorch's way.
  s_best = [min(times) for times in zip(*(s[name] for name in torch_names))]
  # The one setting with the fastest median, compared round by round.
  fastest = min(torch_names, key=lambda name: statistics.median(s[name]))
  ratio = lambda name, torch_times: common.summary(common.ratios(torch_times, s[name]))
  result = {
      **setup, "torch_threads": threads, "torch_layouts": args.layouts,
      "rounds": args.rounds, "reps_per_round": args.reps,
      "step_s": s, "median_step_s": {k: statistics.median(v) for k, v in s.items()},
      "examples_per_s": {k: library.batch_size / statistics.median(v) for k, v in s.items()},
      "torch_over_jax_library": ratio("jax_library", s["torch"]),
      "best_torch_over_jax_library": ratio("jax_library", s_best),
      "fastest_torch_setting": fastest,
      "fastest_torch_setting_over_jax_library": ratio("jax_library", s[fastest]),
      "per_round_torch_over_jax_library": common.ratios(s["torch"], s["jax_library"]),
      "load_per_round": timing["load"],
  }
  if bare:
    result["torch_over_jax_bare"] = ratio("jax_bare", s["torch"])
    result["best_torch_over_jax_bare"] = ratio("jax_bare", s_best)
  if "torch_compile" in s:
    result["torch_compile_over_jax_library"] = ratio("jax_library", s["torch_compile"])
    if bare:
      result["torch_compile_over_jax_bare"] = ratio("jax_bare", s["torch_compile"])
  return result


def print_result(result: dict, phase: str, threads: int) -> None:
  s, counts = result["step_s"], result["num_params"]
  fmt = lambda r: f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})"
  torch_names = [name for name in s if name.startswith("torch")]
  best = [min(times) for times in zip(*(s[name] for name in torch_names))]
  ratio = lambda name, torch_times: common.summary(common.ratios(torch_times, s[name]))
  columns = ["contender", "parameters", "step s (median)", "examples/s",
             f"torch eager ({result['torch_layouts'][0]}"
             f"{f', {threads} threads' if result['device'] == 'cpu' else ''}) time / this"]
  if "torch_compile" in s:
    columns.append("torch.compile time / this")
  columns += ["fastest torch setting's time / this", "load (1 min)"]
  rows = []
  for name in s:
    row = [name, f"{counts[name]:,}", f"{statistics.median(s[name]):.4f}",
           f"{result['batch_size'] / statistics.median(s[name]):.1f}", fmt(ratio(name, s["torch"]))]
    if "torch_compile" in s:
      row.append(fmt(ratio(name, s["torch_compile"])))
    row += [fmt(ratio(name, best)), f"{min(result['load_per_round'])}-{max(result['load_per_round'])}"]
    rows.append(row)
  precision = (f"JAX {result['jax_dtype']}, torch "
               f"{'bf16 autocast' if result['torch_autocast_bf16'] else 'float32'}"
               + (common.BF16_POLICY_TITLE_NOTE if result["precision_caveat"] else ""))
  common.print_table(
      f"JAX vs PyTorch train step ({phase}), config {result['config']} image-only, batch "
      f"{result['batch_size']}, {result['device']}, {precision}, {result['rounds']} alternating rounds "
      f"of {result['reps_per_round']} steps", columns, rows)
  fastest = result["fastest_torch_setting"]
  print(f"The PyTorch setting with the fastest median, {fastest}: its time / jax_library's "
        f"{fmt(result['fastest_torch_setting_over_jax_library'])} (the column above takes the fastest "
        f"setting of each round instead)", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="small", help="variant of configs/imglabel.py")
  parser.add_argument("--batch_size", type=int, default=0, help="override the config's (0: keep)")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--reps", type=int, default=3, help="steps per contender per round")
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="PyTorch's device")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="the JAX config's model.dtype (activations; parameters stay float32)")
  parser.add_argument("--autocast_bf16", action="store_true", help="PyTorch's forward under bf16 autocast")
  parser.add_argument("--torch_compile", action="store_true",
                      help="add the torch.compile contender (a second phase)")
  parser.add_argument("--torch_compile_backend", default="inductor",
                      help="torch.compile backend ('aot_eager': capture and autograd only, a quick check)")
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the core count)")
  parser.add_argument("--layouts", type=lambda text: text.split(","),
                      default=["contiguous", "channels_last"],
                      help="PyTorch memory layouts to time, comma-separated, each a contender: "
                           f"{', '.join(LAYOUTS)} (the first is the reference 'torch')")
  parser.add_argument("--omp_wait_policy", default="passive", choices=["passive", "active", "default"],
                      help="OMP_WAIT_POLICY for PyTorch's threads, set before torch is imported "
                           "('default': leave the environment's)")
  parser.add_argument("--no_single_thread", action="store_true",
                      help="skip the one-thread PyTorch contender (always skipped on CUDA)")
  parser.add_argument("--no_jax_bare", action="store_true",
                      help="leave out the jax_bare contender (saves its compilation)")
  parser.add_argument("--json", default=common.default_json("vs_pytorch"))
  args = parser.parse_args()

  if any(layout not in LAYOUTS for layout in args.layouts) or len(set(args.layouts)) != len(args.layouts):
    parser.error(f"--layouts={','.join(args.layouts)}: expected distinct names from {sorted(LAYOUTS)}, "
                 "comma-separated")
  torch = common.import_torch(args.omp_wait_policy)

  from benchmarks import torch_unet

  if args.device == "cuda":
    if not torch.cuda.is_available():
      raise SystemExit("--device=cuda: torch sees no CUDA device")
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
    torch.set_float32_matmul_precision("high")  # TF32, as JAX's default precision on a GPU
  threads = args.threads or len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  machine = common.machine()
  machine["torch"] = torch.__version__
  machine["torch_threads"] = threads
  if args.device == "cuda":
    machine["torch_device"] = torch.cuda.get_device_name()
  print(common.describe(machine) + f" | torch {torch.__version__} ({threads} threads, {args.device})",
        flush=True)

  variant = "" if args.config == "default" else args.config
  overrides = {"model.dtype": args.dtype}
  if args.batch_size:
    overrides["training.batch_size"] = args.batch_size
  config = setups.get_config(variant, image_only=True, **overrides)
  library = setups.TrainStep(config)
  # The bare step is a second compilation of the model (about as long as the library's: ~50 s for the
  # default config on an H100); --no_jax_bare leaves it out where time is short.
  bare = None if args.no_jax_bare else BareJaxStep(library)
  alpha_bars = np.asarray(library.experiment.schedule.alpha_bars)
  make_torch = lambda backend, layout=args.layouts[0]: torch_unet.TrainStep(
      config, alpha_bars, channels_last=LAYOUTS[layout], device=args.device,
      autocast_bf16=args.autocast_bf16, compile_backend=backend)
  torch_steps = {"torch" if i == 0 else f"torch_{layout}": make_torch(None, layout)
                 for i, layout in enumerate(args.layouts)}
  torch_step = torch_steps["torch"]
  jax_steps = {"jax_library": library, **({"jax_bare": bare} if bare else {})}
  counts = {name: step.num_params for name, step in {**jax_steps, **torch_steps}.items()}
  compile_s = {name: step.compile_s for name, step in jax_steps.items()}
  caveat = common.bf16_policy_caveat(args.dtype, args.autocast_bf16)
  print(f"parameters: {counts}; batch {library.batch_size}; compile s: "
        f"{ {name: round(s, 1) for name, s in compile_s.items()} }; "
        f"{caveat or 'same precision policy'}", flush=True)
  phases = ["eager"] + (["with torch.compile"] if args.torch_compile else [])
  # Rewritten after the set-up and after each phase ("phase" says which came last, "complete" whether
  # every phase ran), so that a time limit leaves what was measured.
  write = lambda fields, phase: common.write_json(args.json, {
      "machine": machine, "load_at_end": common.load(), **fields, "phase": phase,
      "complete": phase == phases[-1], "args": vars(args)})
  setup = {"config": args.config or "default", "batch_size": library.batch_size, "num_params": counts,
           "device": args.device, "jax_dtype": args.dtype, "torch_autocast_bf16": args.autocast_bf16,
           "precision_caveat": caveat,
           "flops_per_step": {name: step.flops for name, step in jax_steps.items()},
           "compile_s": compile_s}
  write(setup, "set-up")
  if len(set(counts.values())) != 1:
    raise SystemExit(f"parameter counts differ: {counts}")

  def with_threads(n, step):
    def run():
      torch.set_num_threads(n)
      return step()
    return run

  on_cpu = args.device == "cpu"
  contenders = {**jax_steps,
                **{name: with_threads(threads, step) if on_cpu else step
                   for name, step in torch_steps.items()}}
  if on_cpu and threads > 1 and not args.no_single_thread:
    contenders["torch_1thread"] = with_threads(1, torch_step)
    counts["torch_1thread"] = torch_step.num_params
  result: dict = {}
  for phase in phases:
    if phase != "eager":
      name = f"torch_compile ({args.torch_compile_backend})"
      try:
        compiled = make_torch(args.torch_compile_backend)
        counts["torch_compile"] = compiled.num_params
        if compiled.num_params != library.num_params:
          raise ValueError(f"parameter counts differ: {counts}")
        start = time.perf_counter()
        compiled().block_until_ready()  # the first call traces and compiles (forward and backward)
      except Exception as error:  # noqa: BLE001 (recorded: the eager phase's figures stand)
        message = common.error_text(error)
        print(f"{name} failed, its phase is skipped: {message}", flush=True)
        write({**result, "torch_compile_error": message}, "eager")
        break
      compile_s[name] = time.perf_counter() - start
      print(f"{name}: first step {compile_s[name]:.1f} s", flush=True)
      contenders["torch_compile"] = with_threads(threads, compiled) if on_cpu else compiled
    timing = common.alternate(contenders, rounds=args.rounds, reps=args.reps, warmup=2)
    result = summarise(timing, library, bare, setup, args, threads)
    print(f"[{phase}] torch / jax_library step time per round: "
          f"{[round(x, 3) for x in result['per_round_torch_over_jax_library']]}", flush=True)
    write(result, phase)
    print_result(result, phase, threads)

if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  main()
