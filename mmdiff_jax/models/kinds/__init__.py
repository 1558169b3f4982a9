"""Modality kinds: what the library does differently for an image, a label, a segmentation map, ...

Each kind is one record, `Kind`, defined in its own file of this folder and found by its name: a config's
`modalities.<name>.kind = "depth"` makes `get("depth")` import `mmdiff_jax/models/kinds/depth.py` and
read its `KIND`. Every part of the library that treats kinds differently (the model's encoders and heads,
the batch shapes for initialisation, the data checks, the recovery loss, the sampler's feedback and
decoding, the sample grids) reads this record and nothing else, so a new kind is one new file (see
embedding.py, the shortest). A kind defined elsewhere (a notebook, a test) is added with `register`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

from mmdiff_jax.registry import FolderRegistry


@dataclasses.dataclass(frozen=True)
class Kind:
  """One modality kind. `spec` below is the modality's models.modalities.ModalitySpec and `z_shape`
  the diffusion space's (H, W, C).

  Attributes:
    name: the config's `kind` value.
    value_shape: (spec, z_shape) -> the shape of one example's value (() for a label, (H, W) for a
      class map, ...).
    dtype: the values' numpy dtype (np.int32 for class ids, np.float32 otherwise).
    encoders: {config name: encoder class}, the first the default. An encoder is a flax module with
      `encode(value) -> (B, *z_shape)` and `encode_prediction(head output) -> (B, *z_shape)` (see
      models/encoders.py), constructed with `z_shape` and, where the class has the field, `num_classes`.
    head: the decoder head class (models/heads.py), constructed with its output width.
    head_width: (spec, z_shape) -> that width (output channels of a map, features of a vector).
    recovery_nll: (head output, target values, *, ignore_label) -> (B,) the modality-recovery loss
      (-log p(x_i | z_t) in nats for a label, per-value means for maps and continuous values); None
      for the base image (it has the denoising loss).
    decode: head output -> the generated value (identity, or the argmax class of logits).
    categorical: values are class ids 0..num_classes-1 and the head gives logits: the sampler's
      categorical_feedback applies, samples also carry "<name>_logits", the data checks test the range.
    required: the spec fields the kind needs: "num_classes" (>= 2) and/or "dim" (>= 1).
    can_condition: may be given as role="condition" (a class embedding added to the time embedding).
    image_like: values have z's shape, so a predictor baseline's backbone can take them as its input.
    has_ignore_label: config.data.ignore_label marks unlabelled values of this kind (encoded as 0 and
      left out of the recovery loss).
    preview: (spec, values (B, ...)) -> (B, H, W, 3) in [-1, 1], drawn beside each joint sample in
      the sample grids (PNG "joint_<name>_step<N>.png"); None: not drawn.
  """
  name: str
  value_shape: Callable[[Any, tuple[int, ...]], tuple[int, ...]]
  dtype: Any
  encoders: Mapping[str, type]
  head: type
  head_width: Callable[[Any, tuple[int, ...]], int]
  recovery_nll: Callable[..., jnp.ndarray] | None = None
  decode: Callable[[jnp.ndarray], jnp.ndarray] = lambda output: output
  categorical: bool = False
  required: tuple[str, ...] = ()
  can_condition: bool = False
  image_like: bool = False
  has_ignore_label: bool = False
  preview: Callable[[Any, np.ndarray], np.ndarray] | None = None

  def __post_init__(self):
    if not self.encoders:
      raise ValueError(f"kind {self.name!r}: needs at least one encoder")
    unknown = set(self.required) - {"num_classes", "dim"}
    if unknown:
      raise ValueError(f"kind {self.name!r}: required fields {sorted(unknown)}; expected "
                       f"'num_classes' or 'dim'")


_KINDS = FolderRegistry(__name__, __path__, attribute="KIND", record_type=Kind, what="modality kind")
_REGISTERED = _KINDS.registered
register = _KINDS.register  # (kind) -> kind: a kind defined outside this folder, known by its name
builtin_names = _KINDS.builtin_names  # the kinds defined by the files of this folder
names = _KINDS.names
get = _KINDS.get  # the kind called `name`: registered, or the KIND of this folder's file `name`.py


# Helpers the kinds share.


def per_example_mean(x: jnp.ndarray) -> jnp.ndarray:
  """(B, ...) -> (B,) means."""
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def per_example_sum(x: jnp.ndarray) -> jnp.ndarray:
  """(B, ...) -> (B,) sums."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def mean_squared_error(output: jnp.ndarray, target: jnp.ndarray, *,
                       ignore_label: int | None = None) -> jnp.ndarray:
  """(B, ...) predictions and targets -> (B,) mean squared errors (a fixed-variance Gaussian's NLL up
  to scale and constant)."""
  del ignore_label
  return per_example_mean(jnp.square(output - target))


def argmax_class(logits: jnp.ndarray) -> jnp.ndarray:
  """(..., K) logits -> (...) int32 classes."""
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)
