"""The MT-Diffusion forward process and its closed forms (docs/METHOD.md).

Transition  q(z_t | z_{t-1}, X) = N(sqrt(alpha_t) z_{t-1} + sum_i w_t^(i) e_i, beta_t I)
Marginal    q(z_t | z_0, X)     = N(sqrt(abar_t) z_0 + sum_i lambda_t^(i) e_i, (1 - abar_t) I)
In shifted coordinates y_t = z_t - sum_i lambda_t^(i) e_i the chain is plain DDPM with y_0 = z_0,
so every posterior and every prediction conversion is DDPM's, applied to y.

Conventions shared by every function here:
  weights:   (T, N), weights[t-1, i] = w_t^(i) >= 0.
  encodings: (N, *z.shape), encodings[i] = E_i(x_i).
  t:         a python int or 0-d int array in 1..T, or a (B,) int array when z is (B, ...) and
             encodings are (N, B, ...).
  Returned variances broadcast against the means: 0-d for scalar t, (B, 1, ..., 1) for batched t.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmdiff_jax.diffusion.schedules import Schedule

PARAMETERIZATIONS = ("eps", "z0", "v")


# ----------------------------------------------------------------------------- argument checks


def _check_weights(schedule: Schedule, weights) -> None:
  shape = jnp.shape(weights)
  if len(shape) != 2 or shape[0] != schedule.num_timesteps:
    raise ValueError(f"weights: expected shape (T, N) = ({schedule.num_timesteps}, N), got {shape}")


def _check_encodings(weights, encodings, z) -> None:
  expected = (jnp.shape(weights)[1], *jnp.shape(z))
  if jnp.shape(encodings) != expected:
    raise ValueError(
        f"encodings: expected shape (N, *z.shape) = {expected}, got {jnp.shape(encodings)}")


def _concrete_steps(steps, z, *, name: str) -> np.ndarray | None:
  """Integer steps `name` (a scalar or (B,), B = z's leading size) as a numpy array; None where they
  are traced (their values are unknown until run)."""
  shape = jnp.shape(steps)
  if len(shape) > 1:
    raise ValueError(f"{name}: expected a scalar or a (B,) array, got shape {shape}")
  if len(shape) == 1 and (jnp.ndim(z) == 0 or shape[0] != jnp.shape(z)[0]):
    raise ValueError(
        f"{name}: batched {name} of shape {shape} needs z of shape (B, ...) with B = {shape[0]}, "
        f"got z of shape {jnp.shape(z)}")
  if isinstance(steps, jax.core.Tracer):
    return None
  steps_np = np.asarray(steps)
  if not np.issubdtype(steps_np.dtype, np.integer):
    raise ValueError(f"{name}: expected integer steps, got dtype {steps_np.dtype}")
  return steps_np


def _check_t(schedule: Schedule, t, z) -> None:
  t_np = _concrete_steps(t, z, name="t")
  if t_np is not None and t_np.size and (t_np.min() < 1 or t_np.max() > schedule.num_timesteps):
    raise ValueError(f"t: expected steps in 1..{schedule.num_timesteps}, got {t_np.tolist()}")


def _check_earlier_step(t, s, z) -> None:
  """s, the step a jump from t lands on: 0 <= s < t, where both are concrete."""
  s_np = _concrete_steps(s, z, name="s")
  if s_np is None or isinstance(t, jax.core.Tracer):
    return
  t_np = np.asarray(t)
  if s_np.size and (s_np.min() < 0 or np.any(s_np >= t_np)):
    raise ValueError(f"s: expected steps with 0 <= s < t, got s = {s_np.tolist()} for t = {t_np.tolist()}")


def _check(schedule, weights, t, z, encodings) -> None:
  _check_weights(schedule, weights)
  _check_t(schedule, t, z)
  _check_encodings(weights, encodings, z)


# ----------------------------------------------------------------------------- gathering helpers


def at_step(table: jnp.ndarray, t, z_ndim: int) -> jnp.ndarray:
  """Entry t-1 (step t) of a (T,) table, shaped to broadcast against z: 0-d, or (B, 1, ..., 1)."""
  values = jnp.take(table, jnp.asarray(t) - 1, axis=0)
  if jnp.ndim(t) == 1:
    values = values.reshape(values.shape + (1,) * (z_ndim - 1))
  return values


def _at_prev(table: jnp.ndarray, t, z_ndim: int, *, value_at_zero: float) -> jnp.ndarray:
  """Entry t-2 of a (T,) table (step t-1), with `value_at_zero` for step 0."""
  padded = jnp.concatenate([jnp.full((1,), value_at_zero, table.dtype), table])
  return at_step(padded, t, z_ndim)


def _weighted_sum(coefficients: jnp.ndarray, t, encodings: jnp.ndarray) -> jnp.ndarray:
  """sum_i c_t^(i) e_i for a (T+1, N) table indexed by t (row 0 = step 0); shape of z."""
  coeffs = jnp.take(coefficients, jnp.asarray(t), axis=0)  # (N,) or (B, N)
  coeffs = jnp.moveaxis(coeffs, -1, 0)  # (N,) or (N, B)
  coeffs = coeffs.reshape(coeffs.shape + (1,) * (encodings.ndim - coeffs.ndim))
  return jnp.sum(coeffs.astype(encodings.dtype) * encodings, axis=0)


def _with_step_zero(table: jnp.ndarray) -> jnp.ndarray:
  """Prepends a zero row (step 0) to a (T, N) table, so that row t is step t."""
  return jnp.concatenate([jnp.zeros_like(table[:1]), table], axis=0)


# ----------------------------------------------------------------------------- coefficients


def aggregation_coefficients(schedule: Schedule, weights) -> jnp.ndarray:
  """lambda_t^(i) = sum_{s<=t} sqrt(abar_t / abar_s) w_s^(i): the marginal's encoding weights.

  Computed by the recursion lambda_t = sqrt(alpha_t) lambda_{t-1} + w_t (lambda_0 = 0) as an
  associative scan: exact in form, log-depth, no division by small abar.

  Args:
    schedule: T steps.
    weights: (T, N).
  Returns:
    (T, N); row t-1 is step t.
  """
  _check_weights(schedule, weights)
  weights = jnp.asarray(weights, jnp.float32)
  decay = jnp.broadcast_to(jnp.sqrt(schedule.alphas)[:, None], weights.shape)

  def combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2

  _, lambdas = jax.lax.associative_scan(combine, (decay, weights), axis=0)
  return lambdas


# ----------------------------------------------------------------------------- distributions


def transition(schedule: Schedule, weights, *, t, z_prev, encodings):
  """q(z_t | z_{t-1}, X) = N(sqrt(alpha_t) z_{t-1} + sum_i w_t^(i) e_i, beta_t I).

  Args:
    z_prev: z_{t-1}, shape (...) or (B, ...) with batched t.
    encodings: (N, *z_prev.shape).
  Returns:
    (mean, var): mean shaped like z_prev, var broadcastable to it.
  """
  _check(schedule, weights, t, z_prev, encodings)
  nd = jnp.ndim(z_prev)
  mean = (jnp.sqrt(at_step(schedule.alphas, t, nd)) * z_prev
          + _weighted_sum(_with_step_zero(jnp.asarray(weights, jnp.float32)), t, encodings))
  return mean, at_step(schedule.betas, t, nd)


def marginal(schedule: Schedule, weights, *, t, z0, encodings):
  """q(z_t | z_0, X) = N(sqrt(abar_t) z_0 + sum_i lambda_t^(i) e_i, (1 - abar_t) I).

  Returns:
    (mean, var): mean shaped like z0, var broadcastable to it.
  """
  _check(schedule, weights, t, z0, encodings)
  nd = jnp.ndim(z0)
  lambdas = _with_step_zero(aggregation_coefficients(schedule, weights))
  mean = jnp.sqrt(at_step(schedule.alpha_bars, t, nd)) * z0 + _weighted_sum(lambdas, t, encodings)
  return mean, at_step(schedule.one_minus_alpha_bars, t, nd)


def sample_marginal(schedule: Schedule, weights, *, t, z0, encodings, noise) -> jnp.ndarray:
  """z_t = marginal mean + sqrt(1 - abar_t) * noise; noise ~ N(0, I) shaped like z0."""
  mean, var = marginal(schedule, weights, t=t, z0=z0, encodings=encodings)
  return mean + jnp.sqrt(var) * noise


def _posterior_coefficients(schedule: Schedule, t, nd: int):
  """(c_z0, c_y, beta~_t) of q(y_{t-1} | y_t, y_0) = N(c_z0 y_0 + c_y y_t, beta~_t)."""
  beta = at_step(schedule.betas, t, nd)
  one_minus_abar = at_step(schedule.one_minus_alpha_bars, t, nd)
  one_minus_abar_prev = _at_prev(schedule.one_minus_alpha_bars, t, nd, value_at_zero=0.0)
  abar_prev = _at_prev(schedule.alpha_bars, t, nd, value_at_zero=1.0)
  c_z0 = jnp.sqrt(abar_prev) * beta / one_minus_abar
  c_y = jnp.sqrt(at_step(schedule.alphas, t, nd)) * one_minus_abar_prev / one_minus_abar
  var = beta * one_minus_abar_prev / one_minus_abar
  return c_z0, c_y, var


def posterior(schedule: Schedule, weights, *, t, z_t, z0, encodings):
  """q(z_{t-1} | z_t, z_0, X) = N(mu~_t, beta~_t I), beta~_t = beta_t (1-abar_{t-1}) / (1-abar_t).

  mu~_t = c_z0 z_0 + c_y (z_t - sum_i lambda_t^(i) e_i) + sum_i lambda_{t-1}^(i) e_i.
  At t = 1: mean = z_0, var = 0.

  Returns:
    (mean, var): mean shaped like z_t, var broadcastable to it.
  """
  _check(schedule, weights, t, z_t, encodings)
  _check_encodings(weights, encodings, z0)
  nd = jnp.ndim(z_t)
  lambdas = _with_step_zero(aggregation_coefficients(schedule, weights))
  c_z0, c_y, var = _posterior_coefficients(schedule, t, nd)
  shifted = z_t - _weighted_sum(lambdas, t, encodings)
  mean = c_z0 * z0 + c_y * shifted + _weighted_sum(lambdas, jnp.asarray(t) - 1, encodings)
  return mean, var


# ----------------------------------------------------------------------------- predictions


def aggregated_encoding(schedule: Schedule, weights, *, t, encodings) -> jnp.ndarray:
  """sum_i lambda_t^(i) e_i, shaped like one encoding; t = 0 gives zeros."""
  _check_weights(schedule, weights)
  lambdas = _with_step_zero(aggregation_coefficients(schedule, weights))
  return _weighted_sum(lambdas, t, encodings)


def shift(schedule: Schedule, weights, *, t, z_t, encodings) -> jnp.ndarray:
  """y_t = z_t - sum_i lambda_t^(i) e_i: the DDPM chain underneath (y_0 = z_0)."""
  _check(schedule, weights, t, z_t, encodings)
  return z_t - aggregated_encoding(schedule, weights, t=t, encodings=encodings)


def eps_from_z0(schedule: Schedule, weights, *, t, z_t, z0, encodings) -> jnp.ndarray:
  """The marginal's noise: eps = (y_t - sqrt(abar_t) z_0) / sqrt(1 - abar_t)."""
  nd = jnp.ndim(z_t)
  y_t = shift(schedule, weights, t=t, z_t=z_t, encodings=encodings)
  return ((y_t - jnp.sqrt(at_step(schedule.alpha_bars, t, nd)) * z0)
          / jnp.sqrt(at_step(schedule.one_minus_alpha_bars, t, nd)))


def z0_from_eps(schedule: Schedule, weights, *, t, z_t, eps, encodings) -> jnp.ndarray:
  """z_0 = (y_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
  nd = jnp.ndim(z_t)
  y_t = shift(schedule, weights, t=t, z_t=z_t, encodings=encodings)
  return ((y_t - jnp.sqrt(at_step(schedule.one_minus_alpha_bars, t, nd)) * eps)
          / jnp.sqrt(at_step(schedule.alpha_bars, t, nd)))


def v_from_z0_eps(schedule: Schedule, *, t, z0, eps) -> jnp.ndarray:
  """v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0 (Salimans & Ho 2022; encodings cancel in y)."""
  nd = jnp.ndim(z0)
  return (jnp.sqrt(at_step(schedule.alpha_bars, t, nd)) * eps
          - jnp.sqrt(at_step(schedule.one_minus_alpha_bars, t, nd)) * z0)


def z0_eps_from_prediction(schedule: Schedule, weights, *, t, z_t, encodings, prediction,
                           parameterization: str):
  """Converts a backbone output in any parameterization into (z0, eps).

  Args:
    prediction: shaped like z_t; an eps, z0 or v prediction.
    parameterization: one of PARAMETERIZATIONS.
  Returns:
    (z0, eps), each shaped like z_t.
  """
  if parameterization == "eps":
    z0 = z0_from_eps(schedule, weights, t=t, z_t=z_t, eps=prediction, encodings=encodings)
    return z0, prediction
  if parameterization == "z0":
    eps = eps_from_z0(schedule, weights, t=t, z_t=z_t, z0=prediction, encodings=encodings)
    return prediction, eps
  if parameterization == "v":
    nd = jnp.ndim(z_t)
    y_t = shift(schedule, weights, t=t, z_t=z_t, encodings=encodings)
    sqrt_abar = jnp.sqrt(at_step(schedule.alpha_bars, t, nd))
    sigma = jnp.sqrt(at_step(schedule.one_minus_alpha_bars, t, nd))
    return sqrt_abar * y_t - sigma * prediction, sigma * y_t + sqrt_abar * prediction
  raise ValueError(
      f"parameterization: unknown {parameterization!r}; expected one of {PARAMETERIZATIONS}")


def posterior_mean_from_eps(schedule: Schedule, weights, *, t, z_t, eps, encodings) -> jnp.ndarray:
  """mu~_t in noise form: (z_t - sum_i w_t^(i) e_i - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)."""
  _check(schedule, weights, t, z_t, encodings)
  nd = jnp.ndim(z_t)
  injected = _weighted_sum(_with_step_zero(jnp.asarray(weights, jnp.float32)), t, encodings)
  beta = at_step(schedule.betas, t, nd)
  sigma = jnp.sqrt(at_step(schedule.one_minus_alpha_bars, t, nd))
  return (z_t - injected - beta / sigma * eps) / jnp.sqrt(at_step(schedule.alphas, t, nd))


def one_minus_ratio(*, abar_t, abar_s, one_minus_abar_t, one_minus_abar_s) -> jnp.ndarray:
  """1 - abar_t / abar_s (s < t), the variance of q(y_t | y_s), to float32 precision at every step.

  Both forms below are exact in real numbers. In float32 each table entry carries a relative error
  of about epsilon, so 1 - abar_t / abar_s is off by ~2 epsilon abar_t / (abar_s - abar_t) relative
  (~1e-3 near t = 1, where the ratio is ~1), and (abar_s - abar_t) / abar_s, from the
  cancellation-free 1 - abar tables, by ~2 epsilon (1 - abar_t) / (abar_s - abar_t): the second is
  the smaller exactly where 1 - abar_t < abar_t. Arrays broadcast together."""
  from_differences = (one_minus_abar_t - one_minus_abar_s) / abar_s
  return jnp.where(one_minus_abar_t < abar_t, from_differences, 1.0 - abar_t / abar_s)


def ddim_step(schedule: Schedule, weights, *, t, s, z0, eps, encodings, eta, noise) -> jnp.ndarray:
  """DDIM (Song et al. 2021) from step t to an earlier step s, on the DDPM chain underneath:

    y_s = sqrt(abar_s) z_0 + sqrt(1 - abar_s - sigma^2) eps + sigma noise,
    z_s = y_s + sum_i lambda_s^(i) e_i,
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)).

  eta = 0 is deterministic (z_s is the marginal draw with the same eps); eta = 1 with s = t - 1 is a
  draw from the posterior q(z_{t-1} | z_t, z_0, X). s = 0 returns z_0.

  Args:
    t, s: integer steps, scalars or (B,), 0 <= s < t <= T.
    z0, eps, noise: shaped like z, (B, ...): the predictions at t and fresh N(0, I) noise.
    encodings: (N, *z.shape).
    eta: the stochasticity, >= 0.
  Returns:
    z_s, shaped like z.
  """
  _check(schedule, weights, t, z0, encodings)
  _check_earlier_step(t, s, z0)
  nd = jnp.ndim(z0)
  s_safe = jnp.maximum(jnp.asarray(s), 1)
  abar_t, abar_s = at_step(schedule.alpha_bars, t, nd), at_step(schedule.alpha_bars, s_safe, nd)
  one_minus_abar_t = at_step(schedule.one_minus_alpha_bars, t, nd)
  one_minus_abar_s = at_step(schedule.one_minus_alpha_bars, s_safe, nd)
  sigma = eta * jnp.sqrt(one_minus_abar_s / one_minus_abar_t
                         * one_minus_ratio(abar_t=abar_t, abar_s=abar_s,
                                           one_minus_abar_t=one_minus_abar_t,
                                           one_minus_abar_s=one_minus_abar_s))
  y_s = (jnp.sqrt(abar_s) * z0 + jnp.sqrt(jnp.maximum(one_minus_abar_s - sigma ** 2, 0.0)) * eps
         + sigma * noise)
  z_s = y_s + aggregated_encoding(schedule, weights, t=s_safe, encodings=encodings)
  at_zero = jnp.asarray(s) == 0
  if jnp.ndim(s) == 1:
    at_zero = at_zero.reshape((-1,) + (1,) * (nd - 1))
  return jnp.where(at_zero, z0, z_s)
