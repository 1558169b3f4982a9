"""The evaluator `label_conditional`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from mmdiff_jax import random_streams
from mmdiff_jax.evaluation import harness
from mmdiff_jax.evaluation.evaluators import Evaluator


def label_conditional(experiment, params, config, classify=None) -> dict[str, Any]:
  """Images generated given the test split's labels (the first eval.num_generated, in order: the
  test set's class balance), from any model with a label, aggregated (observed: its true encoding at
  every step) or a condition: Fréchet AlexNet distance, precision/recall, and, with `classify` (the
  classifier of eval.classifier_workdir, images (B, H, W, C) -> labels (B,)), the agreement of that
  independent classifier with the given labels.
  Sampled with the same seeds as `generation`, so a model that ignores its label scores alike."""
  base = experiment.specs[0]
  label = harness.spec_of(experiment, "label", conditions=True)
  e = config.eval
  sample = harness.conditional_sampler(experiment, params, config)
  rng, generated, given = random_streams.key(e.seed, "generation"), [], []
  for i, (batch, _) in enumerate(harness.test_batches(config, e.num_generated)):
    out = sample(jax.random.fold_in(rng, i), {label.name: batch[label.feature]})
    generated.append(np.asarray(out[base.name]))
    given.append(batch[label.feature])
  generated, given = np.concatenate(generated), np.concatenate(given)
  parts = [harness.image_set_scores(experiment, config, generated, prefix="label_conditional/")]
  if classify is not None:
    agree = np.concatenate([classify(generated[i:i + e.batch_size])
                            for i in range(0, len(generated), e.batch_size)]) == given
    parts.append(harness.with_bootstrap("label_conditional/label_agreement", agree,
                                        classifier_workdir=str(e.classifier_workdir)))
  return harness.merge_results(*parts)


EVALUATOR = Evaluator(
    name="label_conditional", evaluate=label_conditional,
    needs="label", generative=True, conditions=True, uses_classifier=True)
