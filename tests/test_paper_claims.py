"""What the paper's comparisons need: bootstrap intervals, label-conditional metrics, the SDEdit and
known-region replacement inpainting baselines, starting a classifier from a diffusion model's backbone,
and the MT-Diffusion-X config and its control, end to end."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdiff_jax import evaluate
from mmdiff_jax.data import derived, pipeline
from mmdiff_jax.evaluation import evaluators, metrics
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.sampling import inpainting
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training import restore, train, transplant

from test_baselines import _config, _random_params


# ------------------------------------------------------------------------------------------ bootstrap

def test_bootstrap_interval_of_a_constant_is_a_point():
  replicates = metrics.bootstrap_mean(np.full(50, 0.25))
  assert metrics.percentile_interval(replicates) == (0.25, 0.25)


def test_bootstrap_mean_interval_covers_the_mean_and_shrinks_with_n():
  rng = np.random.default_rng(0)
  small, large = rng.random(100) < 0.7, rng.random(10_000) < 0.7
  lo_s, hi_s = metrics.percentile_interval(metrics.bootstrap_mean(small))
  lo_l, hi_l = metrics.percentile_interval(metrics.bootstrap_mean(large))
  assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
  # The binomial standard error: 1.96 sqrt(p (1 - p) / n) each side.
  np.testing.assert_allclose(hi_l - lo_l, 2 * 1.96 * np.sqrt(0.21 / 10_000), rtol=0.15)
  assert hi_l - lo_l < (hi_s - lo_s) / 5


def test_bootstrap_resamples_alike_for_the_same_n_so_ratios_are_paired():
  a = np.random.default_rng(1).random(300)
  ratio = metrics.bootstrap_mean(2 * a) / metrics.bootstrap_mean(a)
  np.testing.assert_allclose(ratio, 2.0)  # paired: exactly the ratio, no spread
  frechet = metrics.bootstrap_frechet(np.random.default_rng(2).normal(size=(40, 3)),
                                      np.random.default_rng(3).normal(size=(50, 3)), num=20)
  assert frechet.shape == (20,) and np.all(frechet >= -1e-9)
  with pytest.raises(ValueError, match="finite"):
    metrics.percentile_interval([1.0, np.nan])


# ------------------------------------------------------------------------------------- inpainting


@pytest.fixture(scope="module")
def uncond():
  experiment = build_experiment(_config("baseline_uncond"))
  return experiment, _random_params(experiment)


def _images(n=3):
  return jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (n, 28, 28, 1)), jnp.float32)


def test_sdedit_from_t0_zero_returns_its_input(uncond):
  experiment, params = uncond
  sampler = experiment.sampler("ddim", 5)
  images = _images()
  out = inpainting.sdedit(sampler, params, jax.random.PRNGKey(0), images, t0_fraction=0.0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images))
  moved = inpainting.sdedit(sampler, params, jax.random.PRNGKey(0), images, t0_fraction=0.5)
  assert np.abs(np.asarray(moved) - np.asarray(images)).mean() > 1e-3
  # T = 100, 5 DDIM steps over all of it: 2 over [0, 50] (the step count scaled by t0 / T).
  assert inpainting.sdedit_timesteps(sampler, 50).tolist() == [50, 1, 0]
  # one step (5 * 10 / 100 rounds to 0, at least 1) still starts from t0
  assert inpainting.sdedit_timesteps(sampler, 10).tolist() == [10, 0]
  assert inpainting.sdedit_timesteps(sampler, 0).tolist() == [0]
  with pytest.raises(ValueError, match="sdedit_t0_fraction"):
    inpainting.sdedit(sampler, params, jax.random.PRNGKey(0), images, t0_fraction=1.5)


@pytest.mark.parametrize("resamples", [1, 2])
def test_replacement_keeps_the_observation_and_with_nothing_masked_returns_it(uncond, resamples):
  experiment, params = uncond
  sampler = experiment.sampler("ddim", 4)
  images = _images()
  nothing = jnp.zeros((3, 28, 28, 1))
  out = inpainting.known_region_replacement(sampler, params, jax.random.PRNGKey(0), images, nothing,
                                            resamples=resamples)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images))
  mask = jnp.asarray(derived.square_masks((3, 28, 28), ratios=np.full(3, 0.5),
                                          rngs=[np.random.default_rng(0)] * 3))
  out = np.asarray(inpainting.known_region_replacement(sampler, params, jax.random.PRNGKey(0), images,
                                                       mask, resamples=resamples))
  known = np.asarray(mask) == 0
  np.testing.assert_array_equal(out[known], np.asarray(images)[known])
  assert np.abs(out[~known] - np.asarray(images)[~known]).mean() > 1e-2  # the hole is generated


def test_resampling_changes_the_fill(uncond):
  experiment, params = uncond
  sampler, images = experiment.sampler("ddim", 4), _images()
  mask = jnp.ones((3, 28, 28, 1))
  once, twice = (np.asarray(inpainting.known_region_replacement(
      sampler, params, jax.random.PRNGKey(0), images, mask, resamples=u)) for u in (1, 2))
  assert np.abs(once - twice).mean() > 1e-4


def test_inpainting_baselines_apply_to_image_models_only():
  assert evaluators.get("inpainting_sdedit").applies(build_experiment(_config("baseline_uncond")))
  assert evaluators.get("inpainting_replacement").applies(
      build_experiment(_config("baseline_classcond")))
  assert not evaluators.get("inpainting_sdedit").applies(build_experiment(_config("imgmask")))


# ------------------------------------------------------------------------- label-conditional metrics


def test_label_conditional_samples_of_a_model_that_ignores_labels_score_like_its_joint_samples(
    data_dir):
  config = _config("imglabel", data_dir)
  config.modalities.label.profile = "zero"  # w = 0: the label never reaches z
  config.eval.update(num_generated=16, batch_size=16)
  experiment = build_experiment(config)
  params = _random_params(experiment)
  joint = evaluators.get("generation").evaluate(experiment, params, config)
  given = evaluators.get("label_conditional").evaluate(experiment, params, config)
  np.testing.assert_allclose(given["label_conditional/frechet_alexnet_distance"],
                             joint["frechet_alexnet_distance"], rtol=1e-5)
  np.testing.assert_allclose(given["bootstrap"]["label_conditional/frechet_alexnet_distance"],
                             joint["bootstrap"]["frechet_alexnet_distance"], rtol=1e-5)
  # A model that uses its label does not (the same seeds, another trajectory).
  config.modalities.label.profile = "bump"
  used = evaluators.get("label_conditional").evaluate(build_experiment(config), params, config)
  assert abs(used["label_conditional/frechet_alexnet_distance"]
             - joint["frechet_alexnet_distance"]) > 1e-3


# ------------------------------------------------------------------------------------ transplant


def test_transplant_copies_matching_paths_and_names_mismatched_shapes():
  target = {"backbone": {"w": np.zeros((2, 3)), "b": np.zeros(3)}, "head": {"w": np.zeros((3, 4))}}
  source = {"backbone": {"w": np.ones((2, 3)), "b": np.ones(3)}, "heads_image": {"w": np.ones(1)}}
  merged, copied, kept = transplant.transplant(target, source, source_name="SRC")
  np.testing.assert_array_equal(merged["backbone"]["w"], 1.0)
  assert sorted(copied) == ["backbone/b", "backbone/w"] and kept == ["head/w"]
  assert transplant.top_level(copied) == ["backbone"]
  with pytest.raises(ValueError, match=r"SRC: parameters with the same path but another shape: "
                                       r"backbone/b: here \(3,\), there \(4,\)"):
    transplant.transplant(target, {"backbone": {"b": np.ones(4)}}, source_name="SRC")
  with pytest.raises(ValueError, match="SRC: no parameter of that run"):
    transplant.transplant(target, {"other": {"b": np.ones(3)}}, source_name="SRC")


def test_classifier_starts_from_a_diffusion_models_backbone(data_dir, tmp_path):
  diffusion = _config("baseline_uncond", data_dir)
  diffusion.training.num_steps = 2
  train.train_and_evaluate(diffusion, str(tmp_path / "uncond"))
  _, _, source = restore.restore_latest(diffusion, str(tmp_path / "uncond"))
  classifier = _config("classifier", data_dir)
  classifier.training.update(num_steps=2, init_from=str(tmp_path / "uncond"))
  experiment = build_experiment(classifier)
  tx = state_lib.make_optimizer(classifier)
  _, shardings = state_lib.state_shardings(experiment.model, tx, train.sharding_lib.make_mesh(
      classifier.mesh), fsdp=False, seed=0)
  fresh = state_lib.create_train_state(experiment.model, tx, shardings, 0)
  started = train._initialise_from(fresh, str(tmp_path / "uncond"))  # pylint: disable=protected-access
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(started.params["backbone"]),
               jax.device_get(source.ema_params["backbone"]))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(started.params["head"]),
               jax.device_get(fresh.params["head"]))
  # The source's batch size and mesh were for the machine it trained on: not checked against this
  # one's 8 devices (a batch of 12 and a 3-device mesh could not run here).
  source_config = tmp_path / "uncond" / "config.json"
  trained_elsewhere = json.loads(source_config.read_text())
  trained_elsewhere["training"]["batch_size"] = 12
  trained_elsewhere["mesh"] = {"data": 3, "fsdp": 1}
  source_config.write_text(json.dumps(trained_elsewhere))
  again = train._initialise_from(fresh, str(tmp_path / "uncond"))  # pylint: disable=protected-access
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.params["backbone"]),
               jax.device_get(source.ema_params["backbone"]))
  # Through the loop: trains from there.
  results = train.train_and_evaluate(classifier, str(tmp_path / "classifier"))
  assert results == {"step": classifier.training.num_steps, "stopped": False, "sample_grids": []}
  other = _config("classifier", data_dir)
  other.model.base_channels = 8
  other.model.num_groups = 4
  other.training.update(num_steps=2, init_from=str(tmp_path / "uncond"))
  with pytest.raises(ValueError, match=r"init_from=.*another shape: backbone/"):
    train.train_and_evaluate(other, str(tmp_path / "mismatch"))


# ---------------------------------------------------------------------- MT-Diffusion-X and control


def test_masked_image_augmentation_applies_to_the_training_stream_only(data_dir):
  config = _config("baseline_classcond_maskaug", data_dir)
  kw = dict(split="test", global_batch_size=16, seed=0, shuffle=False)
  clean = next(pipeline.make_iterator(config.data, **kw))
  augmented = next(pipeline.make_iterator(config.data, training=True, **kw))
  np.testing.assert_array_equal(clean["masked_image"], augmented["masked_image"])
  replaced = np.all(augmented["image"] == augmented["masked_image"], axis=(1, 2, 3))
  kept = np.all(augmented["image"] == clean["image"], axis=(1, 2, 3))
  assert np.all(replaced | kept) and 0 < replaced.sum() < 16
  assert not np.any(np.all(clean["image"] == clean["masked_image"], axis=(1, 2, 3)))
  with pytest.raises(ValueError, match="needs 'random_square_mask' before it"):
    derived.derive({"image": clean["image"]}, ("masked_image_augmentation",), seed=0,
                   positions=range(len(clean["image"])))


@pytest.mark.parametrize("name", ["imgmask_classcond", "baseline_classcond_maskaug"])
def test_mt_x_and_its_control_train_sample_and_evaluate(name, data_dir, tmp_path):
  config = _config(name, data_dir)
  workdir = str(tmp_path / name)
  results = train.train_and_evaluate(config, workdir)
  grids = {"imgmask_classcond": ["class_conditional_step4.png", "inpainting_step4.png"],
           "baseline_classcond_maskaug": ["class_conditional_step4.png"]}[name]
  assert [os.path.basename(p) for p in results["sample_grids"]] == grids
  names = {"imgmask_classcond": ("label_conditional", "inpainting"),
           "baseline_classcond_maskaug": ("label_conditional", "inpainting_replacement")}[name]
  scores = evaluate.evaluate(config, workdir, names)
  with open(os.path.join(workdir, "eval_metrics.bootstrap.json")) as f:
    replicates = json.load(f)
  key = "eval/label_conditional/frechet_alexnet_distance"
  assert np.isfinite(scores[key])
  lo, hi = scores[key + "_ci95"]
  assert lo <= hi and len(replicates[key]) == metrics.NUM_BOOTSTRAP
  if name == "imgmask_classcond":  # MT-X inpaints by observing the masked image (and its label)
    assert scores["eval/evaluated"] == ["label_conditional", "inpainting"]
    assert 0 <= scores["eval/inpainting/lpips@0.5"] and "eval/inpainting/lpips@0.5_ci95" in scores
  else:  # the control is an image diffusion model: the replacement baseline applies
    assert scores["eval/evaluated"] == ["label_conditional", "inpainting_replacement"]
    assert np.isfinite(scores["eval/inpainting_replacement/lpips@0.7"])
