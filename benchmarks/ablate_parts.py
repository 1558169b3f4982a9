"""Upper bounds: how much faster the small model's gradient gets with one part of the U-Net made nearly free.

Each variant traces the library's model with one part replaced (not a usable model, only a bound on
what speeding that part up could gain):
  silu_identity:       every SiLU the identity;
  attention_identity:  every attention block the identity (its parameters unused);
  group_norm_affine:   every GroupNorm a per-channel scale and bias (no statistics);
  kernels_only:        the gradient taken with respect to the kernels alone (the bias and scale gradients,
                       reductions over batch and pixels, are not computed).
The work timed is the loss and its gradient on the image-only small config (no optimizer), each variant
compiled once in this process and all timed in alternation; "base / variant" above 1 is the variant's
speed-up.

  python3 -m benchmarks.ablate_parts --rounds=6
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from benchmarks import common, setups
from mmdiff_jax import tcmalloc
from mmdiff_jax.models import unet


class GroupNorm(nn.Module):
  """A per-channel scale and bias under GroupNorm's name and parameters (Flax names it GroupNorm_i)."""

  @nn.compact
  def __call__(self, x):
    channels = (x.shape[-1],)
    return x * self.param("scale", nn.initializers.ones, channels) + self.param(
        "bias", nn.initializers.zeros, channels)


@contextlib.contextmanager
def _replaced(owner, name: str, value):
  original = getattr(owner, name)
  setattr(owner, name, value)
  try:
    yield
  finally:
    setattr(owner, name, original)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="small")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--json", default=common.default_json("ablate_parts"))
  args = parser.parse_args()
  machine = common.machine()
  print(common.describe(machine), flush=True)

  library = setups.TrainStep(setups.get_config(args.config, image_only=True))
  model, schedule = library.experiment.model, library.experiment.schedule
  x0 = library.batch[model.specs[0].feature]
  denoising_loss = setups.denoising_loss(model, schedule)
  flat = traverse_util.flatten_dict(jax.tree.map(jnp.copy, library.state.params))
  kernels = {k: v for k, v in flat.items() if k[-1] == "kernel"}
  others = {k: v for k, v in flat.items() if k[-1] != "kernel"}
  rng = jax.random.PRNGKey(0)

  def loss(kernels, others):
    return denoising_loss(traverse_util.unflatten_dict({**kernels, **others}), x0, rng)

  def compiled(argnums=(0, 1)):
    """The gradient, traced now (under whatever part is replaced at this moment)."""
    fn = jax.jit(jax.grad(loss, argnums=argnums))
    common.block(fn(kernels, others))
    return lambda: fn(kernels, others)

  contenders = {"base": compiled()}
  with _replaced(nn, "silu", lambda x: x):
    contenders["silu_identity"] = compiled()
  with _replaced(unet.AttentionBlock, "__call__", lambda self, x: x):
    contenders["attention_identity"] = compiled()
  with _replaced(unet, "group_norm", lambda num_groups, dtype=None, name=None: GroupNorm(name=name)):
    contenders["group_norm_affine"] = compiled()
  contenders["kernels_only"] = compiled(argnums=0)

  timing = common.alternate(contenders, rounds=args.rounds, reps=args.reps)
  seconds = timing["seconds"]
  rows, result = [], {}
  for variant, values in seconds.items():
    ratio = common.ratios(seconds["base"], values)
    result[variant] = {"median_s": statistics.median(values), "base_over_variant": ratio}
    rows.append([variant, f"{statistics.median(values):.4f}",
                 f"{statistics.median(ratio):.3f} ({min(ratio):.3f}-{max(ratio):.3f})"])
  common.print_table(
      f"Upper bounds, config {args.config} image-only, loss and gradient, {args.rounds} alternating rounds "
      f"of {args.reps} (load {min(timing['load'])}-{max(timing['load'])})",
      ["variant", "seconds (median)", "base / variant, median (min-max)"], rows)
  common.write_json(args.json, {"machine": machine, "config": args.config, "variants": result,
                                "seconds": seconds, "load_per_round": timing["load"], "args": vars(args)})


if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  main()
