"""Gaussian KL terms of the multimodal variational bound (docs/METHOD.md, "Objective"). All elementwise, nats."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmdiff_jax.diffusion import process
from mmdiff_jax.diffusion.schedules import Schedule


def gaussian_kl(mean1, var1, mean2, var2) -> jnp.ndarray:
  """KL(N(mean1, var1) || N(mean2, var2)), elementwise."""
  return 0.5 * (jnp.log(var2) - jnp.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def prior_kl(schedule: Schedule, weights, *, z0, encodings) -> jnp.ndarray:
  """KL(q(z_T | z_0, X) || N(0, I)), elementwise, shaped like z0."""
  mean, var = process.marginal(schedule, weights, t=schedule.num_timesteps, z0=z0, encodings=encodings)
  return gaussian_kl(mean, var, 0.0, 1.0)


def diffusion_kl(schedule: Schedule, weights, *, t, z_t, z0, encodings, z0_hat,
                 encodings_hat) -> jnp.ndarray:
  """KL(q(z_{t-1} | z_t, z_0, X) || q(z_{t-1} | z_t, z0_hat, X_hat)) = (mu~ - mu~_hat)^2 / (2 beta~_t).

  Both Gaussians share beta~_t, so only the means differ. At t = 1 the posterior is a point mass and
  the bound uses the data term instead: the result is exactly 0 there.

  Returns:
    elementwise KL shaped like z_t.
  """
  mean, var = process.posterior(schedule, weights, t=t, z_t=z_t, z0=z0, encodings=encodings)
  mean_hat, _ = process.posterior(schedule, weights, t=t, z_t=z_t, z0=z0_hat,
                                  encodings=encodings_hat)
  first_step = process.at_step(jnp.arange(1, schedule.num_timesteps + 1) == 1, t, jnp.ndim(z_t))
  safe_var = jnp.where(first_step, 1.0, var)
  return jnp.where(first_step, 0.0, (mean - mean_hat) ** 2 / (2.0 * safe_var))


def discretized_gaussian_nll(x, mean, log_scale, *, num_bins: int = 256) -> jnp.ndarray:
  """-log p(x) for data x in [-1, 1] quantized to `num_bins` levels, under N(mean, exp(log_scale)^2)
  integrated over each bin (the edge bins extend to -inf / +inf), elementwise (Ho et al. 2020, eq. 13).
  """
  half_bin = 1.0 / (num_bins - 1)
  inv_scale = jnp.exp(-log_scale)
  upper = inv_scale * (x - mean + half_bin)
  lower = inv_scale * (x - mean - half_bin)
  log_cdf_upper = jax.scipy.stats.norm.logcdf(upper)
  log_sf_lower = jax.scipy.stats.norm.logcdf(-lower)
  # log(Phi(upper) - Phi(lower)), stable on either side of the mean.
  log_mass = jnp.where(
      lower > 0,
      log_sf_lower + jnp.log(-jnp.expm1(jax.scipy.stats.norm.logcdf(-upper) - log_sf_lower)),
      log_cdf_upper + jnp.log(-jnp.expm1(jax.scipy.stats.norm.logcdf(lower) - log_cdf_upper)))
  log_prob = jnp.where(x < -1 + half_bin, log_cdf_upper,
                       jnp.where(x > 1 - half_bin, log_sf_lower, log_mass))
  return -log_prob
