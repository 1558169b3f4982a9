"""Experiment configs: `get_config(variant)` per file; installed with the package as
`mmdiff_jax_configs` (see mmdiff_jax/installed_configs.py)."""
