"""Per-modality aggregation weights w_t^(i): choose the marginal profile lambda_t, derive the steps.

Sampling starts from N(0, I), so every modality's lambda_T must be ~0 (docs/METHOD.md, "The prior must
match"). A constant w_t does not give that; the "bump" profile lambda_t = c sqrt(abar_t)(1 - sqrt(abar_t))
does, and vanishes at t = 0 as well. Relative to the noise sigma_t = sqrt(1 - abar_t) the bump fades
at low noise too (lambda_t / sigma_t -> 0 as t -> 0): an observed modality then barely reaches the
last steps. The "observation" profile lambda_t = c sqrt(abar_t) sqrt(1 - abar_t) keeps
lambda_t / sigma_t = c sqrt(abar_t) -> c there, and still vanishes at T.
"""

from __future__ import annotations

import jax.numpy as jnp

from mmdiff_jax.diffusion.process import aggregation_coefficients
from mmdiff_jax.diffusion.schedules import Schedule
from mmdiff_jax.xla_defaults import jit_run_once

PROFILES = ("bump", "observation", "zero")
STEP_WEIGHTS = ("bump", "observation", "constant", "zero")


def marginal_profile(schedule: Schedule, name: str, scale: float = 1.0) -> jnp.ndarray:
  """A (T,) marginal coefficient profile lambda_t for one modality.

  "bump": scale * sqrt(abar_t) * (1 - sqrt(abar_t)); its peak, scale / 4, is at abar_t = 1/4.
  "observation": scale * sqrt(abar_t) * sqrt(1 - abar_t) (peak scale / 2 at abar_t = 1/2): its
    ratio to the noise level, scale * sqrt(abar_t), stays near `scale` at low noise.
  "zero": the modality is not injected.
  """
  sqrt_abar = jnp.sqrt(schedule.alpha_bars)
  if name == "bump":
    # 1 - sqrt(abar) as (1 - abar) / (1 + sqrt(abar)): no cancellation where abar ~ 1 (the first steps).
    return scale * sqrt_abar * schedule.one_minus_alpha_bars / (1.0 + sqrt_abar)
  if name == "observation":
    return scale * sqrt_abar * jnp.sqrt(schedule.one_minus_alpha_bars)
  if name == "zero":
    return jnp.zeros_like(sqrt_abar)
  raise ValueError(f"profile: unknown {name!r}; expected one of {PROFILES}")


def weights_from_profile(schedule: Schedule, profiles) -> jnp.ndarray:
  """Step weights whose marginal coefficients are `profiles`: w_t = lambda_t - sqrt(alpha_t) lambda_{t-1}.

  Args:
    profiles: (T,) or (T, N) lambda_t, row t-1 is step t (lambda_0 = 0).
  Returns:
    weights of the same shape.
  """
  profiles = jnp.asarray(profiles, jnp.float32)
  if profiles.ndim not in (1, 2) or profiles.shape[0] != schedule.num_timesteps:
    raise ValueError(
        f"profiles: expected shape (T,) or (T, N) with T = {schedule.num_timesteps}, got {profiles.shape}")
  sqrt_alphas = jnp.sqrt(schedule.alphas).reshape((-1,) + (1,) * (profiles.ndim - 1))
  previous = jnp.concatenate([jnp.zeros_like(profiles[:1]), profiles[:-1]], axis=0)
  return profiles - sqrt_alphas * previous


def step_weights(schedule: Schedule, name: str, scale: float = 1.0) -> jnp.ndarray:
  """(T,) step weights w_t for one modality by name.

  "bump", "observation": derived from that marginal profile (lambda_T ~ 0: the prior matches).
  "constant": w_t = scale (lambda_T does NOT vanish; kept for comparison with the paper's wording).
  "zero": no injection.
  """
  if name in PROFILES:
    return weights_from_profile(schedule, marginal_profile(schedule, name, scale))
  if name == "constant":
    return jnp.full((schedule.num_timesteps,), scale, jnp.float32)
  raise ValueError(f"step weights: unknown {name!r}; expected one of {STEP_WEIGHTS}")


@jit_run_once  # config validation runs it once per process
def final_coefficients(schedule: Schedule, weights) -> jnp.ndarray:
  """(N,) lambda_T^(i): how much of each encoding is left in z_T (should be ~0)."""
  return aggregation_coefficients(schedule, weights)[-1]
