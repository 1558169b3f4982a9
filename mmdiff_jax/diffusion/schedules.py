"""Noise schedules: beta_t for t = 1..T, with the products the closed forms need.

Everything is computed in float64 numpy and stored in float32, so that the small quantities near
t = 1 (beta_1 ~ 1e-4, 1 - abar_1) keep full float32 relative precision instead of being formed as
differences of numbers close to one.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.struct
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Schedule:
  """A discrete noise schedule; entry t-1 of each (T,) field is step t.

  Attributes:
    betas: (T,) beta_t, the per-step noise variance.
    alphas: (T,) alpha_t = 1 - beta_t.
    alpha_bars: (T,) abar_t = prod_{s<=t} alpha_s.
    one_minus_alpha_bars: (T,) 1 - abar_t, computed without cancellation.
  """

  betas: jnp.ndarray
  alphas: jnp.ndarray
  alpha_bars: jnp.ndarray
  one_minus_alpha_bars: jnp.ndarray

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def schedule_from_betas(betas) -> Schedule:
  """Builds a Schedule from (T,) betas in (0, 1), computing products in float64."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.shape[0] < 1:
    raise ValueError(f"betas: expected a non-empty 1-D array, got shape {betas.shape}")
  if not np.all((betas > 0) & (betas < 1)):
    raise ValueError(f"betas: expected values in (0, 1), got min {betas.min()} max {betas.max()}")
  log_alpha_bars = np.cumsum(np.log1p(-betas))
  return Schedule(
      betas=jnp.asarray(betas, jnp.float32),
      alphas=jnp.asarray(1.0 - betas, jnp.float32),
      alpha_bars=jnp.asarray(np.exp(log_alpha_bars), jnp.float32),
      one_minus_alpha_bars=jnp.asarray(-np.expm1(log_alpha_bars), jnp.float32),
  )


def _linear_betas(num_timesteps: int, *, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """DDPM (Ho et al. 2020)."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def _cosine_betas(num_timesteps: int, *, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal (2021): abar(t) = f(t) / f(0), f(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)."""
  steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
  alpha_bars = f / f[0]
  return np.minimum(1.0 - alpha_bars[1:] / alpha_bars[:-1], max_beta)


_BETA_FNS: dict[str, Callable[..., np.ndarray]] = {
    "linear": _linear_betas,
    "cosine": _cosine_betas,
}


def get_schedule(name: str, num_timesteps: int, **kwargs) -> Schedule:
  """Returns the named schedule with `num_timesteps` steps.

  Args:
    name: "linear" (kwargs beta_start=1e-4, beta_end=0.02) or "cosine" (kwargs s=0.008,
      max_beta=0.999).
    num_timesteps: T >= 1.
    **kwargs: the named schedule's parameters.
  """
  if name not in _BETA_FNS:
    raise ValueError(f"schedule name: unknown {name!r}; expected one of {sorted(_BETA_FNS)}")
  if int(num_timesteps) != num_timesteps or num_timesteps < 1:
    raise ValueError(f"num_timesteps: expected an integer >= 1, got {num_timesteps!r}")
  return schedule_from_betas(_BETA_FNS[name](int(num_timesteps), **kwargs))
