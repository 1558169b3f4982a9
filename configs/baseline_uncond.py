r"""Baseline: image-only (unconditional) diffusion with the same backbone and budget as imglabel.

With no aggregated modality the forward process is plain DDPM. Compare its "generation" metrics with
imglabel's (the paper's claim: label-aware joint generation beats the unconditional model).

  python -m mmdiff_jax.main --config=configs/baseline_uncond.py:small --workdir=workdirs/uncond_small
  python -m mmdiff_jax.evaluate --config=configs/baseline_uncond.py:small --workdir=workdirs/uncond_small
"""

import ml_collections

from mmdiff_jax.config import apply_size, default_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_config()
  # v-prediction: about half eps's Fréchet AlexNet distance at `small` (RESULTS.md: uncond_small is eps,
  # uncond_v_small v).
  config.diffusion.parameterization = "v"
  return apply_size(config, variant)
