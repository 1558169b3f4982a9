"""Diffusion inpainting baselines that need no retraining: SDEdit and known-region replacement.

Both run on any trained diffusion model through its Sampler (the unconditional baseline is the usual
one); MT-Diffusion itself inpaints by observing the masked image as a modality (Sampler.sample). They are
the comparators of the paper's restoration claim:

- SDEdit (Meng et al. 2022): the masked image, its hole left at the fill value, is noised to step t0 by
  the forward marginal and denoised from there. The model never sees the mask.
- Known-region replacement (the RePaint family, Lugmayr et al. 2022): sampling starts from N(0, I); after
  every step the observed pixels of z_s are replaced by the observation noised to step s, so the
  generated region is steered by the known one. `resamples` > 1 repeats each step after re-noising its
  result back to t (RePaint's resampling).

Masks follow the evaluation convention: 1 marks the MISSING region, 0 the observed pixels.
Aggregated modalities that are not observed (a model with a label, say; an unconditional model has
none) enter the forward-noised observation as the generated region gets them: known-region replacement
noises the known pixels to step s with the encodings the model predicted at that step, so both regions
of z_s follow one forward process. SDEdit's start state, before any prediction exists, takes a zero
encoding for them.
"""

from __future__ import annotations

from typing import Any, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mmdiff_jax.diffusion import process
from mmdiff_jax.errors import BadValueError
from mmdiff_jax.sampling.samplers import Sampler, ddim_timesteps


def _encodings(sampler: Sampler, observed_encodings, batch_size: int) -> jnp.ndarray:
  """(N, B, *z_shape): the observed modalities' true encodings, zeros for the others."""
  encodings = jnp.zeros((len(sampler.model.aggregated), batch_size, *sampler.model.z_shape))
  for i, encoding in observed_encodings.items():
    encodings = encodings.at[i].set(encoding)
  return encodings


def _noised(sampler: Sampler, x, s, encodings, noise):
  """A draw of q(z_s | z_0 = x, X) (s may be 0: x itself). x: (B, *z_shape); s: a scalar step."""
  s_vec = jnp.full((x.shape[0],), jnp.maximum(s, 1), jnp.int32)
  z_s = process.sample_marginal(sampler.schedule, sampler.weights, t=s_vec, z0=x,
                                encodings=encodings, noise=noise)
  return jnp.where(s == 0, x, z_s)


def sdedit_timesteps(sampler: Sampler, t0: int) -> np.ndarray:
  """t0 > ... > 0: the sampler's kind of schedule restricted to [0, t0] (DDIM: the sampler's step
  count scaled by t0 / T, at least 1); just [0] for t0 = 0."""
  if t0 == 0:
    return np.zeros((1,), np.int32)
  if sampler.method == "ancestral":
    return np.arange(t0, -1, -1, dtype=np.int32)
  count = max(1, round(sampler.sampler_steps * t0 / sampler.schedule.num_timesteps))
  return ddim_timesteps(t0, count)


def sdedit(sampler: Sampler, params, rng: jax.Array, images, *, t0_fraction: float,
           observed: Mapping[str, Any] | None = None) -> jnp.ndarray:
  """SDEdit from `images` (B, H, W, C) in [-1, 1] (the masked image, hole at its fill value).

  Args:
    t0_fraction: the starting step t0 as a fraction of T, in [0, 1]; 0 returns `images` unchanged.
    observed: other observed modalities (e.g. a class-conditional model's label).
  Returns:
    (B, H, W, C) images.
  """
  if not 0.0 <= t0_fraction <= 1.0:
    raise BadValueError(f"config.eval.sdedit_t0_fraction: got {t0_fraction!r}; expected a value in [0, 1]")
  chex.assert_shape(images, (None, *sampler.model.z_shape))
  batch_size = images.shape[0]
  _, observed_encodings, conditions = sampler.prepare_observed(params, dict(observed or {}),
                                                              batch_size=batch_size)
  encodings = _encodings(sampler, observed_encodings, batch_size)
  timesteps = jnp.asarray(sdedit_timesteps(sampler, int(round(t0_fraction * sampler.schedule.num_timesteps))))
  init_rng, loop_rng = jax.random.split(rng)
  z = _noised(sampler, images, timesteps[0], encodings, jax.random.normal(init_rng, images.shape))

  def body(i, z):
    t, s = timesteps[i], timesteps[i + 1]
    step_key = jax.random.fold_in(loop_rng, i)
    z0, eps, step_encodings, _ = sampler.predict(params, z, t, observed_encodings, None, conditions,
                                                 key=jax.random.fold_in(step_key, 1))
    noise = jax.random.normal(step_key, z.shape)
    return sampler.step(z0, eps, step_encodings, z, t, s, noise)

  return jax.lax.fori_loop(0, timesteps.shape[0] - 1, body, z)


def known_region_replacement(sampler: Sampler, params, rng: jax.Array, images, mask, *,
                             resamples: int = 1,
                             observed: Mapping[str, Any] | None = None) -> jnp.ndarray:
  """Inpaints the region where `mask` is 1 by known-region replacement.

  Args:
    images: (B, H, W, C) in [-1, 1]: the observation (its masked region is never read).
    mask: (B, H, W, 1) or (B, H, W, C), 1 = missing.
    resamples: passes per step (1: none; RePaint's U).
    observed: other observed modalities.
  Returns:
    (B, H, W, C) images whose observed pixels equal `images` exactly.
  """
  if int(resamples) < 1:
    raise BadValueError(f"config.eval.replacement_resamples: got {resamples!r}; expected an integer >= 1")
  chex.assert_shape(images, (None, *sampler.model.z_shape))
  missing = jnp.broadcast_to(jnp.asarray(mask, images.dtype), images.shape)
  batch_size = images.shape[0]
  _, observed_encodings, conditions = sampler.prepare_observed(params, dict(observed or {}),
                                                              batch_size=batch_size)
  timesteps = jnp.asarray(sampler.timesteps())
  init_rng, loop_rng = jax.random.split(rng)
  z = jax.random.normal(init_rng, images.shape)
  schedule = sampler.schedule

  def denoise(z, t, s, key):
    z0, eps, step_encodings, _ = sampler.predict(params, z, t, observed_encodings, None, conditions,
                                                 key=jax.random.fold_in(key, 1))
    step_key, known_key = jax.random.split(key)
    z_s = sampler.step(z0, eps, step_encodings, z, t, s, jax.random.normal(step_key, z.shape))
    # The step's encodings (observed ones true, the others predicted), as in the generated region.
    known = _noised(sampler, images, s, step_encodings, jax.random.normal(known_key, z.shape))
    return missing * z_s + (1.0 - missing) * known, step_encodings

  def renoise(z_s, s, t, encodings, key):
    """A draw of q(z_t | z_s) (t > s >= 1), in the shifted coordinates y = z - sum lambda e."""
    s_vec, t_vec = (jnp.full((batch_size,), v, jnp.int32) for v in (s, t))
    y_s = process.shift(schedule, sampler.weights, t=s_vec, z_t=z_s, encodings=encodings)
    abar_t, abar_s = schedule.alpha_bars[t - 1], schedule.alpha_bars[s - 1]
    variance = process.one_minus_ratio(abar_t=abar_t, abar_s=abar_s,
                                       one_minus_abar_t=schedule.one_minus_alpha_bars[t - 1],
                                       one_minus_abar_s=schedule.one_minus_alpha_bars[s - 1])
    y_t = jnp.sqrt(abar_t / abar_s) * y_s + jnp.sqrt(variance) * jax.random.normal(key, z_s.shape)
    return y_t + process.aggregated_encoding(schedule, sampler.weights, t=t_vec,
                                             encodings=encodings)

  def body(i, z):
    t, s = timesteps[i], timesteps[i + 1]
    key = jax.random.fold_in(loop_rng, i)

    def one_pass(u, z_t):
      z_s, encodings = denoise(z_t, t, s, jax.random.fold_in(key, 2 * u))
      # Every pass but the last goes back to t; at s = 0 there is nothing to resample.
      again = (u < resamples - 1) & (s > 0)
      back = renoise(z_s, jnp.maximum(s, 1), t, encodings, jax.random.fold_in(key, 2 * u + 1))
      return jnp.where(again, back, z_s)

    return jax.lax.fori_loop(0, int(resamples), one_pass, z)

  return jax.lax.fori_loop(0, timesteps.shape[0] - 1, body, z)
