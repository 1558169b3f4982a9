"""Modality encoders E_i: each maps its modality into the shared diffusion space (the shape of z).

Every encoder has two entry points:
  encode(x):                   E_i(x_i) for an observed value;
  encode_prediction(head_out): E_i(x-hat_i) for a head's output; for categorical modalities this is
                               the expected encoding under the predicted probabilities (docs/METHOD.md).
Trainable encodings are normalised so that they cannot collapse to zero (which would switch the
injection off): a label's or an embedding's code has unit RMS per class or example; a segmentation
map's class table has unit RMS as a whole (one class's code may shrink while the others carry the
scale).
"""

from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdiff_jax.models.layers import dense, unit_rms


class CategoricalEncoder(nn.Module):
  """A learned code in z-space per class, unit RMS. Labels (B,) -> (B, *z_shape)."""
  num_classes: int
  z_shape: Sequence[int]

  def setup(self):
    size = 1
    for d in self.z_shape:
      size *= d
    self.codes = self.param(
        "codes", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "channels_out")),
        (self.num_classes, size))

  def _table(self):
    return unit_rms(self.codes, axes=(1,))

  def encode(self, labels):
    chex.assert_rank(labels, 1)
    return jnp.take(self._table(), labels, axis=0).reshape(labels.shape + tuple(self.z_shape))

  def encode_prediction(self, logits):
    """logits: (B, num_classes) -> expected code (B, *z_shape)."""
    chex.assert_shape(logits, (None, self.num_classes))
    return (jax.nn.softmax(logits, axis=-1) @ self._table()).reshape(
        logits.shape[:1] + tuple(self.z_shape))


class SmoothCategoricalEncoder(CategoricalEncoder):
  """A learned low-frequency code per class: a (H / 4, W / 4, C) table per class, bilinearly upsampled
  to z's shape, then unit RMS. The default code is white-noise-like (each pixel independent); this one
  varies slowly over the image, so it is less like the fine texture the denoiser must not mistake for
  image content. Labels (B,) -> (B, *z_shape)."""
  downsample: int = 4

  def setup(self):
    h, w, c = self.z_shape
    coarse = (-(-h // self.downsample), -(-w // self.downsample), c)
    self.codes = self.param(
        "codes", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                              ("vocab", None, None, None)),  # tiny: replicated
        (self.num_classes, *coarse))

  def _table(self):
    fine = jax.image.resize(self.codes, (self.num_classes, *self.z_shape), method="bilinear")
    return unit_rms(fine.reshape(self.num_classes, -1), axes=(1,))


class ClassMeanEncoder(CategoricalEncoder):
  """A fixed code per class derived from the data: each class's mean training image minus the mean of
  all (mmdiff_jax.data.statistics.class_mean_codes). Training writes it into the "codes" parameter
  when it starts (mmdiff_jax.training.label_codes) and never changes it: gradients stop here.
  Labels (B,) -> (B, *z_shape)."""

  def _table(self):
    return unit_rms(jax.lax.stop_gradient(self.codes), axes=(1,))


class PixelCategoricalEncoder(nn.Module):
  """A learned code per class in each pixel. Maps (B, H, W) ints -> (B, H, W, C).

  The table is rescaled to unit RMS as a whole (not per class): with C = 1 (grayscale z) each class
  is a scalar, and per-class normalisation would leave only +-1.
  """
  num_classes: int
  z_shape: Sequence[int]

  def setup(self):
    self.codes = self.param(
        "codes", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "channels_out")),
        (self.num_classes, self.z_shape[-1]))

  def _table(self):
    return unit_rms(self.codes, axes=(0, 1))

  def encode(self, class_map):
    chex.assert_rank(class_map, 3)
    return jnp.take(self._table(), class_map, axis=0)

  def encode_prediction(self, logits):
    """logits: (B, H, W, num_classes) -> expected code (B, H, W, C)."""
    chex.assert_rank(logits, 4)
    return jax.nn.softmax(logits, axis=-1) @ self._table()


class EmbeddingEncoder(nn.Module):
  """A learned linear map of a (B, D) vector into z-space, unit RMS per example."""
  z_shape: Sequence[int]

  def setup(self):
    size = 1
    for d in self.z_shape:
      size *= d
    self.project = dense(size, name="project")

  def encode(self, x):
    chex.assert_rank(x, 2)
    z = self.project(x).reshape(x.shape[:1] + tuple(self.z_shape))
    return unit_rms(z, axes=tuple(range(1, z.ndim)))

  def encode_prediction(self, x_hat):
    return self.encode(x_hat)


class IdentityEncoder(nn.Module):
  """Pixel-space data that already has the shape of z (e.g. a masked image): E(x) = x."""
  z_shape: Sequence[int]

  def encode(self, x):
    chex.assert_shape(x, (None, *self.z_shape))
    return x

  def encode_prediction(self, x_hat):
    return self.encode(x_hat)

