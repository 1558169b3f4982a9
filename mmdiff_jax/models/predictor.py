"""Single-task predictor baselines: one input feature -> one target modality, no diffusion.

The same U-Net backbone and heads as MT-Diffusion, evaluated at t = 0 on the clean input: the
reconstruction-only inpainting model (masked image -> image), the image -> segmentation predictor, and
the independent classifier used for label agreement (image -> label).
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp

from mmdiff_jax.models.modalities import ModalitySpec
from mmdiff_jax.models.mtdiffusion import make_head
from mmdiff_jax.models.unet import UNet


class Predictor(nn.Module):
  """Backbone + the target's head.

  Attributes:
    specs: the modalities (base first); `input` and `target` are names among them.
    z_shape: (H, W, C) of the input.
    backbone: the U-Net.
    input: the modality fed to the backbone (of an image-like kind: models/kinds/).
    target: the modality predicted.
  """
  specs: tuple[ModalitySpec, ...]
  z_shape: tuple[int, ...]
  backbone: UNet
  input: str
  target: str

  def spec(self, name: str) -> ModalitySpec:
    return next(s for s in self.specs if s.name == name)

  def setup(self):
    self.head = make_head(self.spec(self.target), self.z_shape)

  def __call__(self, x, *, train: bool) -> jnp.ndarray:
    """x: (B, *z_shape) input -> the target head's output (logits for categorical targets)."""
    chex.assert_shape(x, (None, *self.z_shape))
    t = jnp.zeros((x.shape[0],), jnp.int32)
    return self.head(self.backbone(x, t, train=train), train=train)

  def initialize(self, batch: dict[str, Any], z_t, t):
    """Touches every submodule (used only by init; same signature as MTDiffusion.initialize)."""
    del z_t, t
    return self(batch[self.spec(self.input).feature], train=False)
