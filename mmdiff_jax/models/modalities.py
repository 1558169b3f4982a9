"""Modalities as the config declares them, validated once, then passed around as frozen specs.

A modality's kind fixes which encoders, heads and recovery losses make sense for it. The base modality
(kind "image") is z_0 itself (identity encoder, pixel space); every other modality is aggregated into
the forward process with its own weight profile.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mmdiff_jax.diffusion.aggregation import step_weights

BASE_KIND = "image"

# kind -> allowed encoder, head and recovery-loss names (the first of each is the default).
KINDS: dict[str, dict[str, tuple[str, ...]]] = {
    "image": {"encoder": ("identity",), "head": ("conv",), "recovery_loss": ("none",)},
    "label": {"encoder": ("categorical",), "head": ("pooled_mlp",), "recovery_loss": ("cross_entropy",)},
    "segmentation": {"encoder": ("pixel_categorical",), "head": ("conv",),
                     "recovery_loss": ("pixel_cross_entropy",)},
    "embedding": {"encoder": ("linear",), "head": ("pooled_mlp",), "recovery_loss": ("mse",)},
    "masked_image": {"encoder": ("identity",), "head": ("conv",), "recovery_loss": ("mse",)},
}
PROFILES = ("bump", "zero", "constant")


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
  """One modality.

  Attributes:
    name: its key in config.modalities (and in the outputs).
    kind: one of KINDS.
    feature: the batch key holding its data.
    encoder, head, recovery_loss: names valid for the kind.
    loss_weight: gamma_i, the recovery loss weight.
    profile: aggregation profile name ("bump": lambda_t = scale sqrt(abar)(1 - sqrt(abar)), "zero",
      or "constant" step weights w_t = scale, whose lambda_T does not vanish).
    profile_scale: the profile's scale c_i.
    num_classes: classes of a categorical modality (0 otherwise).
    dim: length of an embedding vector (0 otherwise).
  """
  name: str
  kind: str
  feature: str
  encoder: str
  head: str
  recovery_loss: str
  loss_weight: float = 0.0
  profile: str = "zero"
  profile_scale: float = 0.0
  num_classes: int = 0
  dim: int = 0

  @property
  def is_base(self) -> bool:
    return self.kind == BASE_KIND


_FIELDS = {f.name for f in dataclasses.fields(ModalitySpec)} - {"name"}


def specs_from_config(modalities: Mapping[str, Mapping[str, Any]]) -> tuple[ModalitySpec, ...]:
  """Validates config.modalities and returns the specs, base modality first.

  Raises:
    ValueError naming the offending key, its value and what is allowed.
  """
  specs = []
  for name, raw in modalities.items():
    raw = dict(raw)
    unknown = set(raw) - _FIELDS
    if unknown:
      raise ValueError(f"config.modalities.{name}: unknown keys {sorted(unknown)}; "
                       f"allowed: {sorted(_FIELDS)}")
    kind = raw.get("kind")
    if kind not in KINDS:
      raise ValueError(f"config.modalities.{name}.kind: got {kind!r}; expected one of {sorted(KINDS)}")
    for key, allowed in KINDS[kind].items():
      raw.setdefault(key, allowed[0])
      if raw[key] not in allowed:
        raise ValueError(f"config.modalities.{name}.{key}: got {raw[key]!r}; for kind {kind!r} "
                         f"expected one of {list(allowed)}")
    raw.setdefault("feature", name)
    if raw.get("profile", "zero") not in PROFILES:
      raise ValueError(f"config.modalities.{name}.profile: got {raw['profile']!r}; "
                       f"expected one of {list(PROFILES)}")
    if kind in ("label", "segmentation") and int(raw.get("num_classes", 0)) < 2:
      raise ValueError(f"config.modalities.{name}.num_classes: got {raw.get('num_classes')!r}; "
                       f"a {kind} modality needs num_classes >= 2")
    if kind == "embedding" and int(raw.get("dim", 0)) < 1:
      raise ValueError(f"config.modalities.{name}.dim: got {raw.get('dim')!r}; expected >= 1")
    specs.append(ModalitySpec(name=name, **raw))
  bases = [s for s in specs if s.is_base]
  if len(bases) != 1:
    raise ValueError(f"config.modalities: expected exactly one modality of kind {BASE_KIND!r} "
                     f"(the base, z_0), got {[s.name for s in bases]}")
  return tuple(bases + [s for s in specs if not s.is_base])


@functools.partial(jax.jit, static_argnums=(1,))  # one compile instead of one per eager op
def aggregation_weights(schedule, specs: tuple[ModalitySpec, ...]):
  """(T, N) step weights of the aggregated modalities (specs[1:]), from their profiles."""
  columns = [step_weights(schedule, s.profile, s.profile_scale) for s in specs if not s.is_base]
  if not columns:
    return jnp.zeros((schedule.num_steps, 0), jnp.float32)
  return jnp.stack(columns, axis=1)
