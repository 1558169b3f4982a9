"""Builds the pieces an experiment config describes: modalities, network, forward process, sampler.

config.task selects what is trained: "diffusion" (MT-Diffusion, or with one modality plain DDPM) or
"prediction" (a single-task predictor baseline: config.prediction.input -> config.prediction.target).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mmdiff_jax.diffusion import aggregation, bound
from mmdiff_jax.diffusion.schedules import Schedule, get_schedule
from mmdiff_jax.models import kinds
from mmdiff_jax.models.modalities import (ModalitySpec, aggregated_specs, aggregation_weights,
                                          specs_from_config)
from mmdiff_jax.models.mtdiffusion import MTDiffusion
from mmdiff_jax.models.predictor import Predictor
from mmdiff_jax.models.unet import UNet
from mmdiff_jax.sampling.samplers import PredictionSampler, Sampler
from mmdiff_jax.training.losses import Objective, PredictionObjective
from mmdiff_jax.xla_defaults import jit_run_once

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TASKS = ("diffusion", "prediction")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The model and forward process of one config."""
  specs: tuple[ModalitySpec, ...]
  model: MTDiffusion | Predictor
  schedule: Schedule
  weights: jnp.ndarray  # (T, N) aggregation weights of aggregated_specs(specs)
  parameterization: str
  task: str = "diffusion"
  ignore_label: int | None = None  # config.data.ignore_label, honoured by objective and sampler

  @property
  def is_generative(self) -> bool:
    return self.task == "diffusion"

  @property
  def class_modality(self) -> ModalitySpec | None:
    """The categorical modality whose classes samples are asked for (the class-conditional grid,
    --sample_labels): a conditioned model's condition, else the first generated modality of kind
    "label"; None if there is none (a condition that is not categorical: None as well)."""
    if self.is_generative and self.model.conditions:
      condition = self.model.conditions[0]
      return condition if kinds.get(condition.kind).categorical else None
    return next((s for s in self.specs if s.kind == "label"), None)

  def objective(self) -> Objective | PredictionObjective:
    if not self.is_generative:
      return PredictionObjective(self.model, ignore_label=self.ignore_label)
    return Objective(self.model, self.schedule, self.weights, self.parameterization,
                     ignore_label=self.ignore_label)

  def configured_sampler(self, sampling) -> Sampler | PredictionSampler:
    """The sampler `sampling` (config.sampling) describes, every option of it: the one behind the
    sample grids and the exported samples."""
    return self.sampler(sampling.sampler, sampling.sampler_steps, eta=sampling.eta,
                        clip_denoised=sampling.clip_denoised,
                        categorical_feedback=sampling.categorical_feedback,
                        hard_feedback_fraction=sampling.hard_feedback_fraction)

  def sampler(self, method: str, sampler_steps: int, *, eta: float = 0.0, clip_denoised: bool = True,
              categorical_feedback: str = "expected",
              hard_feedback_fraction: float = 1.0) -> Sampler | PredictionSampler:
    """The diffusion sampler; for a predictor, its prediction behind the same interface."""
    if not self.is_generative:
      return PredictionSampler(self.model)
    return Sampler(self.model, self.schedule, self.weights, self.parameterization, method=method,
                   sampler_steps=sampler_steps, eta=eta, clip_denoised=clip_denoised,
                   categorical_feedback=categorical_feedback,
                   hard_feedback_fraction=hard_feedback_fraction, ignore_label=self.ignore_label)

  def prior_report(self) -> dict[str, float]:
    """lambda_T per aggregated modality, and the prior KL per dimension of a unit encoding (nats)."""
    if not self.is_generative:
      return {}
    final, excess = jax.device_get(_prior_terms(self.schedule, self.weights))
    report = {}
    for i, spec in enumerate(aggregated_specs(self.specs)):
      report[f"lambda_T/{spec.name}"] = float(final[i])
      report[f"prior_kl_excess_per_dim/{spec.name}"] = float(excess[i])
    return report


@jit_run_once
def _prior_terms(schedule: Schedule, weights):
  """(N,) lambda_T and (N,) prior KL of a unit encoding beyond DDPM's, per modality alone."""
  def excess(column):
    unit, z0 = jnp.ones((1, 1)), jnp.zeros((1,))
    return (bound.prior_kl(schedule, column[:, None], z0=z0, encodings=unit)
            - bound.prior_kl(schedule, jnp.zeros_like(column)[:, None], z0=z0, encodings=unit))[0]
  return aggregation.final_coefficients(schedule, weights), jax.vmap(excess, in_axes=1)(weights)


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
  """Builds the modality, model and diffusion parts of a config (see mmdiff_jax.config.validate_config)."""
  specs = specs_from_config(config.modalities)
  image_size = int(config.data.image_size)
  z_shape = (image_size, image_size, int(config.data.channels))
  m = config.model
  backbone = UNet(base_channels=m.base_channels, channel_mults=tuple(m.channel_mults),
                  num_res_blocks=m.num_res_blocks, attention_resolutions=tuple(m.attention_resolutions),
                  num_heads=m.num_heads, dropout=m.dropout, num_groups=m.num_groups,
                  dtype=DTYPES[m.dtype], remat=bool(m.remat))
  if config.task == "prediction":
    model = Predictor(specs=specs, z_shape=z_shape, backbone=backbone,
                      input=config.prediction.input, target=config.prediction.target)
  else:
    model = MTDiffusion(specs=specs, z_shape=z_shape, backbone=backbone)
  schedule = get_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
  return Experiment(specs=specs, model=model, schedule=schedule,
                    weights=aggregation_weights(schedule, specs),
                    parameterization=config.diffusion.parameterization, task=config.task,
                    ignore_label=config.data.get("ignore_label"))
