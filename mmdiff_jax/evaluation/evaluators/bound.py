"""The evaluator `bound`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

import jax

from mmdiff_jax import random_streams
from mmdiff_jax.evaluation import harness
from mmdiff_jax.evaluation.evaluators import Evaluator
from mmdiff_jax.multihost import fetch


def bound(experiment, params, config) -> dict[str, float]:
  """The variational bound's terms on test batches (one uniform t per example), as the objective
  logs them: per example, and image_bits_per_dim in bits per dimension."""
  def bound_terms(p, b, r):  # named: compile logs and profiles show this name
    return experiment.objective()(p, b, r, train=False)[1]

  objective = jax.jit(bound_terms)
  rng, totals, count = random_streams.key(config.eval.seed, "bound"), {}, 0
  count_wanted = config.eval.bound_batches * config.eval.batch_size
  for i, (batch, n) in enumerate(harness.test_batches(config, count_wanted)):
    values = fetch(objective(params, batch, jax.random.fold_in(rng, i)))
    for k, v in values.items():
      if k.startswith("bound/"):
        totals[k] = totals.get(k, 0.0) + float(v) * n
    count += n
  return {f"test_{k}": v / count for k, v in totals.items()}


EVALUATOR = Evaluator(name="bound", evaluate=bound, generative=True)
