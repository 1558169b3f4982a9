"""Each experiment's smoke config trains, samples and evaluates end to end; derived features are right."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mmdiff_jax import evaluate
from mmdiff_jax.data import derived, fashion_mnist
from mmdiff_jax.data import images as images_lib
from mmdiff_jax.data import pipeline, sources
from mmdiff_jax.evaluation import harness
from mmdiff_jax.sampling import grids, sample_export
from mmdiff_jax.training import train

from test_data import _write_idx


EMBEDDING_SUBSET = {"train": 2000, "test": 500}  # examples of each raw split the imgemb test prepares


def _write_raw_subset(raw_dir: pathlib.Path, counts: dict[str, int]) -> None:
  """The first `counts[split]` examples of each real raw split, written as gzipped IDX files."""
  raw_dir.mkdir()
  for split, count in counts.items():
    images, labels = fashion_mnist.load_raw_split(fashion_mnist.DEFAULT_RAW_DIR, split)
    images_name, labels_name = fashion_mnist.RAW_FILES[split]
    _write_idx(raw_dir / images_name, 0x803, (count, 28, 28), images[:count, ..., 0].tobytes())
    _write_idx(raw_dir / labels_name, 0x801, (count,), labels[:count].tobytes())


@pytest.fixture(scope="module")
def embedding_data_dir(tmp_path_factory):
  """A data dir with imgemb's dataset prepared from a real subset of the raw files (AlexNet over all
  70k images takes most of two minutes; the subset takes seconds), in a process with XLA's usual
  optimisation: it is execution-bound work that the suite's compile-time setting (conftest: no LLVM
  optimisation passes) would slow by about half."""
  raw_dir = tmp_path_factory.mktemp("embedding") / "raw"
  _write_raw_subset(raw_dir, EMBEDDING_SUBSET)
  data_dir = str(raw_dir.parent / "tfds")
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "").strip()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if flags:
    env["XLA_FLAGS"] = flags
  code = ("from mmdiff_jax.data import fashion_mnist, sources; sources.prepare_fashion_mnist("
          f"data_dir={data_dir!r}, raw_dir={str(raw_dir)!r}, name=fashion_mnist.EMBEDDING_NAME)")
  subprocess.run([sys.executable, "-c", code], env=env, check=True,
                 cwd=pathlib.Path(__file__).resolve().parents[1])
  return data_dir


def _check_inpainting_grid(path: str, config) -> None:
  """The grid's rows are the first test images masked, generated, composited and as they are."""
  size = (config.data.image_size,) * 2
  rows = grids.load_grid(path, image_size=size, captioned=False,
                         num_columns=train.INPAINTING_GRID_COLUMNS)
  observed, generated, composited, originals = np.split(rows, 4)
  test_images = np.concatenate([b["image"] for b, _ in harness.test_batches(
      config, train.INPAINTING_GRID_COLUMNS)])
  np.testing.assert_allclose(originals, test_images, atol=2 / 255)
  # Hidden cells of the 4x4 grid: those where the observed image differs from the original (a few
  # pixels of a hidden cell may equal the fill; a whole cell does not).
  differs = np.any(observed != originals, axis=-1)
  cells = differs.reshape(len(differs), 4, size[0] // 4, 4, size[1] // 4).any(axis=(2, 4))
  assert np.all(cells.sum(axis=(1, 2)) == 16 * train.INPAINTING_GRID_MASK_RATIO), cells.sum(axis=(1, 2))
  hidden = np.repeat(np.repeat(cells, size[0] // 4, axis=1), size[1] // 4, axis=2)
  np.testing.assert_allclose(observed[hidden], config.data.mask_fill_value, atol=2 / 255)
  np.testing.assert_array_equal(composited[~hidden], originals[~hidden])
  np.testing.assert_array_equal(composited[hidden], generated[hidden])


@pytest.mark.parametrize("name,expected", [
    ("imgseg", ["eval/segmentation_miou", "eval/segmentation_pair_miou",
                "eval/segmentation_pair_foreground_iou", "eval/frechet_alexnet_distance",
                "eval/test_bound/image_bits_per_dim"]),
    ("imgmask", ["eval/inpainting/psnr@0.1", "eval/inpainting/lpips@0.7", "eval/precision"]),
    ("imgemb", ["eval/embedding_cosine", "eval/recall"]),
])
def test_smoke_experiment_trains_samples_and_evaluates(name, expected, data_dir, tmp_path, request):
  config = importlib.import_module(f"configs.{name}").get_config("smoke")
  config.data.data_dir = request.getfixturevalue("embedding_data_dir") if name == "imgemb" else data_dir
  config.training.update(num_steps=4, log_every=2, save_every=4)
  config.eval.update(num_examples=16, num_generated=16, batch_size=16, bound_batches=1,
                     after_training=())
  workdir = str(tmp_path / name)
  results = train.train_and_evaluate(config, workdir)
  assert all(os.path.exists(p) for p in results["sample_grids"])
  metrics = evaluate.evaluate(config, workdir)
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    assert json.load(f) == metrics
  assert metrics["step"] == 4
  for key in expected:
    assert np.isfinite(metrics[key]), key
  # Every metric with replicates says how many examples they resample (what pairs two runs).
  with open(os.path.join(workdir, "eval_metrics.bootstrap.json")) as f:
    replicated = [k for k, v in json.load(f).items() if isinstance(v, list)]
  assert replicated and [k for k in replicated if f"{k}_examples" not in metrics] == []
  assert metrics["eval/frechet_alexnet_distance_examples"] == [16, 16]
  # Samples for external use hold every generated modality beside the images.
  exported = sample_export.export_samples(config, workdir, num_samples=3, formats=("npz",),
                                          out_dir=str(tmp_path / "export"))
  with np.load(exported[0]) as npz:
    generated = {k: npz[k].shape for k in npz.files}
  assert generated == {"arr_0": (3, 28, 28, 3), **{
      "imgseg": {"segmentation": (3, 28, 28)}, "imgmask": {"masked_image": (3, 28, 28, 1)},
      "imgemb": {"embedding": (3, 256)}}[name]}, generated
  if name == "imgseg":
    assert 0.0 <= metrics["eval/segmentation_miou"] <= 1.0
    assert [os.path.basename(p) for p in results["sample_grids"]] == [
        "joint_step4.png", "joint_segmentation_step4.png"]
    os.remove(results["sample_grids"][1])
    assert train.sample_from_checkpoint(config, workdir) == results["sample_grids"]
    # Another model in the same workdir: refused before anything is loaded or overwritten.
    other = config.copy_and_resolve_references()
    trained = config.diffusion.parameterization
    other.diffusion.parameterization = "eps" if trained == "v" else "v"
    saved = open(os.path.join(workdir, "config.json")).read()
    for use in (evaluate.evaluate, train.train_and_evaluate):
      with pytest.raises(ValueError, match=rf"diffusion.parameterization: trained '{trained}', "
                         rf"given '{other.diffusion.parameterization}'"):
        use(other, workdir)
    assert open(os.path.join(workdir, "config.json")).read() == saved
    assert os.path.exists(results["sample_grids"][1])
  if name == "imgmask":
    assert [os.path.basename(p) for p in results["sample_grids"]] == [
        "joint_step4.png", "inpainting_step4.png"]
    _check_inpainting_grid(results["sample_grids"][1], config)
    # Evaluation batches smaller than the grid's row: the row is still whole.
    small_batches = config.copy_and_resolve_references()
    small_batches.eval.batch_size = 4
    assert train.sample_from_checkpoint(small_batches, workdir) == results["sample_grids"]
    _check_inpainting_grid(results["sample_grids"][1], small_batches)
  if name == "imgemb":
    assert {split: sources.num_examples(config.data, split) for split in EMBEDDING_SUBSET} == (
        EMBEDDING_SUBSET)
    assert -1.0 <= metrics["eval/embedding_cosine"] <= 1.0
    assert -1.0 <= metrics["eval/embedding_cosine_shuffled"] <= 1.0
  assert not any(k.startswith("eval/label") for k in metrics)


def test_garment_segmentation_map():
  image = np.full((2, 4, 4, 1), -1.0, np.float32)
  image[0, 1, 2] = 0.5
  image[1, 0, 0] = -0.7  # below the ink threshold: background
  image[1, 3, 3] = 1.0
  seg = derived.garment_segmentation({"image": image, "label": np.array([3, 9])}, None)["segmentation"]
  expected = np.zeros((2, 4, 4), np.int32)
  expected[0, 1, 2] = 4
  expected[1, 3, 3] = 10
  np.testing.assert_array_equal(seg, expected)


def test_segmentation_pair_agreement_constructed():
  from mmdiff_jax.evaluation.evaluators.segmentation_agreement import segmentation_pair_agreement
  images = np.full((2, 4, 4, 1), -1.0, np.float32)
  images[0, :2, :2] = 1.0  # 4 ink pixels
  images[1, 2:, :] = 1.0  # 8 ink pixels
  maps = derived.garment_segmentation({"image": images, "label": np.array([3, 9])}, None)["segmentation"]
  exact = segmentation_pair_agreement(images, maps, 11)
  replicates = exact.pop("bootstrap")
  assert exact == {"pair_miou": 1.0, "pair_foreground_iou": 1.0}
  np.testing.assert_array_equal(replicates["pair_miou"], 1.0)  # every resample of exact pairs
  # Map 0 covers one pixel too many, in its class: foreground IoU (4 + 8) / (5 + 8).
  wrong = maps.copy()
  wrong[0, 3, 3] = 4
  assert segmentation_pair_agreement(images, wrong, 11)["pair_foreground_iou"] == pytest.approx(12 / 13)
  # Map 1's pixels split 5 : 3 between classes 10 and 2: the majority (class 9) re-derives all 8
  # pixels as 10, so class 10 has IoU 5/8 and class 2 IoU 0; background and class 4 stay exact.
  mixed = maps.copy()
  mixed[1, 3, :3] = 2
  result = segmentation_pair_agreement(images, mixed, 11)
  assert result["pair_foreground_iou"] == 1.0
  assert result["pair_miou"] == pytest.approx((1 + 1 + 5 / 8 + 0) / 4)
  # a resample of the two pairs is either, or both: at most the three mIoUs these can make
  assert set(np.round(result["bootstrap"]["pair_miou"], 6)) <= {
      1.0, round((1 + 5 / 8 + 0) / 3, 6), round(result["pair_miou"], 6)}


def test_model_differences_name_the_keys_that_change_the_model():
  from mmdiff_jax.training.restore import model_differences
  trained = json.loads(importlib.import_module("configs.imglabel").get_config("small").to_json_best_effort())
  same = importlib.import_module("configs.imglabel").get_config("small")
  same.eval.num_steps, same.training.num_steps, same.model.dtype = 3, 7, "bfloat16"
  assert model_differences(trained, same) == {}  # evaluation, budget and precision may change
  other = importlib.import_module("configs.imglabel").get_config("small")
  other.modalities.label.profile_scale = 0.5
  other.model.base_channels = 8
  assert model_differences(trained, other) == {"modalities.label.profile_scale": (2.0, 0.5),
                                               "model.base_channels": (trained["model"]["base_channels"], 8)}
  seg = importlib.import_module("configs.imgseg").get_config("small")
  assert sorted(model_differences(trained, seg)) == ["modalities.label", "modalities.segmentation"]
  seg.diffusion.parameterization = "eps"
  assert sorted(model_differences(trained, seg)) == ["diffusion.parameterization", "modalities.label",
                                                     "modalities.segmentation"]
  del trained["diffusion"]["parameterization"]  # a run made before the key existed
  other = importlib.import_module("configs.imglabel").get_config("small")
  other.diffusion.parameterization = "v"
  assert model_differences(trained, other) == {}


def test_a_run_made_before_a_key_existed_still_loads(tmp_path):
  from mmdiff_jax.config_validation import validate_config
  from mmdiff_jax.training.restore import run_config
  trained = json.loads(importlib.import_module("configs.imglabel").get_config("small").to_json_best_effort())
  del trained["eval"]["sdedit_t0_fraction"]  # keys added to the library after the run was made
  del trained["data"]["random_flip"]
  trained["modalities"]["label"]["profile_scale"] = 0.5  # the run's own values are kept
  (tmp_path / "config.json").write_text(json.dumps(trained))
  config = run_config(str(tmp_path), name="a run")
  validate_config(config)
  defaults = importlib.import_module("mmdiff_jax.config").default_config()
  assert config.eval.sdedit_t0_fraction == defaults.eval.sdedit_t0_fraction
  assert config.data.random_flip is False and config.modalities.label.profile_scale == 0.5
  assert sorted(config.modalities) == ["image", "label"]
  with pytest.raises(FileNotFoundError, match=r"elsewhere: no config.json there"):
    run_config(str(tmp_path / "missing"), name="elsewhere")


def test_a_run_written_with_the_old_key_names_loads_with_the_new(tmp_path):
  # A recorded run's config.json (written before the three "num_steps" that were not training's got
  # their own names, and with the retired head / recovery_loss keys) is the same model as today's.
  from mmdiff_jax.config_validation import validate_config
  from mmdiff_jax.training.restore import check_same_model, run_config
  recorded = pathlib.Path(__file__).parent.parent / "results" / "imgmask_classcond_v_small" / "config.json"
  old = json.loads(recorded.read_text())
  assert old["diffusion"]["num_steps"] == 1000 and old["eval"]["num_steps"] == 10
  shutil.copy(recorded, tmp_path / "config.json")
  config = run_config(str(tmp_path), name="a run")
  validate_config(config)
  assert (config.diffusion.num_timesteps, config.sampling.sampler_steps, config.eval.sampler_steps) == (
      1000, 50, 10)
  today = importlib.import_module("configs.imgmask_classcond").get_config("small")
  check_same_model(today, str(tmp_path))  # no error: the same model
  today.diffusion.num_timesteps = 500
  with pytest.raises(ValueError, match=r"diffusion.num_timesteps: trained 1000, given 500"):
    check_same_model(today, str(tmp_path))
  with pytest.raises(ValueError, match=r"'sampling.num_steps' is now 'sampling.sampler_steps'"):
    bad = importlib.import_module("configs.imglabel").get_config("small")
    bad.sampling.num_steps = 10
    validate_config(bad)


def test_colorized_maps_tell_classes_apart():
  from mmdiff_jax.models.kinds.segmentation import colorize
  colors = colorize(np.arange(11).reshape(1, 1, 11), 11)[0, 0]
  np.testing.assert_array_equal(colors[0], [-1, -1, -1])  # background black
  assert np.all(colors >= -1) and np.all(colors <= 1)
  distances = np.linalg.norm(colors[:, None] - colors[None], axis=-1) + 10 * np.eye(11)
  assert distances.min() > 0.3


def test_square_masks_cover_the_ratio_and_are_seeded():
  shape = (3, 28, 28, 1)
  masks = derived.square_masks(shape, ratios=np.array([0.1, 0.5, 0.7]),
                               rngs=[np.random.default_rng(0)] * 3)
  assert masks.shape == shape
  # 28 px over a 4x4 grid: 7x7 cells; round(ratio * 16) cells.
  np.testing.assert_array_equal(masks.sum(axis=(1, 2, 3)) / 49, [2, 8, 11])
  again = derived.square_masks(shape, ratios=np.array([0.1, 0.5, 0.7]),
                               rngs=[np.random.default_rng(0)] * 3)
  np.testing.assert_array_equal(masks, again)
  batch = {"image": np.ones(shape, np.float32), "label": np.zeros(3, np.int32)}
  out = derived.derive(dict(batch), ("random_square_mask",), seed=1, positions=range(3))
  np.testing.assert_array_equal(out["masked_image"], 1.0 - out["mask"])
  assert np.all((out["mask"].mean(axis=(1, 2, 3)) >= 1 / 16) & (out["mask"].mean(axis=(1, 2, 3)) <= 12 / 16))
  with pytest.raises(ValueError, match=r"config.data.derived: unknown 'blur'"):
    derived.derive(dict(batch), ("blur",), seed=1, positions=range(3))


def test_masked_images_fill_their_holes_as_configured(data_dir):
  # config.data.mask_fill_value / mask_fill_pattern reach the training stream; the masks do not
  # depend on them.
  batches = {}
  for fill in ((0.0, "constant"), (-1.0, "constant"), (0.0, "checkerboard")):
    config = importlib.import_module("configs.imgmask").get_config("smoke")
    config.data.update(data_dir=data_dir, mask_fill_value=fill[0], mask_fill_pattern=fill[1])
    batches[fill] = next(iter(pipeline.make_iterator(
        config.data, split="train", global_batch_size=8, seed=0, shuffle=False, training=True)))
  board = np.where(np.add.outer(np.arange(28), np.arange(28)) % 2 == 0, 1.0, -1.0)[None, :, :, None]
  for (value, pattern), batch in batches.items():
    np.testing.assert_array_equal(batch["mask"], batches[0.0, "constant"]["mask"])
    missing = batch["mask"][..., 0] > 0
    assert missing.any() and (~missing).any()
    expected = np.broadcast_to(board if pattern == "checkerboard" else np.float32(value),
                               batch["image"].shape)
    np.testing.assert_array_equal(batch["masked_image"][missing], expected[missing])
    np.testing.assert_array_equal(batch["masked_image"][~missing], batch["image"][~missing])
  with pytest.raises(ValueError, match=r"config.data.mask_fill_pattern: got 'noise'"):
    derived.hole_fill((1, 4, 4, 1), value=0.0, pattern="noise")


def test_embedding_is_precomputed_into_the_dataset(embedding_data_dir):
  """imgemb's dataset stores each image's AlexNet embedding: batches carry it, aligned with the image
  (recomputed here from the batch's own images) and unit-RMS; training images padded to 32 crop back
  to the stored image exactly."""
  from mmdiff_jax.data import pipeline
  from mmdiff_jax.models import alexnet_features as features
  config = importlib.import_module("configs.imgemb").get_config("smoke")
  config.data.data_dir = embedding_data_dir
  assert config.data.name == "fashion_mnist_offline_alexnet" and not config.data.derived
  batch = next(pipeline.make_iterator(config.data, split="test", global_batch_size=8, seed=0,
                                      shuffle=True, read_threads=0))
  assert batch["embedding"].shape == (8, features.EMBEDDING_DIM)
  assert batch["embedding"].dtype == np.float32
  np.testing.assert_allclose(np.sqrt(np.mean(batch["embedding"] ** 2, axis=1)), 1.0, rtol=1e-4)
  np.testing.assert_allclose(batch["embedding"], features.image_embedding(batch["image"]),
                             rtol=1e-3, atol=1e-3)
  # Rows belong to their own images: the embeddings of different images differ.
  assert np.min(np.linalg.norm(batch["embedding"][1:] - batch["embedding"][:1], axis=1)) > 0.05
  config.data.image_size = 32
  padded = next(pipeline.make_iterator(config.data, split="test", global_batch_size=8, seed=0,
                                       shuffle=True, read_threads=0))
  np.testing.assert_array_equal(images_lib.native_images(padded["image"], native_size=28),
                                batch["image"])
  np.testing.assert_array_equal(padded["embedding"], batch["embedding"])
  assert pipeline.native_image_size(config.data, "test") == 28
