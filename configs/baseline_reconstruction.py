r"""Baseline: reconstruction-only inpainting, with the same backbone, masks and budget as imgmask.

No diffusion: the U-Net (at t = 0) maps the masked image straight to the image, trained with the
mean-squared error. Evaluated like imgmask (masked-region LPIPS and PSNR per mask ratio).

  python -m mmdiff_jax.main --config=configs/baseline_reconstruction.py:small --workdir=workdirs/recon_small
"""

import ml_collections

from mmdiff_jax.config import apply_size, default_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_config()
  config.task = "prediction"
  config.prediction.update(input="masked_image", target="image")
  config.data.derived = ("random_square_mask",)
  config.modalities.masked_image = dict(kind="masked_image", feature="masked_image")
  return apply_size(config, variant)
