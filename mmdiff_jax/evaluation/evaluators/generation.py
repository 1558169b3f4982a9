"""The evaluator `generation`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmdiff_jax.evaluation import harness
from mmdiff_jax.evaluation.evaluators import Evaluator


def generation(experiment, params, config) -> dict[str, Any]:
  """Joint samples (given the test labels for a class-conditional model) vs test images: Fréchet
  AlexNet distance and improved precision/recall."""
  base = experiment.specs[0]
  generated = [np.asarray(out[base.name])
               for out in harness.generate(experiment, params, config, "generation")]
  return harness.image_set_scores(experiment, config, np.concatenate(generated))


EVALUATOR = Evaluator(name="generation", evaluate=generation, generative=True)
