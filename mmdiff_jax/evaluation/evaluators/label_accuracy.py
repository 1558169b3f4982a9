"""The evaluator `label_accuracy`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

import jax
import numpy as np

from mmdiff_jax import random_streams
from mmdiff_jax.evaluation import harness
from mmdiff_jax.evaluation.evaluators import Evaluator


def label_accuracy(experiment, params, config) -> dict[str, float]:
  """Image -> label through the joint model: the test image is observed, the label generated."""
  base, label = experiment.specs[0], harness.spec_of(experiment, "label")
  sample = harness.conditional_sampler(experiment, params, config)
  rng, correct = random_streams.key(config.eval.seed, "image_to_label"), []
  for i, (batch, _) in enumerate(harness.test_batches(config, config.eval.num_examples)):
    out = sample(jax.random.fold_in(rng, i), {base.name: batch[base.feature]})
    correct.append(np.asarray(out[label.name]) == batch[label.feature])
  correct = np.concatenate(correct)
  return harness.with_bootstrap(f"{label.name}_accuracy", correct)


EVALUATOR = Evaluator(name="label_accuracy", evaluate=label_accuracy, needs="label")
