"""A class map per image (int32 (H, W), 0..num_classes-1; config.data.ignore_label marks unlabelled
pixels): joint image+segmentation generation."""

import jax.numpy as jnp
import numpy as np
import optax

from mmdiff_jax.models import encoders, heads
from mmdiff_jax.models.kinds import Kind, argmax_class, per_example_mean, per_example_sum


def pixel_cross_entropy(logits, class_map, *, ignore_label=None):
  """(B, H, W, K) logits, (B, H, W) classes -> (B,) mean -log p over each example's pixels; pixels
  equal to `ignore_label` are left out (an example with none scores 0)."""
  if ignore_label is None:
    return per_example_mean(optax.softmax_cross_entropy_with_integer_labels(logits, class_map))
  valid = class_map != ignore_label
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, class_map, 0))
  return per_example_sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(per_example_sum(valid), 1)


def colorize(maps: np.ndarray, num_classes: int) -> np.ndarray:
  """int (B, H, W) class maps -> (B, H, W, 3) RGB in [-1, 1]: class 0 black, the others evenly spaced
  hues (the sample grids and the notebooks colour maps alike with it)."""
  hues = np.arange(num_classes - 1) / max(num_classes - 1, 1)
  # HSV (h, 1, 1) -> RGB, vectorised.
  rgb = np.clip(np.abs(((hues[:, None] * 6 + np.array([0, 4, 2])) % 6) - 3) - 1, 0, 1)
  palette = np.concatenate([np.zeros((1, 3)), rgb]).astype(np.float32)
  return palette[np.asarray(maps)] * 2.0 - 1.0


KIND = Kind(
    name="segmentation",
    value_shape=lambda spec, z_shape: tuple(z_shape[:-1]),
    dtype=np.int32,
    encoders={"pixel_categorical": encoders.PixelCategoricalEncoder},
    head=heads.ConvHead,
    head_width=lambda spec, z_shape: spec.num_classes,
    recovery_nll=pixel_cross_entropy,
    decode=argmax_class,
    categorical=True,
    required=("num_classes",),
    has_ignore_label=True,
    preview=lambda spec, maps: colorize(maps, spec.num_classes),
)
