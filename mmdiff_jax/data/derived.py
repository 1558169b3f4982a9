"""Features derived from a preprocessed batch, named in config.data.derived.

Each takes the batch (images float32 (B, H, W, C) in [-1, 1], labels int32 (B,)) and one numpy
Generator per example, seeded from (seed, the example's position in the global stream) only: an example
gets the same derived features after a resume, in any batch size and with any number of processes
sharing the global batch.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np

from mmdiff_jax.errors import BadValueError

# Pixels brighter than this (in [-1, 1]; 0.2 of full ink) belong to the garment.
INK_THRESHOLD = -0.6
MASK_RATIOS = (0.1, 0.7)
MASK_GRID = 4  # masks are made of square cells of a MASK_GRID x MASK_GRID grid over the image
# Mixed into the seed of the per-position draws (distinct from the pipeline's crop and flip stream).
_DERIVED_STREAM = 0x64657276

Generators = Sequence[np.random.Generator]


def garment_segmentation(batch, rngs: Generators) -> dict[str, np.ndarray]:
  """"segmentation": int32 (B, H, W): 0 = background, 1 + label where the garment's ink is.

  Fashion-MNIST has no segmentation labels; this per-pixel map (background vs. the garment's class)
  is derived from the image and its label, so a model of (image, map) must get shape and class right.
  """
  del rngs
  if "label" not in batch:
    raise BadValueError(
        f"config.data.derived: 'garment_segmentation' makes the segmentation map from the image and "
        f"its class, and the dataset has no 'label' feature (it has {sorted(batch)}). A dataset with "
        f"masks of its own needs no derived map: --config.data.derived='()'")
  ink = batch["image"][..., 0] > INK_THRESHOLD
  return {"segmentation": np.where(ink, batch["label"][:, None, None] + 1, 0).astype(np.int32)}


def square_masks(shape, *, ratios: np.ndarray, rngs: Generators) -> np.ndarray:
  """float32 (B, H, W, 1) masks, 1 = missing: round(ratio * 16) random cells of a 4x4 grid each,
  example i's cells drawn from rngs[i] (the same Generator may stand at several places)."""
  b, h, w = shape[:3]
  if not len(ratios) == len(rngs) == b:
    raise ValueError(f"square_masks: {b} examples, {len(ratios)} ratios and {len(rngs)} generators")
  cells = MASK_GRID * MASK_GRID
  masks = np.zeros((b, cells), np.float32)
  for i, (ratio, rng) in enumerate(zip(ratios, rngs)):
    masks[i, rng.permutation(cells)[: max(1, int(round(ratio * cells)))]] = 1.0
  grid = masks.reshape(b, MASK_GRID, MASK_GRID)
  mask = np.repeat(np.repeat(grid, -(-h // MASK_GRID), axis=1), -(-w // MASK_GRID), axis=2)
  return mask[:, :h, :w, None]


# config.data.mask_fill_pattern: what a masked image's missing pixels hold.
#   "constant": config.data.mask_fill_value everywhere (0 is mid-grey, the value of real grey pixels);
#   "checkerboard": +1 / -1 alternating pixel by pixel, a pattern no garment image has, so the hole is
#     marked in the image itself (an in-band mask indicator; mask_fill_value is not used).
MASK_FILL_PATTERNS = ("constant", "checkerboard")


def hole_fill(shape, *, value: float, pattern: str) -> np.ndarray:
  """float32 array of `shape` (B, H, W, C): what the missing pixels are set to (see MASK_FILL_PATTERNS)."""
  if pattern == "constant":
    return np.full(shape, value, np.float32)
  if pattern == "checkerboard":
    h, w = shape[1], shape[2]
    board = np.where((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0, 1.0, -1.0)
    return np.broadcast_to(board[None, :, :, None], shape).astype(np.float32)
  raise BadValueError(f"config.data.mask_fill_pattern: got {pattern!r}; expected one of "
                      f"{MASK_FILL_PATTERNS}")


def mask_out(images: np.ndarray, mask: np.ndarray, *, fill_value: float,
             fill_pattern: str = "constant") -> np.ndarray:
  """float32 (B, H, W, C): `images` with the pixels where `mask` (B, H, W, 1) is 1 replaced by
  hole_fill(value=fill_value, pattern=fill_pattern)."""
  fill = hole_fill(np.shape(images), value=fill_value, pattern=fill_pattern)
  return np.where(mask > 0, fill, images).astype(np.float32)


def random_square_mask(batch, rngs: Generators, *, mask_fill_value: float = 0.0,
                       mask_fill_pattern: str = "constant") -> dict[str, np.ndarray]:
  """"mask" (see square_masks) with ratios drawn uniformly from MASK_RATIOS; "masked_image": the
  image with missing pixels filled as config.data.mask_fill_value / mask_fill_pattern say."""
  images = batch["image"]
  ratios = np.array([rng.uniform(*MASK_RATIOS) for rng in rngs])
  mask = square_masks(images.shape, ratios=ratios, rngs=rngs)
  return {"mask": mask, "masked_image": mask_out(images, mask, fill_value=mask_fill_value,
                                                 fill_pattern=mask_fill_pattern)}


def masked_image_augmentation(batch, rngs: Generators) -> dict[str, np.ndarray]:
  """"image": each example replaced by its "masked_image" with probability 1/2 (needs
  random_square_mask before it). A training-time augmentation: a model trained with it sees clean and
  masked images alike as images to generate, without the masked image as a modality of its own (the
  control that separates the multitask structure from mere exposure to masked images)."""
  if "masked_image" not in batch:
    raise BadValueError("config.data.derived: 'masked_image_augmentation' needs 'random_square_mask' "
                        "before it (it replaces images by their masked copies)")
  replace = np.array([rng.random() < 0.5 for rng in rngs])
  return {"image": np.where(replace[:, None, None, None], batch["masked_image"],
                            batch["image"]).astype(np.float32)}


DERIVED: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "garment_segmentation": garment_segmentation,
    "random_square_mask": random_square_mask,
    "masked_image_augmentation": masked_image_augmentation,
}
# Augmentations: applied to the training stream only (evaluation reads the split as it is).
TRAINING_ONLY = frozenset({"masked_image_augmentation"})


def derive(batch, names, *, seed: int, positions: Sequence[int], mask_fill_value: float = 0.0,
           mask_fill_pattern: str = "constant"):
  """Adds the named derived features to `batch` (a dict of numpy arrays of B examples); only the
  augmentations (TRAINING_ONLY) may replace a feature the batch has.

  positions: the B examples' positions in the global stream (what seeds their draws).
  mask_fill_value, mask_fill_pattern: what masked images' missing pixels hold (config.data.*).
  """
  for name in names:
    if name not in DERIVED:
      raise BadValueError(f"config.data.derived: unknown {name!r}; expected names from {sorted(DERIVED)}")
  if not names:
    return batch
  rngs = [np.random.default_rng([seed, _DERIVED_STREAM, int(q)]) for q in positions]
  if len(rngs) != len(batch["image"]):
    raise ValueError(f"derive: {len(batch['image'])} examples but {len(rngs)} positions")
  for name in names:
    feature = DERIVED[name]
    if feature is random_square_mask:  # the one with a data setting
      feature = functools.partial(random_square_mask, mask_fill_value=mask_fill_value,
                                  mask_fill_pattern=mask_fill_pattern)
    made = feature(batch, rngs)
    if name not in TRAINING_ONLY and set(made) & set(batch):  # augmentations replace by design
      raise BadValueError(
          f"config.data.derived: {name!r} makes {sorted(made)}, and the batch already has "
          f"{sorted(set(made) & set(batch))} (from the dataset or an earlier derived feature); "
          f"expected it to make new features only. To use the dataset's own, leave {name!r} out "
          f"(e.g. --config.data.derived='()')")
    batch.update(made)
  return batch
