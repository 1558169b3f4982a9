"""A modality kind is one record, and so is an evaluator: a kind defined in this file alone (a float
depth-like map, with its own encoder) trains, samples and is evaluated with the smoke config, by the
generic evaluators and by one defined here for it, no library file edited; the built-in kinds and
evaluators are found by their file name."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdiff_jax import evaluate, random_streams, registry
from mmdiff_jax.config_validation import validate_config
from mmdiff_jax.data import checks, derived
from mmdiff_jax.evaluation import evaluators, harness
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.models import heads, kinds
from mmdiff_jax.models.modalities import specs_from_config
from mmdiff_jax.models.mtdiffusion import MTDiffusion
from mmdiff_jax.sampling import sample_export
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training import train


class DepthEncoder(nn.Module):
  """(B, H, W) depth in [-1, 1] -> (B, H, W, C): the map, times a learned scale per channel."""
  z_shape: tuple[int, ...]

  @nn.compact
  def encode(self, depth):
    chex.assert_rank(depth, 3)
    return depth[..., None] * self.param("scale", nn.initializers.ones, (self.z_shape[-1],))

  def encode_prediction(self, head_output):
    return self.encode(head_output[..., 0])


def _depth_nll(output, depth, *, ignore_label=None):
  del ignore_label
  return jnp.mean(jnp.square(output[..., 0] - depth), axis=(1, 2))


DEPTH = kinds.Kind(
    name="depth_map",
    value_shape=lambda spec, z_shape: tuple(z_shape[:-1]),
    dtype=np.float32,
    encoders={"scaled": DepthEncoder},
    head=heads.ConvHead,
    head_width=lambda spec, z_shape: 1,
    recovery_nll=_depth_nll,
    decode=lambda output: output[..., 0],
    preview=lambda spec, depth: np.repeat(np.asarray(depth)[..., None], 3, axis=-1),
)


def _blurred_depth(batch, rngs):
  """A depth-like map derived from the image: its 3x3 box blur, (B, H, W) float32 in [-1, 1]."""
  del rngs
  image = np.pad(batch["image"][..., 0], ((0, 0), (1, 1), (1, 1)), mode="edge")
  h, w = batch["image"].shape[1:3]
  blur = sum(image[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
  return {"depth": blur.astype(np.float32)}


def _depth_error(experiment, params, config):
  """Image -> depth through the joint model: the mean absolute error against the test map."""
  base, depth = experiment.specs[0], harness.spec_of(experiment, "depth_map")
  sample = harness.conditional_sampler(experiment, params, config)
  rng, errors = random_streams.key(config.eval.seed, "evaluator/depth_error"), []
  for i, (batch, _) in enumerate(harness.test_batches(config, config.eval.num_examples)):
    out = sample(jax.random.fold_in(rng, i), {base.name: batch[base.feature]})
    errors.append(np.mean(np.abs(np.asarray(out[depth.name]) - batch[depth.feature]), axis=(1, 2)))
  return harness.with_bootstrap(f"{depth.name}_abs_error", np.concatenate(errors))


DEPTH_ERROR = evaluators.Evaluator(name="depth_error", evaluate=_depth_error, needs="depth_map")


def test_builtin_evaluators_are_found_by_file_name():
  # (An evaluator file added to the folder joins them: the library's own are among them.)
  assert set(evaluators.names()) >= {
      "bound", "embedding_consistency", "generation", "inpainting", "inpainting_replacement",
      "inpainting_sdedit", "label_accuracy", "label_agreement", "label_conditional",
      "segmentation_agreement", "segmentation_miou"}
  for name in evaluators.names():
    assert evaluators.get(name).name == name
  config = importlib.import_module("configs.imglabel").get_config("smoke")
  config.eval.after_training = ("generation", "depth_error")
  with pytest.raises(ValueError, match=r"eval.after_training: got \('generation', 'depth_error'\); "
                                       r"expected names from \['bound', .*'segmentation_miou'\]"):
    validate_config(config, num_devices=8)


def test_builtin_kinds_are_found_by_file_name():
  # (A kind file added to the folder joins them: the library's own are among them.)
  assert set(kinds.builtin_names()) >= {"embedding", "image", "label", "masked_image", "segmentation"}
  for name in kinds.builtin_names():
    assert kinds.get(name).name == name
  assert kinds.get("label").categorical and kinds.get("label").can_condition
  with pytest.raises(ValueError, match=r"config.modalities.depth.kind: got 'dept'; expected one of "
                                       r"\['embedding', 'image', 'label', 'masked_image', "
                                       r"'segmentation'.*\]"):
    specs_from_config({"image": {"kind": "image"}, "depth": {"kind": "dept"}})


def test_a_kind_defined_here_trains_samples_and_evaluates(data_dir, tmp_path, monkeypatch, request):
  monkeypatch.setitem(kinds._REGISTERED, DEPTH.name, DEPTH)
  evaluators.register(DEPTH_ERROR)
  request.addfinalizer(lambda: evaluators._REGISTERED.pop(DEPTH_ERROR.name))
  monkeypatch.setitem(derived.DERIVED, "blurred_depth", _blurred_depth)
  config = importlib.import_module("configs.imglabel").get_config("smoke")
  del config.modalities["label"]
  config.modalities.depth = dict(kind="depth_map", loss_weight=0.1, profile="bump",
                                 profile_scale=1.0)
  config.data.update(data_dir=data_dir, derived=("blurred_depth",))
  config.training.update(num_steps=4, log_every=2, save_every=4)
  config.sampling.num_samples = 8
  config.eval.update(num_examples=16, num_generated=16, batch_size=16, bound_batches=1,
                     after_training=())
  workdir = str(tmp_path / "depth")

  specs = specs_from_config(config.modalities)
  assert [s.encoder for s in specs] == ["identity", "scaled"]  # the kind's first encoder
  with pytest.raises(ValueError, match=r"feature 'depth' has dtype int64; expected floats"):
    checks.check_batch({"image": np.zeros((2, 28, 28, 1), np.float32),
                        "depth": np.zeros((2, 28, 28), np.int64)}, specs, (28, 28, 1), where="here")

  results = train.train_and_evaluate(config, workdir)
  assert [os.path.basename(p) for p in results["sample_grids"]] == [
      "joint_step4.png", "joint_depth_step4.png"]  # the kind's preview beside each image
  metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert np.isfinite([m["recovery/depth"] for m in metrics if "recovery/depth" in m]).all()

  experiment = build_experiment(config)
  assert "depth_error" in evaluators.applicable(experiment)
  assert "label_accuracy" not in evaluators.applicable(experiment)
  config.eval.after_training = ("generation", "depth_error")
  validate_config(config, num_devices=8)  # a registered evaluator is a known name
  evaluated = evaluate.evaluate(config, workdir, ("generation", "bound", "depth_error"))
  assert np.isfinite(evaluated["eval/frechet_alexnet_distance"])
  assert np.isfinite(evaluated["eval/test_bound/image_bits_per_dim"])
  assert 0.0 < evaluated["eval/depth_abs_error"] < 2.0  # both maps are in [-1, 1]
  low, high = evaluated["eval/depth_abs_error_ci95"]
  assert low <= evaluated["eval/depth_abs_error"] <= high
  assert evaluated["eval/evaluated"] == ["generation", "bound", "depth_error"]

  from mmdiff_jax.training.restore import restore_latest
  experiment, _, state = restore_latest(config, workdir)
  sample = experiment.sampler("ddim", 2).sample(state.ema_params, jax.random.PRNGKey(0), 3)
  assert sample["depth"].shape == (3, 28, 28) and sample["depth"].dtype == jnp.float32
  assert "depth_logits" not in sample  # not categorical


def _two_modalities(**depth):
  return {"image": {"kind": "image"}, "depth": {"kind": "depth_map", **depth}}


def test_modality_entries_of_the_wrong_type_or_name_are_named(monkeypatch):
  monkeypatch.setitem(kinds._REGISTERED, DEPTH.name, DEPTH)
  for modalities, message in (
      ({"image": {"kind": "image"}, "seg/x": {"kind": "depth_map"}},
       r"config.modalities: a modality named 'seg/x'; expected a name of letters, digits and _"),
      ({"image": {"kind": "image"}, "depth": "depth_map"},
       r"config.modalities.depth: got 'depth_map'; expected a dict of"),
      (_two_modalities(kind=["depth_map"]), r"config.modalities.depth.kind: got \['depth_map'\]"),
      ({"image": {"kind": "image"}, "label": {"kind": "label", "num_classes": 10.7}},
       r"config.modalities.label.num_classes: got 10.7; expected an integer"),
      ({"image": {"kind": "image"}, "label": {"kind": "label", "num_classes": "10"}},
       r"config.modalities.label.num_classes: got '10'; expected an integer"),
      (_two_modalities(feature=3), r"config.modalities.depth.feature: got 3; expected a string")):
    with pytest.raises(ValueError, match=message):
      specs_from_config(modalities)


def test_a_mistake_in_a_kind_file_is_not_called_an_unknown_kind(monkeypatch):
  monkeypatch.setitem(kinds._REGISTERED, DEPTH.name, DEPTH)
  real_get = kinds.get

  def broken(name):
    if name == "depth_map":
      raise ValueError("mmdiff_jax.models.kinds.depth_map.KIND is named 'depth'; expected 'depth_map'")
    return real_get(name)

  monkeypatch.setattr(kinds, "get", broken)
  with pytest.raises(ValueError, match=r"KIND is named 'depth'; expected 'depth_map'"):
    specs_from_config(_two_modalities())


def test_a_kind_without_a_recovery_loss_cannot_be_generated(monkeypatch):
  import dataclasses  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(kinds._REGISTERED, DEPTH.name, dataclasses.replace(DEPTH, recovery_nll=None))
  with pytest.raises(ValueError, match=r"config.modalities.depth.kind: kind 'depth_map' has no "
                                       r"recovery loss"):
    specs_from_config(_two_modalities())


def test_an_encoder_of_the_wrong_shape_is_named():
  import jax  # pylint: disable=import-outside-toplevel
  from mmdiff_jax.models.mtdiffusion import MTDiffusion  # pylint: disable=import-outside-toplevel
  from mmdiff_jax.models.unet import UNet  # pylint: disable=import-outside-toplevel

  class OneChannel(DepthEncoder):  # (B, H, W, 1) where z_0 has 3 channels
    @nn.compact
    def encode(self, depth):
      return depth[..., None]

  kind = kinds.Kind(name="thin_depth", value_shape=DEPTH.value_shape, dtype=np.float32,
                    encoders={"thin": OneChannel}, head=heads.ConvHead, head_width=lambda s, z: 1,
                    recovery_nll=_depth_nll, decode=DEPTH.decode)
  kinds.register(kind)
  try:
    specs = specs_from_config({"image": {"kind": "image"}, "depth": {"kind": "thin_depth"}})
    model = MTDiffusion(specs=specs, z_shape=(8, 8, 3), backbone=UNet(
        base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=()))
    with pytest.raises(ValueError, match=r"modality 'depth': encoder 'thin' of kind 'thin_depth' "
                                         r"returned shape \(2, 8, 8, 1\); expected .* \(2, 8, 8, 3\)"):
      model.init(jax.random.PRNGKey(0), "depth", jnp.zeros((2, 8, 8)), method=MTDiffusion.encode_value)
  finally:
    kinds._REGISTERED.pop("thin_depth")


def test_a_stored_map_that_would_not_follow_the_images_geometry_is_refused_if_read():
  from mmdiff_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  def reader(read_features=("image", "depth"), **geometry):
    return pipeline._ReadBatch(source=None, order=None, stream_len=0, global_batch_size=1,
                               local_batch_size=1, process_index=0, keys={}, with_index=False,
                               geometry=pipeline.Geometry(**geometry), read_features=read_features)

  depth, embedding = np.zeros((2, 28, 28), np.float32), np.zeros((2, 256), np.float32)
  assert not reader(image_size=28)._unmoved("depth", depth, native_hw=(28, 28))  # stored size: kept
  assert not reader(image_size=32)._unmoved("embedding", embedding, native_hw=(28, 28))  # not a map
  for geometry, named in ((dict(image_size=32), "data.image_size=32"),
                          (dict(image_size=28, random_flip=True), "data.random_flip=True"),
                          (dict(image_size=24, crop="random"), "data.crop='random'")):
    with pytest.raises(ValueError, match=rf"stored feature 'depth' has the images' size \(28, 28\), "
                                         rf"but only the image and the segmentation map .*{named}"):
      reader(**geometry)._unmoved("depth", depth, native_hw=(28, 28))
    # A map the model does not read is left out of the batch, not an error.
    for unread in (("image",), None):
      assert reader(read_features=unread, **geometry)._unmoved("depth", depth, native_hw=(28, 28))


def test_a_file_of_the_folder_without_its_record_is_named(tmp_path, monkeypatch):
  package = tmp_path / "extensions"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "shared.py").write_text("HELPER = 1\n")
  (package / "_private.py").write_text("HELPER = 2\n")
  (package / "misnamed.py").write_text(
      "from mmdiff_jax.evaluation.evaluators import Evaluator\n"
      "EVALUATOR = Evaluator(name='other', evaluate=lambda *a: {})\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  found = registry.FolderRegistry("extensions", [str(package)], attribute="EVALUATOR",
                                  record_type=evaluators.Evaluator, what="evaluator")
  assert found.names() == ["misnamed", "shared"]  # "_private" is a helper, not a record
  with pytest.raises(ValueError, match=r"extensions/shared.py defines no EVALUATOR \(an instance "
                                       r"of Evaluator\); a file of this folder that is not one takes a "
                                       r"name starting with '_'"):
    found.get("shared")
  with pytest.raises(ValueError, match=r"extensions.misnamed.EVALUATOR is named 'other'; "
                                       r"expected 'misnamed'"):
    found.get("misnamed")
  with pytest.raises(ValueError, match=r"unknown evaluator 'nope'; expected one of \['misnamed', "
                                       r"'shared'\]"):
    found.get("nope")


def _untrained_params(experiment):
  batch = {k: jnp.zeros(v.shape, v.dtype)
           for k, v in state_lib.example_batch(experiment.model, 2).items()}
  return nn.meta.unbox(experiment.model.init(
      jax.random.PRNGKey(0), batch, batch["image"], jnp.ones((2,), jnp.int32),
      method=MTDiffusion.initialize))["params"]


def _export(experiment, params, labels):
  return sample_export.generate(experiment, params, num_samples=4, batch_size=4,
                                rng=jax.random.PRNGKey(1), labels=labels,
                                sampler=experiment.sampler("ddim", 2))


def test_a_conditioning_kind_defined_here_is_the_one_samples_are_asked_for(monkeypatch):
  """Any categorical kind that can condition is given by --sample_labels, not only "label"."""
  attribute = dataclasses.replace(kinds.get("label"), name="attribute")
  monkeypatch.setitem(kinds._REGISTERED, attribute.name, attribute)
  config = importlib.import_module("configs.baseline_classcond").get_config("smoke")
  del config.modalities["label"]
  config.modalities.attribute = dict(kind="attribute", feature="label", num_classes=3,
                                     role="condition")
  experiment = build_experiment(config)
  assert experiment.class_modality.name == "attribute"
  params = _untrained_params(experiment)
  with pytest.raises(ValueError, match="conditioned on 'attribute': give --sample_labels"):
    _export(experiment, params, None)
  given = sample_export.sample_labels("balanced", num_samples=4,
                                      num_classes=experiment.class_modality.num_classes)
  exported = _export(experiment, params, given)
  np.testing.assert_array_equal(exported["labels"], [0, 1, 2, 0])
  assert exported["images"].shape == (4, 28, 28, 1)


def test_every_generated_modality_is_exported_a_second_label_by_its_name():
  config = importlib.import_module("configs.imglabel").get_config("smoke")
  config.modalities.label.encoder = "categorical"
  config.modalities.coarse = dict(kind="label", feature="label", num_classes=10,
                                  encoder="categorical")
  experiment = build_experiment(config)
  exported = _export(experiment, _untrained_params(experiment), None)
  (other,) = {"coarse", "label"} - {experiment.class_modality.name}  # "labels" holds the first
  assert sorted(exported) == sorted(["images", "labels", other])
  assert exported[other].shape == exported["labels"].shape == (4,)
