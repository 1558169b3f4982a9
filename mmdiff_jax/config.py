"""Every config key with its default and meaning, and the size presets.

Experiment configs (configs/*.py) start from `default_config()` and change what they need; a key that
is not here is a typo, and `mmdiff_jax.config_validation.validate_config` says so. This module imports
nothing from the package but its error classes, so loading a config file is quick.
"""

from __future__ import annotations

import ml_collections

from mmdiff_jax.errors import BadValueError

# Keys renamed since earlier versions (old name -> new name): a run's config.json that has an old name
# loads with the new one, and an old name given on the command line is an error that names the new.
RENAMED_KEYS = {
    "diffusion.num_steps": "diffusion.num_timesteps",
    "sampling.num_steps": "sampling.sampler_steps",
    "eval.num_steps": "eval.sampler_steps",
}


def default_config() -> ml_collections.ConfigDict:
  """The defaults of every key (sized for one accelerator)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # parameters, data order and per-step randomness all derive from it
  c.task = "diffusion"  # "diffusion" (MT-Diffusion / DDPM) or "prediction" (a single-task baseline)

  # task "prediction": the backbone (at t = 0) maps one image-shaped modality to another modality.
  c.prediction = ml_collections.ConfigDict(dict(
      input="image",  # the modality fed to the network (kind image or masked_image)
      target="label",  # the modality predicted (its head; image targets use the MSE)
  ))

  c.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist_offline",  # our offline builder (or "fashion_mnist_offline_alexnet": + a
                                     # precomputed "embedding"); any other TFDS name must be prepared
      data_dir=ml_collections.config_dict.placeholder(str),  # TFDS dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets
      raw_dir="/usr/share/datasets/fashion-mnist",  # raw idx files (apt-get install dataset-fashion-mnist)
      image_size=32,  # 28 (as stored) or 32 (padded with background, so the U-Net can halve it 3 times)
      channels=1,  # image channels (the diffusion space is image_size x image_size x channels)
      image_key="image",  # feature holding the uint8 image in the TFDS dataset
      label_key="label",  # feature holding the integer class label (optional: unlabelled datasets
                          # work for every config without a label modality)
      segmentation_key="segmentation",  # feature holding segmentation masks (H, W) or (H, W, 1) of
                                        # class ids (optional); the batch's "segmentation"
      embedding_key="embedding",  # feature holding a float vector per image (optional)
      train_split="train",  # TFDS split trained on, e.g. "train" or "train[:90%]"
      eval_split="test",  # TFDS split evaluated on (imagenet_resized has no "test": "validation")
      ignore_label=ml_collections.config_dict.placeholder(int),  # segmentation class id left out of
                          # the recovery loss and of mIoU, and encoded as 0 (in training and in an
                          # observed map) (e.g. 255 for Cityscapes' void); None: none
      resize="none",  # "none": stored size (image_size = stored side, stored + 4: padded, smaller:
                      # cropped); "area" or "bilinear": shorter side resized to image_size (masks
                      # nearest), then cropped to a square
      crop="center",  # where the image_size x image_size window is cut: "center" or "random"
                      # (random on the training stream; evaluation always cuts the centre)
      random_flip=False,  # training stream: flip image (and mask) left-right with probability 1/2
      derived=(),  # derived features (mmdiff_jax/data/derived.py), e.g. ("garment_segmentation",)
      mask_fill_value=0.0,  # the value of a masked image's missing pixels (in [-1, 1]): 0 is mid-grey,
                            # -1 Fashion-MNIST's black background; training and evaluation alike
      mask_fill_pattern="constant",  # "constant" (mask_fill_value everywhere) or "checkerboard"
                                     # (+1/-1 per pixel: marks the hole in the image itself)
  ))

  # name -> {kind, feature, encoder, loss_weight, profile, profile_scale, num_classes, dim, role};
  # see mmdiff_jax/models/modalities.py and mmdiff_jax/models/kinds/. Exactly one has kind "image"
  # (z_0).
  c.modalities = ml_collections.ConfigDict(dict(image=dict(kind="image", feature="image")))

  c.diffusion = ml_collections.ConfigDict(dict(
      schedule="linear",  # "linear" (DDPM) or "cosine"
      num_timesteps=1000,  # T, the forward process's steps
      parameterization="eps",  # what the base head predicts: "eps", "z0" or "v"
      max_final_lambda=0.05,  # largest allowed |lambda_T| of any modality (the prior must match)
  ))

  c.model = ml_collections.ConfigDict(dict(
      base_channels=128,  # U-Net channels at the first resolution
      channel_mults=(1, 2, 2, 2),  # channel multiplier per resolution level (each halves the size)
      num_res_blocks=2,  # residual blocks per resolution
      attention_resolutions=(16, 8),  # feature-map sizes with self-attention
      num_heads=4,  # attention heads
      dropout=0.1,  # dropout in the residual blocks
      num_groups=32,  # GroupNorm groups (must divide base_channels)
      dtype="float32",  # activations: "float32" or "bfloat16" (parameters stay float32)
      remat=False,  # recompute the U-Net blocks' activations in the backward pass (less memory)
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-4,  # AdamW learning rate after warmup
      warmup_steps=1000,  # linear warmup from 0 to learning_rate
      schedule="constant",  # after warmup: "constant", "cosine" or "linear" decay to
                            # end_learning_rate at training.num_steps (a resume with a larger
                            # num_steps stretches the decay from the current step: the rate rises)
      end_learning_rate=0.0,  # the rate reached at training.num_steps by "cosine" and "linear"
      grad_clip_norm=1.0,  # clip gradients to this global norm
      b1=0.9,  # Adam beta1
      b2=0.999,  # Adam beta2
      weight_decay=0.0,  # decoupled weight decay (AdamW); 0: plain Adam
  ))

  c.training = ml_collections.ConfigDict(dict(
      batch_size=128,  # global, over all devices and processes
      grad_accum_steps=1,  # micro-batches of batch_size / grad_accum_steps per optimizer step, in
                           # turn (activation memory of one micro-batch; the same update)
      num_steps=100_000,  # optimizer steps in all (a resumed run continues up to this)
      ema_decay=0.9999,  # decay of the EMA of the parameters (used to sample and evaluate)
      log_every=100,  # steps between progress lines / metrics.jsonl rows
      save_every=5000,  # steps between checkpoints (at most this many are lost to a kill)
      sample_every=10_000,  # steps between sample grids
      eval_every=0,  # steps between evaluations during training (eval.during_training); 0: none
      keep_checkpoints=3,  # newest checkpoints kept in WORKDIR/checkpoints
      max_nonfinite_steps=10,  # stop after this many skipped (non-finite) updates in a row; 0: never
      init_from=ml_collections.config_dict.placeholder(str),  # a workdir: start from its newest
          # checkpoint's EMA parameters wherever a parameter's path and shape match (e.g. a classifier
          # from a diffusion model's backbone); the optimizer starts fresh
  ))

  # Device mesh ("data" x "fsdp" = all devices); one size may be -1 (filled from the device count).
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,  # data-parallel axis: the batch is split over it
      fsdp=1,  # FSDP axis: the batch, and with fsdp=True the parameters and optimizer state
  ))
  c.fsdp = False  # shard parameters and optimizer state over the "fsdp" mesh axis

  # Processes (mmdiff_jax/training/distributed.py; launch/). Each key may also come from the
  # environment ($MMDIFF_DISTRIBUTED, $MMDIFF_COORDINATOR, $MMDIFF_NUM_PROCESSES, $MMDIFF_PROCESS_ID,
  # $MMDIFF_LOCAL_DEVICE_COUNT), which is what the launch scripts set.
  c.distributed = ml_collections.ConfigDict(dict(
      mode="auto",  # auto: explicit if the three keys below are set, else JAX's detection on a
                    # TPU VM / under srun / mpirun, else one process; or single | cluster | explicit
      coordinator_address=ml_collections.config_dict.placeholder(str),  # "host:port" of process 0
      num_processes=ml_collections.config_dict.placeholder(int),  # processes in the job
      process_id=ml_collections.config_dict.placeholder(int),  # this process, 0 .. num_processes - 1
      local_device_count=ml_collections.config_dict.placeholder(int),  # simulated CPU devices
      initialization_timeout=300,  # seconds to wait for every process to join
  ))

  c.sampling = ml_collections.ConfigDict(dict(
      sampler="ddim",  # "ddim" or "ancestral" (all T steps)
      sampler_steps=100,  # DDIM steps of the sample grids and --mode=sample
      eta=0.0,  # DDIM stochasticity
      clip_denoised=True,  # clip z0-hat to [-1, 1]
      categorical_feedback="expected",  # unobserved labels/maps fed back to the next step (grids and
          # evaluators alike): "expected" code, the "argmax" class's code, or a "sampled" class's code
      hard_feedback_fraction=1.0,  # "argmax"/"sampled" feedback at steps t <= this fraction of T,
                                   # the expected code above it (1.0: every step)
      num_samples=100,  # images per sample grid; 0: no grids
  ))

  # Evaluation (mmdiff_jax/evaluation/evaluators/): pinned test split, counts and seed.
  c.eval = ml_collections.ConfigDict(dict(
      sampler="ddim",  # the sampler of every evaluator: "ddim" or "ancestral"
      sampler_steps=20,  # its DDIM steps
      batch_size=500,  # test examples per sampler call
      num_examples=10_000,  # test examples for image -> label, image -> segmentation, inpainting
      num_generated=10_000,  # joint samples for the Frechet AlexNet distance and precision/recall
      mask_ratios=(0.1, 0.3, 0.5, 0.7),  # inpainting is reported per masked fraction
      bound_batches=20,  # test batches for the variational bound in bits/dim
      label_bound_draws=30,  # label_accuracy_by_bound: (t, noise) draws per test image and class,
                             # one per stratum of 1..T (at most T), shared by every class (10
                             # read labels 3 points worse on imglabel:small)
      after_training=("label_accuracy", "segmentation_miou", "segmentation_agreement", "inpainting",
                      "embedding_consistency"),  # run by main at the end
      during_training=("label_accuracy", "bound"),  # run every training.eval_every steps (those
                                                    # that apply), logged as "periodic_eval/..."
      during_training_examples=500,  # test examples (and samples) per evaluator during training
      classifier_workdir=ml_collections.config_dict.placeholder(str),  # a trained configs/classifier.py
                                                                       # run, for label agreement
      seed=0,  # seed of the evaluators' sampling and test masks
      sdedit_t0_fraction=0.5,  # inpainting_sdedit: start step t0 as a fraction of T
      replacement_resamples=1,  # inpainting_replacement: passes per step (1: no resampling)
  ))
  return c


def apply_size(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """Sizes an experiment config: "smoke" (the whole pipeline in about a minute on 2 CPU cores; tests
  and CI), "small" (a meaningful run on 2 CPU cores in about 8 minutes), "" (the defaults, for one
  accelerator)."""
  if variant == "smoke":
    config.data.image_size = 28
    config.model.update(base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(14,), num_heads=1, dropout=0.0, num_groups=4)
    config.diffusion.update(schedule="cosine", num_timesteps=100)  # short chains need cosine for lambda_T ~ 0
    config.training.update(batch_size=16, num_steps=20, ema_decay=0.9, log_every=5, save_every=10,
                           sample_every=20)
    config.optimizer.warmup_steps = 5
    config.sampling.update(sampler_steps=5, num_samples=20)
    config.eval.update(num_examples=64, num_generated=64, sampler_steps=3, batch_size=32,
                       bound_batches=2)
  elif variant == "small":
    # Sized by measurement: ~0.4 s/step on 2 CPU cores, so training takes ~10 of the 15 minutes.
    config.data.image_size = 28
    config.model.update(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                        attention_resolutions=(7,), num_heads=2, dropout=0.0, num_groups=8)
    config.training.update(batch_size=48, num_steps=1500, ema_decay=0.995, log_every=50,
                           save_every=250, sample_every=1500)
    config.optimizer.update(learning_rate=1e-3, warmup_steps=100)
    config.sampling.update(sampler_steps=50, num_samples=100)
    config.eval.update(num_examples=2000, num_generated=2000, sampler_steps=10, batch_size=500,
                       bound_batches=10)
  elif variant:
    raise BadValueError(f"config variant: unknown {variant!r}; expected 'smoke', 'small' or '' (default)")
  return config
