"""Shared pytest setup and independent numpy float64 references for the diffusion math tests.

Nothing here imports mmdiff_jax: every reference is computed from the definitions in
docs/METHOD.md (transition q(z_t | z_{t-1}, X) = N(sqrt(alpha_t) z_{t-1} + sum_i w_t^(i) e_i, beta_t))
in numpy float64, so that the code under test is checked against the math, not against itself.

Tests get the references through the ``ref`` fixture (a namespace of the functions below).
"""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import sys
import tempfile
import types

# One BLAS thread per process, set before numpy loads (subprocesses inherit it): the suite runs two
# workers on two cores, and OpenBLAS's threads, oversubscribed, made each small eigendecomposition of
# the bootstrap Fréchet distances about 6x slower (measured: 100 replicates of 16 x 256 features,
# 7.3 s with the default threads beside another busy process, 1.1 s with one).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import numpy as np
import pytest

# Make the package importable from a plain checkout (one need not be pip-installed), before anything
# imports it.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

# The whole session runs on 8 simulated CPU devices (set before any backend starts), so sharded code
# paths are exercised everywhere. Identical programs compiled by different tests (each train run builds
# its own jitted step) are served from a persistent compilation cache.
# Compiling dominates the tests' tiny programs: without LLVM's optimisation passes it takes about a
# fifth less time (measured on a smoke training test), and every comparison here is made under the same
# flag (the math is checked against float64 references with tolerances). Subprocesses inherit it.
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))
import mmdiff_jax  # noqa: E402,F401  (its XLA defaults join the flags before any backend starts)
# Everything a test run writes outside its tests' tmp_path lives in one directory of its own, which the
# run removes when it ends, unless tests failed: the persistent compilation cache (about 45 MB a run),
# pytest's base temporary directory, and the empty directory TFDS's builder makes (and never removes)
# each time it opens a dataset that is not prepared yet, about five per test run. Before, every run left these in
# the system's temporary directory. The parallel workers and the command-line runs that tests start as
# subprocesses find the directory through the environment they inherit, so they share one cache: the
# smoke config's programs compile once per test run, not once per test (JAX writes cache entries
# atomically, so concurrent writers are safe).
_RUN_DIR_VARIABLE = "MMDIFF_JAX_TEST_RUN_DIR"
_RUN_DIR = os.environ.get(_RUN_DIR_VARIABLE)
_OWNS_RUN_DIR = not _RUN_DIR  # the first process of the run: pytest's controller, or the only one
_KEEP_RUN_DIR = False  # set when tests failed (pytest_sessionfinish)
if _OWNS_RUN_DIR:
  _RUN_DIR = tempfile.mkdtemp(prefix="mmdiff_jax_tests_")
  os.environ[_RUN_DIR_VARIABLE] = _RUN_DIR
  # At exit, not at the session's end: a run that stops before it (a usage error) is cleaned up too.
  atexit.register(lambda: _KEEP_RUN_DIR or shutil.rmtree(_RUN_DIR, ignore_errors=True))
os.environ["TMPDIR"] = _RUN_DIR
tempfile.tempdir = _RUN_DIR
_XLA_CACHE = os.path.join(_RUN_DIR, "xla_cache")
os.makedirs(_XLA_CACHE, exist_ok=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# --------------------------------------------------------------------------- schedules


def linear_betas(T, beta_start=1e-4, beta_end=0.02):
  """DDPM (Ho et al. 2020) linear betas, float64."""
  return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def cosine_betas(T, s=0.008, max_beta=0.999):
  """Nichol & Dhariwal 2021: beta_t = min(1 - abar(t)/abar(t-1), max_beta), float64."""
  t = np.arange(T + 1, dtype=np.float64)
  f = np.cos(((t / T) + s) / (1.0 + s) * np.pi / 2.0) ** 2
  abar = f / f[0]
  return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


class RefSchedule:
  """float64 schedule, indexed by step: index t is step t (t = 0..T); index 0 holds abar_0 = 1."""

  def __init__(self, betas):
    b = np.asarray(betas, dtype=np.float64)
    assert b.ndim == 1 and np.all(b > 0) and np.all(b < 1)
    self.T = b.shape[0]
    log_abar = np.concatenate([[0.0], np.cumsum(np.log1p(-b))])
    self.beta = np.concatenate([[np.nan], b])
    self.alpha = np.concatenate([[np.nan], 1.0 - b])
    self.abar = np.exp(log_abar)
    self.omab = -np.expm1(log_abar)  # 1 - abar_t without cancellation

  def beta_tilde(self, t):
    return self.beta[t] * self.omab[t - 1] / self.omab[t]

  def post_coefs(self, t):
    """Textbook DDPM posterior-mean coefficients (c1 on z0, c2 on z_t)."""
    c1 = np.sqrt(self.abar[t - 1]) * self.beta[t] / self.omab[t]
    c2 = np.sqrt(self.alpha[t]) * self.omab[t - 1] / self.omab[t]
    return c1, c2


def random_betas(rng, T, lo=1e-3, hi=0.5):
  """Random betas in (lo, hi), rounded to float32 so the reference sees exactly what jax sees."""
  return rng.uniform(lo, hi, size=T).astype(np.float32).astype(np.float64)


# --------------------------------------------------------------------------- aggregation


def lambdas(rs, W):
  """lambda_t = sqrt(alpha_t) lambda_{t-1} + w_t, lambda_0 = 0. Returns (T+1, N), row t is step t."""
  W = np.asarray(W, dtype=np.float64)
  L = np.zeros((rs.T + 1, W.shape[1]))
  for t in range(1, rs.T + 1):
    L[t] = np.sqrt(rs.alpha[t]) * L[t - 1] + W[t - 1]
  return L


def lambdas_closed_form(rs, W):
  """lambda_t = sum_{s<=t} sqrt(abar_t / abar_s) w_s (docs/METHOD.md closed form)."""
  W = np.asarray(W, dtype=np.float64)
  L = np.zeros((rs.T + 1, W.shape[1]))
  for t in range(1, rs.T + 1):
    for s in range(1, t + 1):
      L[t] += np.sqrt(rs.abar[t] / rs.abar[s]) * W[s - 1]
  return L


def weighted(coef_row, enc):
  """sum_i coef_row[i] * enc[i]."""
  return np.tensordot(np.asarray(coef_row, np.float64), np.asarray(enc, np.float64), axes=1)


# --------------------------------------------------------------------------- the Gaussian chain


def chain_moments(rs, W, t, z0, enc):
  """Joint Gaussian of (z_0, z_1, ..., z_t) given z_0 and X, built from the transitions only.

  z_s = sqrt(alpha_s) z_{s-1} + sum_i w_s^(i) e_i + sqrt(beta_s) n_s,  n_s ~ N(0, 1) iid.
  Returns (means, C): means[s] has z0's shape; C is the (t+1, t+1) covariance shared by every
  coordinate (z_0 is fixed, so row/column 0 is zero).
  """
  z0 = np.asarray(z0, np.float64)
  means = [z0]
  A = np.zeros((t + 1, t + 1))  # z_s - m_s = sum_r A[s, r] n_r
  for s in range(1, t + 1):
    means.append(np.sqrt(rs.alpha[s]) * means[-1] + weighted(W[s - 1], enc))
    A[s] = np.sqrt(rs.alpha[s]) * A[s - 1]
    A[s, s] = np.sqrt(rs.beta[s])
  return means, A @ A.T


def brute_force_posterior(rs, W, t, z_t, z0, enc):
  """q(z_{t-1} | z_t, z0, X) by conditioning the joint Gaussian of the chain (no closed forms)."""
  means, C = chain_moments(rs, W, t, z0, enc)
  gain = C[t - 1, t] / C[t, t]
  mean = means[t - 1] + gain * (np.asarray(z_t, np.float64) - means[t])
  var = C[t - 1, t - 1] - C[t - 1, t] ** 2 / C[t, t]
  return mean, max(var, 0.0)


def brute_force_marginal(rs, W, t, z0, enc):
  means, C = chain_moments(rs, W, t, z0, enc)
  return means[t], C[t, t]


def closed_form_posterior(rs, W, t, z_t, z0, enc):
  """docs/METHOD.md's closed form (used as a second reference, and for T = 1000 where brute force is slow)."""
  L = lambdas(rs, W)
  if t == 1:
    return np.asarray(z0, np.float64), 0.0
  c1, c2 = rs.post_coefs(t)
  mean = (c1 * np.asarray(z0, np.float64) + c2 * (np.asarray(z_t, np.float64) - weighted(L[t], enc))
          + weighted(L[t - 1], enc))
  return mean, rs.beta_tilde(t)


def gaussian_kl(m1, v1, m2, v2):
  m1, v1, m2, v2 = (np.asarray(a, np.float64) for a in (m1, v1, m2, v2))
  return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


def gaussian_logpdf(x, m, v):
  return -0.5 * (np.log(2 * np.pi * v) + (x - m) ** 2 / v)


# --------------------------------------------------------------------------- helpers


def batched_var_shape(z_shape):
  return (z_shape[0],) + (1,) * (len(z_shape) - 1)


def to_np(x):
  return np.asarray(x, dtype=np.float64)


_REF = types.SimpleNamespace(
    linear_betas=linear_betas,
    cosine_betas=cosine_betas,
    RefSchedule=RefSchedule,
    random_betas=random_betas,
    lambdas=lambdas,
    lambdas_closed_form=lambdas_closed_form,
    weighted=weighted,
    chain_moments=chain_moments,
    brute_force_posterior=brute_force_posterior,
    brute_force_marginal=brute_force_marginal,
    closed_form_posterior=closed_form_posterior,
    gaussian_kl=gaussian_kl,
    gaussian_logpdf=gaussian_logpdf,
    batched_var_shape=batched_var_shape,
    to_np=to_np,
)


@pytest.fixture(scope="session")
def ref():
  """Independent float64 numpy references (see module docstring)."""
  return _REF


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir with Fashion-MNIST prepared once from the real raw files."""
  from configs import imglabel
  from mmdiff_jax.data import sources

  path = str(tmp_path_factory.mktemp("tfds"))
  config = imglabel.get_config("smoke")
  config.data.data_dir = path
  sources.load_source(config.data, "train")
  return path


# --------------------------------------------------------------------------- the run's directory


def pytest_sessionfinish(session, exitstatus):
  """Keeps the run's directory (see the top of this file) when tests failed, so that their files can be
  looked at (the summary says where); otherwise it goes when the process exits."""
  global _KEEP_RUN_DIR
  _KEEP_RUN_DIR = _OWNS_RUN_DIR and exitstatus == pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus):
  if _OWNS_RUN_DIR and exitstatus == pytest.ExitCode.TESTS_FAILED:
    terminalreporter.write_line(f"This run's temporary files are kept in {_RUN_DIR}")
