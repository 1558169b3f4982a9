"""Model building blocks against their reference definitions."""

import jax
import jax.numpy as jnp
import numpy as np

from mmdiff_jax.models.layers import upsample_nearest_2x


def test_upsample_nearest_2x_repeats_each_pixel_like_a_nearest_resize():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5, 4)), jnp.float32)
  up = upsample_nearest_2x(x)
  assert up.shape == (2, 6, 10, 4)
  # Pixel (i, j) of the output is pixel (i // 2, j // 2) of the input.
  np.testing.assert_array_equal(np.asarray(up), np.repeat(np.repeat(np.asarray(x), 2, 1), 2, 2))
  np.testing.assert_array_equal(up, jax.image.resize(x, (2, 6, 10, 4), method="nearest"))
  # Its gradient sums each 2 x 2 block back onto its pixel.
  weights = jnp.arange(up.size, dtype=jnp.float32).reshape(up.shape)
  grad = jax.grad(lambda v: jnp.sum(upsample_nearest_2x(v) * weights))(x)
  expected = np.asarray(weights).reshape(2, 3, 2, 5, 2, 4).sum(axis=(2, 4))
  np.testing.assert_allclose(grad, expected, rtol=1e-6)
