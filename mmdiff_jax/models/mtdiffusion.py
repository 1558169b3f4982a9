"""The MT-Diffusion network: encoders E_i, one shared backbone, a head per modality."""

from __future__ import annotations

from typing import Any, Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp

from mmdiff_jax.models.encoders import ENCODERS
from mmdiff_jax.models.heads import HEADS
from mmdiff_jax.models.modalities import ModalitySpec
from mmdiff_jax.models.unet import UNet


def _head(spec: ModalitySpec, z_shape: Sequence[int]) -> nn.Module:
  if spec.is_base:
    return HEADS[spec.head](z_shape[-1])
  out = {"label": spec.num_classes, "segmentation": spec.num_classes, "embedding": spec.dim,
         "masked_image": z_shape[-1]}[spec.kind]
  return HEADS[spec.head](out)


def _encoder(spec: ModalitySpec, z_shape: Sequence[int]) -> nn.Module:
  cls = ENCODERS[spec.encoder]
  if spec.num_classes:
    return cls(num_classes=spec.num_classes, z_shape=tuple(z_shape))
  return cls(z_shape=tuple(z_shape))


class MTDiffusion(nn.Module):
  """Backbone + heads + encoders.

  Attributes:
    specs: the modalities, base first (see modalities.specs_from_config).
    z_shape: (H, W, C) of the diffusion space.
    backbone: the shared U-Net.
  """
  specs: tuple[ModalitySpec, ...]
  z_shape: tuple[int, ...]
  backbone: UNet

  @property
  def aggregated(self) -> tuple[ModalitySpec, ...]:
    return self.specs[1:]

  def setup(self):
    self.heads = {s.name: _head(s, self.z_shape) for s in self.specs}
    self.encoders = {s.name: _encoder(s, self.z_shape) for s in self.aggregated}

  def __call__(self, z_t, t, *, train: bool) -> dict[str, jnp.ndarray]:
    """z_t: (B, *z_shape), t: (B,) -> {modality name: head output}; the base's is the prediction."""
    chex.assert_shape(z_t, (None, *self.z_shape))
    features = self.backbone(z_t, t, train=train)
    return {name: head(features, train=train) for name, head in self.heads.items()}

  def _stack(self, per_modality: list[jnp.ndarray], batch_size: int) -> jnp.ndarray:
    if not per_modality:
      return jnp.zeros((0, batch_size, *self.z_shape), jnp.float32)
    return jnp.stack(per_modality, axis=0)

  def encode(self, batch: dict[str, Any], batch_size: int) -> jnp.ndarray:
    """E_i(x_i) of the aggregated modalities: (N, B, *z_shape), in spec order."""
    return self._stack([self.encoders[s.name].encode(batch[s.feature]) for s in self.aggregated],
                       batch_size)

  def encode_predictions(self, outputs: dict[str, jnp.ndarray], batch_size: int) -> jnp.ndarray:
    """E_i(x-hat_i) from the heads' outputs: (N, B, *z_shape), in spec order."""
    return self._stack(
        [self.encoders[s.name].encode_prediction(outputs[s.name]) for s in self.aggregated],
        batch_size)

  def initialize(self, batch: dict[str, Any], z_t, t):
    """Touches every submodule (used only by init)."""
    outputs = self(z_t, t, train=False)
    return self.encode(batch, z_t.shape[0]), self.encode_predictions(outputs, z_t.shape[0])
