"""Each experiment's smoke config trains, samples and evaluates end to end; derived features are right."""

from __future__ import annotations

import importlib
import json
import os

import numpy as np
import pytest

from mmdiff_jax import evaluate
from mmdiff_jax.data import derived
from mmdiff_jax.training import train


@pytest.mark.parametrize("name,expected", [
    ("imgseg", ["eval/segmentation_miou", "eval/frechet_alexnet_distance",
                "eval/test_bound/image_bits_per_dim"]),
    ("imgmask", ["eval/inpainting/psnr@0.1", "eval/inpainting/lpips@0.7", "eval/precision"]),
    ("imgemb", ["eval/embedding_cosine", "eval/recall"]),
])
def test_smoke_experiment_trains_samples_and_evaluates(name, expected, data_dir, tmp_path):
  config = importlib.import_module(f"configs.{name}").get_config("smoke")
  config.data.data_dir = data_dir
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
  if name == "imgseg":
    assert 0.0 <= metrics["eval/segmentation_miou"] <= 1.0
  if name == "imgemb":
    assert -1.0 <= metrics["eval/embedding_cosine"] <= 1.0
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


def test_square_masks_cover_the_ratio_and_are_seeded():
  shape = (3, 28, 28, 1)
  masks = derived.square_masks(shape, ratios=np.array([0.1, 0.5, 0.7]),
                               rng=np.random.default_rng(0))
  assert masks.shape == shape
  # 28 px over a 4x4 grid: 7x7 cells; round(ratio * 16) cells.
  np.testing.assert_array_equal(masks.sum(axis=(1, 2, 3)) / 49, [2, 8, 11])
  again = derived.square_masks(shape, ratios=np.array([0.1, 0.5, 0.7]),
                               rng=np.random.default_rng(0))
  np.testing.assert_array_equal(masks, again)
  batch = {"image": np.ones(shape, np.float32), "label": np.zeros(3, np.int32)}
  out = derived.derive(dict(batch), ("random_square_mask",), seed=1, batch_index=5, process_index=0)
  np.testing.assert_array_equal(out["masked_image"], 1.0 - out["mask"])
  assert np.all((out["mask"].mean(axis=(1, 2, 3)) >= 1 / 16) & (out["mask"].mean(axis=(1, 2, 3)) <= 12 / 16))
  with pytest.raises(ValueError, match=r"config.data.derived: unknown 'blur'"):
    derived.derive(dict(batch), ("blur",), seed=1, batch_index=0, process_index=0)
