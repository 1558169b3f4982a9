"""Forward process, posterior and parameterization conversions (mmdiff_jax.diffusion.process).

References are numpy float64 and independent of the code under test (see conftest.py): the posterior
is checked against brute-force conditioning of the joint Gaussian of the chain built from the
transitions alone, the marginal against the exact moment recursion and a Monte Carlo run of the chain.

Tolerances (jax runs in float32):
- random schedules (T = 12): rtol 1e-4 and an absolute floor of 1e-5 times the reference's scale;
- T = 1000 precision tests near t = 1 and t = T: rtol 1e-5 on variances and coefficients;
- Monte Carlo: 5 standard errors (M samples; SE of a mean sqrt(var / M), of a variance
  var * sqrt(2 / (M - 1))), fixed seeds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdiff_jax.diffusion import process, schedules

T_RAND = 12
TS = [1, 2, T_RAND // 2, T_RAND]
# One z shape for scalar t and one (B, *Z) for batched t throughout: every new shape costs seconds of
# eager-op compilation on this 2-core machine.
Z = (4, 3)
B = 6
ZB = (B,) + Z


def _np(x):
  return np.asarray(x, dtype=np.float64)


def _close(actual, desired, rtol=1e-4, atol_scale=1e-5, err_msg=""):
  desired = np.asarray(desired, np.float64)
  scale = max(1.0, float(np.max(np.abs(desired)))) if desired.size else 1.0
  np.testing.assert_allclose(_np(actual), desired, rtol=rtol, atol=atol_scale * scale, err_msg=err_msg)


class Case:
  """A random schedule, random weights (T, N), random encodings/z of a given shape."""

  def __init__(self, ref, seed, N, z_shape, T=T_RAND):
    rng = np.random.default_rng(seed)
    self.rng = rng
    self.T, self.N = T, N
    betas = ref.random_betas(rng, T)
    self.sched = schedules.schedule_from_betas(betas)
    self.rs = ref.RefSchedule(betas)
    self.W = rng.uniform(0.0, 0.5, size=(T, N)).astype(np.float32)
    self.enc = rng.normal(size=(N,) + tuple(z_shape)).astype(np.float32)
    self.z0 = rng.normal(size=z_shape).astype(np.float32)
    self.zt = rng.normal(size=z_shape).astype(np.float32)
    self.eps = rng.normal(size=z_shape).astype(np.float32)
    self.L = ref.lambdas(self.rs, self.W)

  def lam_e(self, ref, t, b=None):
    enc = self.enc if b is None else self.enc[:, b]
    return ref.weighted(self.L[t], enc)


# --------------------------------------------------------------------------- posterior


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("t", TS)
def test_posterior_equals_brute_force_conditioning(ref, N, t):
  c = Case(ref, seed=100 + 10 * N + t, N=N, z_shape=Z)
  mean, var = process.posterior(c.sched, c.W, t=t, z_t=c.zt, z0=c.z0, encodings=c.enc)
  assert mean.shape == Z
  assert jnp.shape(var) == ()
  m_ref, v_ref = ref.brute_force_posterior(c.rs, c.W, t, c.zt, c.z0, c.enc)
  # the closed form of docs/METHOD.md agrees with brute force (a check of the reference itself)
  m_cf, v_cf = ref.closed_form_posterior(c.rs, c.W, t, c.zt, c.z0, c.enc)
  np.testing.assert_allclose(m_cf, m_ref, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(v_cf, v_ref, rtol=1e-10, atol=1e-12)
  _close(mean, m_ref)
  if t == 1:
    assert float(var) == 0.0
    _close(mean, c.z0, rtol=1e-6, atol_scale=1e-6)
  else:
    np.testing.assert_allclose(float(var), v_ref, rtol=1e-5)


@pytest.mark.parametrize("N", [1, 2, 3])
def test_posterior_batched_t_equals_brute_force(ref, N):
  c = Case(ref, seed=200 + N, N=N, z_shape=ZB)
  ts = np.array([1, 2, T_RAND // 2, T_RAND, 3, 1], dtype=np.int32)
  for t_arg in (ts, jnp.asarray(ts)):
    mean, var = process.posterior(c.sched, c.W, t=t_arg, z_t=c.zt, z0=c.z0, encodings=c.enc)
    assert mean.shape == ZB
    assert var.shape == ref.batched_var_shape(ZB)
    for b, t in enumerate(ts):
      m_ref, v_ref = ref.brute_force_posterior(c.rs, c.W, int(t), c.zt[b], c.z0[b], c.enc[:, b])
      _close(mean[b], m_ref, err_msg=f"b={b} t={t}")
      if t == 1:
        assert float(var[b].squeeze()) == 0.0
      else:
        np.testing.assert_allclose(float(var[b].squeeze()), v_ref, rtol=1e-5)


def test_scalar_t_forms_agree():
  rng = np.random.default_rng(5)
  sched = schedules.schedule_from_betas(rng.uniform(0.01, 0.3, T_RAND).astype(np.float32))
  W = rng.uniform(0, 0.5, (T_RAND, 2)).astype(np.float32)
  enc = rng.normal(size=(2,) + Z).astype(np.float32)
  z0, zt = rng.normal(size=(2,) + Z).astype(np.float32)
  outs = [process.posterior(sched, W, t=t, z_t=zt, z0=z0, encodings=enc) for t in (4, np.int32(4),
                                                                                   np.array(4), jnp.asarray(4))]
  for m, v in outs[1:]:
    np.testing.assert_array_equal(np.asarray(m), np.asarray(outs[0][0]))
    np.testing.assert_array_equal(np.asarray(v), np.asarray(outs[0][1]))


# --------------------------------------------------------------------------- transition / marginal


@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("t", TS)
def test_transition_matches_definition(ref, N, t):
  c = Case(ref, seed=300 + N + t, N=N, z_shape=Z)
  mean, var = process.transition(c.sched, c.W, t=t, z_prev=c.zt, encodings=c.enc)
  _close(mean, np.sqrt(c.rs.alpha[t]) * c.zt + ref.weighted(c.W[t - 1], c.enc))
  assert jnp.shape(var) == ()
  np.testing.assert_allclose(float(var), c.rs.beta[t], rtol=1e-6)


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("t", TS)
def test_marginal_equals_exact_recursion(ref, N, t):
  c = Case(ref, seed=400 + 10 * N + t, N=N, z_shape=Z)
  mean, var = process.marginal(c.sched, c.W, t=t, z0=c.z0, encodings=c.enc)
  m_ref, v_ref = ref.brute_force_marginal(c.rs, c.W, t, c.z0, c.enc)
  np.testing.assert_allclose(v_ref, c.rs.omab[t], rtol=1e-12)
  _close(mean, m_ref)
  assert jnp.shape(var) == ()
  np.testing.assert_allclose(float(var), v_ref, rtol=1e-5)


def test_marginal_batched_t(ref):
  c = Case(ref, seed=41, N=2, z_shape=ZB)
  ts = np.array([T_RAND, 1, 7, 2, 1, 5], dtype=np.int32)
  mean, var = process.marginal(c.sched, c.W, t=jnp.asarray(ts), z0=c.z0, encodings=c.enc)
  assert var.shape == ref.batched_var_shape(ZB)
  for b, t in enumerate(ts):
    m_ref, v_ref = ref.brute_force_marginal(c.rs, c.W, int(t), c.z0[b], c.enc[:, b])
    _close(mean[b], m_ref)
    np.testing.assert_allclose(float(var[b].squeeze()), v_ref, rtol=1e-5)


def test_marginal_is_composition_of_transitions(ref):
  """Composing the implementation's own transitions reproduces its marginal (means exactly linear)."""
  c = Case(ref, seed=42, N=3, z_shape=Z)
  m = c.z0.astype(np.float64)
  v = 0.0
  for s in range(1, c.T + 1):
    tm, tv = process.transition(c.sched, c.W, t=s, z_prev=m.astype(np.float32), encodings=c.enc)
    m = _np(tm)
    v = c.rs.alpha[s] * v + float(tv)
    mm, mv = process.marginal(c.sched, c.W, t=s, z0=c.z0, encodings=c.enc)
    _close(mm, m, err_msg=f"s={s}")
    np.testing.assert_allclose(float(mv), v, rtol=1e-5, err_msg=f"s={s}")


def test_marginal_monte_carlo(ref):
  """Sample the chain by calling transition T times; compare sample moments at every step."""
  M, D, N = 20000, 3, 2
  c = Case(ref, seed=43, N=N, z_shape=(D,))
  rng = np.random.default_rng(44)
  z0 = np.broadcast_to(c.z0, (M, D)).astype(np.float32)
  enc = np.broadcast_to(c.enc[:, None, :], (N, M, D)).astype(np.float32)
  z = z0
  for s in range(1, c.T + 1):
    tm, tv = process.transition(c.sched, c.W, t=s, z_prev=z, encodings=enc)
    z = np.asarray(tm) + np.sqrt(np.asarray(tv)) * rng.standard_normal((M, D)).astype(np.float32)
    mm, mv = process.marginal(c.sched, c.W, t=s, z0=c.z0, encodings=c.enc)
    mm, mv = _np(mm), float(mv)
    zs = z.astype(np.float64)
    se_mean = np.sqrt(mv / M)
    se_var = mv * np.sqrt(2.0 / (M - 1))
    assert np.all(np.abs(zs.mean(0) - mm) < 5 * se_mean), (s, zs.mean(0), mm)
    assert np.all(np.abs(zs.var(0, ddof=1) - mv) < 5 * se_var), (s, zs.var(0), mv)


@pytest.mark.parametrize("t", TS)
def test_sample_marginal(ref, t):
  c = Case(ref, seed=500 + t, N=2, z_shape=Z)
  z = process.sample_marginal(c.sched, c.W, t=t, z0=c.z0, encodings=c.enc, noise=c.eps)
  expected = np.sqrt(c.rs.abar[t]) * c.z0 + c.lam_e(ref, t) + np.sqrt(c.rs.omab[t]) * c.eps
  _close(z, expected)


def test_sample_marginal_batched(ref):
  c = Case(ref, seed=51, N=2, z_shape=ZB)
  ts = np.array([1, T_RAND, 5, 2, 1, 9], np.int32)
  z = process.sample_marginal(c.sched, c.W, t=jnp.asarray(ts), z0=c.z0, encodings=c.enc, noise=c.eps)
  assert z.shape == ZB
  for b, t in enumerate(ts):
    expected = np.sqrt(c.rs.abar[t]) * c.z0[b] + c.lam_e(ref, t, b) + np.sqrt(c.rs.omab[t]) * c.eps[b]
    _close(z[b], expected)


# --------------------------------------------------------------------------- shifted coordinates


@pytest.mark.parametrize("t", TS)
def test_shift_gives_a_ddpm_chain(ref, t):
  c = Case(ref, seed=600 + t, N=3, z_shape=Z)
  y = process.shift(c.sched, c.W, t=t, z_t=c.zt, encodings=c.enc)
  _close(y, c.zt - c.lam_e(ref, t))
  # the shifted marginal mean is DDPM's sqrt(abar_t) z0
  mm, _ = process.marginal(c.sched, c.W, t=t, z0=c.z0, encodings=c.enc)
  _close(process.shift(c.sched, c.W, t=t, z_t=mm, encodings=c.enc), np.sqrt(c.rs.abar[t]) * c.z0)
  # and the shifted posterior is DDPM's posterior of y_{t-1} given y_t
  if t > 1:
    pm, _ = process.posterior(c.sched, c.W, t=t, z_t=c.zt, z0=c.z0, encodings=c.enc)
    y_prev = _np(process.shift(c.sched, c.W, t=t - 1, z_t=pm, encodings=c.enc))
    c1, c2 = c.rs.post_coefs(t)
    _close(y_prev, c1 * c.z0 + c2 * _np(y))


# --------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("t", TS)
def test_eps_z0_v_conversions(ref, N, t):
  c = Case(ref, seed=700 + 10 * N + t, N=N, z_shape=Z)
  sa, so = np.sqrt(c.rs.abar[t]), np.sqrt(c.rs.omab[t])
  zt = sa * c.z0 + c.lam_e(ref, t) + so * c.eps  # float64 marginal sample
  zt32 = zt.astype(np.float32)
  zt64 = zt32.astype(np.float64)
  # formulas against the float64 reference, on the same float32 z_t
  _close(process.eps_from_z0(c.sched, c.W, t=t, z_t=zt32, z0=c.z0, encodings=c.enc),
         (zt64 - sa * c.z0 - c.lam_e(ref, t)) / so)
  _close(process.z0_from_eps(c.sched, c.W, t=t, z_t=zt32, eps=c.eps, encodings=c.enc),
         (zt64 - c.lam_e(ref, t) - so * c.eps) / sa)
  v = process.v_from_z0_eps(c.sched, t=t, z0=c.z0, eps=c.eps)
  _close(v, sa * c.eps - so * c.z0)
  # round trips
  _close(process.eps_from_z0(c.sched, c.W, t=t, z_t=zt32, z0=c.z0, encodings=c.enc), c.eps, atol_scale=1e-4)
  _close(process.z0_from_eps(c.sched, c.W, t=t, z_t=zt32, eps=c.eps, encodings=c.enc), c.z0, atol_scale=1e-4)
  for param, pred in (("eps", c.eps), ("z0", c.z0), ("v", v)):
    z0_hat, eps_hat = process.z0_eps_from_prediction(c.sched, c.W, t=t, z_t=zt32, encodings=c.enc,
                                                     prediction=pred, parameterization=param)
    _close(z0_hat, c.z0, atol_scale=1e-4, err_msg=param)
    _close(eps_hat, c.eps, atol_scale=1e-4, err_msg=param)


def test_conversions_batched_t(ref):
  c = Case(ref, seed=71, N=2, z_shape=ZB)
  ts = np.array([T_RAND, 1, 2, 6, 3, 1], np.int32)
  tj = jnp.asarray(ts)
  zt = process.sample_marginal(c.sched, c.W, t=tj, z0=c.z0, encodings=c.enc, noise=c.eps)
  _close(process.eps_from_z0(c.sched, c.W, t=tj, z_t=zt, z0=c.z0, encodings=c.enc), c.eps, atol_scale=1e-4)
  _close(process.z0_from_eps(c.sched, c.W, t=tj, z_t=zt, eps=c.eps, encodings=c.enc), c.z0, atol_scale=1e-4)
  v = process.v_from_z0_eps(c.sched, t=tj, z0=c.z0, eps=c.eps)
  for b, t in enumerate(ts):
    _close(v[b], np.sqrt(c.rs.abar[t]) * c.eps[b] - np.sqrt(c.rs.omab[t]) * c.z0[b])
  z0_hat, eps_hat = process.z0_eps_from_prediction(c.sched, c.W, t=tj, z_t=zt, encodings=c.enc,
                                                   prediction=v, parameterization="v")
  _close(z0_hat, c.z0, atol_scale=1e-4)
  _close(eps_hat, c.eps, atol_scale=1e-4)


def test_unknown_parameterization():
  sched = schedules.get_schedule("linear", 10)
  W = np.zeros((10, 1), np.float32)
  z = np.zeros((3,), np.float32)
  with pytest.raises(ValueError):
    process.z0_eps_from_prediction(sched, W, t=3, z_t=z, encodings=z[None], prediction=z, parameterization="score")


# --------------------------------------------------------------------------- noise-form posterior mean


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("t", TS)
def test_noise_form_equals_z0_form(ref, N, t):
  c = Case(ref, seed=800 + 10 * N + t, N=N, z_shape=Z)
  zt = process.sample_marginal(c.sched, c.W, t=t, z0=c.z0, encodings=c.enc, noise=c.eps)
  m_eps = process.posterior_mean_from_eps(c.sched, c.W, t=t, z_t=zt, eps=c.eps, encodings=c.enc)
  m_z0, _ = process.posterior(c.sched, c.W, t=t, z_t=zt, z0=c.z0, encodings=c.enc)
  _close(m_eps, _np(m_z0), atol_scale=3e-5)
  # and both equal the brute-force posterior mean at this z_t
  m_ref, _ = ref.brute_force_posterior(c.rs, c.W, t, _np(zt), c.z0, c.enc)
  _close(m_eps, m_ref, atol_scale=3e-5)
  # the noise form itself, in float64
  noise_ref = ((_np(zt) - ref.weighted(c.W[t - 1], c.enc) - c.rs.beta[t] / np.sqrt(c.rs.omab[t]) * c.eps)
               / np.sqrt(c.rs.alpha[t]))
  _close(m_eps, noise_ref)


def test_noise_form_batched_t(ref):
  c = Case(ref, seed=81, N=2, z_shape=ZB)
  tj = jnp.asarray([1, 2, T_RAND, 6, 1, 11], jnp.int32)
  zt = process.sample_marginal(c.sched, c.W, t=tj, z0=c.z0, encodings=c.enc, noise=c.eps)
  m_eps = process.posterior_mean_from_eps(c.sched, c.W, t=tj, z_t=zt, eps=c.eps, encodings=c.enc)
  m_z0, _ = process.posterior(c.sched, c.W, t=tj, z_t=zt, z0=c.z0, encodings=c.enc)
  _close(m_eps, _np(m_z0), atol_scale=3e-5)


# --------------------------------------------------------------------------- the DDIM step


def _ddim_ref(c, ref, t, s, eta, noise):
  """float64 DDIM from its definition: the shifted chain's eps from (z_t, z0), then y_s, then + Lambda_s E."""
  if s == 0:
    return c.z0.astype(np.float64)
  eps = (c.zt - c.lam_e(ref, t) - np.sqrt(c.rs.abar[t]) * c.z0) / np.sqrt(c.rs.omab[t])
  sigma = eta * np.sqrt(c.rs.omab[s] / c.rs.omab[t] * (1.0 - c.rs.abar[t] / c.rs.abar[s]))
  y_s = np.sqrt(c.rs.abar[s]) * c.z0 + np.sqrt(c.rs.omab[s] - sigma ** 2) * eps + sigma * noise
  return y_s + c.lam_e(ref, s)


@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("t,s,eta", [(T_RAND, 5, 0.0), (T_RAND, 5, 0.7), (6, 5, 1.0), (3, 0, 0.5)])
def test_ddim_step_equals_its_definition(ref, N, t, s, eta):
  c = Case(ref, 31 * t + s, N, Z)
  noise = c.rng.normal(size=Z).astype(np.float32)
  eps = process.eps_from_z0(c.sched, c.W, t=t, z_t=c.zt, z0=c.z0, encodings=c.enc)
  got = process.ddim_step(c.sched, c.W, t=t, s=s, z0=c.z0, eps=eps, encodings=c.enc, eta=eta,
                          noise=noise)
  _close(got, _ddim_ref(c, ref, t, s, eta, noise))


def test_ddim_step_with_eta_1_to_the_previous_step_is_a_posterior_draw(ref):
  """eta = 1, s = t - 1: mean and variance of the brute-force posterior q(z_{t-1} | z_t, z_0, X)."""
  c, t = Case(ref, 7, 2, Z), 6
  eps = process.eps_from_z0(c.sched, c.W, t=t, z_t=c.zt, z0=c.z0, encodings=c.enc)
  step = lambda noise: _np(process.ddim_step(c.sched, c.W, t=t, s=t - 1, z0=c.z0, eps=eps,
                                             encodings=c.enc, eta=1.0, noise=noise))
  mean_ref, var_ref = ref.brute_force_posterior(c.rs, c.W, t, c.zt, c.z0, c.enc)
  _close(step(np.zeros(Z, np.float32)), mean_ref)
  unit = np.ones(Z, np.float32)
  _close((step(unit) - step(-unit)) / 2, np.full(Z, np.sqrt(var_ref)))


def test_ddim_step_eta_0_lands_on_the_marginal_draw_batched(ref):
  """Batched t and s: with the true z0 and eps, deterministic DDIM gives the marginal draw at s with
  the same eps; s = 0 gives z0."""
  c = Case(ref, 11, 2, ZB)
  t, s = np.array([12, 9, 7, 4, 2, 5]), np.array([3, 0, 6, 1, 0, 4])
  got = _np(process.ddim_step(c.sched, c.W, t=t, s=s, z0=c.z0, eps=c.eps, encodings=c.enc, eta=0.0,
                              noise=np.zeros(ZB, np.float32)))
  for b in range(B):
    expected = (c.z0[b] if s[b] == 0 else np.sqrt(c.rs.abar[s[b]]) * c.z0[b] + c.lam_e(ref, s[b], b)
                + np.sqrt(c.rs.omab[s[b]]) * c.eps[b])
    _close(got[b], expected, err_msg=f"example {b}")


@pytest.mark.parametrize("s,match", [(7, r"0 <= s < t, got s = 7 for t = 6"),
                                     (6, r"0 <= s < t, got s = 6 for t = 6"),
                                     (-1, r"0 <= s < t, got s = -1"),
                                     (2.0, r"integer steps")])
def test_ddim_step_refuses_a_landing_step_not_before_t(ref, s, match):
  """s >= t would make the variance factor negative (NaN sigma for eta > 0) and an out-of-range s is
  clamped silently by the lookup: refused by name where the steps are concrete."""
  c = Case(ref, 5, 1, Z)
  with pytest.raises(ValueError, match=match):
    process.ddim_step(c.sched, c.W, t=6, s=s, z0=c.z0, eps=c.z0, encodings=c.enc, eta=1.0,
                      noise=c.z0)


# --------------------------------------------------------------------------- w = 0 is DDPM


@pytest.mark.parametrize("kind", ["linear", "random"])
def test_zero_weights_reduce_to_ddpm(ref, kind):
  rng = np.random.default_rng(9)
  if kind == "linear":
    T = 1000
    sched, rs = schedules.get_schedule("linear", T), ref.RefSchedule(ref.linear_betas(T))
    ts = [1, 2, 3, 500, 999, 1000]
  else:
    T = T_RAND
    betas = ref.random_betas(rng, T)
    sched, rs = schedules.schedule_from_betas(betas), ref.RefSchedule(betas)
    ts = TS
  N = 1  # N = 1 when T = 1000 (compiled shapes shared with the precision test)
  W = np.zeros((T, N), np.float32)
  x0, xt, eps = rng.normal(size=(3,) + Z).astype(np.float32)
  encA = rng.normal(size=(N,) + Z).astype(np.float32)
  encB = 10 * rng.normal(size=(N,) + Z).astype(np.float32)
  for t in ts:
    ab, om = rs.abar[t], rs.omab[t]
    outs = {}
    for name, enc in (("A", encA), ("B", encB)):
      outs[name] = dict(
          marginal=process.marginal(sched, W, t=t, z0=x0, encodings=enc),
          posterior=process.posterior(sched, W, t=t, z_t=xt, z0=x0, encodings=enc),
          from_eps=process.posterior_mean_from_eps(sched, W, t=t, z_t=xt, eps=eps, encodings=enc),
          shift=process.shift(sched, W, t=t, z_t=xt, encodings=enc),
          eps=process.eps_from_z0(sched, W, t=t, z_t=xt, z0=x0, encodings=enc),
          sample=process.sample_marginal(sched, W, t=t, z0=x0, encodings=enc, noise=eps),
      )
    # exactly independent of the encodings
    for a, b in zip(jax.tree_util.tree_leaves(outs["A"]), jax.tree_util.tree_leaves(outs["B"])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    o = outs["A"]
    np.testing.assert_array_equal(np.asarray(o["shift"]), xt)
    # textbook DDPM (Ho et al. 2020, eqs. 4, 6, 7, 11)
    _close(o["marginal"][0], np.sqrt(ab) * x0, rtol=1e-5)
    np.testing.assert_allclose(float(o["marginal"][1]), om, rtol=1e-5)
    _close(o["sample"], np.sqrt(ab) * x0 + np.sqrt(om) * eps, rtol=1e-5)
    _close(o["eps"], (xt - np.sqrt(ab) * x0) / np.sqrt(om), rtol=1e-5, atol_scale=1e-5)
    _close(o["from_eps"], (xt - rs.beta[t] / np.sqrt(om) * eps) / np.sqrt(rs.alpha[t]), rtol=1e-5)
    if t == 1:
      _close(o["posterior"][0], x0, rtol=1e-6, atol_scale=1e-6)
      assert float(o["posterior"][1]) == 0.0
    else:
      c1, c2 = rs.post_coefs(t)
      _close(o["posterior"][0], c1 * x0 + c2 * xt, rtol=1e-5)
      np.testing.assert_allclose(float(o["posterior"][1]), rs.beta_tilde(t), rtol=1e-5)


# --------------------------------------------------------------------------- float32 precision, T = 1000


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_float32_precision_near_both_ends(ref, kind):
  """Coefficients and variances vs float64 at rtol 1e-5 for t in {1, 2, 3, 4, T-1, T}.

  Near t = 1, 1 - abar_t ~ 1e-4 (linear) or ~4e-5 (cosine): computing it as 1 - abar in float32 is
  off by ~1e-3 relative, computing beta_t as 1 - alpha_t in float32 by ~1e-3 too."""
  T = 1000
  sched = schedules.get_schedule(kind, T)
  rs = ref.RefSchedule(ref.linear_betas(T) if kind == "linear" else ref.cosine_betas(T))
  # bump weights, cast to float32 once; the reference uses exactly these float32 values
  s = np.sqrt(rs.abar[1:])
  P = s * (1 - s)
  W = (P - np.sqrt(rs.alpha[1:]) * np.concatenate([[0.0], P[:-1]])).astype(np.float32)[:, None]
  L = ref.lambdas(rs, W)
  Wj = jnp.asarray(W)
  # unit inputs of shape Z: coefficient k of a linear map is read off entry k of the output
  u0, u1 = np.zeros(Z, np.float32), np.zeros(Z, np.float32)
  u0.flat[0], u1.flat[1] = 1.0, 1.0
  zero = np.zeros(Z, np.float32)
  e0 = np.zeros((1,) + Z, np.float32)
  e1 = np.ones((1,) + Z, np.float32)
  first3 = lambda x: _np(x).ravel()[:3]  # noqa: E731
  for t in [1, 2, 3, 4, T - 1, T]:
    msg = f"{kind} t={t}"
    # posterior: z0 = u0, z_t = u1: mean picks up c1 and c2
    mean, var = process.posterior(sched, Wj, t=t, z_t=u1, z0=u0, encodings=e0)
    if t == 1:
      np.testing.assert_allclose(_np(mean), u0, rtol=0, atol=1e-6, err_msg=msg)
      assert float(var) == 0.0, msg
    else:
      c1, c2 = rs.post_coefs(t)
      np.testing.assert_allclose(first3(mean), [c1, c2, 0.0], rtol=1e-5, atol=1e-12, err_msg=msg)
      np.testing.assert_allclose(float(var), rs.beta_tilde(t), rtol=1e-5, err_msg=msg)
      # encoding coefficient lambda_{t-1} - c2 lambda_t (z0 = z_t = 0, e = 1)
      m_e, _ = process.posterior(sched, Wj, t=t, z_t=zero, z0=zero, encodings=e1)
      expected = L[t - 1, 0] - c2 * L[t, 0]
      np.testing.assert_allclose(_np(m_e), expected, rtol=1e-4, atol=1e-9, err_msg=msg)
    # marginal
    mm, mv = process.marginal(sched, Wj, t=t, z0=u0, encodings=e0)
    np.testing.assert_allclose(float(mv), rs.omab[t], rtol=1e-5, err_msg=msg)
    np.testing.assert_allclose(first3(mm)[0], np.sqrt(rs.abar[t]), rtol=1e-5, err_msg=msg)
    # noise form: z_t = u0, eps = u1: 1/sqrt(alpha_t) and -beta_t/(sqrt(1-abar_t) sqrt(alpha_t))
    m_eps = process.posterior_mean_from_eps(sched, Wj, t=t, z_t=u0, eps=u1, encodings=e0)
    np.testing.assert_allclose(
        first3(m_eps),
        [1 / np.sqrt(rs.alpha[t]), -rs.beta[t] / np.sqrt(rs.omab[t]) / np.sqrt(rs.alpha[t]), 0.0],
        rtol=1e-5, atol=1e-12, err_msg=msg,
    )
    # eps from z0 with z_t = u0, z0 = u1: 1/sqrt(1-abar), -sqrt(abar)/sqrt(1-abar)
    e = process.eps_from_z0(sched, Wj, t=t, z_t=u0, z0=u1, encodings=e0)
    np.testing.assert_allclose(
        first3(e), [1 / np.sqrt(rs.omab[t]), -np.sqrt(rs.abar[t] / rs.omab[t]), 0.0], rtol=1e-5, atol=1e-12,
        err_msg=msg,
    )
    # lambda_t through shift (z_t = 0, e = 1 gives -lambda_t)
    y = process.shift(sched, Wj, t=t, z_t=zero, encodings=e1)
    np.testing.assert_allclose(-_np(y), L[t, 0], rtol=1e-4, atol=1e-9, err_msg=msg)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_noise_scale_float32_precision_at_every_step(ref, kind):
  """DDIM's sigma at eta = 1, for every t and s = t - 1, ..., t - 100, vs float64 at rtol 2e-5.

  Its factor 1 - abar_t / abar_s, taken as written in float32, is off by up to ~4e-4 relative where
  abar_s ~ abar_t ~ 1 (the first steps); the sampler's sigma with it by up to ~2e-4."""
  T = 1000
  sched = schedules.get_schedule(kind, T)
  rs = ref.RefSchedule(ref.linear_betas(T) if kind == "linear" else ref.cosine_betas(T))
  W = jnp.zeros((T, 1), jnp.float32)
  for gap in [1, 2, 5, 20, 100]:
    t = np.arange(1 + gap, T + 1)
    s = t - gap
    # z0 = eps = 0, noise = 1, no encoding: z_s = sigma
    ones = jnp.ones((t.size,), jnp.float32)
    sigma = process.ddim_step(sched, W, t=jnp.asarray(t), s=jnp.asarray(s), z0=0 * ones, eps=0 * ones,
                              encodings=jnp.zeros((1, t.size)), eta=1.0, noise=ones)
    expected = np.sqrt(rs.omab[s] / rs.omab[t] * -np.expm1(np.log(rs.abar[t]) - np.log(rs.abar[s])))
    np.testing.assert_allclose(_np(sigma), expected, rtol=2e-5, err_msg=f"{kind}, s = t - {gap}")


# --------------------------------------------------------------------------- jit / vmap

_FUNCS = {
    "transition": lambda s, W, t, a, b, e: process.transition(s, W, t=t, z_prev=a, encodings=e),
    "marginal": lambda s, W, t, a, b, e: process.marginal(s, W, t=t, z0=a, encodings=e),
    "posterior": lambda s, W, t, a, b, e: process.posterior(s, W, t=t, z_t=a, z0=b, encodings=e),
    "sample_marginal": lambda s, W, t, a, b, e: process.sample_marginal(s, W, t=t, z0=a, encodings=e, noise=b),
    "shift": lambda s, W, t, a, b, e: process.shift(s, W, t=t, z_t=a, encodings=e),
    "eps_from_z0": lambda s, W, t, a, b, e: process.eps_from_z0(s, W, t=t, z_t=a, z0=b, encodings=e),
    "z0_from_eps": lambda s, W, t, a, b, e: process.z0_from_eps(s, W, t=t, z_t=a, eps=b, encodings=e),
    "v_from_z0_eps": lambda s, W, t, a, b, e: process.v_from_z0_eps(s, t=t, z0=a, eps=b),
    "posterior_mean_from_eps": lambda s, W, t, a, b, e: process.posterior_mean_from_eps(
        s, W, t=t, z_t=a, eps=b, encodings=e),
    **{f"pred_{p}": lambda s, W, t, a, b, e, p=p: process.z0_eps_from_prediction(
        s, W, t=t, z_t=a, encodings=e, prediction=b, parameterization=p) for p in ("eps", "z0", "v")},
}


def _all(s, W, t, a, b, e):
  """Every function at once, so that one jit / vmap compile covers them all."""
  return {name: f(s, W, t, a, b, e) for name, f in _FUNCS.items()}


def _compare(got, want, rtol=1e-5, atol=1e-6, what=""):
  """Compares dicts of outputs per function; a leaf of `got` may carry fewer trailing unit dims."""
  for name in _FUNCS:
    gl, wl = jax.tree_util.tree_leaves(got[name]), jax.tree_util.tree_leaves(want[name])
    assert len(gl) == len(wl), name
    for g, w in zip(gl, wl):
      g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
      g = g.reshape(g.shape + (1,) * max(0, w.ndim - g.ndim))
      np.testing.assert_allclose(*np.broadcast_arrays(g, w), rtol=rtol, atol=atol, err_msg=f"{what} {name}")


@pytest.fixture(scope="module")
def batch_case():
  rng = np.random.default_rng(1234)
  T, N = T_RAND, 2
  sched = schedules.schedule_from_betas(rng.uniform(0.01, 0.4, T).astype(np.float32))
  W = rng.uniform(0, 0.5, (T, N)).astype(np.float32)
  a, b = rng.normal(size=(2,) + ZB).astype(np.float32)
  enc = rng.normal(size=(N,) + ZB).astype(np.float32)
  ts = np.array([1, 2, 6, T, 3, 1], np.int32)
  return sched, W, ts, a, b, enc


def test_jit_matches_eager(batch_case):
  sched, W, ts, a, b, enc = batch_case
  jf = jax.jit(_all)  # schedule, weights and t all traced
  # batched t
  _compare(jf(sched, W, jnp.asarray(ts), a, b, enc), _all(sched, W, ts, a, b, enc), what="batched")
  # scalar (traced) t
  for t in (1, 4, T_RAND):
    _compare(
        jf(sched, W, jnp.asarray(t), a[0], b[0], enc[:, 0]), _all(sched, W, t, a[0], b[0], enc[:, 0]), what=f"t={t}"
    )


def test_vmap_matches_batched_and_eager(batch_case):
  """vmap over (t, z, z', encodings) with a scalar t per element == batched t == per-element eager."""
  sched, W, ts, a, b, enc = batch_case
  vf = jax.vmap(lambda t, a_, b_, e_: _all(sched, W, t, a_, b_, e_), in_axes=(0, 0, 0, 1))
  tj = jnp.asarray(ts)
  out_v = vf(tj, a, b, enc)
  _compare(jax.jit(vf)(tj, a, b, enc), out_v, what="jit(vmap)")
  # vmapped per-element var is (B,), batched var is (B, 1, 1): _compare pads the trailing dims
  _compare(out_v, _all(sched, W, tj, a, b, enc), what="vmap vs batched")
  for i, t in enumerate(ts):
    eager = _all(sched, W, int(t), a[i], b[i], enc[:, i])
    _compare(jax.tree_util.tree_map(lambda x: np.asarray(x)[i], out_v), eager, what=f"element {i}")


# --------------------------------------------------------------------------- argument validation

_VALIDATED = [n for n in sorted(_FUNCS) if n != "v_from_z0_eps"]


@pytest.fixture(scope="module")
def small():
  T, N = 10, 2
  sched = schedules.get_schedule("linear", T)
  W = np.full((T, N), 0.1, np.float32)
  z = np.ones((4, 3), np.float32)
  enc = np.ones((N, 4, 3), np.float32)
  return sched, W, z, enc


@pytest.mark.parametrize("name", _VALIDATED)
def test_bad_weights(small, name):
  f = _FUNCS[name]
  sched, W, z, enc = small
  for bad in (W[:, 0], W[:-1], np.concatenate([W, W[:1]]), W[None]):
    with pytest.raises(ValueError, match="weights"):
      f(sched, bad, 3, z, z, enc)


@pytest.mark.parametrize("name", _VALIDATED)
def test_bad_encodings(small, name):
  f = _FUNCS[name]
  sched, W, z, enc = small
  for bad in (enc[:1], np.concatenate([enc, enc[:1]]), enc[:, :, :2], enc[0], enc[:, None]):
    with pytest.raises(ValueError, match="encodings"):
      f(sched, W, 3, z, z, bad)


@pytest.mark.parametrize("name", _VALIDATED)
def test_bad_t(small, name):
  f = _FUNCS[name]
  sched, W, z, enc = small
  for bad in (0, -1, 11, np.int32(0), jnp.asarray(11)):
    with pytest.raises(ValueError, match=r"\bt\b"):
      f(sched, W, bad, z, z, enc)
  # batched t whose length is not z.shape[0]
  for bad in (np.array([1, 2, 3], np.int32), jnp.asarray([1, 2, 3, 4, 5])):
    with pytest.raises(ValueError, match=r"\bt\b"):
      f(sched, W, bad, z, z, enc)


def test_aggregation_coefficients_bad_weights():
  sched = schedules.get_schedule("linear", 10)
  for bad in (np.zeros(10, np.float32), np.zeros((9, 2), np.float32), np.zeros((10, 2, 1), np.float32)):
    with pytest.raises(ValueError, match="weights"):
      process.aggregation_coefficients(sched, bad)
