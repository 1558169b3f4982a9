"""Evaluators: each measures one capability of a trained model on the pinned test split.

Counts, sampler and seed come from config.eval, so numbers are comparable across runs. An evaluator
applies only to experiments that have the modality it needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable

import jax
import numpy as np

from mmdiff_jax import random_streams
from mmdiff_jax.atomic_files import replace_file
from mmdiff_jax.data import derived, fashion_mnist, pipeline, sources
from mmdiff_jax.data import images as images_lib
from mmdiff_jax.errors import BadValueError
from mmdiff_jax.evaluation import metrics
from mmdiff_jax.models import alexnet_features as features
from mmdiff_jax.models.modalities import specs_from_config
from mmdiff_jax.multihost import fetch
from mmdiff_jax.sampling import inpainting as inpainting_lib


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


def _sampler(experiment, config):
  """The evaluators' sampler: config.eval's kind and steps, sampling's categorical feedback."""
  return experiment.sampler(config.eval.sampler, config.eval.sampler_steps,
                            categorical_feedback=config.sampling.categorical_feedback,
                            hard_feedback_fraction=config.sampling.hard_feedback_fraction)


def _spec(experiment, kind, *, conditions: bool = False):
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


def _generate(experiment, params, config, stream: str):
  """num_generated samples from the model (joint, or given the test labels for a class-conditional
  one), in eval batches, drawn from random stream `stream` (random_streams.STREAMS) of eval.seed: a
  list of host dicts."""
  e = config.eval
  sampler = _sampler(experiment, config)
  jitted = jax.jit(lambda p, r, obs, n: sampler.sample(p, r, n, observed=obs), static_argnums=(3,))
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


def _conditional(experiment, params, config):
  """A jitted sample(rng, {name: observed value}) (one eval batch)."""
  sampler = _sampler(experiment, config)
  # params is an argument, not a closed-over constant (with several processes it spans all of them).
  sample = jax.jit(lambda p, r, obs: sampler.sample(
      p, r, next(iter(obs.values())).shape[0], observed=obs))
  return lambda r, observed: fetch(sample(params, r, observed))


def _with_bootstrap(name: str, values, **extra) -> dict[str, Any]:
  """{name: mean of per-example values, name_examples: their number, "bootstrap": {name: replicates},
  **extra}."""
  values = np.asarray(values, np.float64)
  return {name: float(np.mean(values)), f"{name}_examples": len(values),
          "bootstrap": {name: metrics.bootstrap_mean(values)}, **extra}


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
  """Merges evaluator result dicts, their "bootstrap" entries included."""
  merged, replicates = {}, {}
  for part in parts:
    part = dict(part)
    replicates.update(part.pop("bootstrap", {}))
    merged.update(part)
  return {**merged, "bootstrap": replicates} if replicates else merged


def label_accuracy(experiment, params, config) -> dict[str, float]:
  """Image -> label through the joint model: the test image is observed, the label generated."""
  base, label = experiment.specs[0], _spec(experiment, "label")
  sample = _conditional(experiment, params, config)
  rng, correct = random_streams.key(config.eval.seed, "image_to_label"), []
  for i, (batch, _) in enumerate(test_batches(config, config.eval.num_examples)):
    out = sample(jax.random.fold_in(rng, i), {base.name: batch[base.feature]})
    correct.append(np.asarray(out[label.name]) == batch[label.feature])
  correct = np.concatenate(correct)
  return _with_bootstrap(f"{label.name}_accuracy", correct)


def segmentation_miou(experiment, params, config) -> dict[str, float]:
  """Image -> segmentation through the joint model: mIoU of the generated map vs the test map."""
  base, seg = experiment.specs[0], _spec(experiment, "segmentation")
  sample = _conditional(experiment, params, config)
  rng, predicted, target = random_streams.key(config.eval.seed, "image_to_segmentation"), [], []
  for i, (batch, _) in enumerate(test_batches(config, config.eval.num_examples)):
    predicted.append(np.asarray(sample(jax.random.fold_in(rng, i),
                                       {base.name: batch[base.feature]})[seg.name]))
    target.append(batch[seg.feature])
  predicted, target = np.concatenate(predicted), np.concatenate(target)
  kwargs = dict(num_classes=seg.num_classes, ignore_index=config.data.ignore_label)
  name = f"{seg.name}_miou"
  return {name: metrics.mean_iou(predicted, target, **kwargs), f"{name}_examples": len(target),
          "bootstrap": {name: metrics.bootstrap_mean_iou(predicted, target, **kwargs)}}


def _inpainting_scores(experiment, config, inpaint, prefix: str) -> dict[str, Any]:
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
      out = np.asarray(inpaint(jax.random.fold_in(random_streams.key(config.eval.seed, "inpainting"), i), batch,
                               masked_images, mask))
      psnr.append(metrics.masked_psnr(out, images, mask))
      lpips.append(metrics.masked_lpips(out, images, mask))
    parts.append(_with_bootstrap(f"{prefix}/psnr@{ratio:g}", np.concatenate(psnr)))
    parts.append(_with_bootstrap(f"{prefix}/lpips@{ratio:g}", np.concatenate(lpips)))
  return _merge(*parts)


def inpainting(experiment, params, config) -> dict[str, Any]:
  """Masked image -> image through the model (the masked image observed as a modality)."""
  base, masked = experiment.specs[0], _spec(experiment, "masked_image")
  sample = _conditional(experiment, params, config)
  return _inpainting_scores(experiment, config, lambda rng, batch, masked_images, mask: sample(
      rng, {masked.name: masked_images, **conditions_of(experiment, batch)})[base.name],
      "inpainting")


def inpainting_sdedit(experiment, params, config) -> dict[str, Any]:
  """SDEdit baseline (sampling/inpainting.py) on an image diffusion model without aggregated
  modalities: the masked image noised to t0 = eval.sdedit_t0_fraction of T and denoised, scored like
  `inpainting`."""
  sampler = _sampler(experiment, config)
  run = jax.jit(lambda p, r, x, obs: inpainting_lib.sdedit(
      sampler, p, r, x, t0_fraction=float(config.eval.sdedit_t0_fraction), observed=obs))
  return _inpainting_scores(experiment, config, lambda rng, batch, masked_images, mask: fetch(run(
      params, rng, masked_images, conditions_of(experiment, batch))), "inpainting_sdedit")


def inpainting_replacement(experiment, params, config) -> dict[str, Any]:
  """Known-region replacement baseline (RePaint-style; eval.replacement_resamples passes per step) on
  an image diffusion model without aggregated modalities, scored like `inpainting`."""
  sampler = _sampler(experiment, config)
  run = jax.jit(lambda p, r, x, m, obs: inpainting_lib.known_region_replacement(
      sampler, p, r, x, m, resamples=int(config.eval.replacement_resamples), observed=obs))
  return _inpainting_scores(experiment, config, lambda rng, batch, masked_images, mask: fetch(run(
      params, rng, masked_images, mask, conditions_of(experiment, batch))), "inpainting_replacement")


def _image_set_scores(experiment, config, generated: np.ndarray, prefix: str = "") -> dict[str, Any]:
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
  return _merge(
      {distance: metrics.frechet_distance(real_features, fake_features),
       f"{prefix}precision": pr.precision, f"{prefix}recall": pr.recall,
       f"{prefix}generated_examples": len(fake_features),
       f"{distance}_examples": [len(fake_features), len(real_features)],
       "bootstrap": {distance: metrics.bootstrap_frechet(real_features, fake_features)}},
      *(_with_bootstrap(name, g) for name, g in grains.items() if len(g)))


def generation(experiment, params, config) -> dict[str, Any]:
  """Joint samples (given the test labels for a class-conditional model) vs test images: Fréchet
  AlexNet distance and improved precision/recall."""
  base = experiment.specs[0]
  generated = [np.asarray(out[base.name]) for out in _generate(experiment, params, config, "generation")]
  return _image_set_scores(experiment, config, np.concatenate(generated))


def label_conditional(experiment, params, config, classify=None) -> dict[str, Any]:
  """Images generated given the test split's labels (the first eval.num_generated, in order: the
  test set's class balance), from any model with a label, aggregated (observed: its true encoding at
  every step) or a condition: Fréchet AlexNet distance, precision/recall, and, with `classify` (the
  classifier of eval.classifier_workdir, images (B, H, W, C) -> labels (B,)), the agreement of that
  independent classifier with the given labels.
  Sampled with the same seeds as `generation`, so a model that ignores its label scores alike."""
  base = experiment.specs[0]
  label = _spec(experiment, "label", conditions=True)
  e = config.eval
  sample = _conditional(experiment, params, config)
  rng, generated, given = random_streams.key(e.seed, "generation"), [], []
  for i, (batch, _) in enumerate(test_batches(config, e.num_generated)):
    out = sample(jax.random.fold_in(rng, i), {label.name: batch[label.feature]})
    generated.append(np.asarray(out[base.name]))
    given.append(batch[label.feature])
  generated, given = np.concatenate(generated), np.concatenate(given)
  parts = [_image_set_scores(experiment, config, generated, prefix="label_conditional/")]
  if classify is not None:
    agree = np.concatenate([classify(generated[i:i + e.batch_size])
                            for i in range(0, len(generated), e.batch_size)]) == given
    parts.append(_with_bootstrap("label_conditional/label_agreement", agree,
                                 classifier_workdir=str(e.classifier_workdir)))
  return _merge(*parts)


def segmentation_pair_agreement(images: np.ndarray, maps: np.ndarray,
                                num_classes: int) -> dict[str, float]:
  """How well generated maps fit their generated images, by the rule that derived the training maps.

  Args: images: float (B, H, W, 1) in [-1, 1]; maps: int (B, H, W), 0 = background, 1 + class.
  Returns: "pair_miou": mIoU between each map and the map derived from its image
  (derived.garment_segmentation) with the map's own majority foreground class (so both the garment's
  extent and the map's class consistency count); "pair_foreground_iou": IoU of map > 0 and the
  image's ink alone; "bootstrap": {"pair_miou": replicates over the pairs}.
  """
  maps = np.asarray(maps)
  counts = np.stack([np.sum(maps == c, axis=(1, 2)) for c in range(1, num_classes)], axis=1)
  classes = np.argmax(counts, axis=1).astype(np.int32)  # no foreground at all: class 0
  rederived = derived.garment_segmentation({"image": np.asarray(images), "label": classes},
                                           None)["segmentation"]
  return {"pair_miou": metrics.mean_iou(maps, rederived, num_classes),
          "pair_foreground_iou": float(metrics.per_class_iou(maps > 0, rederived > 0, 2)[1]),
          "bootstrap": {"pair_miou": metrics.bootstrap_mean_iou(maps, rederived, num_classes)}}


def segmentation_agreement(experiment, params, config) -> dict[str, float]:
  """Joint (image, map) samples: segmentation_pair_agreement of the generated pairs."""
  base, seg = experiment.specs[0], _spec(experiment, "segmentation")
  outs = _generate(experiment, params, config, "segmentation_pairs")
  agreement = segmentation_pair_agreement(np.concatenate([np.asarray(o[base.name]) for o in outs]),
                                          np.concatenate([np.asarray(o[seg.name]) for o in outs]),
                                          seg.num_classes)
  replicates = agreement.pop("bootstrap")
  return {**{f"{seg.name}_{k}": v for k, v in agreement.items()},
          f"{seg.name}_pair_examples": sum(len(o[seg.name]) for o in outs),
          **{f"{seg.name}_{k}_examples": sum(len(o[seg.name]) for o in outs) for k in replicates},
          "bootstrap": {f"{seg.name}_{k}": v for k, v in replicates.items()}}


def embedding_consistency(experiment, params, config) -> dict[str, float]:
  """Joint samples: cosine similarity between the generated embedding and the embedding of the
  generated image (features.image_embedding, as precomputed in the dataset, on the image cropped back
  to the dataset's stored size); beside it the same with the pairs shuffled, the level that says
  nothing about pairing (AlexNet's post-ReLU features share a positive mean direction: about 0.55
  for random pairs of test images, 0.71 within a class)."""
  base, emb = experiment.specs[0], _spec(experiment, "embedding")
  native_size = pipeline.native_image_size(config.data, config.data.eval_split)
  generated, of_images = [], []
  for out in _generate(experiment, params, config, "embedding_pairs"):
    generated.append(np.asarray(out[emb.name]))
    of_images.append(features.image_embedding(
        images_lib.native_images(np.asarray(out[base.name]), native_size=native_size)))
  generated, of_images = np.concatenate(generated), np.concatenate(of_images)
  cosines = metrics.cosine_similarity(generated, of_images)
  # Chance level: each generated embedding vs the embedding of another generated image.
  shuffled = metrics.cosine_similarity(generated, np.roll(of_images, 1, axis=0))
  return _with_bootstrap(f"{emb.name}_cosine", cosines,
                         **{f"{emb.name}_cosine_shuffled": float(np.mean(shuffled))})


def label_agreement(experiment, params, config, classify=None) -> dict[str, float]:
  """An independent classifier's label (`classify`: images (B, H, W, C) -> labels (B,), the classifier
  of eval.classifier_workdir) for each generated image vs the label generated with it (or, for a
  class-conditional model, the label it was given); plus the classifier's own test accuracy, and how
  far the generated labels' class frequencies, and those the classifier sees in the generated images,
  are from the test split's (total variation: 0 = the same balance)."""
  base = experiment.specs[0]
  label = _spec(experiment, "label", conditions=True)
  if classify is None:
    raise BadValueError("config.eval.classifier_workdir is not set: label agreement needs an "
                        "independent classifier; train one with configs/classifier.py:small and pass "
                        "--config.eval.classifier_workdir=DIR")
  predicted, generated = [], []
  for out in _generate(experiment, params, config, "label_agreement"):
    predicted.append(classify(np.asarray(out[base.name])))
    generated.append(np.asarray(out[label.name]))
  predicted_test, test_labels = [], []
  for batch, _ in test_batches(config, config.eval.num_examples):
    predicted_test.append(classify(batch[base.feature]))
    test_labels.append(batch[label.feature])
  generated, predicted, test_labels = (np.concatenate(generated), np.concatenate(predicted),
                                       np.concatenate(test_labels))
  balance = dict(reference_labels=test_labels, num_classes=label.num_classes)
  tv, tv_seen = f"{label.name}_class_balance_tv", f"{label.name}_class_balance_tv_seen_by_classifier"
  return _merge(
      _with_bootstrap(
          f"{label.name}_agreement", predicted == generated,
          **{"classifier_test_accuracy": metrics.label_agreement(np.concatenate(predicted_test),
                                                                 test_labels),
             "classifier_workdir": str(config.eval.classifier_workdir)}),
      {tv: metrics.class_frequency_distance(generated, **balance),
       tv_seen: metrics.class_frequency_distance(predicted, **balance),
       **{f"{name}_examples": [len(generated), len(test_labels)] for name in (tv, tv_seen)},
       "bootstrap": {tv: metrics.bootstrap_class_frequency_distance(generated, **balance),
                     tv_seen: metrics.bootstrap_class_frequency_distance(predicted, **balance)}})


def bound(experiment, params, config) -> dict[str, float]:
  """The variational bound's terms on test batches (one uniform t per example), as the objective
  logs them: per example, and image_bits_per_dim in bits per dimension."""
  objective = jax.jit(lambda p, b, r: experiment.objective()(p, b, r, train=False)[1])
  rng, totals, count = random_streams.key(config.eval.seed, "bound"), {}, 0
  for i, (batch, n) in enumerate(test_batches(config, config.eval.bound_batches * config.eval.batch_size)):
    values = fetch(objective(params, batch, jax.random.fold_in(rng, i)))
    for k, v in values.items():
      if k.startswith("bound/"):
        totals[k] = totals.get(k, 0.0) + float(v) * n
    count += n
  return {f"test_{k}": v / count for k, v in totals.items()}


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """needs: the modality kind the model must generate from an observation (None: any); generative:
  whether it samples from the model (so not for predictor baselines); conditions: whether a
  conditioning modality of that kind counts too; unavailable: config -> why it cannot run with this
  config (None: it can), recorded as "eval/<name>_skipped" instead of failing a run; image_only:
  whether it needs a model with no aggregated modality.

  `evaluate` returns {metric: value}, plus optionally "bootstrap": {metric: (R,) replicates} for the
  metrics that have bootstrap intervals (see run_evaluators), each with "<metric>_examples": the
  number of examples its replicates resample (metrics.bootstrap_indices), [generated, reference]
  for a two-sample metric; two runs' replicates pair only where these are equal."""
  evaluate: Callable[..., dict[str, Any]]
  needs: str | None = None
  generative: bool = False
  conditions: bool = False
  unavailable: Callable[[Any], str | None] = lambda config: None
  image_only: bool = False  # only for diffusion models without aggregated modalities (baselines)
  # Takes `classify`, eval.classifier_workdir's classifier (None where that is not set).
  uses_classifier: bool = False

  def applies(self, experiment) -> bool:
    if self.generative and not experiment.is_generative:
      return False
    if self.image_only and any(s.is_aggregated for s in experiment.specs):
      return False
    return self.needs is None or _spec(experiment, self.needs, conditions=self.conditions) is not None


EVALUATORS: dict[str, Evaluator] = {
    "label_accuracy": Evaluator(label_accuracy, needs="label"),
    "segmentation_miou": Evaluator(segmentation_miou, needs="segmentation"),
    "inpainting": Evaluator(inpainting, needs="masked_image"),
    "inpainting_sdedit": Evaluator(inpainting_sdedit, generative=True, image_only=True),
    "inpainting_replacement": Evaluator(inpainting_replacement, generative=True, image_only=True),
    "label_conditional": Evaluator(label_conditional, needs="label", generative=True,
                                   conditions=True, uses_classifier=True),
    "embedding_consistency": Evaluator(
        embedding_consistency, needs="embedding", generative=True,
        unavailable=lambda config:
        None if sources.unversioned_name(config.data.name) == fashion_mnist.EMBEDDING_NAME else
        f"compares with the AlexNet features of {fashion_mnist.EMBEDDING_NAME}'s embeddings; "
        f"data.name={config.data.name!r} has embeddings of its own"),
    "generation": Evaluator(generation, generative=True),
    "segmentation_agreement": Evaluator(
        segmentation_agreement, needs="segmentation", generative=True,
        unavailable=lambda config: None if "garment_segmentation" in config.data.derived else
        "defined for maps derived by garment_segmentation (config.data.derived) only"),
    "label_agreement": Evaluator(
        label_agreement, needs="label", generative=True, conditions=True, uses_classifier=True,
        unavailable=lambda config: None if config.eval.classifier_workdir else
        "config.eval.classifier_workdir is not set"),
    "bound": Evaluator(bound, generative=True),
}
EVALUATOR_NAMES = tuple(EVALUATORS)


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
  if replicates:
    bootstrap_path = epath.Path(workdir) / f"{name}.bootstrap.json"
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


def run_evaluators(experiment, params, config, names=EVALUATOR_NAMES, *,
                   classify=None) -> dict[str, Any]:
  """Runs the named evaluators that apply to this experiment; returns {"eval/<metric>": value},
  "eval/<metric>_ci95": [lower, upper] (95% percentile bootstrap interval over the evaluated
  examples) where the evaluator gives replicates, BOOTSTRAP_KEY: {"eval/<metric>": replicates} (written
  to eval_metrics.bootstrap.json by save_eval_metrics, for paired intervals of ratios between runs), and
  "eval/evaluated": the names of those that ran. One that cannot run with this config (e.g.
  label_agreement without config.eval.classifier_workdir) leaves its reason in "eval/<name>_skipped".
  classify: the independent classifier of config.eval.classifier_workdir (images (B, H, W, C) ->
  labels (B,); mmdiff_jax.training.restore.load_classifier), for the evaluators that use one.
  """
  results, evaluated, replicates = {}, [], {}
  for name in names:
    evaluator = EVALUATORS[name]
    if not evaluator.applies(experiment):
      continue
    reason = evaluator.unavailable(config)
    if reason:
      results[f"eval/{name}_skipped"] = reason
      continue
    extra = {"classify": classify} if evaluator.uses_classifier else {}
    values = dict(evaluator.evaluate(experiment, params, config, **extra))
    for metric, draws in values.pop("bootstrap", {}).items():
      if f"{metric}_examples" not in values:  # what the report checks before pairing two runs
        raise AssertionError(f"evaluator {name!r}: {metric!r} has bootstrap replicates but no "
                             f"{metric}_examples (the numbers of examples they resample)")
      replicates[f"eval/{metric}"] = [float(f"{x:.6g}") for x in np.asarray(draws)]
      results[f"eval/{metric}_ci95"] = list(metrics.percentile_interval(draws, point=values[metric]))
    results.update({f"eval/{k}": v for k, v in values.items()})
    evaluated.append(name)
  if replicates:
    results[BOOTSTRAP_KEY] = replicates
  return {**results, "eval/evaluated": evaluated} if results or evaluated else {}
