r"""Baseline: class-conditional diffusion (ADM style) with the same backbone and budget as imglabel.

The label is not diffused: its learned embedding is added to the U-Net's time embedding (modality role
"condition"), and it must be given when sampling. Compare with imglabel's class-conditional samples and
label agreement (evaluate with --config.eval.classifier_workdir=<a configs/classifier.py run>).

  python -m mmdiff_jax.main --config=configs/baseline_classcond.py:small --workdir=workdirs/classcond_small
"""

import ml_collections

from mmdiff_jax.config import apply_size, default_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_config()
  config.modalities.label = dict(kind="label", feature="label", num_classes=10, role="condition")
  config.diffusion.parameterization = "v"  # as baseline_uncond (measured there)
  return apply_size(config, variant)
