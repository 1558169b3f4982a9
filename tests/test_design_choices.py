"""The options for what the paper leaves open: how unobserved categorical modalities are fed back."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.sampling.samplers import Sampler, feedback_logits

from test_baselines import _config, _random_params


def test_feedback_logits():
  logits = jnp.log(jnp.asarray([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]))
  np.testing.assert_array_equal(feedback_logits(logits, mode="expected"), logits)
  np.testing.assert_array_equal(jax.nn.softmax(feedback_logits(logits, mode="argmax")),
                                [[0, 1, 0], [1, 0, 0]])
  draws = jax.vmap(lambda k: jax.nn.softmax(feedback_logits(logits, mode="sampled", key=k)))(
      jax.random.split(jax.random.PRNGKey(0), 4000))
  assert set(np.unique(np.asarray(draws))) <= {0.0, 1.0}
  # Class frequencies of the draws match the predicted probabilities (4000 draws: +-0.03).
  np.testing.assert_allclose(np.asarray(draws).mean(0), jax.nn.softmax(logits), atol=0.03)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    feedback_logits(logits, mode="sampled")
  with pytest.raises(ValueError, match="categorical_feedback: got 'soft'"):
    feedback_logits(logits, mode="soft")


@pytest.mark.parametrize("mode", ["expected", "argmax", "sampled"])
def test_sampler_feeds_back_the_chosen_code(mode):
  experiment = build_experiment(_config("imglabel"))
  params = _random_params(experiment)
  sampler = experiment.sampler("ddim", 3, categorical_feedback=mode)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, *experiment.model.z_shape))
  key = jax.random.PRNGKey(1)
  _, _, encodings, outputs = sampler.predict(params, z, 50, {}, None, key=key)
  logits = outputs["label"]
  expected = feedback_logits(logits, mode=mode,
                             key=jax.random.fold_in(key, 0) if mode == "sampled" else None)
  reference = experiment.model.apply({"params": params}, {**outputs, "label": expected}, 4,
                                     method=type(experiment.model).encode_predictions)
  np.testing.assert_allclose(encodings, reference, rtol=1e-6)
  if mode == "argmax":  # exactly the code of the most likely class
    code = experiment.model.apply({"params": params}, jnp.argmax(logits, -1),
                                  method=lambda m, y: m.encoders["label"].encode(y))
    np.testing.assert_allclose(encodings[0], code, rtol=1e-5, atol=1e-6)
  samples = sampler.sample(params, jax.random.PRNGKey(2), 4)
  assert samples["image"].shape == (4, *experiment.model.z_shape)
  with pytest.raises(ValueError, match="categorical_feedback"):
    Sampler(experiment.model, experiment.schedule, experiment.weights, categorical_feedback="soft")


def test_smooth_label_code_is_low_frequency_and_unit_rms():
  config = _config("imglabel")
  config.modalities.label.encoder = "smooth_categorical"
  experiment = build_experiment(config)
  params = _random_params(experiment)
  codes = np.asarray(experiment.model.apply(
      {"params": params}, jnp.arange(10), method=lambda m, y: m.encoders["label"].encode(y)))
  assert codes.shape == (10, 28, 28, 1)
  np.testing.assert_allclose(np.sqrt(np.mean(codes ** 2, axis=(1, 2, 3))), 1.0, rtol=1e-3)
  # Neighbouring pixels nearly agree (bilinear from 7x7), unlike the white-noise-like default code.
  def neighbour_correlation(x):
    return np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1]
  default = build_experiment(_config("imglabel"))
  white = np.asarray(default.model.apply(
      {"params": _random_params(default)}, jnp.arange(10),
      method=lambda m, y: m.encoders["label"].encode(y)))
  assert neighbour_correlation(codes) > 0.8 and abs(neighbour_correlation(white)) < 0.2
  samples = experiment.sampler("ddim", 2).sample(params, jax.random.PRNGKey(0), 2)
  assert samples["image"].shape == (2, 28, 28, 1)
