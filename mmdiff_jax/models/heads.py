"""Task-specific decoder heads D_i: backbone features -> one modality's prediction."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmdiff_jax.models.layers import conv, dense
from mmdiff_jax.models.unet import UNetFeatures


def _pooled(features: UNetFeatures) -> jnp.ndarray:
  """Global average pools of the full-resolution and bottleneck features, concatenated: (B, C0 + Cmid)."""
  return jnp.concatenate(
      [jnp.mean(features.features, axis=(1, 2)), jnp.mean(features.bottleneck, axis=(1, 2))], axis=-1)


class ConvHead(nn.Module):
  """3x3 conv on the full-resolution features -> (B, H, W, out_channels). Zero-initialised."""
  out_channels: int

  @nn.compact
  def __call__(self, features: UNetFeatures, *, train: bool):
    del train
    return conv(self.out_channels, zero_init=True)(features.features).astype(jnp.float32)


class PooledMLPHead(nn.Module):
  """Pooled features -> MLP -> (B, out_features) (class logits, or an embedding vector)."""
  out_features: int
  hidden: int = 256

  @nn.compact
  def __call__(self, features: UNetFeatures, *, train: bool):
    del train
    h = nn.silu(dense(self.hidden)(_pooled(features).astype(jnp.float32)))
    return dense(self.out_features, zero_init=True)(h)

