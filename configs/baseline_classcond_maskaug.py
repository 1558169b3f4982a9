r"""Control for MT-Diffusion-X: the class-conditional baseline trained on clean and masked images alike.

The same data as configs/imgmask_classcond.py (every training image has a random-square masked copy),
but no masked-image modality: half of the training images are replaced by their masked copies
("masked_image_augmentation", training stream only). If MT-Diffusion-X beats the class-conditional
baseline and this control does not, the gain comes from the multitask structure, not from seeing masked
images.

  python -m mmdiff_jax.main --config=configs/baseline_classcond_maskaug.py:small \
      --workdir=workdirs/classcond_maskaug_small
"""

import ml_collections

from mmdiff_jax.config import apply_size, default_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_config()
  config.data.derived = ("random_square_mask", "masked_image_augmentation")
  config.modalities.label = dict(kind="label", feature="label", num_classes=10, role="condition")
  config.diffusion.parameterization = "v"  # as baseline_classcond
  return apply_size(config, variant)
