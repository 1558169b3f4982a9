"""Scale knobs: learning-rate schedules, gradient accumulation, rematerialisation, bf16 activations.

The session runs on 8 simulated CPU devices (tests/conftest.py).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import classifier, imglabel
from mmdiff_jax.config_validation import validate_config
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training import train


def _initial_state(config, *, abstract: bool = False):
  """(experiment, the initial train state (or its shapes), shardings, mesh, optimizer)."""
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = state_lib.make_optimizer(config)
  shapes, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=False)
  state = shapes if abstract else state_lib.create_train_state(experiment.model, tx, shardings, 0)
  return experiment, state, shardings, mesh, tx


def _two_steps(config, batch, *, grad_accum_steps: int):
  """(initial parameters, parameters after two updates on `batch` (the first has learning rate 0:
  warmup starts at 0), the second's metrics), on host."""
  experiment, state, shardings, mesh, tx = _initial_state(config)
  initial = jax.device_get(state.params)
  step = state_lib.make_train_step(experiment.objective(), tx, ema_decay=0.9, mesh=mesh,
                                   shardings=shardings, grad_accum_steps=grad_accum_steps)
  batch = sharding_lib.global_batch(batch, mesh)
  state, _ = step(state, batch)
  state, metrics = step(state, batch)
  return initial, jax.device_get(state.params), jax.device_get(metrics)


def test_k_micro_batches_give_the_update_of_one_batch_k_times_larger():
  # The classifier baseline's loss is a deterministic batch mean (smoke: no dropout), so any split
  # of the batch must give the same gradient.
  config = classifier.get_config("smoke")
  config.model.update(base_channels=8, channel_mults=(1,), attention_resolutions=(), num_groups=4)
  config.optimizer.warmup_steps = 1  # a full-size second update, so that differences would show
  k, micro = 4, 16  # 16 examples per micro-batch: 2 on each of the 8 devices
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (k * micro, 28, 28, 1)).astype(np.float32),
           "label": rng.integers(0, 10, (k * micro,)).astype(np.int32)}
  initial, whole, metrics_whole = _two_steps(config, batch, grad_accum_steps=1)
  _, accumulated, metrics_accumulated = _two_steps(config, batch, grad_accum_steps=k)

  np.testing.assert_allclose(metrics_accumulated["loss"], metrics_whole["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics_accumulated["grad_norm"], metrics_whole["grad_norm"], rtol=1e-4)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), whole, initial)
  assert max(jax.tree.leaves(moved)) > 1e-4  # the update is not trivially zero
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(accumulated), jax.tree.leaves(whole)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_micro_batches_take_interleaved_examples_and_stay_spread_over_devices():
  mesh = sharding_lib.make_mesh({"data": -1, "fsdp": 1})
  x = sharding_lib.global_batch({"x": np.arange(32, dtype=np.float32)}, mesh)
  micro = jax.jit(lambda b: state_lib.micro_batches(b, 2, mesh))(x)["x"]
  np.testing.assert_array_equal(micro, np.arange(32).reshape(16, 2).T)
  assert {s.data.shape for s in micro.addressable_shards} == {(2, 2)}  # 16 / 8 devices each


def test_learning_rate_schedules():
  config = imglabel.get_config("smoke")
  config.optimizer.update(learning_rate=1.0, warmup_steps=10, end_learning_rate=0.1)
  config.training.num_steps = 110
  rates = {}
  for name in state_lib.LR_SCHEDULES:
    config.optimizer.schedule = name
    schedule = state_lib.learning_rate_schedule(config)
    rates[name] = [float(schedule(s)) for s in (0, 5, 10, 60, 110, 200)]
  np.testing.assert_allclose(rates["constant"], [0, 0.5, 1, 1, 1, 1], atol=1e-6)
  np.testing.assert_allclose(rates["linear"], [0, 0.5, 1, 0.55, 0.1, 0.1], atol=1e-6)
  np.testing.assert_allclose(rates["cosine"], [0, 0.5, 1, 0.55, 0.1, 0.1], atol=1e-6)
  config.optimizer.schedule = "cosine"
  cosine_quarter = float(state_lib.learning_rate_schedule(config)(35))  # a quarter into the decay
  np.testing.assert_allclose(cosine_quarter, 0.1 + 0.9 * (1 + np.cos(np.pi / 4)) / 2, atol=1e-6)

  # Without warmup the first update has the full rate.
  config.optimizer.update(warmup_steps=0, schedule="constant")
  assert float(state_lib.learning_rate_schedule(config)(0)) == 1.0
  config.optimizer.schedule = "linear"
  np.testing.assert_allclose([float(state_lib.learning_rate_schedule(config)(s)) for s in (0, 55, 110)],
                             [1.0, 0.55, 0.1], atol=1e-6)

  config.optimizer.schedule = "exponential"
  with pytest.raises(ValueError, match=r"config.optimizer.schedule: got 'exponential'; expected one"):
    validate_config(config)
  config.optimizer.schedule = "cosine"
  config.training.grad_accum_steps = 3
  with pytest.raises(ValueError, match=r"config.training.batch_size: got 16; expected a multiple of "
                                       r"24 \(8 devices, 1 processes, 3 micro-batches\)"):
    validate_config(config, num_devices=8)


def test_remat_keeps_parameters_and_gradients():
  def grads(remat: bool):
    config = imglabel.get_config("smoke")
    config.model.remat = remat
    params = _initial_state(config)[1].params
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (4, 28, 28, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, (4,)), jnp.int32)}
    loss = lambda p: build_experiment(config).objective()(p, batch, jax.random.PRNGKey(1))[0]
    return jax.device_get(jax.jit(jax.grad(loss))(params))

  plain, remat = grads(False), grads(True)
  assert jax.tree.structure(plain) == jax.tree.structure(remat)  # same names: checkpoints load
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), plain, remat)


def test_bf16_remat_accumulated_training_runs_the_smoke_config(data_dir, tmp_path):
  config = imglabel.get_config("smoke")
  config.data.data_dir = data_dir
  config.model.update(dtype="bfloat16", remat=True)
  config.training.update(num_steps=4, log_every=2, save_every=4, grad_accum_steps=2)
  config.sampling.num_samples = 0  # training only: sampling and evaluation in bf16 are the same code
  config.eval.after_training = ()

  experiment = build_experiment(config)
  params = _initial_state(config, abstract=True)[1].params
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # parameters stay float32
  z = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
  features = jax.eval_shape(
      lambda p, x: experiment.model.apply({"params": p}, x, jnp.ones((2,), jnp.int32),
                                          method=lambda m, x, t: m.backbone(x, t, train=False)),
      params, z)
  assert features.features.dtype == jnp.bfloat16 and features.bottleneck.dtype == jnp.bfloat16

  workdir = str(tmp_path / "wd")
  train.train_and_evaluate(config, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  logged = [r for r in rows if "loss" in r]
  assert [r["step"] for r in logged] == [2, 4]
  assert all(np.isfinite(r["loss"]) and r["skipped"] == 0 for r in logged)
