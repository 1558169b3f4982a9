"""FSDP really divides parameter + optimizer memory over the devices: read from XLA's memory analysis of
the compiled train step (argument sizes are per device), on the 8 simulated CPU devices of the session.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import imglabel
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib


def _nbytes(shape, dtype) -> int:
  return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _global_bytes(tree) -> int:
  return sum(_nbytes(x.shape, x.dtype) for x in jax.tree.leaves(tree))


def _per_device_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree` under `shardings` (every device holds equal shards here)."""
  return sum(_nbytes(s.shard_shape(x.shape), x.dtype)
             for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))


def _compiled_step_memory(mesh_sizes: dict[str, int], fsdp: bool):
  """(memory analysis of the compiled train step, abstract state, its shardings, batch, mesh)."""
  config = imglabel.get_config("smoke")
  # Every channel count (32, 64) divisible by the 8 devices; num_groups divides them too.
  config.model.update(base_channels=32, num_groups=8)
  config.mesh.update(mesh_sizes)
  config.fsdp = fsdp
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = state_lib.make_optimizer(config)
  abstract, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=fsdp)
  step = state_lib.make_train_step(experiment.objective(), tx, ema_decay=0.9, mesh=mesh,
                                   shardings=shardings)
  batch = state_lib.example_batch(experiment.model, config.training.batch_size)
  # Argument sizes follow from the shardings alone: no need for a fully optimised (slow) compile.
  compiled = step.lower(abstract, batch).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  analysis = compiled.memory_analysis()
  if analysis is None:
    pytest.fail("compiled.memory_analysis() returned None on this backend")
  return analysis, abstract, shardings, batch, mesh


def _params_and_optimizer_per_device(analysis, abstract, shardings, batch, mesh) -> int:
  """Per-device argument bytes of the compiled step, less every argument that is not parameters or
  optimizer state (EMA parameters, step, rng, streak, the batch), whose per-device sizes follow
  from their shardings."""
  others = (abstract.ema_params, abstract.step, abstract.rng, abstract.nonfinite_streak)
  other_shardings = (shardings.ema_params, shardings.step, shardings.rng,
                     shardings.nonfinite_streak)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  batch_per_device = sum(_nbytes(batch_sharding.shard_shape(x.shape), x.dtype)
                         for x in jax.tree.leaves(batch))
  # The analysis counts exactly the per-device shards of all arguments...
  assert analysis.argument_size_in_bytes == (_per_device_bytes(abstract, shardings)
                                             + batch_per_device)
  # ...and the donated state is aliased to the new state (no second copy).
  assert analysis.alias_size_in_bytes == _per_device_bytes(abstract, shardings)
  return (analysis.argument_size_in_bytes - _per_device_bytes(others, other_shardings)
          - batch_per_device)


def test_fsdp_divides_parameter_and_optimizer_memory_by_device_count():
  assert jax.device_count() == 8
  n = jax.device_count()

  fsdp = _compiled_step_memory({"data": 1, "fsdp": n}, fsdp=True)
  abstract = fsdp[1]
  total = _global_bytes((abstract.params, abstract.opt_state))
  per_device_fsdp = _params_and_optimizer_per_device(*fsdp)
  print(f"params + optimizer: {total} B in total; FSDP over {n}: {per_device_fsdp} B per device "
        f"({per_device_fsdp * n / total:.3f} x total / {n})")
  assert per_device_fsdp <= 1.1 * total / n

  # Data parallel: every device holds everything, so the bound above really can fail.
  data_parallel = _compiled_step_memory({"data": n, "fsdp": 1}, fsdp=False)
  assert _global_bytes((data_parallel[1].params, data_parallel[1].opt_state)) == total
  per_device_dp = _params_and_optimizer_per_device(*data_parallel)
  print(f"data parallel: {per_device_dp} B per device ({per_device_dp / total:.3f} x total)")
  assert 0.99 * total <= per_device_dp <= 1.01 * total
