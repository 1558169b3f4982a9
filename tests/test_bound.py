"""Gaussian KL terms of the variational bound (mmdiff_jax.diffusion.bound).

References: closed-form Gaussian KL in numpy float64, with the posterior means/variances taken from
brute-force conditioning of the chain (conftest.py); and Monte Carlo estimates E_q[log q - log p]
(fixed seeds; pass if within 5 standard errors of the sample mean of the log-ratio).
Tolerances: rtol 1e-4 plus an absolute floor of 1e-6 .. 1e-5 (float32).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import imglabel
from mmdiff_jax.diffusion import aggregation, bound, process, schedules
from mmdiff_jax.experiment import build_experiment

T_RAND = 12
# Shared shapes (scalar t: Z; batched t: ZB), as in test_process.py: new shapes cost compile time.
Z = (4, 3)
B = 6
ZB = (B,) + Z


def _np(x):
  return np.asarray(x, dtype=np.float64)


def _random_setup(ref, seed, N, z_shape, T=T_RAND, lo=0.05, hi=0.5):
  rng = np.random.default_rng(seed)
  betas = ref.random_betas(rng, T, lo=lo, hi=hi)
  sched = schedules.schedule_from_betas(betas)
  rs = ref.RefSchedule(betas)
  W = rng.uniform(0.0, 0.5, (T, N)).astype(np.float32)
  f = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
  return rng, sched, rs, W, f


# --------------------------------------------------------------------------- gaussian_kl


def test_gaussian_kl_closed_form(ref):
  rng = np.random.default_rng(0)
  m1, m2 = rng.normal(size=(2,) + Z).astype(np.float32)
  v1, v2 = rng.uniform(0.05, 3.0, size=(2,) + Z).astype(np.float32)
  kl = bound.gaussian_kl(m1, v1, m2, v2)
  assert kl.shape == Z
  np.testing.assert_allclose(_np(kl), ref.gaussian_kl(m1, v1, m2, v2), rtol=1e-4, atol=1e-6)
  # broadcasting scalar variances, and KL(p || p) = 0
  kl = bound.gaussian_kl(m1, np.float32(0.3), m2, np.float32(1.7))
  np.testing.assert_allclose(_np(kl), ref.gaussian_kl(m1, 0.3, m2, 1.7), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(_np(bound.gaussian_kl(m1, v1, m1, v1)), 0.0, atol=1e-6)
  assert np.all(_np(kl) >= 0)


def test_gaussian_kl_monte_carlo(ref):
  rng = np.random.default_rng(1)
  params = np.array(
      [  # m1, v1, m2, v2
          [0.0, 1.0, 0.0, 1.0],
          [0.5, 0.2, -0.3, 1.0],
          [1.0, 2.0, 1.0, 0.5],
          [-2.0, 0.01, 0.0, 1.0],
          [0.3, 1.0, 0.2, 1.1],
      ]
  )
  m1, v1, m2, v2 = (params[:, i].astype(np.float32) for i in range(4))
  kl = _np(bound.gaussian_kl(m1, v1, m2, v2))
  M = 200_000
  x = m1 + np.sqrt(v1.astype(np.float64)) * rng.standard_normal((M, len(params)))
  lr = ref.gaussian_logpdf(x, m1.astype(np.float64), v1.astype(np.float64)) - ref.gaussian_logpdf(
      x, m2.astype(np.float64), v2.astype(np.float64)
  )
  est, se = lr.mean(0), lr.std(0, ddof=1) / np.sqrt(M)
  assert np.all(np.abs(kl - est) <= 5 * se + 1e-6), (kl, est, se)


# --------------------------------------------------------------------------- prior term


@pytest.mark.parametrize("N", [1, 2, 3])
def test_prior_kl_closed_form(ref, N):
  rng, sched, rs, W, f = _random_setup(ref, 10 + N, N, Z)
  z0, enc = f(*Z), f(N, *Z)
  kl = bound.prior_kl(sched, W, z0=z0, encodings=enc)
  assert kl.shape == Z
  m, v = ref.brute_force_marginal(rs, W, T_RAND, z0, enc)
  np.testing.assert_allclose(_np(kl), ref.gaussian_kl(m, v, 0.0, 1.0), rtol=1e-4, atol=1e-6)
  # a batch of z0 (prior_kl has no t): elementwise, each element on its own
  zb, eb = f(*ZB), f(N, *ZB)
  kl_b = _np(bound.prior_kl(sched, W, z0=zb, encodings=eb))
  assert kl_b.shape == ZB
  for i in range(B):
    mi, _ = ref.brute_force_marginal(rs, W, T_RAND, zb[i], eb[:, i])
    np.testing.assert_allclose(kl_b[i], ref.gaussian_kl(mi, v, 0.0, 1.0), rtol=1e-4, atol=1e-6)


def test_prior_kl_monte_carlo(ref):
  """Ancestral samples of z_T from the transitions (numpy), log q(z_T|z0,X) - log N(z_T; 0, 1)."""
  N, M = 2, 40_000
  rng, sched, rs, W, f = _random_setup(ref, 21, N, Z)
  z0, enc = f(*Z), f(N, *Z)
  kl = _np(bound.prior_kl(sched, W, z0=z0, encodings=enc))
  z = np.broadcast_to(z0.astype(np.float64), (M,) + Z)
  for s in range(1, T_RAND + 1):
    z = np.sqrt(rs.alpha[s]) * z + ref.weighted(W[s - 1], enc) + np.sqrt(rs.beta[s]) * rng.standard_normal((M,) + Z)
  m, v = ref.brute_force_marginal(rs, W, T_RAND, z0, enc)
  lr = ref.gaussian_logpdf(z, m, v) - ref.gaussian_logpdf(z, 0.0, 1.0)
  est, se = lr.mean(0), lr.std(0, ddof=1) / np.sqrt(M)
  assert np.all(np.abs(kl - est) <= 5 * se), (kl, est, se)


def _ddpm_prior_kl(rs, z0):
  ab = rs.abar[rs.T]
  return 0.5 * (ab * z0.astype(np.float64) ** 2 + rs.omab[rs.T] - 1.0 - np.log(rs.omab[rs.T]))


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_prior_kl_bump_vs_constant(ref, kind):
  T = 1000
  sched = schedules.get_schedule(kind, T)
  rs = ref.RefSchedule(ref.linear_betas(T) if kind == "linear" else ref.cosine_betas(T))
  rng = np.random.default_rng(31)
  z0 = rng.normal(size=Z).astype(np.float32)
  encA, encB = rng.normal(size=(2, 1) + Z).astype(np.float32)
  encB = 5 * encB
  bump = jnp.asarray(aggregation.step_weights(sched, "bump", scale=2.0))[:, None]
  const = jnp.asarray(aggregation.step_weights(sched, "constant", scale=1.0))[:, None]
  zero = jnp.zeros((T, 1), jnp.float32)
  ddpm = _np(bound.prior_kl(sched, zero, z0=z0, encodings=encA))
  np.testing.assert_allclose(ddpm, _ddpm_prior_kl(rs, z0), rtol=1e-4, atol=1e-6)
  klA, klB = _np(bound.prior_kl(sched, bump, z0=z0, encodings=encA)), _np(bound.prior_kl(sched,
                                                                                         bump, z0=z0, encodings=encB))
  # reference with the bump's (small, nonzero) lambda_T
  sT = np.sqrt(rs.abar[T])
  lamT = 2.0 * sT * (1 - sT)
  for kl, enc in ((klA, encA), (klB, encB)):
    m = sT * z0.astype(np.float64) + lamT * enc[0].astype(np.float64)
    np.testing.assert_allclose(kl, ref.gaussian_kl(m, rs.omab[T], 0.0, 1.0), rtol=1e-3, atol=1e-6)
  if kind == "cosine":
    # lambda_T ~ 1e-4: the prior term does not see the encodings and is DDPM's
    np.testing.assert_allclose(klA, klB, rtol=0, atol=1e-6)
    np.testing.assert_allclose(klA, ddpm, rtol=0, atol=1e-6)
  # constant weights: lambda_T >= 1, the prior term depends on the encodings (by >= 0.5 e^2 - ...)
  kcA, kcB = _np(bound.prior_kl(sched, const, z0=z0, encodings=encA)), _np(bound.prior_kl(sched,
                                                                                          const, z0=z0, encodings=encB))
  lam_c = ref.lambdas(rs, np.ones((T, 1)))[T, 0]
  for kc, enc in ((kcA, encA), (kcB, encB)):
    m = sT * z0.astype(np.float64) + lam_c * enc[0].astype(np.float64)
    np.testing.assert_allclose(kc, ref.gaussian_kl(m, rs.omab[T], 0.0, 1.0), rtol=1e-4, atol=1e-5)
  assert np.max(np.abs(kcA - kcB)) > 1.0
  assert np.max(np.abs(kcA - ddpm)) > 0.1


def test_prior_kl_exact_zero_lambda_T_ignores_encodings(ref):
  """A profile with lambda_T = 0 exactly, on a short random schedule where DDPM's prior KL is O(0.1)."""
  N = 2
  rng, sched, rs, _, f = _random_setup(ref, 41, N, Z, lo=0.01, hi=0.1)
  P = rng.uniform(0.2, 1.0, (T_RAND, N)).astype(np.float32)
  P[-1] = 0.0
  W = aggregation.weights_from_profile(sched, jnp.asarray(P))
  z0 = f(*Z)
  kls = [_np(bound.prior_kl(sched, W, z0=z0, encodings=10 * f(N, *Z))) for _ in range(3)]
  ddpm = _ddpm_prior_kl(rs, z0)
  assert ddpm.max() > 0.1
  for kl in kls:
    np.testing.assert_allclose(kl, ddpm, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- diffusion term


def _ref_diffusion_kl(ref, rs, W, t, zt, z0, enc, z0h, ench):
  if t == 1:
    return np.zeros(np.shape(zt))
  m, v = ref.brute_force_posterior(rs, W, t, zt, z0, enc)
  mh, vh = ref.brute_force_posterior(rs, W, t, zt, z0h, ench)
  assert abs(v - vh) <= 1e-15
  return (m - mh) ** 2 / (2 * v)


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("t", [1, 2, T_RAND // 2, T_RAND])
def test_diffusion_kl_closed_form(ref, N, t):
  rng, sched, rs, W, f = _random_setup(ref, 50 + 10 * N + t, N, Z)
  zt, z0, z0h = f(*Z), f(*Z), f(*Z)
  enc, ench = f(N, *Z), f(N, *Z)
  kl = bound.diffusion_kl(sched, W, t=t, z_t=zt, z0=z0, encodings=enc, z0_hat=z0h, encodings_hat=ench)
  assert kl.shape == Z
  expected = _ref_diffusion_kl(ref, rs, W, t, zt, z0, enc, z0h, ench)
  if t == 1:
    assert np.all(np.asarray(kl) == 0.0)
  else:
    np.testing.assert_allclose(_np(kl), expected, rtol=1e-4, atol=1e-6 * max(1.0, expected.max()))
    # same as gaussian_kl of the two posteriors
    m, v = process.posterior(sched, W, t=t, z_t=zt, z0=z0, encodings=enc)
    mh, vh = process.posterior(sched, W, t=t, z_t=zt, z0=z0h, encodings=ench)
    np.testing.assert_allclose(_np(kl), _np(bound.gaussian_kl(m, v, mh, vh)), rtol=1e-4, atol=1e-6)
  # perfect predictions give 0
  np.testing.assert_allclose(_np(bound.diffusion_kl(sched, W, t=t, z_t=zt, z0=z0, encodings=enc,
                                                    z0_hat=z0, encodings_hat=enc)), 0.0, atol=1e-6)


def test_diffusion_kl_only_encodings_differ(ref):
  """z0_hat = z0: the whole term comes from the heads, through (lambda_{t-1} - c2 lambda_t)."""
  N, t = 2, 6
  rng, sched, rs, W, f = _random_setup(ref, 61, N, Z)
  zt, z0, enc, ench = f(*Z), f(*Z), f(N, *Z), f(N, *Z)
  kl = _np(bound.diffusion_kl(sched, W, t=t, z_t=zt, z0=z0, encodings=enc, z0_hat=z0, encodings_hat=ench))
  L = ref.lambdas(rs, W)
  _, c2 = rs.post_coefs(t)
  d = ref.weighted(L[t - 1] - c2 * L[t], enc.astype(np.float64) - ench)
  np.testing.assert_allclose(kl, d**2 / (2 * rs.beta_tilde(t)), rtol=1e-4, atol=1e-6)
  assert kl.max() > 1e-3


@pytest.mark.parametrize("N", [1, 3])
def test_diffusion_kl_batched_t(ref, N):
  rng, sched, rs, W, f = _random_setup(ref, 70 + N, N, ZB)
  zt, z0, z0h = f(*ZB), f(*ZB), f(*ZB)
  enc, ench = f(N, *ZB), f(N, *ZB)
  ts = np.array([1, 2, 5, T_RAND, 1, 3], np.int32)
  kl = _np(bound.diffusion_kl(sched, W, t=jnp.asarray(ts), z_t=zt, z0=z0, encodings=enc,
                              z0_hat=z0h, encodings_hat=ench))
  assert kl.shape == ZB
  assert np.all(np.isfinite(kl))
  for b, t in enumerate(ts):
    expected = _ref_diffusion_kl(ref, rs, W, int(t), zt[b], z0[b], enc[:, b], z0h[b], ench[:, b])
    if t == 1:
      assert np.all(kl[b] == 0.0)
    else:
      np.testing.assert_allclose(kl[b], expected, rtol=1e-4, atol=1e-6 * max(1.0, expected.max()))


def test_diffusion_kl_monte_carlo(ref):
  """Samples of z_{t-1} from the brute-force posterior; E[log q - log p_hat] within 5 SE."""
  N, M, t = 2, 40_000, 7
  rng, sched, rs, W, f = _random_setup(ref, 81, N, Z)
  zt, z0, enc = f(*Z), f(*Z), f(N, *Z)
  z0h = (z0 + 0.3 * f(*Z)).astype(np.float32)
  ench = (enc + 0.3 * f(N, *Z)).astype(np.float32)
  kl = _np(bound.diffusion_kl(sched, W, t=t, z_t=zt, z0=z0, encodings=enc, z0_hat=z0h, encodings_hat=ench))
  m, v = ref.brute_force_posterior(rs, W, t, zt, z0, enc)
  mh, vh = ref.brute_force_posterior(rs, W, t, zt, z0h, ench)
  x = m + np.sqrt(v) * rng.standard_normal((M,) + Z)
  lr = ref.gaussian_logpdf(x, m, v) - ref.gaussian_logpdf(x, mh, vh)
  est, se = lr.mean(0), lr.std(0, ddof=1) / np.sqrt(M)
  assert np.all(np.abs(kl - est) <= 5 * se + 1e-6), (kl, est, se)


def test_diffusion_kl_gradients_finite_at_t1(ref):
  """The t = 1 entries are exactly 0, and must not poison gradients with NaN (a where-over-0/0 trap)."""
  N = 2
  rng, sched, rs, W, f = _random_setup(ref, 91, N, ZB)
  zt, z0, z0h, enc, ench = f(*ZB), f(*ZB), f(*ZB), f(N, *ZB), f(N, *ZB)
  ts = jnp.asarray([1, 2, 1, T_RAND, 1, 5])

  def loss(z0h_, ench_):
    return jnp.sum(bound.diffusion_kl(sched, W, t=ts, z_t=zt, z0=z0, encodings=enc, z0_hat=z0h_, encodings_hat=ench_))

  gz, ge = jax.grad(loss, argnums=(0, 1))(jnp.asarray(z0h), jnp.asarray(ench))
  assert np.all(np.isfinite(np.asarray(gz))) and np.all(np.isfinite(np.asarray(ge)))
  assert np.all(np.asarray(gz)[[0, 2, 4]] == 0.0)
  assert np.all(np.asarray(ge)[:, [0, 2, 4]] == 0.0)
  assert np.any(np.asarray(gz)[[1, 3, 5]] != 0.0)


# --------------------------------------------------------------------------- jit / vmap / validation


def test_bound_jit_and_vmap(ref):
  N = 2
  rng, sched, rs, W, f = _random_setup(ref, 101, N, ZB)
  zt, z0, z0h, enc, ench = f(*ZB), f(*ZB), f(*ZB), f(N, *ZB), f(N, *ZB)
  ts = jnp.asarray([1, 2, 5, T_RAND, 3, 1])
  dk = lambda t, a, b, e, c, d: bound.diffusion_kl(sched, W, t=t, z_t=a, z0=b, encodings=e, z0_hat=c, encodings_hat=d)  # noqa: E731
  eager = _np(dk(ts, zt, z0, enc, z0h, ench))
  np.testing.assert_allclose(_np(jax.jit(dk)(ts, zt, z0, enc, z0h, ench)), eager, rtol=1e-5, atol=1e-6)
  vm = jax.vmap(dk, in_axes=(0, 0, 0, 1, 0, 1))
  np.testing.assert_allclose(_np(vm(ts, zt, z0, enc, z0h, ench)), eager, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_np(jax.jit(vm)(ts, zt, z0, enc, z0h, ench)), eager, rtol=1e-5, atol=1e-6)
  for i in range(B):
    np.testing.assert_allclose(
        _np(dk(int(ts[i]), zt[i], z0[i], enc[:, i], z0h[i], ench[:, i])), eager[i], rtol=1e-5, atol=1e-6
    )
  pk = lambda a, e: bound.prior_kl(sched, W, z0=a, encodings=e)  # noqa: E731
  eager_p = _np(pk(z0, enc))
  np.testing.assert_allclose(_np(jax.jit(pk)(z0, enc)), eager_p, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_np(jax.vmap(pk, in_axes=(0, 1))(z0, enc)), eager_p, rtol=1e-5, atol=1e-6)
  gk = jax.jit(bound.gaussian_kl)
  np.testing.assert_allclose(
      _np(gk(z0, 0.5, z0h, 2.0)), _np(bound.gaussian_kl(z0, 0.5, z0h, 2.0)), rtol=1e-5, atol=1e-6
  )


def test_bound_bad_arguments():
  T, N = 10, 2
  sched = schedules.get_schedule("linear", T)
  W = np.full((T, N), 0.1, np.float32)
  z = np.ones((4, 3), np.float32)
  enc = np.ones((N, 4, 3), np.float32)
  with pytest.raises(ValueError, match="weights"):
    bound.prior_kl(sched, W[:, 0], z0=z, encodings=enc)
  with pytest.raises(ValueError, match="weights"):
    bound.prior_kl(sched, W[:-1], z0=z, encodings=enc)
  with pytest.raises(ValueError, match="encodings"):
    bound.prior_kl(sched, W, z0=z, encodings=enc[:1])
  with pytest.raises(ValueError, match="weights"):
    bound.diffusion_kl(sched, W[:-1], t=3, z_t=z, z0=z, encodings=enc, z0_hat=z, encodings_hat=enc)
  with pytest.raises(ValueError, match="encodings"):
    bound.diffusion_kl(sched, W, t=3, z_t=z, z0=z, encodings=enc[:, :2], z0_hat=z, encodings_hat=enc)
  with pytest.raises(ValueError, match="encodings"):
    bound.diffusion_kl(sched, W, t=3, z_t=z, z0=z, encodings=enc, z0_hat=z, encodings_hat=enc[:1])
  for bad_t in (0, T + 1):
    with pytest.raises(ValueError, match=r"\bt\b"):
      bound.diffusion_kl(sched, W, t=bad_t, z_t=z, z0=z, encodings=enc, z0_hat=z, encodings_hat=enc)
  with pytest.raises(ValueError, match=r"\bt\b"):
    bound.diffusion_kl(sched, W, t=np.array([1, 2], np.int32), z_t=z, z0=z, encodings=enc, z0_hat=z, encodings_hat=enc)


# --------------------------------------------------------------------------- data term at t = 1


@pytest.mark.parametrize("log_scale", [np.log(1e-2), np.log(0.3), 0.0])
def test_discretized_gaussian_nll_vs_float64_bin_masses(log_scale):
  """-log of each bin's mass under N(mean, scale^2), from scipy in float64 (edge bins open), at every
  level, for a mean inside, at the edge of and outside [-1, 1]; the masses sum to 1."""
  from scipy import stats
  levels = np.linspace(-1.0, 1.0, 256)
  half_bin = 1.0 / 255
  scale = float(np.exp(log_scale))
  for mean in [0.1234, -0.999, 1.3]:
    upper = np.where(levels > 1 - half_bin, np.inf, levels + half_bin)
    lower = np.where(levels < -1 + half_bin, -np.inf, levels - half_bin)
    # the mass from the side with the smaller tail, where float64 keeps its precision
    mass = np.where(lower > mean, stats.norm.sf(lower, mean, scale) - stats.norm.sf(upper, mean, scale),
                    stats.norm.cdf(upper, mean, scale) - stats.norm.cdf(lower, mean, scale))
    assert np.isclose(mass.sum(), 1.0, rtol=1e-12)
    nll = np.asarray(bound.discretized_gaussian_nll(
        jnp.asarray(levels, jnp.float32), jnp.full((256,), mean, jnp.float32), jnp.float32(log_scale)))
    assert np.all(np.isfinite(nll))
    np.testing.assert_allclose(np.exp(-nll.astype(np.float64)).sum(), 1.0, rtol=1e-4)
    # where float32 can hold the bin's mass, -log of it to 1e-4 relative or 1e-4 nats
    held = mass > 1e-30
    np.testing.assert_allclose(nll[held], -np.log(mass[held]), rtol=1e-4, atol=1e-4,
                               err_msg=f"mean {mean}, scale {scale}")


def test_prior_report_closed_form():
  """A unit encoding's extra prior KL is lambda_T^2 / 2 per dimension: the encoding shifts z_T's mean by
  lambda_T and leaves its variance (1 - abar_T) as DDPM's."""
  experiment = build_experiment(imglabel.get_config("small"))
  report = experiment.prior_report()
  final = np.asarray(aggregation.final_coefficients(experiment.schedule, experiment.weights))
  assert sorted(report) == ["lambda_T/label", "prior_kl_excess_per_dim/label"]
  np.testing.assert_allclose(report["lambda_T/label"], final[0], rtol=1e-6)
  # float32 KLs of unit-variance Gaussians differ here by a few roundings of 1: an absolute tolerance.
  np.testing.assert_allclose(report["prior_kl_excess_per_dim/label"], final[0] ** 2 / 2, rtol=0,
                             atol=1e-6)
