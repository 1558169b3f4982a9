"""Evaluators: each measures one capability of a trained model on the pinned test split.

Counts, sampler and seed come from config.eval, so numbers are comparable across runs. An evaluator
applies only to experiments that have the modality it needs.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmdiff_jax.data import derived, pipeline
from mmdiff_jax.evaluation import features, metrics

SPLIT = "test"


def _test_batches(config, num_examples: int):
  """(batch, count) pairs covering the first `num_examples` test examples, in stored order."""
  e = config.eval
  iterator = pipeline.make_iterator(config.data, split=SPLIT, global_batch_size=e.batch_size,
                                    seed=e.seed, shuffle=False, num_epochs=1, drop_remainder=False,
                                    read_threads=0)
  seen = 0
  for batch in iterator:
    if seen >= num_examples:
      return
    take = min(len(batch["image"]), num_examples - seen)
    yield {k: v[:take] for k, v in batch.items()}, take
    seen += take


def _host(tree):
  """numpy copies of the sampler's outputs on every process (with several processes they are global
  arrays spread over all of them: every process runs the evaluators, and gathers)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def _spec(experiment, kind):
  return next((s for s in experiment.specs if s.kind == kind), None)


def _conditional(experiment, params, config, observed_name: str):
  """A jitted sample(rng, observed value) with one modality observed."""
  sampler = experiment.sampler(config.eval.sampler, config.eval.num_steps)
  # params is an argument, not a closed-over constant (with several processes it spans all of them).
  sample = jax.jit(lambda p, r, x: sampler.sample(p, r, x.shape[0], observed={observed_name: x}))
  return lambda r, x: _host(sample(params, r, x))


def label_accuracy(experiment, params, config) -> dict[str, float]:
  """Image -> label through the joint model: the test image is observed, the label generated."""
  base, label = experiment.specs[0], _spec(experiment, "label")
  sample = _conditional(experiment, params, config, base.name)
  rng, correct, total = jax.random.PRNGKey(config.eval.seed), 0, 0
  for i, (batch, count) in enumerate(_test_batches(config, config.eval.num_examples)):
    out = sample(jax.random.fold_in(rng, i), batch[base.feature])
    correct += int(np.sum(np.asarray(out[label.name]) == batch[label.feature]))
    total += count
  return {f"{label.name}_accuracy": correct / max(total, 1), f"{label.name}_accuracy_examples": total}


def segmentation_miou(experiment, params, config) -> dict[str, float]:
  """Image -> segmentation through the joint model: mIoU of the generated map vs the test map."""
  base, seg = experiment.specs[0], _spec(experiment, "segmentation")
  sample = _conditional(experiment, params, config, base.name)
  rng, predicted, target = jax.random.PRNGKey(config.eval.seed), [], []
  for i, (batch, _) in enumerate(_test_batches(config, config.eval.num_examples)):
    predicted.append(np.asarray(sample(jax.random.fold_in(rng, i), batch[base.feature])[seg.name]))
    target.append(batch[seg.feature])
  predicted, target = np.concatenate(predicted), np.concatenate(target)
  return {f"{seg.name}_miou": metrics.mean_iou(predicted, target, seg.num_classes),
          f"{seg.name}_miou_examples": len(target)}


def inpainting(experiment, params, config) -> dict[str, float]:
  """Masked image -> image: masked-region PSNR and LPIPS (known region composited) per mask ratio."""
  base, masked = experiment.specs[0], _spec(experiment, "masked_image")
  sample = _conditional(experiment, params, config, masked.name)
  results = {}
  for ratio in config.eval.mask_ratios:
    rng = np.random.default_rng([config.eval.seed, int(round(100 * ratio))])
    psnr, lpips = [], []
    for i, (batch, _) in enumerate(_test_batches(config, config.eval.num_examples)):
      images = batch[base.feature]
      mask = derived.square_masks(images.shape, ratios=np.full(len(images), ratio), rng=rng)
      masked_images = np.where(mask > 0, 0.0, images).astype(np.float32)
      out = np.asarray(sample(jax.random.fold_in(jax.random.PRNGKey(config.eval.seed), i),
                              masked_images)[base.name])
      psnr.append(metrics.masked_psnr(out, images, mask))
      lpips.append(metrics.masked_lpips(out, images, mask))
    results[f"inpainting/psnr@{ratio:g}"] = float(np.mean(np.concatenate(psnr)))
    results[f"inpainting/lpips@{ratio:g}"] = float(np.mean(np.concatenate(lpips)))
  return results


def generation(experiment, params, config) -> dict[str, float]:
  """Joint samples vs test images: Fréchet AlexNet distance and improved precision/recall."""
  base = experiment.specs[0]
  sampler = experiment.sampler(config.eval.sampler, config.eval.num_steps)
  jitted = jax.jit(sampler.sample, static_argnums=(2,))
  sample = lambda *args: _host(jitted(*args))
  e, rng = config.eval, jax.random.PRNGKey(config.eval.seed + 1)
  generated = [np.asarray(sample(params, jax.random.fold_in(rng, i), min(e.batch_size, e.num_generated
                                                                        - i * e.batch_size))[base.name])
               for i in range(math.ceil(e.num_generated / e.batch_size))]
  real = np.concatenate([b[base.feature] for b, _ in _test_batches(config, e.num_generated)])
  fake_features = features.alexnet_features(np.concatenate(generated))
  real_features = features.alexnet_features(real)
  pr = metrics.precision_recall(real_features, fake_features)
  return {"frechet_alexnet_distance": metrics.frechet_distance(real_features, fake_features),
          "precision": pr.precision, "recall": pr.recall, "generated_examples": len(fake_features)}


def embedding_consistency(experiment, params, config) -> dict[str, float]:
  """Joint samples: cosine similarity between the generated embedding and the embedding of the
  generated image (the same AlexNet features the data pipeline derives)."""
  base, emb = experiment.specs[0], _spec(experiment, "embedding")
  sampler = experiment.sampler(config.eval.sampler, config.eval.num_steps)
  jitted = jax.jit(sampler.sample, static_argnums=(2,))
  sample = lambda *args: _host(jitted(*args))
  e, rng, cosines = config.eval, jax.random.PRNGKey(config.eval.seed + 3), []
  for i in range(math.ceil(e.num_generated / e.batch_size)):
    out = sample(params, jax.random.fold_in(rng, i), min(e.batch_size, e.num_generated - i * e.batch_size))
    of_image = derived.alexnet_embedding({"image": np.asarray(out[base.name])}, None)["embedding"]
    cosines.append(metrics.cosine_similarity(np.asarray(out[emb.name]), of_image))
  cosines = np.concatenate(cosines)
  return {f"{emb.name}_cosine": float(np.mean(cosines)), f"{emb.name}_cosine_examples": len(cosines)}


def bound(experiment, params, config) -> dict[str, float]:
  """The variational bound's terms on test batches (one uniform t per example), in bits/dim."""
  objective = jax.jit(lambda p, b, r: experiment.objective()(p, b, r, train=False)[1])
  rng, totals, count = jax.random.PRNGKey(config.eval.seed + 2), {}, 0
  for i, (batch, n) in enumerate(_test_batches(config, config.eval.bound_batches * config.eval.batch_size)):
    values = _host(objective(params, batch, jax.random.fold_in(rng, i)))
    for k, v in values.items():
      if k.startswith("bound/"):
        totals[k] = totals.get(k, 0.0) + float(v) * n
    count += n
  return {f"test_{k}": v / count for k, v in totals.items()}


# name -> (the modality kind it needs, or None for any experiment; the evaluator)
EVALUATORS: dict[str, tuple[str | None, Callable[..., dict[str, Any]]]] = {
    "label_accuracy": ("label", label_accuracy),
    "segmentation_miou": ("segmentation", segmentation_miou),
    "inpainting": ("masked_image", inpainting),
    "embedding_consistency": ("embedding", embedding_consistency),
    "generation": (None, generation),
    "bound": (None, bound),
}
EVALUATOR_NAMES = tuple(EVALUATORS)


def run_evaluators(experiment, params, config, names=EVALUATOR_NAMES) -> dict[str, Any]:
  """Runs the named evaluators that apply to this experiment; returns {"eval/<metric>": value}."""
  results = {}
  for name in names:
    kind, evaluate = EVALUATORS[name]
    if kind is None or _spec(experiment, kind) is not None:
      results.update({f"eval/{k}": v for k, v in evaluate(experiment, params, config).items()})
  return results
