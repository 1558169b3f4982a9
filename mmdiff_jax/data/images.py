"""Stored uint8 images to the model's float range and back: the pure numpy steps that data preparation,
the input pipeline and evaluation all use."""

from __future__ import annotations

import numpy as np

from mmdiff_jax.errors import BadValueError


def preprocess_images(images: np.ndarray, *, image_size: int) -> np.ndarray:
  """uint8 (B, H, W[, C]) -> float32 (B, S, S, C) in [-1, 1], S = image_size.

  S == H: unchanged geometry; S == H + 4: 2 px of background (-1) on each side.
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  b, h, w, c = images.shape
  check_image_size((h, w), image_size)
  x = images.astype(np.float32)
  x *= np.float32(2.0 / 255.0)
  x -= np.float32(1.0)
  if image_size == h:
    return x
  pad = (image_size - h) // 2
  out = np.full((b, image_size, image_size, c), -1.0, dtype=np.float32)
  out[:, pad:pad + h, pad:pad + w, :] = x
  return out


def native_images(images: np.ndarray, *, native_size: int) -> np.ndarray:
  """The inverse of preprocess_images' padding: (B, S, S, C) -> (B, N, N, C), N = native_size."""
  s = images.shape[1]
  check_image_size((native_size, native_size), s)
  pad = (s - native_size) // 2
  return images[:, pad:pad + native_size, pad:pad + native_size]


def check_image_size(native_hw: tuple[int, int], image_size: int) -> None:
  h, w = native_hw
  if h != w:
    raise BadValueError(f"Only square images are supported, got {h}x{w}.")
  if image_size not in (h, h + 4):
    raise BadValueError(
        f"data.image_size={image_size} is not supported for {h}x{w} images: "
        f"use {h} (as is) or {h + 4} (pad 2 px of background on each side).")
