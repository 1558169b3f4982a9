r"""The same U-Net, batch and optimizer in JAX and in PyTorch: train-step time, measured alternately.

Contenders (all on the image-only config: the library's U-Net and image head; no label modality):
  jax_library: mmdiff_jax's own train step (state_lib.make_train_step: loss, the bound terms as metrics,
               clipping, AdamW, EMA, the non-finite guard; jitted, donated);
  jax_bare:    the minimal JAX step, exactly the PyTorch step's work (loss, clipping, AdamW, EMA);
  torch:       benchmarks/torch_unet.py (eager, torch.set_num_threads = --threads, default the cores);
  torch_1thread: the same PyTorch step on one thread.
PyTorch's OpenMP threads spin while they wait (OMP_WAIT_POLICY=active, libgomp's default): on a shared
machine, when another job holds a core, the spinning threads make the multi-threaded step many times
slower. This script sets OMP_WAIT_POLICY=passive before importing torch (--omp_wait_policy=default
leaves libgomp's default), and the "faster torch setting" column takes the faster of the two PyTorch
contenders in each round: the comparison is against PyTorch's best showing on this machine.
The parameter counts must agree (the script stops otherwise); batch and optimizer come from the same
config (torch_unet.TrainStep).
Needs torch: pip install -e '.[bench]'.

  python3 -m benchmarks.vs_pytorch                      # small config (batch 48)
  python3 -m benchmarks.vs_pytorch --config=smoke --rounds=9 --json=/tmp/vs_pytorch.json
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
from mmdiff_jax.training import state as state_lib


class BareJaxStep:
  """The PyTorch step's work in plain JAX, on the library's model: no metrics, no guard."""

  def __init__(self, library: setups.TrainStep):
    experiment, config = library.experiment, library.config
    model, schedule = experiment.model, experiment.schedule
    tx = state_lib.make_optimizer(config)
    decay = float(config.training.ema_decay)
    name, feature = model.specs[0].name, model.specs[0].feature

    def loss_fn(params, x0, rng):
      t_rng, n_rng = jax.random.split(rng)
      t = jax.random.randint(t_rng, (x0.shape[0],), 1, schedule.num_timesteps + 1)
      noise = jax.random.normal(n_rng, x0.shape)
      abar = schedule.alpha_bars[t - 1][:, None, None, None]
      z_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * noise
      prediction = model.apply({"params": params}, z_t, t, train=True,
                               rngs={"dropout": jax.random.fold_in(rng, 2)})[name]
      return jnp.mean(jnp.square(prediction - noise))

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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="small", help="variant of configs/imglabel.py")
  parser.add_argument("--batch_size", type=int, default=0, help="override the config's (0: keep)")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--reps", type=int, default=3, help="steps per contender per round")
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the core count)")
  parser.add_argument("--channels_last", action="store_true", help="torch channels_last layout")
  parser.add_argument("--omp_wait_policy", default="passive", choices=["passive", "active", "default"],
                      help="OMP_WAIT_POLICY for PyTorch's threads, set before torch is imported "
                           "('default': leave the environment's)")
  parser.add_argument("--no_single_thread", action="store_true",
                      help="skip the one-thread PyTorch contender")
  parser.add_argument("--json", default=common.default_json("vs_pytorch"))
  args = parser.parse_args()

  torch = common.import_torch(args.omp_wait_policy)

  from benchmarks import torch_unet

  threads = args.threads or len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  machine = common.machine()
  machine["torch"] = torch.__version__
  machine["torch_threads"] = threads
  print(common.describe(machine) + f" | torch {torch.__version__} ({threads} threads)", flush=True)

  variant = "" if args.config == "default" else args.config
  overrides = {"training.batch_size": args.batch_size} if args.batch_size else {}
  config = setups.get_config(variant, image_only=True, **overrides)
  library = setups.TrainStep(config)
  bare = BareJaxStep(library)
  torch_step = torch_unet.TrainStep(config, np.asarray(library.experiment.schedule.alpha_bars),
                                    channels_last=args.channels_last)
  counts = {"jax_library": library.num_params, "jax_bare": bare.num_params,
            "torch": torch_step.num_params}
  print(f"parameters: {counts}; batch {library.batch_size}; compile s: library "
        f"{library.compile_s:.1f}, bare {bare.compile_s:.1f}", flush=True)
  if len(set(counts.values())) != 1:
    raise SystemExit(f"parameter counts differ: {counts}")

  def with_threads(n):
    def run():
      torch.set_num_threads(n)
      return torch_step()
    return run

  contenders = {"jax_library": library, "jax_bare": bare, "torch": with_threads(threads)}
  if threads > 1 and not args.no_single_thread:
    contenders["torch_1thread"] = with_threads(1)
    counts["torch_1thread"] = torch_step.num_params
  timing = common.alternate(contenders, rounds=args.rounds, reps=args.reps, warmup=2)
  s = timing["seconds"]
  # The faster PyTorch setting of each round (one thread wins when another job holds a core).
  s_best = ([min(a, b) for a, b in zip(s["torch"], s["torch_1thread"])] if "torch_1thread" in s
            else s["torch"])
  ratio = lambda name, torch_times: common.summary(common.ratios(torch_times, s[name]))
  result = {
      "config": args.config or "default", "batch_size": library.batch_size, "num_params": counts,
      "torch_threads": threads, "torch_channels_last": args.channels_last,
      "flops_per_step": {"jax_library": library.flops, "jax_bare": bare.flops},
      "compile_s": {"jax_library": library.compile_s, "jax_bare": bare.compile_s},
      "step_s": s, "median_step_s": {k: statistics.median(v) for k, v in s.items()},
      "torch_over_jax_library": ratio("jax_library", s["torch"]),
      "best_torch_over_jax_library": ratio("jax_library", s_best),
      "torch_over_jax_bare": ratio("jax_bare", s["torch"]),
      "best_torch_over_jax_bare": ratio("jax_bare", s_best),
      "per_round_torch_over_jax_library": common.ratios(s["torch"], s["jax_library"]),
      "load_per_round": timing["load"],
  }
  fmt = lambda r: f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})"
  print(f"torch / jax_library step time per round: "
        f"{[round(x, 3) for x in result['per_round_torch_over_jax_library']]}", flush=True)
  common.print_table(
      f"JAX vs PyTorch train step, config {result['config']} image-only, batch "
      f"{library.batch_size}, {args.rounds} alternating rounds of {args.reps} steps",
      ["contender", "parameters", "step s (median)", "examples/s",
       f"torch ({threads} threads) time / this", "faster torch setting's time / this",
       "load (1 min)"],
      [[name, f"{counts[name]:,}", f"{statistics.median(s[name]):.3f}",
        f"{library.batch_size / statistics.median(s[name]):.1f}",
        fmt(ratio(name, s["torch"])), fmt(ratio(name, s_best)),
        f"{min(timing['load'])}-{max(timing['load'])}"] for name in s])
  common.write_json(args.json, {"machine": machine, "load_at_end": common.load(), **result,
                                "args": vars(args)})


if __name__ == "__main__":
  main()
