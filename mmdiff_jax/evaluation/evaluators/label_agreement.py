"""The evaluator `label_agreement`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

import numpy as np

from mmdiff_jax.errors import BadValueError
from mmdiff_jax.evaluation import harness, metrics
from mmdiff_jax.evaluation.evaluators import Evaluator


def label_agreement(experiment, params, config, classify=None) -> dict[str, float]:
  """An independent classifier's label (`classify`: images (B, H, W, C) -> labels (B,), the classifier
  of eval.classifier_workdir) for each generated image vs the label generated with it (or, for a
  class-conditional model, the label it was given); plus the classifier's own test accuracy, and how
  far the generated labels' class frequencies, and those the classifier sees in the generated images,
  are from the test split's (total variation: 0 = the same balance)."""
  base = experiment.specs[0]
  label = harness.spec_of(experiment, "label", conditions=True)
  if classify is None:
    raise BadValueError("config.eval.classifier_workdir is not set: label agreement needs an "
                        "independent classifier; train one with configs/classifier.py:small and pass "
                        "--config.eval.classifier_workdir=DIR")
  predicted, generated = [], []
  for out in harness.generate(experiment, params, config, "label_agreement"):
    predicted.append(classify(np.asarray(out[base.name])))
    generated.append(np.asarray(out[label.name]))
  predicted_test, test_labels = [], []
  for batch, _ in harness.test_batches(config, config.eval.num_examples):
    predicted_test.append(classify(batch[base.feature]))
    test_labels.append(batch[label.feature])
  generated, predicted, test_labels = (np.concatenate(generated), np.concatenate(predicted),
                                       np.concatenate(test_labels))
  balance = dict(reference_labels=test_labels, num_classes=label.num_classes)
  tv, tv_seen = f"{label.name}_class_balance_tv", f"{label.name}_class_balance_tv_seen_by_classifier"
  return harness.merge_results(
      harness.with_bootstrap(
          f"{label.name}_agreement", predicted == generated,
          **{"classifier_test_accuracy": metrics.label_agreement(np.concatenate(predicted_test),
                                                                 test_labels),
             "classifier_workdir": str(config.eval.classifier_workdir)}),
      {tv: metrics.class_frequency_distance(generated, **balance),
       tv_seen: metrics.class_frequency_distance(predicted, **balance),
       **{f"{name}_examples": [len(generated), len(test_labels)] for name in (tv, tv_seen)},
       "bootstrap": {tv: metrics.bootstrap_class_frequency_distance(generated, **balance),
                     tv_seen: metrics.bootstrap_class_frequency_distance(predicted, **balance)}})


EVALUATOR = Evaluator(
    name="label_agreement", evaluate=label_agreement,
    needs="label", generative=True, conditions=True, uses_classifier=True,
    unavailable=lambda config: None if config.eval.classifier_workdir else
    "config.eval.classifier_workdir is not set")
