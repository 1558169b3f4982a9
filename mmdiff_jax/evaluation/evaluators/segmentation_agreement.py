"""The evaluator `segmentation_agreement`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

import numpy as np

from mmdiff_jax.data import derived
from mmdiff_jax.evaluation import harness, metrics
from mmdiff_jax.evaluation.evaluators import Evaluator


def segmentation_pair_agreement(images: np.ndarray, maps: np.ndarray,
                                num_classes: int) -> dict[str, float]:
  """How well generated maps fit their generated images, by the rule that derived the training maps.

  Args: images: float (B, H, W, 1) in [-1, 1]; maps: int (B, H, W), 0 = background, 1 + class.
  Returns: "pair_miou": mIoU between each map and the map derived from its image
  (derived.garment_segmentation) with the map's own majority foreground class (so both the garment's
  extent and the map's class consistency count); "pair_foreground_iou": IoU of map > 0 and the
  image's ink alone; "bootstrap": {"pair_miou": replicates over the pairs}.
  """
  maps = np.asarray(maps)
  counts = np.stack([np.sum(maps == c, axis=(1, 2)) for c in range(1, num_classes)], axis=1)
  classes = np.argmax(counts, axis=1).astype(np.int32)  # no foreground at all: class 0
  rederived = derived.garment_segmentation({"image": np.asarray(images), "label": classes},
                                           None)["segmentation"]
  return {"pair_miou": metrics.mean_iou(maps, rederived, num_classes),
          "pair_foreground_iou": float(metrics.per_class_iou(maps > 0, rederived > 0, 2)[1]),
          "bootstrap": {"pair_miou": metrics.bootstrap_mean_iou(maps, rederived, num_classes)}}


def segmentation_agreement(experiment, params, config) -> dict[str, float]:
  """Joint (image, map) samples: segmentation_pair_agreement of the generated pairs."""
  base, seg = experiment.specs[0], harness.spec_of(experiment, "segmentation")
  outs = harness.generate(experiment, params, config, "segmentation_pairs")
  agreement = segmentation_pair_agreement(np.concatenate([np.asarray(o[base.name]) for o in outs]),
                                          np.concatenate([np.asarray(o[seg.name]) for o in outs]),
                                          seg.num_classes)
  replicates = agreement.pop("bootstrap")
  return {**{f"{seg.name}_{k}": v for k, v in agreement.items()},
          f"{seg.name}_pair_examples": sum(len(o[seg.name]) for o in outs),
          **{f"{seg.name}_{k}_examples": sum(len(o[seg.name]) for o in outs) for k in replicates},
          "bootstrap": {f"{seg.name}_{k}": v for k, v in replicates.items()}}


EVALUATOR = Evaluator(
    name="segmentation_agreement", evaluate=segmentation_agreement,
    needs="segmentation", generative=True,
    unavailable=lambda config: None if "garment_segmentation" in config.data.derived else
    "defined for maps derived by garment_segmentation (config.data.derived) only")
