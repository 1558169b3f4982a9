"""Sample grids as PNG: each image with its caption (e.g. the generated label) underneath."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont

from mmdiff_jax.atomic_files import replacing


def to_uint8(images: np.ndarray) -> np.ndarray:
  """(B, H, W, C) in [-1, 1] -> uint8 (B, H, W, C)."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


_MARGIN, _CAPTION_HEIGHT = 2, 12  # pixels around each tile; below each image when captioned


def _cell_size(height: int, width: int, *, scale: int, captioned: bool) -> tuple[int, int]:
  """(cell width, cell height) of one grid tile: the image at `scale`, a caption line, a margin."""
  return (width * scale + 2 * _MARGIN,
          height * scale + (_CAPTION_HEIGHT if captioned else 0) + 2 * _MARGIN)


def save_grid(path: str, images: np.ndarray, *, captions: Sequence[str] | None = None,
              num_columns: int = 10, scale: int = 2) -> str:
  """Writes a grid PNG of (B, H, W, C) images in [-1, 1] (C = 1 or 3); returns the path.

  Written to a temporary file and renamed, so an interrupted write never leaves a broken PNG.
  """
  pixels = to_uint8(images)
  count, height, width, channels = pixels.shape
  cell_w, cell_h = _cell_size(height, width, scale=scale, captioned=captions is not None)
  rows = -(-count // num_columns)
  canvas = Image.new("RGB", (num_columns * cell_w, rows * cell_h), "white")
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  for i in range(count):
    tile = pixels[i, :, :, 0] if channels == 1 else pixels[i]
    img = Image.fromarray(tile).convert("RGB").resize((width * scale, height * scale), Image.NEAREST)
    x, y = (i % num_columns) * cell_w + _MARGIN, (i // num_columns) * cell_h + _MARGIN
    canvas.paste(img, (x, y))
    if captions is not None:
      draw.text((x, y + height * scale), str(captions[i])[: max(3, width * scale // 6)],
                fill="black", font=font)
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  with replacing(path, "wb") as f:
    canvas.save(f, format="PNG")
  return path


def load_grid(path: str, *, image_size: tuple[int, int], captioned: bool = True, num_columns: int = 10,
              scale: int = 2, channels: int = 1) -> np.ndarray:
  """The images of a grid PNG written by save_grid with the same layout: (B, H, W, channels) float in
  [-1, 1], quantised to 8 bits as the PNG stores them; empty (all-white) cells of a last row are
  left out. A PNG whose size does not fit the layout raises ValueError."""
  height, width = image_size
  cell_w, cell_h = _cell_size(height, width, scale=scale, captioned=captioned)
  canvas = np.asarray(Image.open(epath.Path(path).open("rb")).convert("RGB"))
  if canvas.shape[1] != num_columns * cell_w or canvas.shape[0] % cell_h:
    raise ValueError(f"{path}: a {canvas.shape[1]} x {canvas.shape[0]} PNG is not a grid of "
                     f"{num_columns} columns of {image_size} images at scale {scale}"
                     f"{' with captions' if captioned else ''}")
  tiles = []
  for row in range(canvas.shape[0] // cell_h):
    for column in range(num_columns):
      y, x = row * cell_h + _MARGIN, column * cell_w + _MARGIN
      tile = canvas[y:y + height * scale:scale, x:x + width * scale:scale]
      if np.all(tile == 255):
        continue
      tiles.append(tile[..., :1] if channels == 1 else tile)
  return np.stack(tiles).astype(np.float32) / 127.5 - 1.0
