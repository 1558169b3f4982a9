"""The evaluator `inpainting`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

from typing import Any


from mmdiff_jax.evaluation import harness
from mmdiff_jax.evaluation.evaluators import Evaluator


def inpainting(experiment, params, config) -> dict[str, Any]:
  """Masked image -> image through the model (the masked image observed as a modality)."""
  base, masked = experiment.specs[0], harness.spec_of(experiment, "masked_image")
  sample = harness.conditional_sampler(experiment, params, config)
  def inpaint(rng, batch, masked_images, mask):
    del mask  # the model sees the masked image only, as in training
    observed = {masked.name: masked_images, **harness.conditions_of(experiment, batch)}
    return sample(rng, observed)[base.name]
  return harness.inpainting_scores(experiment, config, inpaint, "inpainting")


EVALUATOR = Evaluator(name="inpainting", evaluate=inpainting, needs="masked_image")
