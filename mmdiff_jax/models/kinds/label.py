"""A class label per image (int32 (), 0..num_classes-1): joint image+label generation, or the
condition of a class-conditional model."""

import numpy as np
import optax

from mmdiff_jax.models import encoders, heads
from mmdiff_jax.models.kinds import Kind, argmax_class


def cross_entropy(logits, labels, *, ignore_label=None):
  """(B, K) logits, (B,) labels -> (B,) -log p(label)."""
  del ignore_label
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


KIND = Kind(
    name="label",
    value_shape=lambda spec, z_shape: (),
    dtype=np.int32,
    encoders={"categorical": encoders.CategoricalEncoder,
              "smooth_categorical": encoders.SmoothCategoricalEncoder,
              "class_mean": encoders.ClassMeanEncoder},
    head=heads.PooledMLPHead,
    head_width=lambda spec, z_shape: spec.num_classes,
    recovery_nll=cross_entropy,
    decode=argmax_class,
    categorical=True,
    required=("num_classes",),
    can_condition=True,
)
