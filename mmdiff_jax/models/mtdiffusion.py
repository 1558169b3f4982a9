"""The MT-Diffusion network: encoders E_i, one shared backbone, a head per modality."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp

from mmdiff_jax.models import kinds
from mmdiff_jax.models.modalities import ModalitySpec, aggregated_specs, condition_specs
from mmdiff_jax.models.unet import UNet


def make_head(spec: ModalitySpec, z_shape: Sequence[int]) -> nn.Module:
  kind = kinds.get(spec.kind)
  return kind.head(kind.head_width(spec, tuple(z_shape)))


def _encoder(spec: ModalitySpec, z_shape: Sequence[int]) -> nn.Module:
  cls = kinds.get(spec.kind).encoders[spec.encoder]
  fields = {f.name for f in dataclasses.fields(cls)}
  return cls(z_shape=tuple(z_shape),
             **{k: getattr(spec, k) for k in ("num_classes", "dim") if k in fields})


def _condition_embedding(spec: ModalitySpec, dim: int) -> nn.Embed:
  return nn.Embed(spec.num_classes, dim, embedding_init=nn.with_logical_partitioning(
      nn.initializers.normal(1.0), ("vocab", "channels_out")))


class MTDiffusion(nn.Module):
  """Backbone + heads + encoders (+ condition embeddings for the class-conditional baseline).

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
    return aggregated_specs(self.specs)

  @property
  def conditions(self) -> tuple[ModalitySpec, ...]:
    return condition_specs(self.specs)

  def setup(self):
    self.heads = {s.name: make_head(s, self.z_shape) for s in (self.specs[0], *self.aggregated)}
    self.encoders = {s.name: _encoder(s, self.z_shape) for s in self.aggregated}
    self.condition_embeddings = {s.name: _condition_embedding(s, self.backbone.embedding_dim)
                                 for s in self.conditions}

  def __call__(self, z_t, t, *, train: bool,
               conditions: dict[str, jnp.ndarray] | None = None) -> dict[str, jnp.ndarray]:
    """z_t: (B, *z_shape), t: (B,) -> {modality name: head output}; the base's is the prediction.

    conditions: {name: (B,) labels} of every condition modality (class-conditional models only).
    """
    chex.assert_shape(z_t, (None, *self.z_shape))
    features = self.backbone(z_t, t, train=train, condition=self.embed_conditions(conditions))
    return {name: head(features, train=train) for name, head in self.heads.items()}

  def embed_conditions(self, conditions: dict[str, jnp.ndarray] | None):
    """Sum of the condition embeddings, (B, embedding_dim); None for a model without conditions."""
    if not self.conditions:
      return None
    missing = [s.name for s in self.conditions if s.name not in (conditions or {})]
    if missing:
      raise ValueError(f"the model is conditioned on {missing}: pass their values (as observed "
                       f"modalities when sampling)")
    return sum(self.condition_embeddings[s.name](conditions[s.name]) for s in self.conditions)

  def _stack(self, per_modality: list[jnp.ndarray], batch_size: int) -> jnp.ndarray:
    if not per_modality:
      return jnp.zeros((0, batch_size, *self.z_shape), jnp.float32)
    return jnp.stack(per_modality, axis=0)

  def encode(self, batch: dict[str, Any], batch_size: int, *,
             ignore_label: int | None = None) -> jnp.ndarray:
    """E_i(x_i) of the aggregated modalities: (N, B, *z_shape), in spec order (`encode_value`)."""
    return self._stack([self.encode_value(s.name, batch[s.feature], ignore_label=ignore_label)
                        for s in self.aggregated], batch_size)

  def encode_value(self, name: str, values, *, ignore_label: int | None = None) -> jnp.ndarray:
    """E_i(x_i) of one aggregated modality's values (B, ...): (B, *z_shape).

    For a kind with an ignore label (segmentation maps), values equal to `ignore_label` (unlabelled
    pixels) encode as 0: they carry no information into z_t, in training and in an observed map.
    """
    encoder = self.encoders[name]
    spec = next(s for s in self.aggregated if s.name == name)
    batch_size = jnp.shape(values)[0]
    if ignore_label is None or not kinds.get(spec.kind).has_ignore_label:
      return self._checked(spec, encoder.encode(values), batch_size)
    valid = values != ignore_label
    encoding = self._checked(spec, encoder.encode(jnp.where(valid, values, 0)), batch_size)
    return encoding * valid.reshape(valid.shape + (1,) * (encoding.ndim - valid.ndim))

  def encode_predictions(self, outputs: dict[str, jnp.ndarray], batch_size: int) -> jnp.ndarray:
    """E_i(x-hat_i) from the heads' outputs: (N, B, *z_shape), in spec order."""
    return self._stack(
        [self._checked(s, self.encoders[s.name].encode_prediction(outputs[s.name]), batch_size)
         for s in self.aggregated], batch_size)

  def _checked(self, spec: ModalitySpec, encoding, batch_size: int):
    """`encoding` if it is (B, *z_shape); else an error naming the modality's encoder."""
    if tuple(encoding.shape) != (batch_size, *self.z_shape):
      raise ValueError(f"modality {spec.name!r}: encoder {spec.encoder!r} of kind {spec.kind!r} "
                       f"returned shape {tuple(encoding.shape)}; expected (B, *z_shape) = "
                       f"{(batch_size, *self.z_shape)}")
    return encoding

  def initialize(self, batch: dict[str, Any], z_t, t):
    """Touches every submodule (used only by init)."""
    outputs = self(z_t, t, train=False,
                   conditions={s.name: batch[s.feature] for s in self.conditions})
    return self.encode(batch, z_t.shape[0]), self.encode_predictions(outputs, z_t.shape[0])
