"""What a scan over repeated blocks could fold in a config's U-Net: its residual and attention blocks
in call order, and the runs of one repeated unit (a block, or a residual block with its attention)
with the same input shape and width. A scan compiles one unit of a run once instead of each time, so
the blocks beyond the first unit of each run are the most it can save of the model's compile.

  python3 -m benchmarks.scan_candidates small default
"""

from __future__ import annotations

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import setups
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.models.unet import AttentionBlock, ResBlock


def block_sequence(config) -> list[tuple[str, tuple[int, ...], int]]:
  """(block type, input shape (H, W, C), output channels) of each U-Net block, in call order."""
  model = build_experiment(config).model
  calls = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, (ResBlock, AttentionBlock)) and context.method_name == "__call__":
      x = args[0]
      calls.append((type(module).__name__, tuple(x.shape[1:]),
                    module.channels if isinstance(module, ResBlock) else x.shape[-1]))
    return next_fun(*args, **kwargs)

  z = jnp.zeros((1, *model.z_shape))
  t = jnp.ones((1,), jnp.int32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), z, t, train=False))
  return calls


def foldable_blocks(blocks: list, unit_lengths=(1, 2)) -> list[tuple[int, int, int]]:
  """(start, unit length, repeats) of each run of >= 2 consecutive equal units, chosen greedily left to
  right (longest run first at each position), non-overlapping."""
  runs, i = [], 0
  while i < len(blocks):
    best = (1, 1)  # (unit length, repeats)
    for length in unit_lengths:
      unit, repeats = blocks[i:i + length], 1
      while blocks[i + repeats * length:i + (repeats + 1) * length] == unit:
        repeats += 1
      if len(unit) == length and repeats > 1 and length * repeats > best[0] * best[1]:
        best = (length, repeats)
    if best[1] > 1:
      runs.append((i, *best))
    i += best[0] * best[1]
  return runs


def main(variants):
  for variant in variants:
    blocks = block_sequence(setups.get_config("" if variant == "default" else variant))
    runs = foldable_blocks(blocks)
    folded = sum(length * (repeats - 1) for _, length, repeats in runs)
    print(f"config {variant}: {len(blocks)} blocks; a scan could fold {folded} "
          f"({folded / len(blocks):.0%}) in {len(runs)} runs")
    for start, length, repeats in runs:
      print(f"  blocks {start}-{start + length * repeats - 1}: {repeats} x {blocks[start:start + length]}")


if __name__ == "__main__":
  if {"-h", "--help"} & set(sys.argv[1:]):
    sys.exit(print(__doc__))
  main(sys.argv[1:] or ["small", "default"])
