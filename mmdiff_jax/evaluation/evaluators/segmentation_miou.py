"""The evaluator `segmentation_miou`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

import jax
import numpy as np

from mmdiff_jax import random_streams
from mmdiff_jax.evaluation import harness, metrics
from mmdiff_jax.evaluation.evaluators import Evaluator


def segmentation_miou(experiment, params, config) -> dict[str, float]:
  """Image -> segmentation through the joint model: mIoU of the generated map vs the test map."""
  base, seg = experiment.specs[0], harness.spec_of(experiment, "segmentation")
  sample = harness.conditional_sampler(experiment, params, config)
  rng, predicted, target = random_streams.key(config.eval.seed, "image_to_segmentation"), [], []
  for i, (batch, _) in enumerate(harness.test_batches(config, config.eval.num_examples)):
    predicted.append(np.asarray(sample(jax.random.fold_in(rng, i),
                                       {base.name: batch[base.feature]})[seg.name]))
    target.append(batch[seg.feature])
  predicted, target = np.concatenate(predicted), np.concatenate(target)
  kwargs = dict(num_classes=seg.num_classes, ignore_index=config.data.ignore_label)
  name = f"{seg.name}_miou"
  return {name: metrics.mean_iou(predicted, target, **kwargs), f"{name}_examples": len(target),
          "bootstrap": {name: metrics.bootstrap_mean_iou(predicted, target, **kwargs)}}


EVALUATOR = Evaluator(name="segmentation_miou", evaluate=segmentation_miou, needs="segmentation")
