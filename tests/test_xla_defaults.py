"""The XLA settings the package applies before a backend starts (mmdiff_jax/xla_defaults.py)."""

import os
import subprocess
import sys

from mmdiff_jax import xla_defaults

FLAG = f"--{xla_defaults.YNN_FLAG}="


def _binary(tmp_path, *, defines: bool) -> str:
  path = tmp_path / "libfake.so"
  path.write_bytes(b"\0" * 4096 + (xla_defaults.YNN_FLAG.encode() if defines else b"other") + b"\0")
  return str(path)


def test_appended_to_the_users_flags_where_jaxlib_defines_it(tmp_path):
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  added = xla_defaults.apply_cpu_defaults(environ, binary=_binary(tmp_path, defines=True))
  assert added == (FLAG,)
  assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {FLAG}"
  environ = {}
  xla_defaults.apply_cpu_defaults(environ, binary=_binary(tmp_path, defines=True))
  assert environ["XLA_FLAGS"] == FLAG


def test_left_alone_where_jaxlib_lacks_it_the_user_set_it_or_opted_out(tmp_path):
  # A jaxlib that does not define the flag would abort at backend start if it were set.
  environ = {}
  assert xla_defaults.apply_cpu_defaults(environ, binary=_binary(tmp_path, defines=False)) == ()
  assert "XLA_FLAGS" not in environ
  assert not xla_defaults.binary_defines(xla_defaults.YNN_FLAG, None)
  users = {"XLA_FLAGS": f"--{xla_defaults.YNN_FLAG}=dot"}
  assert xla_defaults.apply_cpu_defaults(users, binary=_binary(tmp_path, defines=True)) == ()
  assert users == {"XLA_FLAGS": f"--{xla_defaults.YNN_FLAG}=dot"}
  opted_out = {xla_defaults.OPT_OUT: "1"}
  assert xla_defaults.apply_cpu_defaults(opted_out, binary=_binary(tmp_path, defines=True)) == ()
  assert "XLA_FLAGS" not in opted_out


def test_importing_the_package_sets_it_and_the_backend_starts():
  # A fresh interpreter, as a user's: importing mmdiff_jax before jax sets the flag (the installed
  # jaxlib defines it), and XLA accepts it: a computation runs.
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_defaults.OPT_OUT)}
  code = ("import os, mmdiff_jax, jax, jax.numpy as jnp; "
          "print(os.environ.get('XLA_FLAGS', '')); print(float(jnp.ones(3).sum()))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300, check=True).stdout.splitlines()
  defined = xla_defaults.binary_defines(xla_defaults.YNN_FLAG, xla_defaults.jaxlib_binary())
  assert (FLAG in out[0]) == defined
  assert out[1] == "3.0"
