"""The evaluator `inpainting_replacement`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

from typing import Any

import jax

from mmdiff_jax.evaluation import harness
from mmdiff_jax.evaluation.evaluators import Evaluator
from mmdiff_jax.multihost import fetch
from mmdiff_jax.sampling import inpainting as inpainting_lib


def inpainting_replacement(experiment, params, config) -> dict[str, Any]:
  """Known-region replacement baseline (RePaint-style; eval.replacement_resamples passes per step) on
  an image diffusion model without aggregated modalities, scored like `inpainting`."""
  sampler = harness.eval_sampler(experiment, config)
  def replacement_inpainting(p, r, x, m, obs):  # named: compile logs and profiles show this name
    return inpainting_lib.known_region_replacement(
        sampler, p, r, x, m, resamples=int(config.eval.replacement_resamples), observed=obs)

  run = jax.jit(replacement_inpainting)
  def inpaint(rng, batch, masked_images, mask):
    return fetch(run(params, rng, masked_images, mask, harness.conditions_of(experiment, batch)))
  return harness.inpainting_scores(experiment, config, inpaint, "inpainting_replacement")


EVALUATOR = Evaluator(
    name="inpainting_replacement", evaluate=inpainting_replacement,
    generative=True, image_only=True)
