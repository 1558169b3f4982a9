"""Layers with logical axis names on every parameter, so sharding is a config rule, not model code.

Logical names used by the models (mapped to mesh axes in mmdiff_jax/training/sharding.py):
  "channels_in", "channels_out": kernel dimensions of convolutions and dense layers;
  "channels": biases and norm scales (small; replicated);
  "vocab": rows of a code table (classes).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


def _kernel_init(scale: float = 1.0):
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def dense(features: int, *, name: str | None = None, zero_init: bool = False,
          dtype: Dtype = jnp.float32) -> nn.Dense:
  init = nn.initializers.zeros_init() if zero_init else _kernel_init()
  return nn.Dense(
      features, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(init, ("channels_in", "channels_out")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("channels",)))


def conv(features: int, *, kernel_size: Sequence[int] = (3, 3), strides: Sequence[int] = (1, 1),
         name: str | None = None, zero_init: bool = False, dtype: Dtype = jnp.float32) -> nn.Conv:
  init = nn.initializers.zeros_init() if zero_init else _kernel_init()
  return nn.Conv(
      features, kernel_size=tuple(kernel_size), strides=tuple(strides), padding="SAME",
      dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(init, (None, None, "channels_in", "channels_out")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("channels",)))


def group_norm(num_groups: int, *, name: str | None = None, dtype: Dtype = jnp.float32):
  return nn.GroupNorm(
      num_groups=num_groups, dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("channels",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("channels",)))


def timestep_embedding(t: jnp.ndarray, dim: int, max_period: float = 10000.0) -> jnp.ndarray:
  """Sinusoidal embedding of (B,) steps -> (B, dim) (dim even)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def upsample_nearest_2x(x: jnp.ndarray) -> jnp.ndarray:
  """(B, H, W, C) -> (B, 2H, 2W, C): each pixel repeated over a 2 x 2 block (nearest neighbour).

  A broadcast and a reshape, not jax.image.resize: that lowers to a gather, and its gradient to a
  scatter and layout copies, for the same values (BENCHMARKS.md measured the difference)."""
  chex.assert_rank(x, 4)
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def unit_rms(x: jnp.ndarray, *, axes: Sequence[int], eps: float = 1e-6) -> jnp.ndarray:
  """Scales x to unit root-mean-square over `axes` (keeps encodings from collapsing to zero)."""
  return x * jnp.reciprocal(jnp.sqrt(jnp.mean(jnp.square(x), axis=tuple(axes), keepdims=True) + eps))
