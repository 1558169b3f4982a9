"""Checks that a batch holds what the config's modalities need, with errors naming the feature."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mmdiff_jax.models.modalities import ModalitySpec


def _fail(where: str, feature: str, problem: str) -> None:
  raise ValueError(f"{where}: feature {feature!r} {problem}")


def check_batch(batch: Mapping[str, np.ndarray], specs: Sequence[ModalitySpec],
                z_shape: Sequence[int], *, where: str, ignore_label: int | None = None) -> None:
  """Raises ValueError naming `where` (the dataset/split) and the feature, for the first problem.

  Checks: every modality's feature is present; images are float (B, *z_shape) and finite; labels are
  integer (B,) in 0..num_classes-1; segmentation maps are integer (B, H, W) in range (or equal to
  `ignore_label`); embeddings are float (B, dim) and finite.
  """
  for spec in specs:
    if spec.feature not in batch:
      _fail(where, spec.feature, f"is missing (modality {spec.name!r}); the batch has {sorted(batch)}")
    x = np.asarray(batch[spec.feature])
    b = x.shape[0] if x.ndim else 0
    if spec.kind in ("image", "masked_image"):
      expected, integer = (b, *z_shape), False
    elif spec.kind == "label":
      expected, integer = (b,), True
    elif spec.kind == "segmentation":
      expected, integer = (b, *z_shape[:-1]), True
    else:
      expected, integer = (b, spec.dim), False
    if x.shape != tuple(expected):
      _fail(where, spec.feature, f"has shape {x.shape}; modality {spec.name!r} ({spec.kind}) "
                                 f"expects {tuple(expected)}")
    if integer:
      if not np.issubdtype(x.dtype, np.integer):
        _fail(where, spec.feature, f"has dtype {x.dtype}; expected integers")
      if spec.kind == "segmentation" and ignore_label is not None:
        x = x[x != ignore_label]
      if x.size and (x.min() < 0 or x.max() >= spec.num_classes):
        _fail(where, spec.feature, f"has values in [{x.min()}, {x.max()}]; expected 0.."
                                   f"{spec.num_classes - 1} (modalities.{spec.name}.num_classes"
                                   + (f", or data.ignore_label = {ignore_label})"
                                      if spec.kind == "segmentation" and ignore_label is not None
                                      else ")"))
    else:
      if not np.issubdtype(x.dtype, np.floating):
        _fail(where, spec.feature, f"has dtype {x.dtype}; expected floats")
      if not np.all(np.isfinite(x)):
        _fail(where, spec.feature, f"holds {np.size(x) - np.isfinite(x).sum()} non-finite values")
