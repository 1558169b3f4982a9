r"""Baseline: an image -> segmentation predictor with the same backbone and budget as imgseg.

No diffusion: the U-Net (at t = 0) maps the image to per-pixel logits of the derived garment map
(mmdiff_jax/data/derived.py), trained with the pixel cross-entropy. Evaluated by test mIoU, like
imgseg's image -> segmentation through the joint model.

  python -m mmdiff_jax.main --config=configs/baseline_segmenter.py:small --workdir=workdirs/segmenter_small
"""

import ml_collections

from mmdiff_jax.config import apply_size, default_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_config()
  config.task = "prediction"
  config.prediction.update(input="image", target="segmentation")
  config.data.derived = ("garment_segmentation",)
  config.modalities.segmentation = dict(kind="segmentation", feature="segmentation", num_classes=11)
  return apply_size(config, variant)
