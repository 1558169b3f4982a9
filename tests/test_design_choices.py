"""The options for what the paper leaves open: how a label is encoded, how unobserved categorical
modalities are fed back."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdiff_jax.data.statistics import class_mean_codes, read_class_mean_codes
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.sampling.samplers import Sampler, feedback_logits
from mmdiff_jax.training import restore, train

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


def test_hard_feedback_starts_below_the_chosen_fraction_of_T():
  # hard_feedback_fraction switches from the expected code (t above the fraction of T) to the argmax
  # class's code (t at or below it), inside one compiled sampling loop.
  experiment = build_experiment(_config("imglabel"))
  params = _random_params(experiment)
  num_timesteps = experiment.schedule.num_timesteps
  z = jax.random.normal(jax.random.PRNGKey(0), (4, *experiment.model.z_shape))
  def encodings(mode, fraction, t):
    sampler = experiment.sampler("ddim", 3, categorical_feedback=mode,
                                 hard_feedback_fraction=fraction)
    return np.asarray(jax.jit(lambda t: sampler.predict(params, z, t, {}, None)[2])(t))
  high, low = int(0.75 * num_timesteps), int(0.25 * num_timesteps)
  for t in (high, low):
    assert not np.allclose(encodings("argmax", 1.0, t), encodings("expected", 1.0, t))
    np.testing.assert_array_equal(encodings("argmax", 0.0, t), encodings("expected", 1.0, t))
  np.testing.assert_array_equal(encodings("argmax", 0.5, high), encodings("expected", 1.0, high))
  np.testing.assert_array_equal(encodings("argmax", 0.5, low), encodings("argmax", 1.0, low))
  samples = experiment.sampler("ddim", 3, categorical_feedback="argmax",
                               hard_feedback_fraction=0.5).sample(params, jax.random.PRNGKey(2), 4)
  assert np.isfinite(np.asarray(samples["image"])).all()
  with pytest.raises(ValueError, match=r"hard_feedback_fraction: got 1.5"):
    Sampler(experiment.model, experiment.schedule, experiment.weights, hard_feedback_fraction=1.5)


def test_smooth_label_code_is_low_frequency_and_unit_rms():
  config = _config("imglabel")
  config.modalities.label.encoder = "smooth_categorical"
  experiment = build_experiment(config)
  params = _random_params(experiment)
  codes = np.asarray(experiment.model.apply(
      {"params": params}, jnp.arange(10), method=lambda m, y: m.encoders["label"].encode(y)))
  assert codes.shape == (10, 28, 28, 1)
  np.testing.assert_allclose(np.sqrt(np.mean(codes ** 2, axis=(1, 2, 3))), 1.0, rtol=1e-3)
  # Neighbouring pixels nearly agree (bilinear from 7x7), unlike the white-noise-like learned code.
  def neighbour_correlation(x):
    return np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1]
  learned_config = _config("imglabel")
  learned_config.modalities.label.encoder = "categorical"
  learned = build_experiment(learned_config)
  white = np.asarray(learned.model.apply(
      {"params": _random_params(learned)}, jnp.arange(10),
      method=lambda m, y: m.encoders["label"].encode(y)))
  assert neighbour_correlation(codes) > 0.8 and abs(neighbour_correlation(white)) < 0.2
  samples = experiment.sampler("ddim", 2).sample(params, jax.random.PRNGKey(0), 2)
  assert samples["image"].shape == (2, 28, 28, 1)


def test_class_mean_codes_known_answer():
  # Class 0: left half bright; class 1: right half bright; class 2: all mid-grey.
  images = np.full((6, 2, 2, 1), 0.0)
  images[0:2, :, 0] = 1.0
  images[2:4, :, 1] = 1.0
  labels = np.array([0, 0, 1, 1, 2, 2])
  codes = class_mean_codes(images, labels, num_classes=3)
  overall = images.reshape(6, -1).mean(0)
  for c in range(3):
    diff = images[labels == c].reshape(2, -1).mean(0) - overall
    np.testing.assert_allclose(codes[c], diff / np.sqrt(np.mean(diff ** 2)), rtol=1e-6)
  np.testing.assert_allclose(np.sqrt(np.mean(codes ** 2, axis=1)), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match=r"classes without examples in the training split: \[3\]"):
    class_mean_codes(images, labels, num_classes=4)
  with pytest.raises(ValueError, match=r"has labels up to 2, but modalities.<label>.num_classes = 2 "
                                       r"expects labels in \[0, 2\)"):
    class_mean_codes(images, labels, num_classes=2)
  with pytest.raises(ValueError, match="mean image of the whole split"):
    class_mean_codes(np.ones((4, 2, 2, 1)), np.array([0, 1, 0, 1]), num_classes=2)


def test_class_mean_code_is_written_at_the_start_and_stays_frozen(data_dir, tmp_path):
  config = _config("imglabel", data_dir)
  config.modalities.label.encoder = "class_mean"
  config.sampling.num_samples = 0
  workdir = str(tmp_path / "class_mean")
  train.train_and_evaluate(config, workdir)
  experiment, step, state = restore.restore_latest(config, workdir)
  assert step == config.training.num_steps
  expected = read_class_mean_codes(config.data, label_feature="label", num_classes=10)
  for tree in (state.params, state.ema_params):
    codes = np.asarray(jax.device_get(tree["encoders_label"]["codes"]))
    # Frozen: only decoupled weight decay touches it, a common factor that unit RMS takes out.
    rms = np.sqrt(np.mean(codes ** 2, axis=1, keepdims=True))
    np.testing.assert_allclose(codes / rms, expected, rtol=1e-4, atol=1e-5)
  code = experiment.model.apply({"params": state.params}, jnp.arange(10),
                                method=lambda m, y: m.encoders["label"].encode(y))
  np.testing.assert_allclose(np.asarray(code).reshape(10, -1), expected, rtol=1e-4, atol=1e-5)
