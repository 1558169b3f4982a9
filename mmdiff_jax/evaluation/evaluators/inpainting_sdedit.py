"""The evaluator `inpainting_sdedit`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

from typing import Any

import jax

from mmdiff_jax.evaluation import harness
from mmdiff_jax.evaluation.evaluators import Evaluator
from mmdiff_jax.multihost import fetch
from mmdiff_jax.sampling import inpainting as inpainting_lib


def inpainting_sdedit(experiment, params, config) -> dict[str, Any]:
  """SDEdit baseline (sampling/inpainting.py) on an image diffusion model without aggregated
  modalities: the masked image noised to t0 = eval.sdedit_t0_fraction of T and denoised, scored like
  `inpainting`."""
  sampler = harness.eval_sampler(experiment, config)
  def sdedit_inpainting(p, r, x, obs):  # named: compile logs and profiles show this name
    return inpainting_lib.sdedit(sampler, p, r, x, t0_fraction=float(config.eval.sdedit_t0_fraction),
                                 observed=obs)

  run = jax.jit(sdedit_inpainting)
  def inpaint(rng, batch, masked_images, mask):
    del mask  # SDEdit noises the whole masked image
    return fetch(run(params, rng, masked_images, harness.conditions_of(experiment, batch)))
  return harness.inpainting_scores(experiment, config, inpaint, "inpainting_sdedit")


EVALUATOR = Evaluator(
    name="inpainting_sdedit", evaluate=inpainting_sdedit, generative=True, image_only=True)
