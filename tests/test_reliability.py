"""Reliability: kills and preemption notices, non-finite updates, bad configs and bad data.

Kill tests run the real entry point in a subprocess and send real signals; every subprocess is bounded
in time and killed on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import imglabel
from mmdiff_jax.config import validate_config
from mmdiff_jax.data.checks import check_batch
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training import train
from mmdiff_jax.training.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300


def _main_command(data_dir, workdir, **overrides):
  flags = {"data.data_dir": data_dir, "eval.after_training": "()", "sampling.num_samples": 0,
           "training.log_every": 1, **overrides}
  return [sys.executable, "-u", "-m", "mmdiff_jax.main", "--config=configs/imglabel.py:smoke",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]


def _env(tmp_path):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
             JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  return env


def _run_until(command, env, pattern: str):
  """Starts `command` and returns (process, output so far) once a line contains `pattern`."""
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines, deadline = [], time.monotonic() + TIMEOUT_S
  try:
    for line in proc.stdout:
      lines.append(line)
      if pattern in line:
        return proc, lines
      if time.monotonic() > deadline:
        break
  except BaseException:
    proc.kill()
    raise
  proc.kill()
  pytest.fail(f"{pattern!r} never appeared:\n{''.join(lines[-40:])}")


def _finish(proc, lines):
  try:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
  finally:
    proc.kill()
  return "".join(lines) + (out or "")


def _checkpoint_steps(workdir):
  return Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=100).all_steps()


def test_sigterm_saves_current_step_and_exits_cleanly(data_dir, tmp_path):
  workdir = str(tmp_path / "wd")
  env = _env(tmp_path)
  proc, lines = _run_until(
      _main_command(data_dir, workdir, **{"training.num_steps": 100_000,
                                          "training.save_every": 1000}),
      env, "step 3/")
  proc.send_signal(signal.SIGTERM)
  out = _finish(proc, lines)
  assert proc.returncode == 0, out[-3000:]
  assert "Received SIGTERM: saved a checkpoint at step" in out
  stopped = int(out.split("saved a checkpoint at step ")[1].split()[0])
  assert stopped >= 3 and _checkpoint_steps(workdir) == [stopped]

  proc, lines = _run_until(
      _main_command(data_dir, workdir, **{"training.num_steps": stopped + 2}), env, "Done at step")
  out = _finish(proc, lines)
  assert f"Resuming from step {stopped}" in out and proc.returncode == 0


def test_sigkill_loses_at_most_save_interval_and_never_restores_partial(data_dir, tmp_path):
  workdir = str(tmp_path / "wd")
  env = _env(tmp_path)
  save_every = 2  # saves are nearly always in flight: the kill lands during one
  proc, lines = _run_until(
      _main_command(data_dir, workdir, **{"training.num_steps": 100_000,
                                          "training.save_every": save_every}),
      env, "step 9/")
  proc.kill()
  proc.wait(timeout=60)
  last_logged = max(int(l.split("step ")[1].split("/")[0]) for l in lines if l.startswith("step "))
  complete = _checkpoint_steps(workdir)
  assert complete and max(complete) >= last_logged - save_every - 1

  proc, lines = _run_until(
      _main_command(data_dir, workdir, **{"training.num_steps": max(complete) + 2,
                                          "training.save_every": save_every}),
      env, "Done at step")
  out = _finish(proc, lines)
  assert proc.returncode == 0, out[-3000:]
  assert f"Resuming from step {max(complete)}" in out


def test_repeated_nonfinite_updates_stop_the_run_and_checkpoints_stay_finite(data_dir, tmp_path):
  config = imglabel.get_config("smoke")
  config.data.data_dir = data_dir
  config.optimizer.update(learning_rate=1e30, warmup_steps=1)  # the first update makes it diverge
  config.training.update(num_steps=40, log_every=1, save_every=1, max_nonfinite_steps=3)
  config.eval.after_training = ()
  config.sampling.num_samples = 0
  workdir = str(tmp_path / "wd")
  with pytest.raises(FloatingPointError, match="max_nonfinite_steps=3"):
    train.train_and_evaluate(config, workdir)
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = state_lib.make_optimizer(config)
  abstract, _ = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=False)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=3)
  assert checkpointer.all_steps()
  for step in checkpointer.all_steps():
    state, _ = checkpointer.restore(step, abstract)
    for leaf in jax.tree.leaves(jax.device_get(state)):
      assert np.all(np.isfinite(leaf))
  checkpointer.close()


@pytest.mark.parametrize("key,value,message", [
    ("training.num_step", 3, r"'training.num_step' is unknown; allowed under training: \["),
    ("modalities.label.kind", "text", r"modalities.label.kind: got 'text'; expected one of \["),
    ("modalities.label.encoder", "cnn", r"modalities.label.encoder: got 'cnn'.*\['categorical'\]"),
    ("modalities.label.head", "conv", r"modalities.label.head: got 'conv'.*\['pooled_mlp'\]"),
    ("modalities.label.profile", "constant", r"modalities.label.profile: got 'constant.*lambda_T"),
    ("training.batch_size", 12, r"training.batch_size: got 12; expected a multiple of 8"),
    ("sampling.sampler", "euler", r"sampling.sampler: got 'euler'; expected one of"),
    ("sampling.num_steps", 1000, r"sampling.num_steps: got 1000; expected 1..100"),
    ("sampling.eta", -1.0, r"sampling.eta: got -1.0; expected a value >= 0"),
    ("model.dtype", "float16", r"model.dtype: got 'float16'; expected one of"),
    ("data.image_size", 29, r"data.image_size: got 29; expected a multiple of 2"),
])
def test_config_errors_name_key_value_and_allowed(key, value, message):
  config = imglabel.get_config("smoke")
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  if leaf == "profile":
    node["profile_scale"] = 0.5
  with pytest.raises(ValueError, match=message):
    validate_config(config, num_devices=8)


def test_mesh_not_matching_devices_fails_before_compiling(tmp_path):
  config = imglabel.get_config("smoke")
  config.mesh.update(data=3, fsdp=1)
  start = time.monotonic()
  with pytest.raises(ValueError, match=r"config.mesh: .*3 devices, but 8 are available"):
    train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert time.monotonic() - start < 30


def test_unwritable_workdir_is_named(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(PermissionError, match=r"--workdir=.*file/wd is not writable"):
    train.train_and_evaluate(imglabel.get_config("smoke"), str(blocker / "wd"))


def test_bad_batches_name_the_feature():
  specs = build_experiment(imglabel.get_config("smoke")).specs
  good = {"image": np.zeros((2, 28, 28, 1), np.float32), "label": np.array([0, 9], np.int32)}
  check_batch(good, specs, (28, 28, 1), where="ds")
  cases = [
      ({"label": np.array([0, 10], np.int32)}, r"ds: feature 'label' has values in \[0, 10\]; "
                                               r"expected 0..9 \(modalities.label.num_classes\)"),
      ({"label": np.array([0.0, 1.0])}, r"'label' has dtype float64; expected integers"),
      ({"image": np.zeros((2, 32, 32, 1), np.float32)}, r"'image' has shape \(2, 32, 32, 1\)"),
      ({"image": np.full((2, 28, 28, 1), np.nan, np.float32)}, r"'image' holds 1568 non-finite"),
  ]
  for change, message in cases:
    with pytest.raises(ValueError, match=message):
      check_batch({**good, **change}, specs, (28, 28, 1), where="ds")
  with pytest.raises(ValueError, match=r"feature 'label' is missing"):
    check_batch({"image": good["image"]}, specs, (28, 28, 1), where="ds")


@pytest.fixture
def tiny_filesystem(tmp_path):
  """A 5 MB tmpfs (needs root, as CI has); unmounted afterwards."""
  if os.geteuid() != 0:
    pytest.skip("mounting a tmpfs to fill the disk needs root (CI runs as root)")
  mount_point = tmp_path / "tiny"
  mount_point.mkdir()
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount_point)], check=True)
  yield str(mount_point)
  subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_full_during_save_is_explained_and_earlier_checkpoints_survive(tiny_filesystem):
  checkpointer = Checkpointer(os.path.join(tiny_filesystem, "checkpoints"), max_to_keep=10)
  states = {}
  with pytest.raises(OSError, match=r"No space left on device.*complete checkpoints \[1, 2.*\] are "
                                    r"intact") as error:
    for step in range(1, 10):  # 1.6 MB of incompressible floats each: the disk fills in a few
      states[step] = {"w": jax.random.normal(jax.random.PRNGKey(step), (400_000,))}
      checkpointer.save(step, states[step], {"position": step})
      checkpointer.wait()
  intact = checkpointer.all_steps()
  assert f"complete checkpoints {intact} are intact" in str(error.value)
  assert intact == list(range(1, step))  # all but the one that failed
  abstract = {"w": jax.ShapeDtypeStruct((400_000,), np.float32)}
  for step in intact:
    restored, data_state = checkpointer.restore(step, abstract)
    np.testing.assert_array_equal(restored["w"], states[step]["w"])
    assert data_state == {"position": step}
