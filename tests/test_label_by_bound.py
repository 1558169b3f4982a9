"""Image -> label through the joint model's bound (evaluators/label_accuracy_by_bound.py): the
objective's per-example terms, the stratified draws of t, and the classes' bound estimates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from configs import imglabel
from mmdiff_jax.evaluation import evaluators, harness
from mmdiff_jax.evaluation.evaluators import label_accuracy_by_bound as by_bound
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import state as state_lib


def _smoke(batch_size=3):
  """(experiment, params, a batch of random images with labels 0, 1, 2, ...)."""
  experiment = build_experiment(imglabel.get_config("smoke"))
  model = experiment.model
  batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in state_lib.example_batch(model, batch_size).items()}
  params = model.init(jax.random.PRNGKey(0), batch, batch["image"], jnp.ones((batch_size,), jnp.int32),
                      method="initialize")["params"]
  batch["image"] = jax.random.uniform(jax.random.PRNGKey(1), batch["image"].shape, minval=-1, maxval=1)
  batch["label"] = jnp.arange(batch_size, dtype=batch["label"].dtype)
  return experiment, params, batch


def test_the_objective_is_the_mean_of_its_per_example_terms_at_its_draws():
  experiment, params, batch = _smoke()
  objective, rng = experiment.objective(), jax.random.PRNGKey(2)
  _, means = objective(params, batch, rng, train=False)
  t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  t = jax.random.randint(t_rng, (3,), 1, experiment.schedule.num_timesteps + 1)
  noise = jax.random.normal(noise_rng, batch["image"].shape)
  terms = objective.per_example(params, batch, t=t, noise=noise, dropout_rng=dropout_rng, train=False)
  assert set(terms) == set(means)
  for name, values in terms.items():
    assert values.shape == (3,), name
    np.testing.assert_allclose(np.mean(values), means[name], rtol=1e-5, err_msg=name)
  # t decides: the same pairs at other steps give other terms
  other = objective.per_example(params, batch, t=t % 50 + 1, noise=noise, dropout_rng=dropout_rng,
                                train=False)
  assert not np.allclose(other["bound/diffusion"], terms["bound/diffusion"])


def test_stratified_draws_cover_their_strata_and_their_shares_sum_to_one():
  draws, num_timesteps = 4, 10
  strata = [(1, 3), (3, 6), (6, 8), (8, 11)]  # [1 + k*10//4, 1 + (k+1)*10//4)
  shares = []
  for k, (low, high) in enumerate(strata):
    seen = set()
    for seed in range(40):
      t, noise, share = by_bound.stratum_draw(jax.random.PRNGKey(seed), k, draws=draws,
                                              num_timesteps=num_timesteps, shape=(8, 2, 2, 1),
                                              dtype=jnp.float32)
      seen |= set(np.asarray(t).tolist())
      assert noise.shape == (8, 2, 2, 1)
    assert seen == set(range(low, high)), k
    shares.append(share)
  np.testing.assert_allclose(shares, [(h - l) / num_timesteps for l, h in strata])
  assert sum(shares) == 1.0


def test_class_bounds_with_a_draw_per_step_are_the_mean_over_every_step():
  """draws = T: draw k is t = k + 1 exactly, so each class's estimate is the average over
  t = 1..T of the objective's terms (each T x the term at t): the bound summed over every step."""
  experiment, params, batch = _smoke()
  objective, rng = experiment.objective(), jax.random.PRNGKey(3)
  num_timesteps, num_classes = experiment.schedule.num_timesteps, 3  # the first 3 of 10: quicker
  got = np.asarray(jax.jit(lambda p, b: by_bound.class_bounds(
      objective, p, b, rng, label_feature="label", num_classes=num_classes,
      draws=num_timesteps))(params, batch))
  assert got.shape == (3, num_classes, 2)
  want = np.zeros((3, num_classes, 2))
  terms_at = jax.jit(lambda p, b, t, noise: objective.per_example(
      p, b, t=t, noise=noise, dropout_rng=rng, train=False))
  for k in range(num_timesteps):
    t, noise, _ = by_bound.stratum_draw(rng, k, draws=num_timesteps, num_timesteps=num_timesteps,
                                        shape=batch["image"].shape, dtype=jnp.float32)
    assert np.all(np.asarray(t) == k + 1)
    for c in range(num_classes):
      terms = terms_at(params, {**batch, "label": jnp.full((3,), c, jnp.int32)}, t, noise)
      image = sum(np.asarray(terms[n], np.float64) for n in by_bound.IMAGE_TERMS)
      want[:, c, 0] += (image + np.asarray(terms["bound/recovery"])) / num_timesteps
      want[:, c, 1] += image / num_timesteps
  np.testing.assert_allclose(got, want, rtol=2e-4)
  assert not np.allclose(got[:, 0], got[:, 1])  # the class changes the estimate


def test_the_evaluator_applies_to_joint_label_models_and_reports_both_accuracies(data_dir):
  config = imglabel.get_config("smoke")
  config.data.data_dir = data_dir
  config.eval.update(num_examples=12, batch_size=8, label_bound_draws=2)
  experiment, params, _ = _smoke()
  assert "label_accuracy_by_bound" in evaluators.applicable(experiment)
  results = evaluators.run_evaluators(experiment, params, config, ["label_accuracy_by_bound"])
  for name in ("label_accuracy_by_bound", "label_accuracy_by_image_bound"):
    assert results[f"eval/{name}_examples"] == 12
    assert 0.0 <= results[f"eval/{name}"] <= 1.0
    assert len(results[harness.BOOTSTRAP_KEY][f"eval/{name}"]) > 100


def test_it_runs_only_where_named():
  experiment = build_experiment(imglabel.get_config("smoke"))
  assert "label_accuracy_by_bound" in evaluators.applicable(experiment)
  assert "label_accuracy_by_bound" not in evaluators.to_run(experiment, None)
  assert "label_accuracy" in evaluators.to_run(experiment, None)
  assert evaluators.to_run(experiment, ["label_accuracy_by_bound", "segmentation_miou"]) == [
      "label_accuracy_by_bound"]
