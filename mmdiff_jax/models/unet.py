"""The shared denoising backbone: an ADM-style U-Net (Dhariwal & Nichol 2021), without output layer.

It returns features; task-specific heads (mmdiff_jax/models/heads.py) map them to each modality.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdiff_jax.errors import BadValueError
from mmdiff_jax.models.layers import (conv, dense, group_norm, timestep_embedding,
                                      upsample_nearest_2x)

Dtype = Any


class UNetFeatures(NamedTuple):
  """features: (B, H, W, base_channels) at full resolution; bottleneck: (B, h, w, C_mid)."""
  features: jnp.ndarray
  bottleneck: jnp.ndarray


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv, plus the time embedding, GroupNorm-SiLU-dropout-conv, residual."""
  channels: int
  num_groups: int
  dropout: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):  # train positional: nn.remat's static_argnums needs it
    h = conv(self.channels, dtype=self.dtype)(nn.silu(group_norm(self.num_groups, dtype=self.dtype)(x)))
    h = h + dense(self.channels, dtype=self.dtype)(nn.silu(temb))[:, None, None, :]
    h = nn.silu(group_norm(self.num_groups, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(self.channels, zero_init=True, dtype=self.dtype)(h)
    if x.shape[-1] != self.channels:
      x = conv(self.channels, kernel_size=(1, 1), dtype=self.dtype, name="skip")(x)
    return x + h


class AttentionBlock(nn.Module):
  """Multi-head self-attention over spatial positions, residual."""
  num_heads: int
  num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    head_dim = c // self.num_heads
    qkv = dense(3 * c, dtype=self.dtype, name="qkv")(group_norm(self.num_groups, dtype=self.dtype)(x))
    q, k, v = jnp.split(qkv.reshape(b, h * w, 3, self.num_heads, head_dim), 3, axis=2)
    out = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])
    out = dense(c, zero_init=True, dtype=self.dtype, name="proj")(out.reshape(b, h, w, c))
    return x + out


class UNet(nn.Module):
  """ADM-style U-Net.

  Attributes:
    base_channels: channels at full resolution.
    channel_mults: one multiplier per resolution level; each level but the last halves H and W.
    num_res_blocks: residual blocks per level (the decoder has one more, as in ADM).
    attention_resolutions: feature-map sizes (H) at which self-attention is applied.
    num_heads: attention heads.
    dropout: dropout rate inside residual blocks.
    num_groups: GroupNorm groups.
    dtype: activation dtype (parameters stay float32).
    remat: recompute each residual and attention block's activations in the backward pass instead
      of keeping them (less memory, about a third more compute); the parameters are the same.
  """
  base_channels: int = 64
  channel_mults: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (8,)
  num_heads: int = 4
  dropout: float = 0.0
  num_groups: int = 8
  dtype: Dtype = jnp.float32
  remat: bool = False

  @property
  def embedding_dim(self) -> int:
    """Width of the time embedding (a conditioning embedding must have it too)."""
    return 4 * self.base_channels

  @nn.compact
  def __call__(self, x, t, *, train: bool, condition=None) -> UNetFeatures:
    """x: (B, H, W, C) noisy z_t; t: (B,) steps. H and W divisible by 2^(len(channel_mults)-1).
    condition: optional (B, embedding_dim), added to the time embedding (class-conditional models)."""
    chex.assert_rank(x, 4)
    chex.assert_shape(t, (x.shape[0],))
    factor = 2 ** (len(self.channel_mults) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise BadValueError(f"UNet input: H, W = {x.shape[1:3]} must be divisible by {factor} "
                          f"(len(channel_mults) = {len(self.channel_mults)})")
    # Named as Flax would name them without remat (nn.remat's class is "CheckpointResBlock"), so a
    # checkpoint loads either way.
    res_class = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
    attention_class = nn.remat(AttentionBlock) if self.remat else AttentionBlock
    res_count, attention_count = itertools.count(), itertools.count()
    res_block = lambda ch: res_class(ch, self.num_groups, self.dropout, self.dtype,
                                     name=f"ResBlock_{next(res_count)}")
    attention = lambda: attention_class(self.num_heads, self.num_groups, self.dtype,
                                        name=f"AttentionBlock_{next(attention_count)}")

    temb_dim = self.embedding_dim
    temb = timestep_embedding(t, self.base_channels)
    temb = dense(temb_dim, dtype=self.dtype)(nn.silu(dense(temb_dim, dtype=self.dtype)(temb)))
    if condition is not None:
      chex.assert_shape(condition, (x.shape[0], temb_dim))
      temb = temb + condition.astype(temb.dtype)

    h = conv(self.base_channels, dtype=self.dtype)(x.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.channel_mults):
      for _ in range(self.num_res_blocks):
        h = res_block(self.base_channels * mult)(h, temb, train)
        if h.shape[1] in self.attention_resolutions:
          h = attention()(h)
        skips.append(h)
      if level != len(self.channel_mults) - 1:
        h = conv(h.shape[-1], strides=(2, 2), dtype=self.dtype)(h)
        skips.append(h)

    h = res_block(h.shape[-1])(h, temb, train)
    h = attention()(h)
    h = res_block(h.shape[-1])(h, temb, train)
    bottleneck = h

    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for _ in range(self.num_res_blocks + 1):
        h = res_block(self.base_channels * mult)(
            jnp.concatenate([h, skips.pop()], axis=-1), temb, train)
        if h.shape[1] in self.attention_resolutions:
          h = attention()(h)
      if level != 0:
        h = conv(h.shape[-1], dtype=self.dtype)(upsample_nearest_2x(h))
    assert not skips
    h = nn.silu(group_norm(self.num_groups, dtype=self.dtype)(h))
    return UNetFeatures(features=h, bottleneck=bottleneck)
