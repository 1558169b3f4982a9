"""What the evaluators (evaluation/evaluators/, one file each) share: the pinned test split's batches,
the evaluation sampler and the samples drawn with it, masked test images, the scores of generated image
sets and of inpainting, bootstrap bookkeeping, and writing WORKDIR/eval_metrics.json.

Counts, sampler and seed come from config.eval, so numbers are comparable across runs.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jax
import numpy as np

from mmdiff_jax import random_streams
from mmdiff_jax.atomic_files import merging, replace_file
from mmdiff_jax.data import derived, pipeline
from mmdiff_jax.evaluation import metrics
from mmdiff_jax.models import alexnet_features as features
from mmdiff_jax.models.modalities import specs_from_config
from mmdiff_jax.multihost import fetch


def test_batches(config, num_examples: int):
  """(batch, count) pairs covering the first `num_examples` test examples, in stored order."""
  e = config.eval
  iterator = pipeline.make_iterator(config.data, split=config.data.eval_split,
                                    global_batch_size=e.batch_size, seed=e.seed, shuffle=False,
                                    num_epochs=1, drop_remainder=False, read_threads=0,
                                    read_features=[s.feature for s in specs_from_config(
                                        config.modalities)])
  seen = 0
  for batch in iterator:
    if seen >= num_examples:
      return
    take = min(len(batch["image"]), num_examples - seen)
    yield {k: v[:take] for k, v in batch.items()}, take
    seen += take


def eval_sampler(experiment, config):
  """The evaluators' sampler: config.eval's kind and steps, sampling's categorical feedback."""
  return experiment.sampler(config.eval.sampler, config.eval.sampler_steps,
                            categorical_feedback=config.sampling.categorical_feedback,
                            hard_feedback_fraction=config.sampling.hard_feedback_fraction)


def spec_of(experiment, kind, *, conditions: bool = False):
  """The first modality of `kind` the model generates (or is conditioned on, with conditions=True)."""
  return next((s for s in experiment.specs
               if s.kind == kind and (conditions or not s.is_condition)), None)


def _generation_conditions(experiment, config, count: int) -> list[dict[str, np.ndarray]]:
  """Per eval batch, the observed values of a class-conditional model's conditions (the test split's
  labels, in order, so the generated set has the test set's class balance); {} per batch otherwise
  (without reading the data)."""
  conditions = [s for s in experiment.specs if s.is_condition]
  if not conditions:
    return [{}] * math.ceil(count / config.eval.batch_size)
  return [{s.name: batch[s.feature] for s in conditions}
          for batch, _ in test_batches(config, count)]


def generate(experiment, params, config, stream: str):
  """num_generated samples from the model (joint, or given the test labels for a class-conditional
  one), in eval batches, drawn from random stream `stream` (random_streams.STREAMS) of eval.seed: a
  list of host dicts."""
  e = config.eval
  sampler = eval_sampler(experiment, config)
  def generated_batch(p, r, obs, n):  # named: compile logs and profiles show this name
    return sampler.sample(p, r, n, observed=obs)

  jitted = jax.jit(generated_batch, static_argnums=(3,))
  rng, out = random_streams.key(e.seed, stream), []
  for i, observed in enumerate(_generation_conditions(experiment, config, e.num_generated)):
    n = min(e.batch_size, e.num_generated - i * e.batch_size)
    out.append(fetch(jitted(params, jax.random.fold_in(rng, i), observed, n)))
  return out


def masked_test_images(config, images: np.ndarray, *, ratio: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Test images (B, H, W, C) with `ratio` of each one's 4x4 cells hidden (drawn in turn from `rng`)
  and filled as config.data says, as in training. Returns (masked images, mask (B, H, W, 1), 1 =
  missing)."""
  mask = derived.square_masks(images.shape, ratios=np.full(len(images), ratio),
                              rngs=[rng] * len(images))
  return derived.mask_out(images, mask, fill_value=config.data.mask_fill_value,
                          fill_pattern=config.data.mask_fill_pattern), mask


def conditions_of(experiment, batch) -> dict[str, np.ndarray]:
  """The values of a class-conditional model's conditions in a test batch ({} for other models):
  they must be observed whenever the model samples."""
  return {s.name: batch[s.feature] for s in experiment.specs if s.is_condition}


def conditional_sampler(experiment, params, config):
  """A jitted sample(rng, {name: observed value}) (one eval batch)."""
  sampler = eval_sampler(experiment, config)
  # params is an argument, not a closed-over constant (with several processes it spans all of them).
  def sample_given_observed(p, r, obs):  # named: compile logs and profiles show this name
    return sampler.sample(p, r, next(iter(obs.values())).shape[0], observed=obs)

  sample = jax.jit(sample_given_observed)
  return lambda r, observed: fetch(sample(params, r, observed))


def with_bootstrap(name: str, values, **extra) -> dict[str, Any]:
  """{name: mean of per-example values, name_examples: their number, "bootstrap": {name: replicates},
  **extra}."""
  values = np.asarray(values, np.float64)
  return {name: float(np.mean(values)), f"{name}_examples": len(values),
          "bootstrap": {name: metrics.bootstrap_mean(values)}, **extra}


def merge_results(*parts: dict[str, Any]) -> dict[str, Any]:
  """Merges evaluator result dicts, their "bootstrap" entries included."""
  merged, replicates = {}, {}
  for part in parts:
    part = dict(part)
    replicates.update(part.pop("bootstrap", {}))
    merged.update(part)
  return {**merged, "bootstrap": replicates} if replicates else merged


def inpainting_scores(experiment, config, inpaint, prefix: str) -> dict[str, Any]:
  """Masked-region PSNR and LPIPS (known region composited) per mask ratio of config.eval.mask_ratios,
  on the same test images and masks for every method.

  Args:
    inpaint: (rng, batch, masked images (B, H, W, C) with the hole filled as config.data says,
      mask (B, H, W, 1), 1 = missing) -> inpainted images (B, H, W, C).
    prefix: the metrics' names start with it ("inpainting", "inpainting_sdedit", ...).
  """
  parts = []
  for ratio in config.eval.mask_ratios:
    rng = np.random.default_rng([config.eval.seed, int(round(100 * ratio))])
    psnr, lpips = [], []
    for i, (batch, _) in enumerate(test_batches(config, config.eval.num_examples)):
      images = batch[experiment.specs[0].feature]
      masked_images, mask = masked_test_images(config, images, ratio=ratio, rng=rng)
      rng_i = jax.random.fold_in(random_streams.key(config.eval.seed, "inpainting"), i)
      out = np.asarray(inpaint(rng_i, batch, masked_images, mask))
      psnr.append(metrics.masked_psnr(out, images, mask))
      lpips.append(metrics.masked_lpips(out, images, mask))
    parts.append(with_bootstrap(f"{prefix}/psnr@{ratio:g}", np.concatenate(psnr)))
    parts.append(with_bootstrap(f"{prefix}/lpips@{ratio:g}", np.concatenate(lpips)))
  return merge_results(*parts)


def image_set_scores(experiment, config, generated: np.ndarray, prefix: str = "") -> dict[str, Any]:
  """Generated images (N, H, W, C) vs the first N test images: Fréchet AlexNet distance (with
  bootstrap replicates), improved precision/recall, and the background grain of both sets
  (metrics.background_grain; the generated one with bootstrap replicates)."""
  base = experiment.specs[0]
  real = np.concatenate([b[base.feature] for b, _ in test_batches(config, len(generated))])
  fake_features = features.alexnet_features(generated)
  real_features = features.alexnet_features(real)
  pr = metrics.precision_recall(real_features, fake_features)
  distance, grain = f"{prefix}frechet_alexnet_distance", f"{prefix}background_grain"
  grains = {name: g[np.isfinite(g)]  # images without background pixels have no grain
            for name, g in ((grain, metrics.background_grain(generated)),
                            (f"{grain}_test", metrics.background_grain(real)))}
  return merge_results(
      {distance: metrics.frechet_distance(real_features, fake_features),
       f"{prefix}precision": pr.precision, f"{prefix}recall": pr.recall,
       f"{prefix}generated_examples": len(fake_features),
       f"{distance}_examples": [len(fake_features), len(real_features)],
       "bootstrap": {distance: metrics.bootstrap_frechet(real_features, fake_features)}},
      *(with_bootstrap(name, g) for name, g in grains.items() if len(g)))


BOOTSTRAP_KEY = "eval/bootstrap"


def _write_json(path, value) -> None:
  """Replaces the file at `path` atomically with `value` as JSON (process 0 only)."""
  if jax.process_index() == 0:
    replace_file(path, json.dumps(value, indent=1))


def save_eval_metrics(workdir: str, step: int, results: dict[str, Any], *,
                      name: str = "eval_metrics") -> dict[str, Any]:
  """Merges `results` into WORKDIR/<name>.json, and its bootstrap replicates (BOOTSTRAP_KEY) into
  WORKDIR/<name>.bootstrap.json (each replaced if it was for another step); returns the merged
  metrics. Process 0 writes; the files are replaced atomically."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  results = dict(results)
  replicates = results.pop(BOOTSTRAP_KEY, {})
  path = epath.Path(workdir) / f"{name}.json"
  with merging(path):  # another evaluation of this workdir may be merging into the same files
    return _merge_eval_metrics(path, step, results, replicates)


def _merge_eval_metrics(path, step: int, results: dict[str, Any],
                        replicates: dict[str, Any]) -> dict[str, Any]:
  name = path.name.removesuffix(".json")
  if replicates:
    bootstrap_path = path.parent / f"{name}.bootstrap.json"
    stored = json.loads(bootstrap_path.read_text()) if bootstrap_path.exists() else {}
    if stored.get("step") != step:
      stored = {}
    _write_json(bootstrap_path, {**stored, "step": step, **replicates})
  merged = json.loads(path.read_text()) if path.exists() else {}
  if merged.get("step") != step:
    merged = {}
  evaluated = list(dict.fromkeys([*merged.get("eval/evaluated", []),
                                  *results.get("eval/evaluated", [])]))
  merged.update({"step": step, **results, "eval/evaluated": evaluated})
  for name in results.get("eval/evaluated", []):  # measured now: drop an earlier call's skip note
    merged.pop(f"eval/{name}_skipped", None)
  _write_json(path, merged)
  return merged



