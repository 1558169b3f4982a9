"""The single-task baselines: class-conditional diffusion (a condition modality) and the predictors
(reconstruction-only inpainting, image -> segmentation, the independent classifier), end to end."""

from __future__ import annotations

import importlib
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdiff_jax import evaluate
from mmdiff_jax.config_validation import validate_config
from mmdiff_jax.evaluation import evaluators
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.models.modalities import specs_from_config
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training import train

B = 3


def _config(name: str, data_dir: str | None = None):
  config = importlib.import_module(f"configs.{name}").get_config("smoke")
  if data_dir:
    config.data.data_dir = data_dir
  config.training.update(num_steps=4, log_every=2, save_every=4)
  config.eval.update(num_examples=16, num_generated=16, batch_size=16, bound_batches=1,
                     after_training=())
  return config


def _random_params(experiment, seed: int = 0):
  """Initial parameters with every leaf randomised (zero-initialised heads would hide any effect).
  One jitted program: run eagerly, each of init's operations would compile on its own."""

  @jax.jit
  def randomised():
    batch = {k: jnp.zeros(v.shape, v.dtype)
             for k, v in state_lib.example_batch(experiment.model, B).items()}
    params = nn.meta.unbox(experiment.model.init(
        jax.random.PRNGKey(seed), batch, batch["image"], jnp.ones((B,), jnp.int32),
        method="initialize"))["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree.unflatten(treedef, [0.1 * jax.random.normal(k, x.shape)
                                        for k, x in zip(keys, leaves)])

  return randomised()


def test_condition_role_is_validated():
  with pytest.raises(ValueError, match=r"modalities.seg.role: 'condition' is supported for kinds"):
    specs_from_config({"image": dict(kind="image"),
                       "seg": dict(kind="segmentation", num_classes=3, role="condition")})
  with pytest.raises(ValueError, match=r"modalities.label.role: got 'input'"):
    specs_from_config({"image": dict(kind="image"),
                       "label": dict(kind="label", num_classes=3, role="input")})


def test_class_conditional_model_uses_its_label_and_requires_it():
  experiment = build_experiment(_config("baseline_classcond"))
  model = experiment.model
  assert [s.name for s in model.conditions] == ["label"] and not model.aggregated
  assert experiment.weights.shape == (experiment.schedule.num_timesteps, 0)  # plain DDPM forward process
  params = _random_params(experiment)
  z = jax.random.normal(jax.random.PRNGKey(2), (B, *model.z_shape))
  t = jnp.full((B,), 50, jnp.int32)
  out = lambda y: model.apply({"params": params}, z, t, train=False, conditions={"label": y})["image"]
  a, b = out(jnp.zeros((B,), jnp.int32)), out(jnp.ones((B,), jnp.int32))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3
  np.testing.assert_array_equal(a, out(jnp.zeros((B,), jnp.int32)))
  with pytest.raises(ValueError, match=r"conditioned on \['label'\]"):
    model.apply({"params": params}, z, t, train=False)
  sampler = experiment.sampler("ddim", 3)
  with pytest.raises(ValueError, match=r"conditioned on \['label'\]"):
    sampler.sample(params, jax.random.PRNGKey(0), B)
  labels = jnp.array([0, 1, 2], jnp.int32)
  sample = sampler.sample(params, jax.random.PRNGKey(0), B, observed={"label": labels})
  assert sample["image"].shape == (B, *model.z_shape)
  np.testing.assert_array_equal(sample["label"], labels)


def test_predictor_sampler_needs_its_input_and_clips_images():
  experiment = build_experiment(_config("baseline_reconstruction"))
  params = _random_params(experiment)
  predictor = experiment.sampler("ddim", 1)
  with pytest.raises(ValueError, match=r"maps 'masked_image' -> 'image'; pass 'masked_image'"):
    predictor.sample(params, None, B, observed={"image": jnp.zeros((B, 28, 28, 1))})
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (B, 28, 28, 1))
  out = predictor.sample(params, None, B, observed={"masked_image": x})
  assert out["image"].shape == x.shape and float(jnp.max(jnp.abs(out["image"]))) <= 1.0


def test_prediction_config_is_validated():
  config = _config("classifier")
  config.prediction.input = "label"
  with pytest.raises(ValueError, match=r"config.prediction.input: got 'label'"):
    validate_config(config)
  config = _config("classifier")
  config.prediction.target = "segmentation"
  with pytest.raises(ValueError, match=r"config.prediction.target: got 'segmentation'"):
    validate_config(config)
  config = _config("classifier")
  config.task = "regression"
  with pytest.raises(ValueError, match=r"config.task: got 'regression'"):
    validate_config(config)


@pytest.fixture(scope="module")
def classifier_workdir(data_dir, tmp_path_factory):
  config = _config("classifier", data_dir)
  workdir = str(tmp_path_factory.mktemp("classifier"))
  results = train.train_and_evaluate(config, workdir)
  assert results["sample_grids"] == []
  assert os.path.exists(os.path.join(workdir, "config.json"))
  return workdir


@pytest.mark.parametrize("name,expected,absent", [
    ("classifier", ["eval/label_accuracy"], ["eval/precision", "eval/test_bound/prior"]),
    ("baseline_reconstruction", ["eval/inpainting/psnr@0.1", "eval/inpainting/lpips@0.7"],
     ["eval/frechet_alexnet_distance"]),
    ("baseline_segmenter", ["eval/segmentation_miou"], ["eval/recall"]),
])
def test_predictor_baseline_trains_and_evaluates(name, expected, absent, data_dir, tmp_path,
                                                 classifier_workdir):
  config = _config(name, data_dir)
  if name == "classifier":
    workdir = classifier_workdir
  else:
    workdir = str(tmp_path / name)
    assert train.train_and_evaluate(config, workdir)["sample_grids"] == []
  metrics = evaluate.evaluate(config, workdir)
  for key in expected:
    assert np.isfinite(metrics[key]), key
  for key in absent:
    assert key not in metrics
  with open(os.path.join(workdir, "run.json")) as f:
    run = json.load(f)
  assert run["steps_done"] == 4 and run["batch_size"] == config.training.batch_size
  assert run["train_wall_s"] > 0 and run["invocations"][0]["devices"]


def test_class_conditional_baseline_end_to_end_with_label_agreement(data_dir, tmp_path,
                                                                    classifier_workdir):
  config = _config("baseline_classcond", data_dir)
  workdir = str(tmp_path / "classcond")
  results = train.train_and_evaluate(config, workdir)
  assert [os.path.basename(p) for p in results["sample_grids"]] == ["class_conditional_step4.png"]
  without = evaluate.evaluate(config, workdir, ("label_agreement",))
  assert without["eval/label_agreement_skipped"] == "config.eval.classifier_workdir is not set"
  config.eval.classifier_workdir = classifier_workdir
  with pytest.raises(ValueError, match=r"\['label_accuracy'\] do not apply to this experiment"):
    evaluate.evaluate(config, workdir, ("label_agreement", "label_accuracy"))
  metrics = evaluate.evaluate(config, workdir, ("label_agreement", "generation"))
  assert 0.0 <= metrics["eval/label_agreement"] <= 1.0
  assert metrics["eval/label_agreement_examples"] == 16
  assert metrics["eval/classifier_workdir"] == classifier_workdir
  assert 0.0 <= metrics["eval/classifier_test_accuracy"] <= 1.0
  for key in ("eval/label_class_balance_tv", "eval/label_class_balance_tv_seen_by_classifier"):
    assert 0.0 <= metrics[key] <= 1.0, key
  assert np.isfinite(metrics["eval/frechet_alexnet_distance"])
  assert "eval/label_accuracy" not in metrics  # a condition cannot be predicted from the image
  assert metrics["eval/evaluated"] == ["label_agreement", "generation"]
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    saved = json.load(f)
  assert "eval/label_agreement_skipped" not in saved  # measured now: the earlier note is gone
  assert saved["eval/label_agreement"] == metrics["eval/label_agreement"]


def test_classifier_must_be_a_label_predictor(data_dir, tmp_path, classifier_workdir):
  from mmdiff_jax.training.restore import load_classifier
  with pytest.raises(FileNotFoundError, match=r"no config.json there; train the classifier first"):
    load_classifier(str(tmp_path), (28, 28, 1))
  with pytest.raises(ValueError, match=r"takes images of shape \(28, 28, 1\)"):
    load_classifier(classifier_workdir, (32, 32, 1))


def test_a_run_with_a_classifier_workdir_that_cannot_serve_stops_before_training(data_dir, tmp_path,
                                                                                 classifier_workdir):
  config = _config("baseline_classcond", data_dir)
  workdir = tmp_path / "run"
  config.eval.classifier_workdir = str(tmp_path / "not_trained")
  with pytest.raises(FileNotFoundError, match=r"classifier_workdir=.*not_trained: no config.json"):
    train.train_and_evaluate(config, str(workdir))
  no_checkpoint = tmp_path / "no_checkpoint"
  no_checkpoint.mkdir()
  shutil.copy(os.path.join(classifier_workdir, "config.json"), no_checkpoint / "config.json")
  config.eval.classifier_workdir = str(no_checkpoint)
  with pytest.raises(FileNotFoundError, match=r"no_checkpoint: no checkpoint in"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()  # nothing was started


def test_embedding_consistency_needs_the_datasets_alexnet_embeddings():
  """It compares a generated embedding with the AlexNet features of the generated image: on a
  user's own embeddings (another network, another width) it is skipped with the reason."""
  config = _config("imgemb")
  unavailable = evaluators.get("embedding_consistency").unavailable
  assert unavailable(config) is None
  config.data.name = f"{config.data.name}:1.0.0"
  assert unavailable(config) is None
  config.data.name = "my_photos"
  assert "data.name='my_photos' has embeddings of its own" in unavailable(config)
