"""Checks that a batch holds what the config's modalities need, with errors naming the feature."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mmdiff_jax.errors import BadValueError
from mmdiff_jax.models import kinds
from mmdiff_jax.models.modalities import ModalitySpec


def training_source(data_config) -> str:
  """How errors about the training batches name where they come from (check_batch's `where`)."""
  return f"dataset {data_config.name!r} ({data_config.train_split})"


def _fail(where: str, feature: str, problem: str) -> None:
  raise BadValueError(f"{where}: feature {feature!r} {problem}")


def check_batch(batch: Mapping[str, np.ndarray], specs: Sequence[ModalitySpec],
                z_shape: Sequence[int], *, where: str, ignore_label: int | None = None) -> None:
  """Raises ValueError naming `where` (the dataset/split) and the feature, for the first problem.

  Checks, from each modality's kind (models/kinds/): its feature is present with the kind's shape
  and dtype; integer class ids are in 0..num_classes-1 (or equal to `ignore_label`, for kinds that have
  one); floats are finite.
  """
  for spec in specs:
    if spec.feature not in batch:
      _fail(where, spec.feature,
            f"is missing (modality {spec.name!r}); the batch has {sorted(batch)}")
    kind = kinds.get(spec.kind)
    x = np.asarray(batch[spec.feature])
    b = x.shape[0] if x.ndim else 0
    expected = (b, *kind.value_shape(spec, tuple(z_shape)))
    if x.shape != expected:
      sized_by = " (data.image_size, data.image_size, data.channels)" if spec.is_base else ""
      _fail(where, spec.feature, f"has shape {x.shape}; modality {spec.name!r} ({spec.kind}) "
                                 f"expects {expected}{sized_by}")
    if np.issubdtype(kind.dtype, np.integer):
      if not np.issubdtype(x.dtype, np.integer):
        _fail(where, spec.feature, f"has dtype {x.dtype}; expected integers")
      ignored = kind.has_ignore_label and ignore_label is not None
      if ignored:
        x = x[x != ignore_label]
      if kind.categorical and x.size and (x.min() < 0 or x.max() >= spec.num_classes):
        _fail(where, spec.feature, f"has values in [{x.min()}, {x.max()}]; expected 0.."
                                   f"{spec.num_classes - 1} (modalities.{spec.name}.num_classes"
                                   + (f", or data.ignore_label = {ignore_label})" if ignored
                                      else ")"))
    else:
      if not np.issubdtype(x.dtype, np.floating):
        _fail(where, spec.feature, f"has dtype {x.dtype}; expected floats")
      if not np.all(np.isfinite(x)):
        _fail(where, spec.feature, f"holds {np.size(x) - np.isfinite(x).sum()} non-finite values")
