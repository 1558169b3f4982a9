"""The library's own train step for a config, compiled ahead of time and ready to be called repeatedly."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import baseline_uncond, imglabel
from mmdiff_jax.config_validation import validate_config
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib

from benchmarks import common


def get_config(variant: str, *, image_only: bool = False, **overrides: Any) -> ml_collections.ConfigDict:
  """configs/imglabel.py:variant, or with image_only configs/baseline_uncond.py:variant (the same
  config without the label modality: the same backbone, one head).

  overrides: dotted keys, e.g. {"model.dtype": "bfloat16", "training.batch_size": 8}.
  """
  config = (baseline_uncond if image_only else imglabel).get_config(variant)
  config.update_from_flattened_dict(overrides)
  return config


def random_batch(model, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch of the right shapes: images uniform in [-1, 1], labels uniform over the classes."""
  rng = np.random.default_rng(seed)
  batch = {}
  for spec in model.specs:
    shape = state_lib.example_batch(model, batch_size)[spec.feature].shape
    if spec.kind == "image":
      batch[spec.feature] = rng.uniform(-1, 1, shape).astype(np.float32)
    elif spec.kind in ("label", "segmentation"):
      batch[spec.feature] = rng.integers(0, spec.num_classes, shape).astype(np.int32)
    else:
      batch[spec.feature] = rng.normal(size=shape).astype(np.float32)
  return batch


def denoising_loss(model, schedule):
  """The plain epsilon-prediction loss of an image-only model, as the PyTorch twin computes it (no
  metrics): fn(params, x0 (B, H, W, C), rng) -> scalar. t, the noise and dropout all come from rng."""
  name = model.specs[0].name

  def loss_fn(params, x0, rng):
    t_rng, n_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (x0.shape[0],), 1, schedule.num_timesteps + 1)
    noise = jax.random.normal(n_rng, x0.shape)
    abar = schedule.alpha_bars[t - 1][:, None, None, None]
    z_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * noise
    prediction = model.apply({"params": params}, z_t, t, train=True,
                             rngs={"dropout": jax.random.fold_in(rng, 2)})[name]
    return jnp.mean(jnp.square(prediction - noise))

  return loss_fn


def model_flops(config: ml_collections.ConfigDict, lowered=None) -> float:
  """FLOPs of one train step: XLA's cost analysis of the step's HLO before backend rewrites.

  After them a GPU's convolutions are cuDNN calls that the analysis counts as 0, and a GPU backend
  gives no analysis of the unoptimized HLO: there the step is lowered for the host CPU instead (the
  same HLO).
  """
  analysis = lowered.cost_analysis() if lowered is not None else None
  if analysis:
    return common.cost_flops(lowered)[0]
  step, abstract, batch = host_step(config)
  return common.cost_flops(step.lower(abstract, batch))[0]


def host_step(config: ml_collections.ConfigDict):
  """The config's jitted train step on one host CPU device, not yet traced: (step, abstract state,
  example batch shapes), the arguments it lowers for."""
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh({"data": 1, "fsdp": 1}, jax.devices("cpu")[:1])
  tx = state_lib.make_optimizer(config)
  abstract, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=False)
  step = state_lib.make_train_step(experiment.objective(), tx, ema_decay=config.training.ema_decay,
                                   mesh=mesh, shardings=shardings)
  return step, abstract, state_lib.example_batch(experiment.model, int(config.training.batch_size))


class TrainStep:
  """`state_lib.make_train_step` for a config (jitted, donated, sharded), compiled once.

  Calling the object runs one update on a fixed random batch and returns the new state (to block on).

  Attributes:
    compile_s: seconds to lower and compile; flops: XLA's cost analysis of one step's HLO before
    optimization (compiled_flops, bytes_accessed: of the compiled program);
    num_params: parameters of the model; batch_size: the global batch.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, devices=None):
    validate_config(config, num_devices=len(devices) if devices is not None else jax.device_count())
    self.config = config
    self.experiment = build_experiment(config)
    self.mesh = sharding_lib.make_mesh(config.mesh, devices)
    tx = state_lib.make_optimizer(config)
    self.abstract, self.shardings = state_lib.state_shardings(self.experiment.model, tx, self.mesh,
                                                              fsdp=config.fsdp, seed=config.seed)
    self.jitted = state_lib.make_train_step(self.experiment.objective(), tx,
                                            ema_decay=config.training.ema_decay, mesh=self.mesh,
                                            shardings=self.shardings)
    self.batch_size = int(config.training.batch_size)
    batch_shapes = state_lib.example_batch(self.experiment.model, self.batch_size)
    start = time.perf_counter()
    self.lowered = self.jitted.lower(self.abstract, batch_shapes)
    self.compiled = self.lowered.compile()
    self.compile_s = time.perf_counter() - start
    self.flops = model_flops(config, self.lowered)
    self.compiled_flops, self.bytes_accessed = common.cost_flops(self.compiled)
    self.state = state_lib.create_train_state(self.experiment.model, tx, self.shardings, config.seed)
    self.num_params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
    self.batch = sharding_lib.global_batch(random_batch(self.experiment.model, self.batch_size),
                                           self.mesh)

  def __call__(self):
    self.state, self.metrics = self.compiled(self.state, self.batch)
    return self.state
