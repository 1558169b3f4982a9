r"""Joint image + label generation on Fashion-MNIST (MT-Diffusion).

One model generates (image, label) pairs jointly, images for a given label, and labels for a given image.

Variants (the part after ':'):
  smoke: tiny; the whole pipeline in under a minute on 2 CPU cores (tests, CI, quick checks):
    python -m mmdiff_jax.main --config=configs/imglabel.py:smoke --workdir=/tmp/mmdiff_smoke
  small: a meaningful run on 2 CPU cores in about 15 minutes:
    python -m mmdiff_jax.main --config=configs/imglabel.py:small --workdir=workdirs/imglabel_small
  (default): sized for one accelerator:
    python -m mmdiff_jax.main --config=configs/imglabel.py --workdir=workdirs/imglabel

Any key can be overridden, e.g. --config.training.num_steps=500 --config.fsdp=True.
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist_offline",  # built from raw idx files; any other TFDS name must be prepared
      data_dir=None,  # TFDS data dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets
      raw_dir="/usr/share/datasets/fashion-mnist",  # apt-get install dataset-fashion-mnist
      image_size=32,  # 28 (as stored) or 32 (padded, so the U-Net can halve it three times)
      image_key="image",
      label_key="label",
  ))

  # The base modality (kind "image") is z_0; every other modality is aggregated into the forward
  # process with its own profile ("bump": lambda_t = scale sqrt(abar_t)(1 - sqrt(abar_t))).
  config.modalities = ml_collections.ConfigDict(dict(
      image=dict(kind="image", feature="image"),
      label=dict(kind="label", feature="label", num_classes=10, encoder="categorical",
                 head="pooled_mlp", recovery_loss="cross_entropy", loss_weight=0.1,
                 profile="bump", profile_scale=2.0),
  ))

  config.diffusion = ml_collections.ConfigDict(dict(
      schedule="linear", num_steps=1000, parameterization="eps"))

  config.model = ml_collections.ConfigDict(dict(
      base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16, 8),
      num_heads=4, dropout=0.1, num_groups=32, dtype="float32"))

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-4, warmup_steps=1000, grad_clip_norm=1.0, b1=0.9, b2=0.999,
      weight_decay=0.0))

  config.training = ml_collections.ConfigDict(dict(
      batch_size=128,  # global, over all devices and processes
      num_steps=100_000,
      ema_decay=0.9999,
      log_every=100,
      save_every=5000,
      sample_every=10_000,
      keep_checkpoints=3,
      max_nonfinite_steps=10,  # stop after this many skipped (non-finite) updates in a row
  ))

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  config.fsdp = False  # shard parameters and optimizer state over the "fsdp" mesh axis

  config.sampling = ml_collections.ConfigDict(dict(
      sampler="ddim", num_steps=100, eta=0.0, clip_denoised=True, num_samples=100))

  config.eval = ml_collections.ConfigDict(dict(
      num_classify=10_000,  # test images labelled through the joint model (image -> label)
      classify_sampler="ddim", classify_steps=20, batch_size=500))

  if variant == "smoke":
    config.data.image_size = 28
    config.model.update(base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(14,), num_heads=1, dropout=0.0, num_groups=4)
    config.diffusion.update(schedule="cosine", num_steps=100)  # short chains need cosine for lambda_T ~ 0
    config.training.update(batch_size=16, num_steps=20, ema_decay=0.9, log_every=5, save_every=10,
                           sample_every=20)
    config.optimizer.warmup_steps = 5
    config.sampling.update(num_steps=5, num_samples=20)
    config.eval.update(num_classify=64, classify_steps=3, batch_size=32)
  elif variant == "small":
    # Sized by measurement: ~0.5 s/step on 2 CPU cores, so training takes ~12 of the 15 minutes.
    config.data.image_size = 28
    config.model.update(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                        attention_resolutions=(7,), num_heads=2, dropout=0.0, num_groups=8)
    config.training.update(batch_size=48, num_steps=1500, ema_decay=0.995, log_every=50,
                           save_every=250, sample_every=1500)
    config.optimizer.update(learning_rate=1e-3, warmup_steps=100)
    config.sampling.update(num_steps=50, num_samples=100)
    config.eval.update(num_classify=2000, classify_steps=10, batch_size=500)
  elif variant:
    raise ValueError(f"configs/imglabel.py: unknown variant {variant!r}; expected smoke, small or ''")
  return config
