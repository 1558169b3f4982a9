"""mmdiff_jax: multimodal, multitask diffusion models (MT-Diffusion) in JAX/Flax."""
