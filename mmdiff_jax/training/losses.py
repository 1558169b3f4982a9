"""The training objective: the practical loss plus every term of the multimodal bound, reported apart.

Ours vs. the paper's four terms (named in the order docs/METHOD.md lists them; the paper's exact indexing
is only known second-hand):
  L0  noise/marginal term      -> "bound/prior":     KL(q(z_T | z_0, X) || N(0, I))
  L1  posterior-matching term  -> "bound/diffusion": sum_{t>=2} KL(q(z_{t-1}|z_t,z_0,X) || p(z_{t-1}|z_t))
  L2  modality recovery (new)  -> "bound/recovery":  sum_t sum_i E[recovery loss of x_i at z_t]
  L3  reconstruction           -> "bound/data":      E[-log p(x_0 | z_1)] (discretized Gaussian)
The sums over t are estimated from one uniformly drawn t per example (T times the term at t).
"bound/recovery" is -log p(x_i | z_t) in nats only for a label. Each kind's recovery loss is the one
trained: a segmentation map's is the mean over pixels of -log p (the map's -log p / its pixel count),
a continuous modality's the mean squared error (a fixed-variance Gaussian's -log p up to scale and
constant, with no variance to make it a likelihood), so the logged sum is comparable between runs
of one configuration but is not a term of a bound on -log p(X) in nats.
The loss that is minimised is the simplified one (DDPM): mean-squared error of the prediction in the
configured parameterization ("denoise_mse") plus sum_i gamma_i * (recovery NLL of modality i at t).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp

from mmdiff_jax.diffusion import bound, process
from mmdiff_jax.diffusion.schedules import Schedule
from mmdiff_jax.models import kinds
from mmdiff_jax.models.kinds import per_example_mean, per_example_sum
from mmdiff_jax.models.modalities import ModalitySpec
from mmdiff_jax.models.mtdiffusion import MTDiffusion
from mmdiff_jax.models.predictor import Predictor


def recovery_nll(spec: ModalitySpec, output: jnp.ndarray, target: jnp.ndarray, *,
                 ignore_label: int | None = None) -> jnp.ndarray:
  """-log p(x_i | z_t) of one modality from its head's output, by its kind: (B,).

  ignore_label: for kinds that have one (segmentation maps), targets equal to it are left out.
  """
  return kinds.get(spec.kind).recovery_nll(output, target, ignore_label=ignore_label)


@dataclasses.dataclass(frozen=True)
class Objective:
  """Everything the loss needs besides parameters and data.

  Attributes:
    model: the network.
    schedule: the noise schedule (T steps).
    weights: (T, N) aggregation weights of model.aggregated.
    parameterization: "eps", "z0" or "v": what the base head predicts.
    ignore_label: segmentation class id of pixels without a label (config.data.ignore_label): they
      are encoded as 0 (no class information in the forward process) and left out of the recovery
      loss; None: every pixel is labelled.
  """
  model: MTDiffusion
  schedule: Schedule
  weights: jnp.ndarray
  parameterization: str = "eps"
  ignore_label: int | None = None

  def __call__(self, params, batch: dict[str, Any], rng: jax.Array, *, train: bool = True):
    """Returns (loss, metrics) at one uniform t per example; metrics are batch means of per-example
    values."""
    z0 = batch[self.model.specs[0].feature]
    chex.assert_rank(z0, 4)
    t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    t = jax.random.randint(t_rng, (z0.shape[0],), 1, self.schedule.num_timesteps + 1)
    noise = jax.random.normal(noise_rng, z0.shape, z0.dtype)
    metrics = self.per_example(params, batch, t=t, noise=noise, dropout_rng=dropout_rng, train=train)
    metrics = {k: jnp.mean(v) for k, v in metrics.items()}
    return metrics["loss"], metrics

  def per_example(self, params, batch: dict[str, Any], *, t: jnp.ndarray, noise: jnp.ndarray,
                  dropout_rng: jax.Array, train: bool = True) -> dict[str, jnp.ndarray]:
    """Every metric of `__call__`, (B,) each, at given steps and noise.

    Args:
      t: (B,) int steps in 1..T.
      noise: (B, *z_shape), the forward process's noise.
    """
    base, aggregated = self.model.specs[0], self.model.aggregated
    z0 = batch[base.feature]
    chex.assert_rank(z0, 4)
    chex.assert_shape(t, (z0.shape[0],))
    chex.assert_equal_shape([noise, z0])
    batch_size = z0.shape[0]

    variables = {"params": params}
    encodings = self._encode(variables, batch, batch_size)
    z_t = process.sample_marginal(self.schedule, self.weights, t=t, z0=z0, encodings=encodings,
                                  noise=noise)
    conditions = {s.name: batch[s.feature] for s in self.model.conditions}
    outputs = self.model.apply(variables, z_t, t, train=train, conditions=conditions,
                               rngs={"dropout": dropout_rng})
    prediction = outputs[base.name]

    target = {"eps": noise, "z0": z0,
              "v": process.v_from_z0_eps(self.schedule, t=t, z0=z0, eps=noise),
              }[self.parameterization]
    denoise_mse = per_example_mean(jnp.square(prediction - target))
    recovery = {s.name: recovery_nll(s, outputs[s.name], batch[s.feature],
                                     ignore_label=self.ignore_label) for s in aggregated}
    loss_per_example = denoise_mse + sum(
        (s.loss_weight * recovery[s.name] for s in aggregated), jnp.zeros_like(denoise_mse))

    metrics = {"loss": loss_per_example, "denoise_mse": denoise_mse}
    metrics.update({f"recovery/{name}": nll for name, nll in recovery.items()})
    metrics.update(self._bound_terms(variables, z0, encodings, z_t, t, outputs, recovery))
    return metrics

  def _encode(self, variables, batch, batch_size: int) -> jnp.ndarray:
    """E_i(x_i) of the aggregated modalities, (N, B, *z_shape); ignored pixels encode as 0."""
    return self.model.apply(variables, batch, batch_size, ignore_label=self.ignore_label,
                            method=MTDiffusion.encode)

  def _bound_terms(self, variables, z0, encodings, z_t, t, outputs, recovery):
    """Per-example bound terms (no gradient flows through them); in nats but for "bound/recovery"
    (the module docstring says what it is). They bound the reverse model that feeds back the expected
    encoding of each categorical prediction, whatever `sampling.categorical_feedback` a config samples
    with: hard (argmax or sampled) feedback has no density this bound could take."""
    sg = jax.lax.stop_gradient
    base = self.model.specs[0]
    num_timesteps, batch_size = self.schedule.num_timesteps, z0.shape[0]
    encodings_hat = self.model.apply(variables, outputs, batch_size,
                                     method=MTDiffusion.encode_predictions)
    z0_hat, _ = process.z0_eps_from_prediction(
        self.schedule, self.weights, t=t, z_t=z_t, encodings=encodings_hat,
        prediction=outputs[base.name], parameterization=self.parameterization)
    kl = per_example_sum(bound.diffusion_kl(
        self.schedule, self.weights, t=t, z_t=z_t, z0=z0, encodings=encodings, z0_hat=z0_hat,
        encodings_hat=encodings_hat))
    # At t = 1, p(x_0 | z_1): a discretized Gaussian around z0-hat with the variance beta_1.
    log_scale = 0.5 * jnp.log(self.schedule.betas[0])
    data_nll = per_example_sum(bound.discretized_gaussian_nll(z0, z0_hat, log_scale))
    first = t == 1
    prior = per_example_sum(bound.prior_kl(self.schedule, self.weights, z0=z0, encodings=encodings))
    terms = {
        "bound/prior": prior,
        "bound/diffusion": num_timesteps * jnp.where(first, 0.0, kl),
        "bound/data": num_timesteps * jnp.where(first, data_nll, 0.0),
        "bound/recovery": num_timesteps * sum(recovery.values(), jnp.zeros((batch_size,))),
    }
    # Per dimension of the model's image (data.image_size): images padded to it (Fashion-MNIST's 28
    # to 32) count their nearly free border too, which lowers the figure against one at 28 x 28.
    num_dims = math.prod(z0.shape[1:])
    terms["bound/image_bits_per_dim"] = (
        (prior + terms["bound/diffusion"] + terms["bound/data"]) / (num_dims * math.log(2.0)))
    return {k: sg(v) for k, v in terms.items()}


def prediction_loss(spec: ModalitySpec, output: jnp.ndarray, target: jnp.ndarray, *,
                    ignore_label: int | None = None) -> jnp.ndarray:
  """Per-example loss of a predictor's target: its recovery NLL; MSE for an image target: (B,)."""
  if spec.is_base:
    return per_example_mean(jnp.square(output - target))
  return recovery_nll(spec, output, target, ignore_label=ignore_label)


@dataclasses.dataclass(frozen=True)
class PredictionObjective:
  """The loss of a single-task predictor baseline (same call signature as Objective); ignore_label
  as in Objective."""
  model: Predictor
  ignore_label: int | None = None

  def __call__(self, params, batch: dict[str, Any], rng: jax.Array, *, train: bool = True):
    """Returns (loss, metrics): the target's loss, batch mean."""
    source, target = self.model.spec(self.model.input), self.model.spec(self.model.target)
    output = self.model.apply({"params": params}, batch[source.feature], train=train,
                              rngs={"dropout": rng})
    loss = jnp.mean(prediction_loss(target, output, batch[target.feature],
                                    ignore_label=self.ignore_label))
    return loss, {"loss": loss, f"prediction/{target.name}": loss}
