"""The evaluator `label_accuracy_by_bound`, found by this file's name (evaluators/__init__.py).

Image -> label through the joint model's variational bound instead of its sampler: the prediction is
the class c whose pair (test image, c) has the lowest estimated bound on -log p(image, label), the
model's most probable label (p(c | image) is proportional to p(image, c)). Each pair's bound is
estimated from config.eval.label_bound_draws draws of (t, noise) (at most T), one per stratum of
1..T, and every class sees the same draws, so that the classes' differences decide rather than the
draws (as diffusion classifiers do). Two accuracies come from the same passes: with the whole bound,
and with the image's terms alone (prior, diffusion, data; without the label's recovery term, which a
pair built with c tends to satisfy whatever the image). It costs num_classes x draws passes of the
network per test image (30 draws: 15 minutes for 2000 images of imglabel:small on 2 CPU cores), so it
runs only where named (`evaluate --evaluators=label_accuracy_by_bound`, or in
config.eval.after_training).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmdiff_jax import random_streams
from mmdiff_jax.evaluation import harness
from mmdiff_jax.evaluation.evaluators import Evaluator
from mmdiff_jax.multihost import fetch

IMAGE_TERMS = ("bound/prior", "bound/diffusion", "bound/data")


def stratum_draw(rng: jax.Array, k, *, draws: int, num_timesteps: int, shape, dtype):
  """Draw k of `draws`: (t (B,) uniform in the k-th of `draws` strata of 1..T, noise `shape`, the
  stratum's share of 1..T). shape: (B, *z_shape)."""
  low, high = 1 + k * num_timesteps // draws, 1 + (k + 1) * num_timesteps // draws
  t_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, k))
  t = jax.random.randint(t_rng, shape[:1], low, high)
  return t, jax.random.normal(noise_rng, shape, dtype), (high - low) / num_timesteps


def class_bounds(objective, params, batch, rng: jax.Array, *, label_feature: str, num_classes: int,
                 draws: int) -> jnp.ndarray:
  """Per test example and class, the estimated bound in nats: (B, num_classes, 2), [..., 0] the
  whole bound, [..., 1] its image terms alone.

  Draw k (stratum_draw) weighs its terms (each the objective's T x the term at its t) by its
  stratum's share of 1..T, so that the sum estimates the bound.
  """
  z0 = batch[objective.model.specs[0].feature]
  batch_size, num_timesteps = z0.shape[0], objective.schedule.num_timesteps

  def one_draw(k):
    t, noise, share = stratum_draw(rng, k, draws=draws, num_timesteps=num_timesteps, shape=z0.shape,
                                   dtype=z0.dtype)

    def one_class(c):
      labels = jnp.full((batch_size,), c, batch[label_feature].dtype)
      terms = objective.per_example(params, {**batch, label_feature: labels}, t=t, noise=noise,
                                    dropout_rng=rng, train=False)
      image = sum(terms[name] for name in IMAGE_TERMS)
      return jnp.stack([image + terms["bound/recovery"], image], axis=-1)

    return share * jax.lax.map(one_class, jnp.arange(num_classes))

  return jnp.moveaxis(jax.lax.map(one_draw, jnp.arange(draws)).sum(axis=0), 0, 1)


def label_accuracy_by_bound(experiment, params, config) -> dict[str, float]:
  """The accuracy of the lowest-bound class, with the whole bound and with its image terms."""
  label = harness.spec_of(experiment, "label")
  objective = experiment.objective()

  def bounds(p, b, r):  # named: compile logs and profiles show this name
    return class_bounds(objective, p, b, r, label_feature=label.feature,
                        num_classes=label.num_classes,
                        draws=min(config.eval.label_bound_draws, experiment.schedule.num_timesteps))

  bounds = jax.jit(bounds)
  rng, whole, image = random_streams.key(config.eval.seed, "label_by_bound"), [], []
  for i, (batch, _) in enumerate(harness.test_batches(config, config.eval.num_examples)):
    predicted = np.argmin(fetch(bounds(params, batch, jax.random.fold_in(rng, i))), axis=1)
    whole.append(predicted[:, 0] == batch[label.feature])
    image.append(predicted[:, 1] == batch[label.feature])
  return harness.merge_results(
      harness.with_bootstrap(f"{label.name}_accuracy_by_bound", np.concatenate(whole)),
      harness.with_bootstrap(f"{label.name}_accuracy_by_image_bound", np.concatenate(image)))


EVALUATOR = Evaluator(name="label_accuracy_by_bound", evaluate=label_accuracy_by_bound,
                      needs="label", generative=True, only_when_named=True)
