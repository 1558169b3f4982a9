"""The checks run on a config before anything compiles: every key known, every value of the right type
and range, names that exist, sizes that fit together. Each problem is a ValueError naming the key, the
value and what is allowed.
"""

from __future__ import annotations

import math
import numbers

import ml_collections

from mmdiff_jax.config import RENAMED_KEYS, default_config
from mmdiff_jax.data.derived import DERIVED, MASK_FILL_PATTERNS
from mmdiff_jax.data.pipeline import CROPS, RESIZES
from mmdiff_jax.diffusion import process
from mmdiff_jax.diffusion.aggregation import final_coefficients
from mmdiff_jax.diffusion.schedules import _BETA_FNS, get_schedule
from mmdiff_jax.errors import BadValueError
from mmdiff_jax.models import kinds
from mmdiff_jax.models.modalities import (PROFILES, aggregated_specs, aggregation_weights,
                                          specs_from_config)
from mmdiff_jax.evaluation import evaluators
from mmdiff_jax.experiment import DTYPES, TASKS
from mmdiff_jax.sampling.samplers import CATEGORICAL_FEEDBACK, SAMPLERS
from mmdiff_jax.training.state import LR_SCHEDULES


def _check_keys(config, reference, prefix: str) -> None:
  for key in config.keys():
    name = f"{prefix}{key}"
    if name in RENAMED_KEYS:
      raise BadValueError(f"config key {name!r} is now {RENAMED_KEYS[name]!r} (renamed; the same "
                          f"meaning)")
    if key not in reference:
      raise BadValueError(f"config key {name!r} is unknown; allowed under "
                          f"{prefix[:-1] or 'config'}: {sorted(reference.keys())}")
    if key != "modalities" and isinstance(reference[key], ml_collections.ConfigDict):
      if not isinstance(config[key], (ml_collections.ConfigDict, dict)):
        raise BadValueError(f"config.{name}: expected a section with keys {sorted(reference[key])}, "
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
             f"and {len(m.channel_mults)} levels: {sizes} ({size} never occurs; e.g. "
             f"--config.model.attention_resolutions='({sizes[-1]},)' at the lowest level)")
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
  _require_range("data.mask_fill_value", config.data.mask_fill_value, low=-1.0, high=1.0)
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
  for key in ("batch_size", "num_examples", "bound_batches", "label_bound_draws"):
    _require_range(f"eval.{key}", e[key], low=1, integer=True)
  # generation's precision/recall use each sample's 3rd nearest neighbour among the others
  _require_range("eval.num_generated", e.num_generated, low=4, integer=True)
  _require_range("eval.seed", e.seed, low=0, high=2**32 - 1, integer=True)
  _require(len(e.mask_ratios) >= 1, "eval.mask_ratios", e.mask_ratios, "a non-empty tuple")
  for ratio in e.mask_ratios:
    _require_range("eval.mask_ratios", ratio, low=0.0, high=1.0, low_open=True, high_open=True)


def _require(condition: bool, key: str, value, allowed: str) -> None:
  if not condition:
    raise BadValueError(f"config.{key}: got {value!r}; expected {allowed}")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
                    num_processes: int = 1) -> None:
  """Raises ValueError naming the key, its value and what is allowed, for the first problem found."""
  _check_keys(config, default_config(), "")
  specs = specs_from_config(config.modalities)
  for spec in specs:
    _require_range(f"modalities.{spec.name}.loss_weight", spec.loss_weight, low=0.0)
    _require_range(f"modalities.{spec.name}.profile_scale", spec.profile_scale, low=0.0)
    # The default profile is "zero": a scale set without a profile would silently inject nothing.
    _require(spec.profile != "zero" or spec.profile_scale == 0, f"modalities.{spec.name}.profile_scale",
             spec.profile_scale, f"0 with profile 'zero', which injects nothing at any scale; to put "
             f"the modality in the forward process, also set modalities.{spec.name}.profile to one of "
             f"{[p for p in PROFILES if p != 'zero']}")
    injected = spec.profile != "zero" and spec.profile_scale > 0
    _require(config.task != "diffusion" or not spec.is_aggregated or injected or spec.loss_weight > 0,
             f"modalities.{spec.name}", dict(profile=spec.profile, profile_scale=spec.profile_scale,
                                             loss_weight=spec.loss_weight),
             "a modality in the forward process (a profile other than 'zero' with profile_scale > 0), "
             "in the loss (loss_weight > 0), or both: with neither it does nothing")
  _check_numbers(config)
  # .get with the defaults: a run's config.json written before these keys existed still loads.
  data, data_defaults = config.data, default_config().data
  get = lambda key: data.get(key, data_defaults[key])
  for name in data.derived:
    _require(name in DERIVED, "data.derived", tuple(data.derived), f"names from {sorted(DERIVED)}")
  _require(get("resize") in RESIZES, "data.resize", get("resize"), f"one of {RESIZES}")
  _require(get("crop") in CROPS, "data.crop", get("crop"), f"one of {CROPS}")
  _require(get("mask_fill_pattern") in MASK_FILL_PATTERNS, "data.mask_fill_pattern",
           get("mask_fill_pattern"), f"one of {MASK_FILL_PATTERNS}")
  _require(isinstance(get("random_flip"), bool), "data.random_flip", get("random_flip"),
           "True or False")
  for key in ("train_split", "eval_split", "image_key"):
    _require(isinstance(get(key), str) and bool(get(key)), f"data.{key}", get(key),
             "a non-empty string")
  ignore = get("ignore_label")
  if ignore is not None:
    segmentations = [s for s in specs if kinds.get(s.kind).has_ignore_label]
    _require(bool(segmentations) and all(not 0 <= ignore < s.num_classes for s in segmentations),
             "data.ignore_label", ignore, "None, or with a segmentation modality a class id "
             "outside 0..num_classes - 1 (e.g. 255)")

  d = config.diffusion
  _require(d.schedule in _BETA_FNS, "diffusion.schedule", d.schedule, f"one of {sorted(_BETA_FNS)}")
  _require(int(d.num_timesteps) >= 2, "diffusion.num_timesteps", d.num_timesteps, "an integer >= 2")
  _require(d.parameterization in process.PARAMETERIZATIONS, "diffusion.parameterization",
           d.parameterization, f"one of {process.PARAMETERIZATIONS}")
  schedule = get_schedule(d.schedule, d.num_timesteps)
  final = final_coefficients(schedule, aggregation_weights(schedule, specs))
  _require(config.task in TASKS, "task", config.task, f"one of {TASKS}")
  if config.task == "prediction":
    names = {s.name: s for s in specs}
    p = config.prediction
    image_like = sorted(s.name for s in specs if kinds.get(s.kind).image_like)
    _require(p.input in image_like, "prediction.input", p.input,
             f"a modality of an image-like kind (image, masked_image, ...): one of {image_like}")
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
  if num_devices is not None and num_devices > 1 and config.fsdp:
    data, fsdp = int(config.mesh.get("data", 1)), int(config.mesh.get("fsdp", 1))
    _require(not (fsdp == 1 or (fsdp == -1 and data == num_devices)), "fsdp", True,
             f"a mesh with an fsdp axis over more than one device to shard over (config.mesh is "
             f"{dict(config.mesh)} on {num_devices} devices, so every device would hold everything): "
             f"e.g. --config.mesh.data=1 --config.mesh.fsdp=-1")
  if num_devices is not None:
    divisor = math.lcm(num_devices, num_processes) * int(t.grad_accum_steps)
    accumulation = f", {t.grad_accum_steps} micro-batches" if t.grad_accum_steps > 1 else ""
    _require(t.batch_size % divisor == 0, "training.batch_size", t.batch_size,
             f"a multiple of {divisor} ({num_devices} devices, {num_processes} processes"
             f"{accumulation})")

  s = config.sampling
  _require(s.sampler in SAMPLERS, "sampling.sampler", s.sampler, f"one of {SAMPLERS}")
  _require(1 <= s.sampler_steps <= d.num_timesteps, "sampling.sampler_steps", s.sampler_steps,
           f"1..{d.num_timesteps} (diffusion.num_timesteps)")
  # Above 1, sigma^2 could exceed 1 - abar_s, leaving the DDIM direction term no variance to take.
  _require_range("sampling.eta", s.eta, low=0.0, high=1.0)
  _require(s.categorical_feedback in CATEGORICAL_FEEDBACK, "sampling.categorical_feedback",
           s.categorical_feedback, f"one of {CATEGORICAL_FEEDBACK}")
  _require_range("sampling.hard_feedback_fraction", s.hard_feedback_fraction, low=0.0, high=1.0)
  _require(int(s.num_samples) >= 0, "sampling.num_samples", s.num_samples, "an integer >= 0")
  e = config.eval
  _require(e.sampler in SAMPLERS, "eval.sampler", e.sampler, f"one of {SAMPLERS}")
  _require(1 <= e.sampler_steps <= d.num_timesteps, "eval.sampler_steps", e.sampler_steps,
           f"1..{d.num_timesteps} (diffusion.num_timesteps)")
  _require(0.0 <= e.sdedit_t0_fraction <= 1.0, "eval.sdedit_t0_fraction", e.sdedit_t0_fraction,
           "a value in [0, 1]")
  _require(int(e.replacement_resamples) >= 1, "eval.replacement_resamples", e.replacement_resamples,
           "an integer >= 1")
  _require(e.batch_size % num_processes == 0, "eval.batch_size", e.batch_size,
           f"a multiple of the {num_processes} processes (each reads its share of a batch)")
  for key in ("after_training", "during_training"):
    known = evaluators.names()
    _require(not set(e[key]) - set(known), f"eval.{key}", tuple(e[key]), f"names from {known}")
  _require(int(e.during_training_examples) >= 1, "eval.during_training_examples",
           e.during_training_examples, "an integer >= 1")
  if e.during_training and config.training.eval_every:
    # They run on at most this many examples, in batches of at most this many.
    sampled = sorted({"generation", "label_conditional"} & set(e.during_training))
    _require(not sampled or int(e.during_training_examples) >= 4, "eval.during_training_examples",
             e.during_training_examples,
             f"an integer >= 4 with {sampled} in eval.during_training (precision and recall use "
             f"each sample's 3rd nearest neighbour among the others)")
    capped_batch = min(int(e.batch_size), int(e.during_training_examples))
    _require(capped_batch % num_processes == 0, "eval.during_training_examples",
             e.during_training_examples,
             f"a multiple of the {num_processes} processes where it is below eval.batch_size "
             f"(the periodic evaluations' batches are at most this large)")
