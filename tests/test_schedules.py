"""Noise schedules (mmdiff_jax.diffusion.schedules) and per-modality weight schedules
(mmdiff_jax.diffusion.aggregation), checked against independent numpy float64 references.

Tolerances: schedule fields are float32 casts of float64 values, so they are compared at rtol 1e-6
(float32 rounding is 6e-8 relative); one_minus_alpha_bars must be accurate to rtol 1e-6 even where
1 - abar_t ~ 1e-4, which a float32 ``1 - alpha_bars`` (error ~6e-8 absolute, i.e. ~6e-4 relative there)
cannot reach. Aggregation coefficients go through a length-T recursion: rtol 1e-5 plus a small absolute
tolerance relative to the largest coefficient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdiff_jax.diffusion import aggregation, process, schedules


def _np(x):
  return np.asarray(x, dtype=np.float64)


def _check_fields(sched, rs, rtol_abar=1e-5):
  T = rs.T
  assert sched.num_timesteps == T
  for name in ("betas", "alphas", "alpha_bars", "one_minus_alpha_bars"):
    field = getattr(sched, name)
    assert field.shape == (T,), name
    assert field.dtype == jnp.float32, name
  np.testing.assert_allclose(_np(sched.betas), rs.beta[1:], rtol=1e-6, atol=0)
  np.testing.assert_allclose(_np(sched.alphas), rs.alpha[1:], rtol=1e-6, atol=0)
  np.testing.assert_allclose(_np(sched.alpha_bars), rs.abar[1:], rtol=rtol_abar, atol=0)
  np.testing.assert_allclose(_np(sched.one_minus_alpha_bars), rs.omab[1:], rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- noise schedules


@pytest.mark.parametrize("T", [1, 10, 1000])
def test_linear_matches_ddpm(ref, T):
  sched = schedules.get_schedule("linear", T)
  _check_fields(sched, ref.RefSchedule(ref.linear_betas(T)))


@pytest.mark.parametrize("T", [1, 2, 50, 1000])
def test_cosine_matches_nichol_dhariwal(ref, T):
  sched = schedules.get_schedule("cosine", T)
  rs = ref.RefSchedule(ref.cosine_betas(T))
  _check_fields(sched, rs)
  # the last step is clipped at max_beta = 0.999
  np.testing.assert_allclose(float(sched.betas[-1]), 0.999, rtol=1e-6)


def test_schedule_kwargs(ref):
  sched = schedules.get_schedule("linear", 20, beta_start=1e-3, beta_end=0.05)
  _check_fields(sched, ref.RefSchedule(ref.linear_betas(20, 1e-3, 0.05)))
  sched = schedules.get_schedule("cosine", 30, s=0.02, max_beta=0.5)
  _check_fields(sched, ref.RefSchedule(ref.cosine_betas(30, s=0.02, max_beta=0.5)))
  assert float(jnp.max(sched.betas)) <= 0.5 + 1e-7


def test_schedule_from_betas(ref):
  rng = np.random.default_rng(0)
  betas = ref.random_betas(rng, 17, lo=1e-4, hi=0.99)
  sched = schedules.schedule_from_betas(betas)
  _check_fields(sched, ref.RefSchedule(betas))
  # jnp input too
  sched2 = schedules.schedule_from_betas(jnp.asarray(betas, jnp.float32))
  np.testing.assert_array_equal(np.asarray(sched2.alpha_bars), np.asarray(sched.alpha_bars))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_one_minus_alpha_bar_is_accurate_near_t1(ref, name):
  """1 - abar_1 = beta_1 ~ 1e-4 (linear) / 4e-5 (cosine): must not come from float32 1 - abar."""
  T = 1000
  sched = schedules.get_schedule(name, T)
  rs = ref.RefSchedule(ref.linear_betas(T) if name == "linear" else ref.cosine_betas(T))
  omab = _np(sched.one_minus_alpha_bars)
  np.testing.assert_allclose(omab[:5], rs.omab[1:6], rtol=1e-6, atol=0)
  np.testing.assert_allclose(omab[0], rs.beta[1], rtol=1e-6)


def test_unknown_schedule_lists_known_names():
  with pytest.raises(ValueError) as info:
    schedules.get_schedule("sigmoid-ish", 10)
  msg = str(info.value)
  assert "linear" in msg and "cosine" in msg


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [0, -5])
def test_num_timesteps_must_be_positive(name, T):
  with pytest.raises(ValueError):
    schedules.get_schedule(name, T)


def test_schedule_is_a_pytree():
  sched = schedules.get_schedule("linear", 8)
  leaves = jax.tree_util.tree_leaves(sched)
  assert len(leaves) == 4
  doubled = jax.jit(lambda s: jax.tree_util.tree_map(lambda x: 2 * x, s))(sched)
  assert type(doubled) is type(sched)
  np.testing.assert_allclose(np.asarray(doubled.betas), 2 * np.asarray(sched.betas), rtol=1e-7)
  out = jax.jit(lambda s: s.alpha_bars[-1])(sched)
  np.testing.assert_allclose(float(out), float(sched.alpha_bars[-1]), rtol=1e-7)


# --------------------------------------------------------------------------- aggregation


def _sched_and_ref(ref, kind, T=1000, seed=0):
  if kind == "random":
    betas = ref.random_betas(np.random.default_rng(seed), T)
    return schedules.schedule_from_betas(betas), ref.RefSchedule(betas)
  betas = ref.linear_betas(T) if kind == "linear" else ref.cosine_betas(T)
  return schedules.get_schedule(kind, T), ref.RefSchedule(betas)


def _bump(rs, scale=1.0):
  s = np.sqrt(rs.abar[1:])
  return scale * s * (1.0 - s)


def _weights_from_profile(rs, P):
  P = np.asarray(P, np.float64)
  P2 = P.reshape(rs.T, -1)
  prev = np.concatenate([np.zeros((1, P2.shape[1])), P2[:-1]], axis=0)
  return (P2 - np.sqrt(rs.alpha[1:])[:, None] * prev).reshape(P.shape)


# Compiling the eager ops of the aggregation scan costs seconds per new (T, N) on this 2-core machine:
# the tests share T_RAND = 12 for random schedules and N = 1 when T = 1000.
T_RAND = 12


@pytest.mark.parametrize(
    "kind,N", [("random", 1), ("random", 2), ("random", 3), ("linear", 1), ("cosine", 1)]
)
def test_aggregation_coefficients_recursion(ref, kind, N):
  T = T_RAND if kind == "random" else 1000
  sched, rs = _sched_and_ref(ref, kind, T, seed=N)
  W = np.random.default_rng(10 + N).uniform(0.0, 0.5, size=(T, N)).astype(np.float32)
  lam = _np(process.aggregation_coefficients(sched, jnp.asarray(W)))
  assert lam.shape == (T, N)
  L = ref.lambdas(rs, W)[1:]
  if T <= 50:
    np.testing.assert_allclose(L, ref.lambdas_closed_form(rs, W)[1:], rtol=1e-12)
  np.testing.assert_allclose(lam, L, rtol=1e-5, atol=1e-6 * np.abs(L).max())
  # lambda_1 = w_1 exactly
  np.testing.assert_allclose(lam[0], W[0], rtol=1e-6)


@pytest.mark.parametrize("kind", ["random", "linear", "cosine"])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_marginal_profile(ref, kind, scale):
  sched, rs = _sched_and_ref(ref, kind, T_RAND if kind == "random" else 1000)
  bump = _np(aggregation.marginal_profile(sched, "bump", scale=scale))
  assert bump.shape == (rs.T,)
  # relative accuracy at every step, the first ones included (abar ~ 1, where 1 - sqrt(abar) cancels)
  np.testing.assert_allclose(bump, _bump(rs, scale), rtol=1e-5)
  observation = _np(aggregation.marginal_profile(sched, "observation", scale=scale))
  np.testing.assert_allclose(observation, scale * np.sqrt(rs.abar[1:] * rs.omab[1:]), rtol=1e-5,
                             atol=1e-7 * scale)
  if kind != "random":  # at low noise it stays comparable to the noise; the bump fades
    sigma = np.sqrt(rs.omab[1:])
    assert observation[0] / sigma[0] > 0.99 * scale and bump[0] / sigma[0] < 0.01 * scale
    assert observation[-1] < 0.01 * scale  # and it vanishes at T: sampling starts from N(0, I)
  zero = _np(aggregation.marginal_profile(sched, "zero"))
  assert zero.shape == (rs.T,)
  np.testing.assert_array_equal(zero, 0.0)


@pytest.mark.parametrize("kind,N", [("random", 3), ("linear", 1)])
def test_weights_from_profile_formula_and_round_trip(ref, kind, N):
  T = T_RAND if kind == "random" else 1000
  sched, rs = _sched_and_ref(ref, kind, T)
  rng = np.random.default_rng(3)
  P = rng.uniform(-1.0, 1.0, size=(T, N)).astype(np.float32)
  W = _np(aggregation.weights_from_profile(sched, jnp.asarray(P)))
  assert W.shape == (T, N)
  Wref = _weights_from_profile(rs, P)
  np.testing.assert_allclose(W, Wref, rtol=1e-5, atol=1e-6)
  # round trip: lambda(weights_from_profile(P)) == P
  lam = _np(process.aggregation_coefficients(sched, jnp.asarray(W, jnp.float32)))
  np.testing.assert_allclose(lam, P, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["linear", "cosine", "random"])
def test_weights_from_profile_one_dimensional(ref, kind):
  sched, rs = _sched_and_ref(ref, kind, T_RAND if kind == "random" else 1000)
  P = _bump(rs, 1.5)
  W = _np(aggregation.weights_from_profile(sched, jnp.asarray(P, jnp.float32)))
  assert W.size == rs.T
  W = W.reshape(rs.T)
  np.testing.assert_allclose(W, _weights_from_profile(rs, P), rtol=1e-4, atol=1e-7)
  lam = _np(process.aggregation_coefficients(sched, jnp.asarray(W, jnp.float32)[:, None]))[:, 0]
  np.testing.assert_allclose(lam, P, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine", "random"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_step_weights(ref, kind, scale):
  sched, rs = _sched_and_ref(ref, kind, T_RAND if kind == "random" else 1000)
  T = rs.T
  bump = _np(aggregation.step_weights(sched, "bump", scale=scale))
  assert bump.shape == (T,)
  np.testing.assert_allclose(bump, _weights_from_profile(rs, _bump(rs, scale)), rtol=1e-4, atol=1e-7 * scale)
  const = _np(aggregation.step_weights(sched, "constant", scale=scale))
  assert const.shape == (T,)
  np.testing.assert_allclose(const, scale, rtol=1e-7)
  zero = _np(aggregation.step_weights(sched, "zero", scale=scale))
  assert zero.shape == (T,)
  np.testing.assert_array_equal(zero, 0.0)


def test_step_weights_unknown_name():
  sched = schedules.get_schedule("linear", 10)
  with pytest.raises(ValueError):
    aggregation.step_weights(sched, "no-such-weights")


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_final_coefficients_bump_vanishes_constant_does_not(ref, kind):
  sched, rs = _sched_and_ref(ref, kind, 1000)
  # one (T, 1) weight matrix per setting (N = 1 keeps the number of compiled shapes down)
  Ws = [
      jnp.asarray(aggregation.step_weights(sched, "bump", scale=1.0))[:, None],
      jnp.asarray(aggregation.step_weights(sched, "bump", scale=4.0))[:, None],
      jnp.asarray(aggregation.step_weights(sched, "constant", scale=0.1))[:, None],
      jnp.asarray(aggregation.step_weights(sched, "zero"))[:, None],
  ]
  lams = [_np(process.aggregation_coefficients(sched, W))[:, 0] for W in Ws]
  lamT = []
  for W, lam in zip(Ws, lams):
    fc = _np(aggregation.final_coefficients(sched, W))
    assert fc.shape == (1,)
    np.testing.assert_allclose(fc[0], lam[-1], rtol=1e-6, atol=1e-9)
    lamT.append(fc[0])
  lamT = np.array(lamT)
  # reference lambda_T
  sT = np.sqrt(rs.abar[rs.T])
  Wc = np.full((rs.T, 1), np.float32(0.1), dtype=np.float64)
  const_ref = ref.lambdas(rs, Wc)[-1, 0]
  np.testing.assert_allclose(lamT[:2], [sT * (1 - sT), 4 * sT * (1 - sT)], rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(lamT[2], const_ref, rtol=1e-4)
  assert lamT[3] == 0.0
  # the bump's lambda_T is ~0 (linear: sqrt(abar_T) ~ 6e-3; cosine: ~5e-5); constant's is not
  assert abs(lamT[0]) < (1e-2 if kind == "linear" else 1e-4)
  # constant: lambda_T >= w_T = 0.1 (linear: ~10; cosine, where sqrt(alpha_T) ~ 0.03: ~0.11)
  assert lamT[2] >= 0.1 * (1 - 1e-6)
  assert lamT[2] > 100 * abs(lamT[0])
  # and the bump's lambda peaks in the middle at scale / 4
  np.testing.assert_allclose(lams[0].max(), 0.25, rtol=1e-2)
  assert abs(lams[0][0]) < 1e-2
