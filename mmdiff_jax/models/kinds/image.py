"""The base image z_0 (pixel space, float (H, W, C) in [-1, 1]); every model has exactly one."""

import numpy as np

from mmdiff_jax.models import encoders, heads
from mmdiff_jax.models.kinds import Kind

KIND = Kind(
    name="image",
    value_shape=lambda spec, z_shape: tuple(z_shape),
    dtype=np.float32,
    encoders={"identity": encoders.IdentityEncoder},  # the base is z_0 itself: never encoded
    head=heads.ConvHead,  # the denoising prediction (eps, z0 or v)
    head_width=lambda spec, z_shape: z_shape[-1],
    image_like=True,
)
