"""Ancestral (DDPM) and DDIM samplers for joint and any-subset conditional generation.

Each step, the backbone predicts z0-hat (or eps-hat) and every head predicts its modality; the heads'
predictions are encoded (E_i(x-hat_i); for categorical modalities the expected encoding, or with
`categorical_feedback` "argmax" / "sampled" a hard class from `hard_feedback_fraction` of T down) and
plugged into the posterior. An observed modality uses its true encoding at every step instead (docs/METHOD.md); an
observed base image replaces z0-hat. The whole loop is one lax.fori_loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mmdiff_jax.diffusion import process
from mmdiff_jax.diffusion.schedules import Schedule
from mmdiff_jax.errors import BadValueError
from mmdiff_jax.models import kinds
from mmdiff_jax.models.mtdiffusion import MTDiffusion
from mmdiff_jax.models.predictor import Predictor

SAMPLERS = ("ancestral", "ddim")
# How an unobserved categorical modality's prediction enters the next step: "expected" (the expected
# encoding under the predicted probabilities: a mixture of codes never seen in training), "argmax" (the
# code of the most likely class), "sampled" (the code of a class drawn from the predicted probabilities).
CATEGORICAL_FEEDBACK = ("expected", "argmax", "sampled")


def feedback_logits(logits, *, mode: str, key: jax.Array | None = None) -> jnp.ndarray:
  """Logits whose softmax is the feedback distribution of `mode` (CATEGORICAL_FEEDBACK): the logits
  themselves ("expected"), or a one-hot at the argmax ("argmax") or at a Gumbel-max draw ("sampled",
  which needs `key`). logits: (..., K)."""
  if mode == "expected":
    return logits
  if mode == "sampled":
    if key is None:
      raise ValueError("categorical_feedback='sampled' needs a PRNG key")
    logits = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
  elif mode != "argmax":
    raise BadValueError(f"sampling.categorical_feedback: got {mode!r}; expected one of "
                        f"{CATEGORICAL_FEEDBACK}")
  hot = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=bool)
  return jnp.where(hot, 0.0, -1e9).astype(logits.dtype)  # softmax: exactly one-hot


def ddim_timesteps(num_timesteps: int, sampler_steps: int) -> np.ndarray:
  """Decreasing steps T = t_1 > ... > t_K >= 1 (K = sampler_steps of the T = num_timesteps),
  followed by 0 (the end): (K + 1,) int32."""
  if not 1 <= sampler_steps <= num_timesteps:
    raise BadValueError(f"sampling.sampler_steps: got {sampler_steps}; expected 1..{num_timesteps}")
  # One step starts from T, as every grid does (numpy's linspace of one point is its start, 1).
  grid = np.linspace(1, num_timesteps, sampler_steps) if sampler_steps > 1 else [num_timesteps]
  steps = np.unique(np.round(grid).astype(np.int32))[::-1]
  return np.concatenate([steps, [0]]).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A compiled-loop sampler.

  Attributes:
    model: the network.
    schedule, weights: the forward process the model was trained with.
    parameterization: what the base head predicts ("eps", "z0", "v").
    method: "ancestral" (all T steps) or "ddim" (one of SAMPLERS).
    sampler_steps: DDIM steps (ignored by ancestral).
    eta: DDIM stochasticity (0 = deterministic).
    clip_denoised: clip z0-hat to [-1, 1] (pixel-space images).
    categorical_feedback: one of CATEGORICAL_FEEDBACK.
    hard_feedback_fraction: "argmax" / "sampled" feedback applies at steps t <= this fraction of T;
      above it the expected code is fed back (1.0: every step; 0.0: none).
    ignore_label: an observed segmentation map's unlabelled value (config.data.ignore_label): those
      pixels encode as 0, as in training; generated maps have a class everywhere.
  """
  model: MTDiffusion
  schedule: Schedule
  weights: jnp.ndarray
  parameterization: str = "eps"
  method: str = "ddim"
  sampler_steps: int = 50
  eta: float = 0.0
  clip_denoised: bool = True
  categorical_feedback: str = "expected"
  hard_feedback_fraction: float = 1.0
  ignore_label: int | None = None

  def __post_init__(self):
    if self.method not in SAMPLERS:
      raise BadValueError(f"sampling.sampler: got {self.method!r}; expected one of {SAMPLERS}")
    if self.categorical_feedback not in CATEGORICAL_FEEDBACK:
      raise BadValueError(f"sampling.categorical_feedback: got {self.categorical_feedback!r}; expected "
                          f"one of {CATEGORICAL_FEEDBACK}")
    if not 0.0 <= self.hard_feedback_fraction <= 1.0:
      raise BadValueError(f"sampling.hard_feedback_fraction: got {self.hard_feedback_fraction!r}; "
                          "expected a number in [0, 1]")

  def timesteps(self) -> np.ndarray:
    if self.method == "ancestral":
      return np.arange(self.schedule.num_timesteps, -1, -1, dtype=np.int32)
    return ddim_timesteps(self.schedule.num_timesteps, self.sampler_steps)

  def _observed_encodings(self, params, observed: Mapping[str, Any]):
    """{index in the encoding stack: true encoding} for the observed aggregated modalities."""
    return {i: self.model.apply({"params": params}, spec.name, observed[spec.name],
                                ignore_label=self.ignore_label, method=MTDiffusion.encode_value)
            for i, spec in enumerate(self.model.aggregated) if spec.name in observed}

  def prepare_observed(self, params, observed: Mapping[str, Any], *, batch_size: int | None = None):
    """(observed z_0 or None, {stack index: true encoding}, {condition name: value}) of `observed`.

    Raises ValueError for names that are not modalities of the model, and for values whose leading
    size is not `batch_size` (where given)."""
    unknown = set(observed) - {s.name for s in self.model.specs}
    if unknown:
      raise ValueError(f"observed: unknown modalities {sorted(unknown)}; "
                       f"expected names from {[s.name for s in self.model.specs]}")
    for name, value in observed.items():
      if batch_size is not None and (jnp.ndim(value) == 0 or jnp.shape(value)[0] != batch_size):
        raise ValueError(f"observed[{name!r}]: shape {jnp.shape(value)}; expected a leading batch "
                         f"size of {batch_size}")
    conditions = {s.name: observed[s.name] for s in self.model.conditions if s.name in observed}
    return (observed.get(self.model.specs[0].name), self._observed_encodings(params, observed),
            conditions)

  def predict(self, params, z_t, t, observed_encodings, observed_z0, conditions=None, key=None):
    """One network evaluation: (z0-hat, eps-hat, encodings used, head outputs). `key` is needed for
    categorical_feedback="sampled"."""
    batch_size = z_t.shape[0]
    t_vec = jnp.full((batch_size,), t, jnp.int32)
    outputs = self.model.apply({"params": params}, z_t, t_vec, train=False, conditions=conditions)
    fed_back = dict(outputs)
    if self.categorical_feedback != "expected":
      # t is traced inside the sampling loop: the switch from expected to hard feedback is a select.
      hard_now = t <= self.hard_feedback_fraction * self.schedule.num_timesteps
      for i, spec in enumerate(self.model.aggregated):
        if kinds.get(spec.kind).categorical and i not in observed_encodings:
          hard = feedback_logits(outputs[spec.name], mode=self.categorical_feedback,
                                 key=None if key is None else jax.random.fold_in(key, i))
          fed_back[spec.name] = jnp.where(hard_now, hard, outputs[spec.name])
    encodings = self.model.apply({"params": params}, fed_back, batch_size,
                                 method=MTDiffusion.encode_predictions)
    for i, encoding in observed_encodings.items():
      encodings = encodings.at[i].set(encoding)
    base = self.model.specs[0]
    z0, eps = process.z0_eps_from_prediction(
        self.schedule, self.weights, t=t_vec, z_t=z_t, encodings=encodings,
        prediction=outputs[base.name], parameterization=self.parameterization)
    if observed_z0 is not None:
      z0 = observed_z0
    elif self.clip_denoised:
      z0 = jnp.clip(z0, -1.0, 1.0)
    eps = process.eps_from_z0(self.schedule, self.weights, t=t_vec, z_t=z_t, z0=z0,
                              encodings=encodings)
    return z0, eps, encodings, outputs

  def step(self, z0, eps, encodings, z_t, t, s, noise):
    """z_s from z_t given the predictions (s < t; s = 0 returns z0-hat)."""
    t_vec = jnp.full((z_t.shape[0],), t, jnp.int32)
    if self.method == "ancestral":
      mean, var = process.posterior(self.schedule, self.weights, t=t_vec, z_t=z_t, z0=z0,
                                    encodings=encodings)
      return mean + jnp.sqrt(var) * noise
    return process.ddim_step(self.schedule, self.weights, t=t, s=s, z0=z0, eps=eps,
                             encodings=encodings, eta=self.eta, noise=noise)

  def sample(self, params, rng: jax.Array, batch_size: int,
             observed: Mapping[str, Any] | None = None) -> dict[str, jnp.ndarray]:
    """Generates every unobserved modality; observed ones are given by name.

    Args:
      params: model parameters (use the EMA ones).
      rng: PRNG key.
      batch_size: B.
      observed: {modality name: value} with a leading batch axis B (e.g. {"label": (B,) ints});
        a class-conditional model's condition modalities must be among them.
    Returns:
      {modality name: generated value}: the base image (B, H, W, C) (in [-1, 1] with clip_denoised
      or an observed image; unclipped, a z0-hat may leave it), labels (B,) int32,
      segmentation maps (B, H, W) int32, embeddings (B, D); plus "{name}_logits" for categorical ones.
      Observed modalities are returned as given.
    """
    observed = dict(observed or {})
    observed_z0, observed_encodings, conditions = self.prepare_observed(params, observed,
                                                                        batch_size=batch_size)
    timesteps = jnp.asarray(self.timesteps())
    init_rng, loop_rng = jax.random.split(rng)
    z_shape = (batch_size, *self.model.z_shape)
    z = jax.random.normal(init_rng, z_shape)
    outputs_shape = jax.eval_shape(
        lambda: self.predict(params, z, self.schedule.num_timesteps, observed_encodings, observed_z0,
                             conditions, key=loop_rng)[3])
    outputs = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), outputs_shape)

    def body(i, carry):
      z, _ = carry
      t, s = timesteps[i], timesteps[i + 1]
      step_rng = jax.random.fold_in(loop_rng, i)
      z0, eps, encodings, outputs = self.predict(params, z, t, observed_encodings, observed_z0,
                                                 conditions, key=jax.random.fold_in(step_rng, 1))
      noise = jax.random.normal(step_rng, z_shape)
      return self.step(z0, eps, encodings, z, t, s, noise), outputs

    z, outputs = jax.lax.fori_loop(0, timesteps.shape[0] - 1, body, (z, outputs))
    return self._collect(z, outputs, observed)

  def _collect(self, z0, outputs, observed):
    result = {self.model.specs[0].name: z0}
    for spec in self.model.aggregated:
      result.update(_decoded(spec, outputs[spec.name]))
    result.update(observed)
    return result


def _decoded(spec, output) -> dict[str, jnp.ndarray]:
  """A head's output as a value, by its kind (the argmax class and the logits, for categorical
  kinds)."""
  kind = kinds.get(spec.kind)
  logits = {f"{spec.name}_logits": output} if kind.categorical else {}
  return {**logits, spec.name: kind.decode(output)}


@dataclasses.dataclass(frozen=True)
class PredictionSampler:
  """A predictor baseline behind the Sampler interface: sample() with the input observed returns
  the prediction (deterministic; rng unused), so the evaluators treat both alike."""
  model: Predictor

  def sample(self, params, rng: jax.Array, batch_size: int,
             observed: Mapping[str, Any] | None = None) -> dict[str, jnp.ndarray]:
    del rng
    observed = dict(observed or {})
    if self.model.input not in observed:
      raise ValueError(f"observed: this predictor maps {self.model.input!r} -> "
                       f"{self.model.target!r}; pass {self.model.input!r} (got {sorted(observed)})")
    x = observed[self.model.input]
    chex.assert_shape(x, (batch_size, *self.model.z_shape))
    output = self.model.apply({"params": params}, x, train=False)
    target = self.model.spec(self.model.target)
    if target.is_base:
      output = jnp.clip(output, -1.0, 1.0)  # as the diffusion samplers clip z0-hat
    return {**_decoded(target, output), **observed}
