"""Starting a run from another run's parameters (config.training.init_from).

A parameter is taken over where the other run has one at the same path with the same shape (e.g. the
U-Net "backbone" of a diffusion model, for a classifier fine-tuned from it); the rest keeps its fresh
initialisation. The same path with another shape is an error, not a silent skip.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mmdiff_jax.errors import BadValueError
from mmdiff_jax.training.restore import flatten


def transplant(target: Mapping[str, Any], source: Mapping[str, Any], *,
               source_name: str) -> tuple[dict[str, Any], list[str], list[str]]:
  """Copies `source`'s leaves into `target` where paths and shapes match.

  Args:
    target, source: nested dicts of arrays (flax parameter trees).
    source_name: names the source in errors (e.g. "config.training.init_from=DIR").
  Returns:
    (the new tree, the copied leaf paths, the target's leaf paths left as they were).
  Raises:
    ValueError: a path of both trees with different shapes (all of them listed), or nothing copied.
  """
  source_flat = flatten(source, separator="/")
  mismatched = [f"{path}: here {np.shape(value)}, there {np.shape(source_flat[path])}"
                for path, value in flatten(target, separator="/").items()
                if path in source_flat and np.shape(value) != np.shape(source_flat[path])]
  if mismatched:
    raise BadValueError(f"{source_name}: parameters with the same path but another shape: "
                        f"{'; '.join(mismatched)}. Use a run whose shared parts have this config's shapes "
                        f"(e.g. the same config.model keys).")
  copied, kept = [], []

  def merge(tree, prefix):
    out = {}
    for key, value in tree.items():
      path = f"{prefix}{key}"
      if isinstance(value, Mapping):
        out[key] = merge(value, path + "/")
      elif path in source_flat:
        out[key] = source_flat[path]
        copied.append(path)
      else:
        out[key] = value
        kept.append(path)
    return out

  merged = merge(target, "")
  if not copied:
    raise BadValueError(f"{source_name}: no parameter of that run has a path of this model "
                        f"(this model's top level: {sorted(target)}; that run's: {sorted(source)})")
  return merged, copied, kept


def top_level(paths: list[str]) -> list[str]:
  """The distinct first components of parameter paths, in order (for one readable line)."""
  return list(dict.fromkeys(p.split("/")[0] for p in paths))
