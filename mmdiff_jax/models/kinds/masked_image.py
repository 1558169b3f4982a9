"""An observed image with missing pixels (float (H, W, C), the missing ones set to a fill value), in
pixel space like the base: the masked-image task (MT-Diffusion-U / -X)."""

import numpy as np

from mmdiff_jax.models import encoders, heads
from mmdiff_jax.models.kinds import Kind, mean_squared_error

KIND = Kind(
    name="masked_image",
    value_shape=lambda spec, z_shape: tuple(z_shape),
    dtype=np.float32,
    encoders={"identity": encoders.IdentityEncoder},
    head=heads.ConvHead,
    head_width=lambda spec, z_shape: z_shape[-1],
    recovery_nll=mean_squared_error,
    image_like=True,
)
