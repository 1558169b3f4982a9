"""The XLA settings the package applies before a backend starts, and the compile options of programs
that run once (mmdiff_jax/xla_defaults.py)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdiff_jax import xla_defaults
from mmdiff_jax.diffusion import aggregation, get_schedule

FLAG = f"--{xla_defaults.YNN_FLAG}="
OLD = (0, 10, 2)  # a jaxlib the flag was measured to help


def _binary(tmp_path, *, defines: bool) -> str:
  path = tmp_path / "libfake.so"
  path.write_bytes(b"\0" * 4096 + (xla_defaults.YNN_FLAG.encode() if defines else b"other") + b"\0")
  return str(path)


def test_appended_to_the_users_flags_where_jaxlib_defines_it(tmp_path):
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  added = xla_defaults.apply_cpu_defaults(environ, binary=_binary(tmp_path, defines=True), version=OLD)
  assert added == (FLAG,)
  assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {FLAG}"
  environ = {}
  xla_defaults.apply_cpu_defaults(environ, binary=_binary(tmp_path, defines=True), version=OLD)
  assert environ["XLA_FLAGS"] == FLAG


def test_left_alone_where_jaxlib_lacks_it_the_user_set_it_or_opted_out(tmp_path):
  # A jaxlib that does not define the flag would abort at backend start if it were set.
  environ = {}
  assert xla_defaults.apply_cpu_defaults(environ, binary=_binary(tmp_path, defines=False),
                                         version=OLD) == ()
  assert "XLA_FLAGS" not in environ
  assert not xla_defaults.binary_defines(xla_defaults.YNN_FLAG, None)
  users = {"XLA_FLAGS": f"--{xla_defaults.YNN_FLAG}=dot"}
  assert xla_defaults.apply_cpu_defaults(users, binary=_binary(tmp_path, defines=True),
                                         version=OLD) == ()
  assert users == {"XLA_FLAGS": f"--{xla_defaults.YNN_FLAG}=dot"}
  opted_out = {xla_defaults.OPT_OUT: "1"}
  assert xla_defaults.apply_cpu_defaults(opted_out, binary=_binary(tmp_path, defines=True),
                                         version=OLD) == ()
  assert "XLA_FLAGS" not in opted_out


@pytest.mark.parametrize("version", [(0, 12, 1), (0, 12), (1, 0, 0)])
def test_left_alone_from_jaxlib_0_12_where_xlas_own_setting_was_faster(tmp_path, version):
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert xla_defaults.apply_cpu_defaults(environ, binary=_binary(tmp_path, defines=True),
                                         version=version) == ()
  assert environ == {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def test_jaxlib_version_is_the_installed_one():
  import jaxlib.version
  assert xla_defaults.jaxlib_version() == tuple(int(n) for n in jaxlib.version.__version__.split(".")[:3])


def test_importing_the_package_sets_it_and_the_backend_starts():
  # A fresh interpreter, as a user's: importing mmdiff_jax before jax sets the flag (the installed
  # jaxlib defines it), and XLA accepts it: a computation runs.
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_defaults.OPT_OUT)}
  code = ("import os, mmdiff_jax, jax, jax.numpy as jnp; "
          "print(os.environ.get('XLA_FLAGS', '')); print(float(jnp.ones(3).sum()))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300, check=True).stdout.splitlines()
  applies = (xla_defaults.binary_defines(xla_defaults.YNN_FLAG, xla_defaults.jaxlib_binary())
             and xla_defaults.jaxlib_version() < xla_defaults.YNN_OFF_BELOW)
  assert (FLAG in out[0]) == applies
  assert out[1] == "3.0"


LEVEL_0 = {"xla_backend_optimization_level": 0}


@pytest.fixture
def started_backend():
  """JAX's backend, started before a test changes XLA_FLAGS: XLA reads them when it starts, and a
  worker whose first test this is must not start with the test's flags (conftest.py sets the suite's)."""
  jax.devices()
  return jax.default_backend()


@pytest.mark.parametrize("xla_flags, level_0", [
    ("", True),
    ("--xla_force_host_platform_device_count=8", True),
    ("--xla_backend_optimization_level=3", False),  # the user's level wins
])
def test_run_once_compiler_options_leave_a_users_level_alone(monkeypatch, started_backend, xla_flags,
                                                             level_0):
  monkeypatch.setenv("XLA_FLAGS", xla_flags)
  options = xla_defaults.run_once_compiler_options()
  assert options == (LEVEL_0 if level_0 and started_backend == "cpu" else {})
  # XLA knows the option by this name (a misspelt one fails to compile) and the values are unchanged.
  x = jnp.arange(6.0)
  out = jax.jit(lambda v: jnp.cumsum(v * v), compiler_options=options)(x)
  np.testing.assert_allclose(np.asarray(out), np.cumsum(np.arange(6.0) ** 2))


def test_jit_run_once_compiles_with_the_options_of_the_call(monkeypatch, started_backend):
  made = []
  real_jit = jax.jit
  monkeypatch.setattr(jax, "jit", lambda fun, **kwargs: made.append(kwargs) or real_jit(fun, **kwargs))
  square = xla_defaults.jit_run_once(lambda v: v * v)
  monkeypatch.setenv("XLA_FLAGS", "")
  assert float(square(jnp.float32(3.0))) == 9.0
  assert float(square(jnp.float32(4.0))) == 16.0  # the same options: the jitted function is reused
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
  assert float(square(jnp.float32(5.0))) == 25.0
  assert made == [{"compiler_options": LEVEL_0 if started_backend == "cpu" else {}},
                  {"compiler_options": {}}]
  # While another program is staged it is a plain jit inside it (JAX refuses options on a nested
  # jit), whether the traced value is its argument or it closes over concrete values.
  monkeypatch.setenv("XLA_FLAGS", "")
  made.clear()
  assert float(real_jit(lambda v: square(v) + 1.0)(jnp.float32(2.0))) == 5.0
  three = jnp.float32(3.0)
  assert float(real_jit(lambda v: square(three) * v)(jnp.float32(2.0))) == 18.0
  assert float(jax.lax.scan(lambda c, _: (c + square(three), None), 0.0, None, length=2)[0]) == 18.0
  assert float(jax.grad(square)(jnp.float32(3.0))) == 6.0
  assert made == [{}]  # one plain jit, reused


def test_final_coefficients_at_level_0_match_xlas_default_level():
  # Per-program options override XLA_FLAGS (conftest.py sets level 0 for the whole suite).
  schedule = get_schedule("linear", 1000)
  weights = jnp.stack([aggregation.step_weights(schedule, "bump", 0.5),
                       aggregation.step_weights(schedule, "constant", 0.01)], axis=1)
  at_level = {level: jax.jit(aggregation.final_coefficients.__wrapped__,
                             compiler_options={"xla_backend_optimization_level": level})(schedule, weights)
              for level in (0, 3)}
  np.testing.assert_allclose(np.asarray(at_level[0]), np.asarray(at_level[3]), rtol=1e-5, atol=1e-8)
