"""Samplers: shapes, determinism, closed-form steps, and any-subset conditioning."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import imglabel
from mmdiff_jax.diffusion import process
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.models.mtdiffusion import MTDiffusion
from mmdiff_jax.sampling.samplers import ddim_timesteps
from mmdiff_jax.training import state as state_lib

B = 3


@pytest.fixture(scope="module")
def setup():
  config = imglabel.get_config("smoke")
  experiment = build_experiment(config)
  batch = {k: jnp.zeros(v.shape, v.dtype)
           for k, v in state_lib.example_batch(experiment.model, B).items()}
  variables = experiment.model.init(jax.random.PRNGKey(0), batch, batch["image"],
                                    jnp.ones((B,), jnp.int32), method=MTDiffusion.initialize)
  params = nn.meta.unbox(variables)["params"]
  # Non-zero label-head output so that predicted and true encodings differ clearly.
  head = params["heads_label"]["Dense_1"]
  head["kernel"] = jax.random.normal(jax.random.PRNGKey(1), head["kernel"].shape)
  return experiment, params


def test_ddim_timesteps():
  np.testing.assert_array_equal(ddim_timesteps(100, 5), [100, 75, 50, 26, 1, 0])
  np.testing.assert_array_equal(ddim_timesteps(4, 4), [4, 3, 2, 1, 0])
  # one step goes from T to the end, like any other count
  np.testing.assert_array_equal(ddim_timesteps(1000, 1), [1000, 0])
  with pytest.raises(ValueError, match="sampling.sampler_steps"):
    ddim_timesteps(10, 11)


@pytest.mark.parametrize("method,steps", [("ddim", 4), ("ancestral", 0)])
def test_shapes_and_determinism(setup, method, steps):
  experiment, params = setup
  sampler = experiment.sampler(method, steps)
  sample = jax.jit(sampler.sample, static_argnums=(2,))
  a = sample(params, jax.random.PRNGKey(0), B)
  assert a["image"].shape == (B, 28, 28, 1) and a["image"].dtype == jnp.float32
  assert a["label"].shape == (B,) and a["label"].dtype == jnp.int32
  assert a["label_logits"].shape == (B, 10)
  assert float(jnp.max(jnp.abs(a["image"]))) <= 1.0
  b = sample(params, jax.random.PRNGKey(0), B)
  c = sample(params, jax.random.PRNGKey(1), B)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.allclose(a["image"], c["image"])


def test_unknown_sampler_and_modality(setup):
  experiment, params = setup
  with pytest.raises(ValueError, match="sampling.sampler"):
    experiment.sampler("euler", 10)
  with pytest.raises(ValueError, match="unknown modalities"):
    experiment.sampler("ddim", 2).sample(params, jax.random.PRNGKey(0), B, observed={"text": 1})


def test_observed_values_of_another_batch_size_are_named(setup):
  experiment, params = setup
  sampler = experiment.sampler("ddim", 2)
  with pytest.raises(ValueError, match=r"observed\['label'\]: shape \(5,\); expected a leading batch "
                                       r"size of 3"):
    sampler.sample(params, jax.random.PRNGKey(0), B, observed={"label": jnp.zeros((5,), jnp.int32)})


def test_the_inpainting_baselines_run_with_sampled_label_feedback(setup):
  """SDEdit and known-region replacement on a model with a label, feeding back sampled labels
  (which need a key at every step)."""
  from mmdiff_jax.sampling import inpainting  # pylint: disable=import-outside-toplevel
  experiment, params = setup
  sampler = experiment.sampler("ddim", 2, categorical_feedback="sampled")
  images = jax.random.uniform(jax.random.PRNGKey(2), (B, 28, 28, 1), minval=-1.0, maxval=1.0)
  mask = jnp.zeros((B, 28, 28, 1)).at[:, 7:21, 7:21].set(1.0)
  for out in (inpainting.sdedit(sampler, params, jax.random.PRNGKey(0), images, t0_fraction=0.5),
              inpainting.known_region_replacement(sampler, params, jax.random.PRNGKey(0), images,
                                                  mask)):
    assert out.shape == images.shape and bool(jnp.all(jnp.isfinite(out)))


def test_replacement_noises_the_known_region_with_the_steps_encodings(setup, monkeypatch):
  """Known-region replacement on a model with an unobserved label: the known pixels of z_s are noised
  with the label encoding the model predicted at that step, the one the generated region uses, not a
  zero encoding (which would mix two forward processes in one z_s)."""
  from mmdiff_jax.sampling import inpainting, samplers  # pylint: disable=import-outside-toplevel
  experiment, params = setup
  sampler = experiment.sampler("ddim", 3)
  predicted, noised_with = [], []
  predict, noised = samplers.Sampler.predict, inpainting._noised

  def recording_predict(self, *args, **kwargs):
    out = predict(self, *args, **kwargs)
    predicted.append(np.asarray(out[2]))
    return out

  def recording_noised(sampler_, x, s, encodings, noise):
    noised_with.append((int(s), np.asarray(encodings)))
    return noised(sampler_, x, s, encodings, noise)

  monkeypatch.setattr(samplers.Sampler, "predict", recording_predict)
  monkeypatch.setattr(inpainting, "_noised", recording_noised)
  images = jax.random.uniform(jax.random.PRNGKey(2), (B, 28, 28, 1), minval=-1.0, maxval=1.0)
  mask = jnp.zeros((B, 28, 28, 1)).at[:, 7:21, 7:21].set(1.0)
  with jax.disable_jit():
    inpainting.known_region_replacement(sampler, params, jax.random.PRNGKey(0), images, mask)
  assert len(predicted) == len(noised_with) == 3
  for (s, encodings), step_encodings in zip(noised_with, predicted):
    np.testing.assert_array_equal(encodings, step_encodings)
    if s > 0:  # at s = 0 the known pixels are the observation itself
      assert float(np.abs(encodings).max()) > 1e-3


def test_observed_label_uses_true_encoding(setup):
  experiment, params = setup
  sampler = experiment.sampler("ddim", 4)
  labels = jnp.array([0, 4, 9])
  observed = sampler._observed_encodings(params, {"label": labels})
  true = experiment.model.apply({"params": params}, {"label": labels}, B,
                                method=MTDiffusion.encode)[0]
  np.testing.assert_array_equal(observed[0], true)
  z_t = jax.random.normal(jax.random.PRNGKey(2), (B, 28, 28, 1))
  _, _, used, outputs = sampler.predict(params, z_t, 50, observed, None)
  np.testing.assert_array_equal(used[0], true)
  _, _, free, _ = sampler.predict(params, z_t, 50, {}, None)
  predicted = experiment.model.apply({"params": params}, outputs, B,
                                     method=MTDiffusion.encode_predictions)
  np.testing.assert_allclose(free, predicted, rtol=1e-6)
  assert not np.allclose(free[0], true, atol=1e-2)

  # End to end: the label comes back as given, and it changes the image drawn with the same noise
  # (unclipped: an untrained model's z0-hat would saturate at +-1).
  sampler = experiment.sampler("ddim", 4, clip_denoised=False)
  sample = jax.jit(lambda y: sampler.sample(params, jax.random.PRNGKey(0), B, observed={"label": y}))
  first, second = sample(labels), sample(jnp.array([5, 5, 5]))
  np.testing.assert_array_equal(first["label"], labels)
  assert not np.allclose(first["image"], second["image"])


def test_observed_image_is_kept(setup):
  experiment, params = setup
  images = jax.random.uniform(jax.random.PRNGKey(3), (B, 28, 28, 1), minval=-1, maxval=1)
  out = experiment.sampler("ddim", 3).sample(params, jax.random.PRNGKey(0), B,
                                             observed={"image": images})
  np.testing.assert_array_equal(out["image"], images)
  assert out["label"].shape == (B,)


def test_steps_match_closed_forms(setup):
  """With the true z0 and noise, DDIM (eta = 0) lands on the marginal draw with that noise, and the
  ancestral step is a posterior draw."""
  experiment, _ = setup
  schedule, weights = experiment.schedule, experiment.weights
  keys = jax.random.split(jax.random.PRNGKey(4), 4)
  z0 = jax.random.uniform(keys[0], (B, 28, 28, 1), minval=-1, maxval=1)
  enc = jax.random.normal(keys[1], (1, B, 28, 28, 1))
  eps = jax.random.normal(keys[2], z0.shape)
  noise = jax.random.normal(keys[3], z0.shape)
  t, s = 60, 35
  tv, sv = jnp.full((B,), t), jnp.full((B,), s)
  z_t = process.sample_marginal(schedule, weights, t=tv, z0=z0, encodings=enc, noise=eps)
  ddim = experiment.sampler("ddim", 10)
  z_s = ddim.step(z0, eps, enc, z_t, jnp.int32(t), jnp.int32(s), noise)
  np.testing.assert_allclose(z_s, process.sample_marginal(schedule, weights, t=sv, z0=z0, encodings=enc, noise=eps),
                             atol=2e-5)
  np.testing.assert_allclose(ddim.step(z0, eps, enc, z_t, jnp.int32(t), jnp.int32(0), noise), z0)
  ancestral = experiment.sampler("ancestral", 0)
  z_prev = ancestral.step(z0, eps, enc, z_t, jnp.int32(t), jnp.int32(t - 1), noise)
  mean, var = process.posterior(schedule, weights, t=tv, z_t=z_t, z0=z0, encodings=enc)
  np.testing.assert_allclose(z_prev, mean + jnp.sqrt(var) * noise, atol=1e-6)
