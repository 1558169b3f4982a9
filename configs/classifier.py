r"""The independent Fashion-MNIST classifier behind the label-agreement metric (and a baseline for
image -> label accuracy through the joint model).

No diffusion: the U-Net (at t = 0) and a pooled MLP head map the image to class logits (cross-entropy).
Train it once, then point evaluations at it:

  python -m mmdiff_jax.main --config=configs/classifier.py:small --workdir=workdirs/classifier_small
  python -m mmdiff_jax.evaluate --config=configs/imglabel.py:small --workdir=workdirs/imglabel_small \
      --config.eval.classifier_workdir=workdirs/classifier_small
"""

import ml_collections

from mmdiff_jax.config import apply_size, default_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_config()
  config.task = "prediction"
  config.prediction.update(input="image", target="label")
  config.modalities.label = dict(kind="label", feature="label", num_classes=10)
  return apply_size(config, variant)
