"""Sample grids as PNG: each image with its caption (e.g. the generated label) underneath."""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: np.ndarray) -> np.ndarray:
  """(B, H, W, C) in [-1, 1] -> uint8 (B, H, W, C)."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_grid(path: str, images: np.ndarray, *, captions: Sequence[str] | None = None,
              num_columns: int = 10, scale: int = 2) -> str:
  """Writes a grid PNG of (B, H, W, C) images in [-1, 1] (C = 1 or 3); returns the path.

  Written to a temporary file and renamed, so an interrupted write never leaves a broken PNG.
  """
  pixels = to_uint8(images)
  count, height, width, channels = pixels.shape
  caption_height = 12 if captions is not None else 0
  cell_w, cell_h = width * scale + 4, height * scale + caption_height + 4
  rows = -(-count // num_columns)
  canvas = Image.new("RGB", (num_columns * cell_w, rows * cell_h), "white")
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  for i in range(count):
    tile = pixels[i, :, :, 0] if channels == 1 else pixels[i]
    img = Image.fromarray(tile).convert("RGB").resize((width * scale, height * scale), Image.NEAREST)
    x, y = (i % num_columns) * cell_w + 2, (i // num_columns) * cell_h + 2
    canvas.paste(img, (x, y))
    if captions is not None:
      draw.text((x, y + height * scale), str(captions[i])[: max(3, width * scale // 6)],
                fill="black", font=font)
  if "://" in path:  # gs://...: one object write, atomic by itself
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_bytes(buffer.getvalue())
    return path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  canvas.save(tmp)
  os.replace(tmp, path)
  return path
