"""Every config key with its default and meaning, and the validation run before anything compiles.

Experiment configs (configs/*.py) start from `default_config()` and change what they need; a key that
is not here is a typo, and `validate_config` says so.
"""

from __future__ import annotations

import json
import math
import numbers

import ml_collections

from mmdiff_jax.data.derived import DERIVED
from mmdiff_jax.data.pipeline import CROPS, RESIZES
from mmdiff_jax.diffusion import process
from mmdiff_jax.diffusion.aggregation import final_coefficients
from mmdiff_jax.diffusion.schedules import _BETA_FNS, get_schedule
from mmdiff_jax.models.modalities import aggregated_specs, aggregation_weights, specs_from_config
from mmdiff_jax.models.predictor import INPUT_KINDS
from mmdiff_jax.evaluation.harness import EVALUATOR_NAMES
from mmdiff_jax.experiment import DTYPES, TASKS
from mmdiff_jax.sampling.samplers import CATEGORICAL_FEEDBACK, SAMPLERS
from mmdiff_jax.training.state import LR_SCHEDULES




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
      data_dir=ml_collections.config_dict.placeholder(str),  # TFDS data dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets
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
                          # the recovery loss and of mIoU (e.g. 255 for Cityscapes' void); None: none
      resize="none",  # "none": stored size (image_size = stored side, stored + 4: padded, smaller:
                      # cropped); "area" or "bilinear": shorter side resized to image_size (masks
                      # nearest), then cropped to a square
      crop="center",  # where the image_size x image_size window is cut: "center" or "random"
                      # (random on the training stream; evaluation always cuts the centre)
      random_flip=False,  # training stream: flip image (and mask) left-right with probability 1/2
      derived=(),  # derived features (mmdiff_jax/data/derived.py), e.g. ("garment_segmentation",)
  ))

  # name -> {kind, feature, encoder, head, recovery_loss, loss_weight, profile, profile_scale,
  # num_classes, dim, role}; see mmdiff_jax/models/modalities.py. Exactly one has kind "image" (z_0).
  c.modalities = ml_collections.ConfigDict(dict(image=dict(kind="image", feature="image")))

  c.diffusion = ml_collections.ConfigDict(dict(
      schedule="linear",  # "linear" (DDPM) or "cosine"
      num_steps=1000,  # T
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
                            # end_learning_rate at training.num_steps
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
      num_steps=100,  # DDIM steps
      eta=0.0,  # DDIM stochasticity
      clip_denoised=True,  # clip z0-hat to [-1, 1]
      categorical_feedback="expected",  # unobserved labels/maps fed back to the next step (grids and
          # evaluators alike): "expected" code, the "argmax" class's code, or a "sampled" class's code
      num_samples=100,  # images per sample grid; 0: no grids
  ))

  # Evaluation (mmdiff_jax/evaluation/harness.py): pinned test split, counts and seed.
  c.eval = ml_collections.ConfigDict(dict(
      sampler="ddim",  # the sampler of every evaluator: "ddim" or "ancestral"
      num_steps=20,  # its DDIM steps
      batch_size=500,  # test examples per sampler call
      num_examples=10_000,  # test examples for image -> label, image -> segmentation, inpainting
      num_generated=10_000,  # joint samples for the Frechet AlexNet distance and precision/recall
      mask_ratios=(0.1, 0.3, 0.5, 0.7),  # inpainting is reported per masked fraction
      bound_batches=20,  # test batches for the variational bound in bits/dim
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
  and CI), "small" (a meaningful run on 2 CPU cores in about 15 minutes), "" (the defaults, for one
  accelerator)."""
  if variant == "smoke":
    config.data.image_size = 28
    config.model.update(base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(14,), num_heads=1, dropout=0.0, num_groups=4)
    config.diffusion.update(schedule="cosine", num_steps=100)  # short chains need cosine for lambda_T ~ 0
    config.training.update(batch_size=16, num_steps=20, ema_decay=0.9, log_every=5, save_every=10,
                           sample_every=20)
    config.optimizer.warmup_steps = 5
    config.sampling.update(num_steps=5, num_samples=20)
    config.eval.update(num_examples=64, num_generated=64, num_steps=3, batch_size=32,
                       bound_batches=2)
  elif variant == "small":
    # Sized by measurement: ~0.4 s/step on 2 CPU cores, so training takes ~10 of the 15 minutes.
    config.data.image_size = 28
    config.model.update(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                        attention_resolutions=(7,), num_heads=2, dropout=0.0, num_groups=8)
    config.training.update(batch_size=48, num_steps=1500, ema_decay=0.995, log_every=50,
                           save_every=250, sample_every=1500)
    config.optimizer.update(learning_rate=1e-3, warmup_steps=100)
    config.sampling.update(num_steps=50, num_samples=100)
    config.eval.update(num_examples=2000, num_generated=2000, num_steps=10, batch_size=500,
                       bound_batches=10)
  elif variant:
    raise ValueError(f"config variant: unknown {variant!r}; expected 'smoke', 'small' or '' (default)")
  return config


def _check_keys(config, reference, prefix: str) -> None:
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in reference:
      raise ValueError(f"config key {name!r} is unknown; allowed under "
                       f"{prefix[:-1] or 'config'}: {sorted(reference.keys())}")
    if key != "modalities" and isinstance(reference[key], ml_collections.ConfigDict):
      if not isinstance(config[key], (ml_collections.ConfigDict, dict)):
        raise ValueError(f"config.{name}: expected a section with keys {sorted(reference[key])}, "
                         f"got {config[key]!r}")
      _check_keys(config[key], reference[key], name + ".")
    elif key != "modalities":
      _check_type(name, config[key], reference.get_type(key), optional=reference[key] is None)


def _check_type(key: str, value, expected: type, *, optional: bool) -> None:
  """The value of a leaf key has its default's type (an int where a float is expected, a list where a
  tuple is); None only where the default is None (a placeholder)."""
  if value is None:
    ok = optional
  elif expected is float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  elif expected is int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  elif expected in (tuple, list):
    ok = isinstance(value, (tuple, list))
  else:
    ok = isinstance(value, expected)
  _require(ok, key, value, f"a value of type {expected.__name__}")


def _interval(low, high, *, low_open: bool, high_open: bool) -> str:
  if low is None and high is None:
    return ""
  if high is None:
    return f" {'>' if low_open else '>='} {low}"
  return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _require_range(key: str, value, *, low=None, high=None, low_open: bool = False,
                   high_open: bool = False, integer: bool = False) -> None:
  """`value` is a finite number (an integer with `integer`) in the interval from `low` to `high`."""
  number = isinstance(value, numbers.Integral if integer else numbers.Real) and (
      not isinstance(value, bool)) and math.isfinite(value)
  inside = number and (low is None or (value > low if low_open else value >= low)) and (
      high is None or (value < high if high_open else value <= high))
  kind = "an integer" if integer else "a finite number"
  _require(inside, key, value, kind + _interval(low, high, low_open=low_open, high_open=high_open))


def _check_model(config: ml_collections.ConfigDict) -> None:
  """U-Net keys: every level's size and channels, the attention sizes it reaches and its heads."""
  m = config.model
  _require_range("model.num_res_blocks", m.num_res_blocks, low=1, integer=True)
  _require_range("model.dropout", m.dropout, low=0.0, high=1.0, high_open=True)
  for mult in m.channel_mults:
    _require_range("model.channel_mults", mult, low=1, integer=True)
  sizes = [config.data.image_size // 2 ** level for level in range(len(m.channel_mults))]
  for size in m.attention_resolutions:
    _require(size in sizes, "model.attention_resolutions", tuple(m.attention_resolutions),
             f"feature-map sizes the U-Net reaches with data.image_size = {config.data.image_size} "
             f"and {len(m.channel_mults)} levels: {sizes} ({size} never occurs)")
  attended = [m.base_channels * mult for size, mult in zip(sizes, m.channel_mults)
              if size in m.attention_resolutions] + [m.base_channels * m.channel_mults[-1]]
  for channels in attended:  # the bottleneck always attends
    _require(channels % m.num_heads == 0, "model.num_heads", m.num_heads,
             f"a divisor of the channels at every attention layer ({sorted(set(attended))})")


def _check_numbers(config: ml_collections.ConfigDict) -> None:
  """The ranges of the numeric keys that have no other check."""
  _require_range("seed", config.seed, low=0, high=2**32 - 1, integer=True)
  _require_range("data.image_size", config.data.image_size, low=1, integer=True)
  _require_range("data.channels", config.data.channels, low=1, integer=True)
  _require_range("diffusion.max_final_lambda", config.diffusion.max_final_lambda, low=0.0)
  o = config.optimizer
  _require_range("optimizer.learning_rate", o.learning_rate, low=0.0, low_open=True)
  _require_range("optimizer.warmup_steps", o.warmup_steps, low=0, integer=True)
  _require_range("optimizer.grad_clip_norm", o.grad_clip_norm, low=0.0, low_open=True)
  _require_range("optimizer.b1", o.b1, low=0.0, high=1.0, high_open=True)
  _require_range("optimizer.b2", o.b2, low=0.0, high=1.0, high_open=True)
  _require_range("optimizer.weight_decay", o.weight_decay, low=0.0)
  _require_range("training.max_nonfinite_steps", config.training.max_nonfinite_steps, low=0,
                 integer=True)
  e = config.eval
  for key in ("batch_size", "num_examples", "bound_batches"):
    _require_range(f"eval.{key}", e[key], low=1, integer=True)
  # generation's precision/recall use each sample's 3rd nearest neighbour among the others
  _require_range("eval.num_generated", e.num_generated, low=4, integer=True)
  _require_range("eval.seed", e.seed, low=0, high=2**32 - 1, integer=True)
  _require(len(e.mask_ratios) >= 1, "eval.mask_ratios", e.mask_ratios, "a non-empty tuple")
  for ratio in e.mask_ratios:
    _require_range("eval.mask_ratios", ratio, low=0.0, high=1.0, low_open=True, high_open=True)


def _require(condition: bool, key: str, value, allowed: str) -> None:
  if not condition:
    raise ValueError(f"config.{key}: got {value!r}; expected {allowed}")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
                    num_processes: int = 1) -> None:
  """Raises ValueError naming the key, its value and what is allowed, for the first problem found."""
  _check_keys(config, default_config(), "")
  specs = specs_from_config(config.modalities)
  for spec in specs:
    _require_range(f"modalities.{spec.name}.loss_weight", spec.loss_weight, low=0.0)
    _require_range(f"modalities.{spec.name}.profile_scale", spec.profile_scale)
  _check_numbers(config)
  # .get with the defaults: a run's config.json written before these keys existed still loads.
  data, data_defaults = config.data, default_config().data
  get = lambda key: data.get(key, data_defaults[key])
  for name in data.derived:
    _require(name in DERIVED, "data.derived", tuple(data.derived), f"names from {sorted(DERIVED)}")
  _require(get("resize") in RESIZES, "data.resize", get("resize"), f"one of {RESIZES}")
  _require(get("crop") in CROPS, "data.crop", get("crop"), f"one of {CROPS}")
  _require(isinstance(get("random_flip"), bool), "data.random_flip", get("random_flip"),
           "True or False")
  for key in ("train_split", "eval_split", "image_key"):
    _require(isinstance(get(key), str) and bool(get(key)), f"data.{key}", get(key),
             "a non-empty string")
  ignore = get("ignore_label")
  if ignore is not None:
    segmentations = [s for s in specs if s.kind == "segmentation"]
    _require(bool(segmentations) and all(not 0 <= ignore < s.num_classes for s in segmentations),
             "data.ignore_label", ignore, "None, or with a segmentation modality a class id "
             "outside 0..num_classes - 1 (e.g. 255)")

  d = config.diffusion
  _require(d.schedule in _BETA_FNS, "diffusion.schedule", d.schedule, f"one of {sorted(_BETA_FNS)}")
  _require(int(d.num_steps) >= 2, "diffusion.num_steps", d.num_steps, "an integer >= 2")
  _require(d.parameterization in process.PARAMETERIZATIONS, "diffusion.parameterization",
           d.parameterization, f"one of {process.PARAMETERIZATIONS}")
  schedule = get_schedule(d.schedule, d.num_steps)
  final = final_coefficients(schedule, aggregation_weights(schedule, specs))
  _require(config.task in TASKS, "task", config.task, f"one of {TASKS}")
  if config.task == "prediction":
    names = {s.name: s for s in specs}
    p = config.prediction
    _require(p.input in names and names[p.input].kind in INPUT_KINDS, "prediction.input", p.input,
             f"a modality of kind {INPUT_KINDS} among {sorted(names)}")
    _require(p.target in names and p.target != p.input, "prediction.target", p.target,
             f"another modality among {sorted(names)}")
  for spec, value in zip(aggregated_specs(specs), final.tolist()):
    _require(abs(value) <= d.max_final_lambda, f"modalities.{spec.name}.profile",
             f"{spec.profile} (scale {spec.profile_scale}, lambda_T = {value:.4g})",
             f"a profile whose lambda_T is ~0 (|lambda_T| <= diffusion.max_final_lambda = "
             f"{d.max_final_lambda}), e.g. 'bump': sampling starts from N(0, I)")

  m = config.model
  _require(m.dtype in DTYPES, "model.dtype", m.dtype, f"one of {sorted(DTYPES)}")
  _require(len(m.channel_mults) >= 1, "model.channel_mults", m.channel_mults, "a non-empty tuple")
  factor = 2 ** (len(m.channel_mults) - 1)
  _require(config.data.image_size % factor == 0, "data.image_size", config.data.image_size,
           f"a multiple of {factor} (model.channel_mults has {len(m.channel_mults)} levels)")
  for key in ("base_channels", "num_groups", "num_heads"):
    _require(int(m[key]) >= 1, f"model.{key}", m[key], "an integer >= 1")
  _require(m.base_channels % m.num_groups == 0, "model.num_groups", m.num_groups,
           f"a divisor of model.base_channels = {m.base_channels}")
  _check_model(config)

  o = config.optimizer
  _require(o.schedule in LR_SCHEDULES, "optimizer.schedule", o.schedule, f"one of {LR_SCHEDULES}")
  _require(0.0 <= o.end_learning_rate <= o.learning_rate, "optimizer.end_learning_rate",
           o.end_learning_rate, f"a value in [0, optimizer.learning_rate = {o.learning_rate}]")

  t = config.training
  for key in ("batch_size", "num_steps", "log_every", "save_every", "sample_every",
              "keep_checkpoints", "grad_accum_steps"):
    _require(int(t[key]) >= 1, f"training.{key}", t[key], "an integer >= 1")
  _require(int(t.eval_every) >= 0, "training.eval_every", t.eval_every, "an integer >= 0 (0: never)")
  _require(0.0 <= t.ema_decay < 1.0, "training.ema_decay", t.ema_decay, "a value in [0, 1)")
  if num_devices is not None:
    divisor = math.lcm(num_devices, num_processes) * int(t.grad_accum_steps)
    accumulation = f", {t.grad_accum_steps} micro-batches" if t.grad_accum_steps > 1 else ""
    _require(t.batch_size % divisor == 0, "training.batch_size", t.batch_size,
             f"a multiple of {divisor} ({num_devices} devices, {num_processes} processes"
             f"{accumulation})")

  s = config.sampling
  _require(s.sampler in SAMPLERS, "sampling.sampler", s.sampler, f"one of {SAMPLERS}")
  _require(1 <= s.num_steps <= d.num_steps, "sampling.num_steps", s.num_steps,
           f"1..{d.num_steps} (diffusion.num_steps)")
  _require_range("sampling.eta", s.eta, low=0.0)
  _require(s.categorical_feedback in CATEGORICAL_FEEDBACK, "sampling.categorical_feedback",
           s.categorical_feedback, f"one of {CATEGORICAL_FEEDBACK}")
  _require(int(s.num_samples) >= 0, "sampling.num_samples", s.num_samples, "an integer >= 0")
  e = config.eval
  _require(e.sampler in SAMPLERS, "eval.sampler", e.sampler, f"one of {SAMPLERS}")
  _require(1 <= e.num_steps <= d.num_steps, "eval.num_steps", e.num_steps,
           f"1..{d.num_steps} (diffusion.num_steps)")
  _require(0.0 <= e.sdedit_t0_fraction <= 1.0, "eval.sdedit_t0_fraction", e.sdedit_t0_fraction,
           "a value in [0, 1]")
  _require(int(e.replacement_resamples) >= 1, "eval.replacement_resamples", e.replacement_resamples,
           "an integer >= 1")
  _require(e.batch_size % num_processes == 0, "eval.batch_size", e.batch_size,
           f"a multiple of the {num_processes} processes (each reads its share of a batch)")
  for key in ("after_training", "during_training"):
    unknown = set(e[key]) - set(EVALUATOR_NAMES)
    _require(not unknown, f"eval.{key}", tuple(e[key]), f"names from {list(EVALUATOR_NAMES)}")
  _require(int(e.during_training_examples) >= 1, "eval.during_training_examples",
           e.during_training_examples, "an integer >= 1")


# The keys that define what a checkpoint's parameters mean: a run evaluated, sampled or resumed with
# other values would load the same arrays and silently compute something else.
MODEL_DEFINING_KEYS = ("task", "prediction", "diffusion", "modalities", "model.base_channels",
                       "model.channel_mults", "model.num_res_blocks", "model.attention_resolutions",
                       "model.num_heads", "model.num_groups", "data.image_size", "data.channels")


def _flatten(tree, prefix: str = "") -> dict[str, object]:
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


def model_differences(trained: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{dotted key: (trained value, given value)} for the MODEL_DEFINING_KEYS that differ between a
  run's config.json (`trained`, parsed) and `config`. Only keys the run's file has are compared (so
  older runs, made before a key existed, still load), plus modalities it does not have at all."""
  given = _flatten(json.loads(config.to_json_best_effort()))
  selected = lambda key: any(key == k or key.startswith(k + ".") for k in MODEL_DEFINING_KEYS)
  trained_modalities = trained.get("modalities", {})
  differences = {}
  for key, value in sorted(_flatten(trained).items()):
    parts = key.split(".")
    if parts[0] == "modalities" and parts[1] not in config.modalities:
      continue  # a whole modality: below
    if selected(key) and given.get(key) != value:
      differences[key] = (value, given.get(key))
  for name in sorted(set(trained_modalities) ^ set(config.modalities)):
    differences[f"modalities.{name}"] = (
        trained_modalities.get(name),
        config.modalities[name].to_dict() if name in config.modalities else None)
  return differences
