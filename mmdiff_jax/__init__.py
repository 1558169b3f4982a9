"""mmdiff_jax: multimodal, multitask diffusion models (MT-Diffusion) in JAX/Flax."""

from mmdiff_jax import xla_defaults

# Before any backend starts (importing the package comes first in every entry point, test and notebook):
# the XLA settings measured faster here (see xla_defaults; MMDIFF_JAX_KEEP_XLA_FLAGS=1 opts out).
xla_defaults.apply_cpu_defaults()
