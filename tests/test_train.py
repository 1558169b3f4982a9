"""End to end: training, sharding, checkpoint resume and sampling on the smoke config (real data).

The session runs on 8 simulated CPU devices (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import imglabel
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training import train
from mmdiff_jax.training.checkpoint import Checkpointer


def smoke_config(data_dir, **overrides):
  config = imglabel.get_config("smoke")
  config.data.data_dir = data_dir
  config.update_from_flattened_dict(overrides)
  return config


def test_smoke_end_to_end_and_rerun_resumes(data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "wd")
  config = smoke_config(data_dir)
  results = train.train_and_evaluate(config, workdir)

  assert 0.0 <= results["eval/label_accuracy"] <= 1.0
  assert results["eval/label_accuracy_examples"] == config.eval.num_examples
  for path in results["sample_grids"]:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  logged = [l for l in lines if "loss" in l]
  assert [l["step"] for l in logged] == list(range(5, 21, 5))
  for key in ("denoise_mse", "recovery/label", "bound/prior", "bound/diffusion", "bound/data",
              "bound/recovery", "bound/image_bits_per_dim", "steps_per_s", "grad_norm"):
    assert all(np.isfinite(l[key]) for l in logged), key
  assert logged[-1]["skipped"] == 0
  assert Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=3).all_steps() == [10, 20]
  out = capsys.readouterr().out
  assert "Resuming" not in out and "step 20/20" in out

  train.train_and_evaluate(config, workdir)
  assert "Resuming from step 20" in capsys.readouterr().out


def test_steps_per_second_leave_out_evaluations_during_training(data_dir, tmp_path, monkeypatch):
  def slow_evaluation(*args, **kwargs):
    time.sleep(EVALUATION_S)
    return {"periodic_eval/made_up": 0.0}

  EVALUATION_S = 6.0
  monkeypatch.setattr(train, "evaluate_during_training", slow_evaluation)
  config = smoke_config(data_dir, **{"training.num_steps": 6, "training.log_every": 2,
                                     "training.eval_every": 4, "training.save_every": 6,
                                     "training.sample_every": 100})
  config.eval.after_training = ()
  config.sampling.num_samples = 0
  workdir = str(tmp_path / "wd")
  train.train_and_evaluate(config, workdir)
  rows = {row["step"]: row for row in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
          if "loss" in row}
  # Steps 5 and 6 follow the evaluation at step 4: counted in, they would run at < 2 / 6 steps/s.
  assert rows[6]["steps_per_s"] > 1.0, rows


def _restore(config, workdir, step=None):
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = state_lib.make_optimizer(config)
  abstract, _ = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=config.fsdp)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=3)
  state, data_state = checkpointer.restore(step or checkpointer.latest_step(), abstract)
  checkpointer.close()
  return jax.device_get(state), data_state


def test_resume_gives_identical_state(data_dir, tmp_path):
  k = 4
  no_eval = {"eval.after_training": (), "sampling.num_samples": 0, "training.save_every": k,
             "training.log_every": k}
  straight = smoke_config(data_dir, **{"training.num_steps": 2 * k}, **no_eval)
  train.train_and_evaluate(straight, str(tmp_path / "straight"))

  first_half = smoke_config(data_dir, **{"training.num_steps": k}, **no_eval)
  train.train_and_evaluate(first_half, str(tmp_path / "resumed"))
  train.train_and_evaluate(straight, str(tmp_path / "resumed"))

  a, data_a = _restore(straight, str(tmp_path / "straight"))
  b, data_b = _restore(straight, str(tmp_path / "resumed"))
  assert int(a.step) == int(b.step) == 2 * k
  assert data_a == data_b
  jax.tree.map(np.testing.assert_array_equal, a, b)  # params, EMA, optimizer state, rng
  half, data_half = _restore(straight, str(tmp_path / "resumed"), step=k)
  assert data_half != data_b
  assert not np.array_equal(half.params["backbone"]["Conv_0"]["kernel"],
                            b.params["backbone"]["Conv_0"]["kernel"])


@pytest.mark.parametrize("fsdp", [False, True])
def test_shardings_follow_config_and_step_keeps_them(fsdp):
  assert jax.device_count() == 8
  config = imglabel.get_config("smoke")
  config.mesh.update(data=2, fsdp=4)
  config.fsdp = fsdp
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  tx = state_lib.make_optimizer(config)
  _, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=fsdp)
  state = state_lib.create_train_state(experiment.model, tx, shardings, seed=0)

  kernel = state.params["backbone"]["Conv_0"]["kernel"]  # (3, 3, 1, 16): channels_out = 16
  expected = P(None, None, None, "fsdp") if fsdp else P()
  assert kernel.sharding.spec == expected
  if fsdp:
    assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 1, 4)}
    # Adam's moments follow their parameters.
    adam = state.opt_state[1][0]
    assert adam.mu["backbone"]["Conv_0"]["kernel"].sharding.spec == expected

  step = state_lib.make_train_step(experiment.objective(), tx, ema_decay=0.9, mesh=mesh,
                                   shardings=shardings)
  rng = np.random.default_rng(0)
  before = jax.tree.map(lambda x: x.sharding, state)
  for _ in range(3):
    local = {"image": rng.uniform(-1, 1, (16, 28, 28, 1)).astype(np.float32),
             "label": rng.integers(0, 10, (16,)).astype(np.int32)}
    batch = sharding_lib.global_batch(local, mesh)
    assert batch["image"].sharding.spec == P(("data", "fsdp"))
    state, metrics = step(state, batch)
  assert step._cache_size() == 1  # no recompilation across steps
  after = jax.tree.map(lambda x: x.sharding, state)
  jax.tree.map(lambda x, y: x.is_equivalent_to(y, 4) or pytest.fail(f"{x} != {y}"), before, after)
  assert np.isfinite(float(metrics["loss"]))


def test_mesh_errors_name_the_config_key():
  with pytest.raises(ValueError, match=r"config.mesh.*3 devices, but 8"):
    sharding_lib.make_mesh({"data": 3, "fsdp": 1})
  with pytest.raises(ValueError, match=r"config.mesh: unknown axes \['model'\]"):
    sharding_lib.make_mesh({"model": 8})


def test_nonfinite_update_is_skipped():
  config = imglabel.get_config("smoke")
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = state_lib.make_optimizer(config)
  _, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=False)
  state = state_lib.create_train_state(experiment.model, tx, shardings, seed=0)
  step = state_lib.make_train_step(experiment.objective(), tx, ema_decay=0.9, mesh=mesh,
                                   shardings=shardings)
  before = jax.device_get(state.params)
  image = np.zeros((16, 28, 28, 1), np.float32)
  image[0, 0, 0, 0] = np.nan
  batch = sharding_lib.global_batch({"image": image, "label": np.zeros((16,), np.int32)}, mesh)
  state, metrics = step(state, batch)
  assert int(metrics["skipped"]) == 1 and int(state.nonfinite_streak) == 1
  assert int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state.params))


@pytest.mark.parametrize("fsdp", [False, True])
def test_one_vector_update_matches_the_update_per_array(fsdp):
  """The optimizer and EMA update on one concatenated vector gives the per-array update's trees, to
  float rounding, in the state's own layout; it applies only where no parameter is sharded."""
  config = imglabel.get_config("smoke")
  config.optimizer.update(warmup_steps=0, weight_decay=0.1, grad_clip_norm=0.01)  # the clip acts
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 4})
  tx = state_lib.make_optimizer(config)
  _, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=fsdp)
  assert state_lib.one_vector_update_applies(tx, shardings.params, mesh) == (not fsdp)
  # Only an optimizer declared elementwise: others (a mask by shape, LAMB) change on one vector.
  assert not state_lib.one_vector_update_applies(optax.adamw(1e-3), shardings.params, mesh)
  state = state_lib.create_train_state(experiment.model, tx, shardings, seed=0)
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 1000))
  grads = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape, p.dtype), state.params)
  state = state.replace(ema_params=jax.tree.map(lambda p: p + 0.5, state.params))

  def update(one_vector):
    fn = lambda s, g: state_lib.optimizer_update(tx, g, s, loss=jnp.float32(1.0), ema_decay=0.9,
                                                 one_vector=one_vector)
    # The one-vector update concatenates params, EMA, gradients and Adam's two moments.
    concatenations = str(jax.make_jaxpr(fn)(state, grads)).count("concatenate[")
    assert concatenations == (5 if one_vector else 0), concatenations
    return jax.jit(fn)(state, grads)

  per_array, one_vector = update(False), update(True)
  assert jax.tree.structure(per_array) == jax.tree.structure(one_vector)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
               or a.shape == b.shape or pytest.fail(f"{a.shape} != {b.shape}"), per_array, one_vector)
  assert bool(one_vector[-1])  # finite
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                       one_vector[0], state.params))
  assert min(moved) > 0  # every array was updated


@pytest.mark.parametrize("infinite, why", [(True, "an infinite gradient under a finite loss"),
                                           (False, "finite gradients whose squares overflow float32")])
def test_a_step_whose_gradient_norm_is_not_finite_is_skipped(infinite, why):
  """The guard reads the gradient norm, not only the loss: the loss is finite (0) in both cases."""
  from jax.sharding import NamedSharding

  def objective(params, batch, rng):
    del rng
    # At a = 0: d/da sqrt(|a|) is infinite; d/da 1e25 a = 1e25 is finite, its square is not.
    a_term = jnp.sqrt(jnp.abs(params["a"])) if infinite else 1e25 * params["a"]
    loss = jnp.sum(a_term) + jnp.mean(batch["x"]) + jnp.sum(params["b"] ** 2) - 2.0
    return loss, {"loss": loss}

  tx = optax.adam(1e-3)
  params = {"a": jnp.zeros((3,), jnp.float32), "b": jnp.ones((2,), jnp.float32)}
  before = jax.device_get(params)  # the step donates the state's buffers
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               ema_params=jax.tree.map(jnp.copy, params),
                               opt_state=tx.init(params), rng=jax.random.PRNGKey(0),
                               nonfinite_streak=jnp.zeros((), jnp.int32))
  mesh = sharding_lib.make_mesh({"data": 8, "fsdp": 1})
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), state)
  step = state_lib.make_train_step(objective, tx, ema_decay=0.9, mesh=mesh, shardings=shardings)
  batch = sharding_lib.global_batch({"x": np.zeros((8,), np.float32)}, mesh)
  new_state, metrics = step(jax.device_put(state, shardings), batch)
  assert np.isfinite(float(metrics["loss"])), why
  assert int(metrics["skipped"]) == 1 and int(new_state.nonfinite_streak) == 1, why
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(new_state.params))
