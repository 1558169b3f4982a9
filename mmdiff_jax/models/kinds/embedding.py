"""A feature vector per image (float (dim,), e.g. a pretrained network's embedding)."""

import numpy as np

from mmdiff_jax.models import encoders, heads
from mmdiff_jax.models.kinds import Kind, mean_squared_error

KIND = Kind(
    name="embedding",
    value_shape=lambda spec, z_shape: (spec.dim,),
    dtype=np.float32,
    encoders={"linear": encoders.EmbeddingEncoder},
    head=heads.PooledMLPHead,
    head_width=lambda spec, z_shape: spec.dim,
    recovery_nll=mean_squared_error,
    required=("dim",),
)
