"""Evaluators: each measures one capability of a trained model on the pinned test split.

Each evaluator is one record, `Evaluator`, defined in its own file of this folder and found by its name:
`config.eval.after_training = ("depth_error",)` (or `evaluate --evaluators=depth_error`) makes
`get("depth_error")` import `mmdiff_jax/evaluation/evaluators/depth_error.py` and read its `EVALUATOR`
(a file whose name starts with "_" is not an evaluator); its random draws start from
`random_streams.key(config.eval.seed, "evaluator/depth_error")`. What evaluators share (test batches,
the evaluation sampler, image-set and inpainting scores, bootstrap bookkeeping) is in
evaluation/harness.py; generation.py is the shortest example. An evaluator defined elsewhere (a
notebook, a test) is added with `register`. An evaluator applies only to experiments that have what it
needs (`Evaluator.applies`); `run_evaluators` runs those named that apply.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mmdiff_jax.evaluation import harness, metrics
from mmdiff_jax.registry import FolderRegistry


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """One evaluator.

  Attributes:
    name: how configs and the command line name it (its file's name).
    evaluate: (experiment, params, config[, classify]) -> {metric: value}, plus optionally
      "bootstrap": {metric: (R,) replicates} for the metrics that have bootstrap intervals, each with
      "<metric>_examples": the number of examples its replicates resample
      (metrics.bootstrap_indices), [generated, reference] for a two-sample metric; two runs'
      replicates pair only where these are equal.
    needs: the modality kind the model must generate from an observation (None: any).
    generative: whether it samples from the model (so not for predictor baselines).
    conditions: whether a conditioning modality of that kind counts too.
    unavailable: config -> why it cannot run with this config (None: it can), recorded as
      "eval/<name>_skipped" instead of failing a run.
    image_only: whether it needs a diffusion model without aggregated modalities (the baselines).
    uses_classifier: whether `evaluate` takes `classify`, eval.classifier_workdir's classifier (None
      where that is not set).
    only_when_named: whether it runs only where named, not among "every one that applies" (for
      the costly ones).
  """
  name: str
  evaluate: Callable[..., dict[str, Any]]
  needs: str | None = None
  generative: bool = False
  conditions: bool = False
  unavailable: Callable[[Any], str | None] = lambda config: None
  image_only: bool = False
  uses_classifier: bool = False
  only_when_named: bool = False

  def applies(self, experiment) -> bool:
    if self.generative and not experiment.is_generative:
      return False
    if self.image_only and any(s.is_aggregated for s in experiment.specs):
      return False
    return self.needs is None or harness.spec_of(experiment, self.needs,
                                                 conditions=self.conditions) is not None


_EVALUATORS = FolderRegistry(__name__, __path__, attribute="EVALUATOR", record_type=Evaluator,
                             what="evaluator")
_REGISTERED = _EVALUATORS.registered
register = _EVALUATORS.register  # (evaluator) -> evaluator: one defined outside this folder
names = _EVALUATORS.names
get = _EVALUATORS.get  # the evaluator called `name`: registered, or the EVALUATOR of `name`.py


def applicable(experiment) -> list[str]:
  """The names of the evaluators that apply to `experiment`."""
  return [name for name in names() if get(name).applies(experiment)]


def to_run(experiment, selected: Sequence[str] | None) -> list[str]:
  """Those of `selected` that apply to `experiment`; selected=None: every one that applies but those
  only_when_named."""
  if selected is None:
    return [name for name in applicable(experiment) if not get(name).only_when_named]
  return [name for name in selected if get(name).applies(experiment)]


def run_evaluators(experiment, params, config, selected: Sequence[str] | None, *,
                   classify=None, show_progress: bool = False) -> dict[str, Any]:
  """Runs the evaluators named in `selected` (None: every one but those only_when_named) that apply
  to this experiment; returns
  {"eval/<metric>": value}, "eval/<metric>_ci95": [lower, upper] (95% percentile bootstrap interval
  over the evaluated examples) where the evaluator gives replicates, harness.BOOTSTRAP_KEY:
  {"eval/<metric>": replicates} (written to eval_metrics.bootstrap.json by harness.save_eval_metrics,
  for paired intervals of ratios between runs), and "eval/evaluated": the names of those that ran. One
  that cannot run with this config (e.g. label_agreement without config.eval.classifier_workdir) leaves
  its reason in "eval/<name>_skipped".
  classify: the independent classifier of config.eval.classifier_workdir (images (B, H, W, C) ->
  labels (B,); mmdiff_jax.training.restore.load_classifier), for the evaluators that use one.
  show_progress: print a line as each evaluator starts and ends (process 0; some take minutes).
  """
  results, evaluated, replicates = {}, [], {}
  names_to_run = to_run(experiment, selected)
  show_progress = show_progress and jax.process_index() == 0
  for i, name in enumerate(names_to_run):
    evaluator = get(name)
    reason = evaluator.unavailable(config)
    if reason:
      results[f"eval/{name}_skipped"] = reason
      if show_progress:
        print(f"Evaluator {name} ({i + 1}/{len(names_to_run)}) skipped: {reason}", flush=True)
      continue
    if show_progress:
      print(f"Evaluator {name} ({i + 1}/{len(names_to_run)}) ...", flush=True)
      started = time.perf_counter()
    extra = {"classify": classify} if evaluator.uses_classifier else {}
    values = dict(evaluator.evaluate(experiment, params, config, **extra))
    if show_progress:
      print(f"Evaluator {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    for metric, draws in values.pop("bootstrap", {}).items():
      if f"{metric}_examples" not in values:  # what the report checks before pairing two runs
        raise AssertionError(f"evaluator {name!r}: {metric!r} has bootstrap replicates but no "
                             f"{metric}_examples (the numbers of examples they resample)")
      replicates[f"eval/{metric}"] = [float(f"{x:.6g}") for x in np.asarray(draws)]
      results[f"eval/{metric}_ci95"] = list(metrics.percentile_interval(draws, point=values[metric]))
    results.update({f"eval/{k}": v for k, v in values.items()})
    evaluated.append(name)
  if replicates:
    results[harness.BOOTSTRAP_KEY] = replicates
  return {**results, "eval/evaluated": evaluated} if results or evaluated else {}
