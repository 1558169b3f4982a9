"""Samples written for external metrics (e.g. an Inception FID where those weights exist).

  python -m mmdiff_jax.main --config=... --workdir=DIR --mode=sample --num_samples=N
      [--sample_format=npz,png] [--sample_labels=balanced|3|0,1,2] [--sample_dir=...]
      [--params=DIR/export/ema_params_step<N>.msgpack]

Written to --sample_dir, by default DIR/samples/export_step<N> (joint samples) or
export_step<N>_given_<labels> (given labels), with config.sampling's sampler (every option, as the
sample grids).

Layout, as common FID tools read it:
  samples.npz: "arr_0" uint8 (N, H, W, 3) (grayscale replicated to RGB: Inception networks take RGB;
    the layout of OpenAI's guided-diffusion evaluator), "labels" int32 (N,) where the model has a
    label modality (generated for joint samples, as given otherwise), and each other generated
    modality by its name (e.g. "segmentation" int32 (N, H, W), "embedding" float32 (N, D));
  png/000000.png ...: one RGB PNG per sample (pytorch-fid, torch-fidelity, clean-fid read a folder).
  mmdiff_jax_export.json: {"complete": true, "num_samples": N, "formats": [...]} once an export has
    finished; "complete" is false while one is under way (or was killed: run it again).
Images are at the model's resolution (data.image_size). An export replaces only what an earlier export
wrote: a folder whose png/ or samples.npz no export wrote (no mmdiff_jax_export.json, and not the
layout an export writes) is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Sequence

import jax
import numpy as np
from PIL import Image

from mmdiff_jax import random_streams
from mmdiff_jax.atomic_files import replace_file, replacing
from mmdiff_jax.errors import BadValueError
from mmdiff_jax.multihost import fetch
from mmdiff_jax.sampling import grids
from mmdiff_jax.training import params_export
from mmdiff_jax.training.restore import restore_latest

FORMATS = ("npz", "png")


def sample_labels(spec: str, *, num_samples: int, num_classes: int) -> np.ndarray | None:
  """The labels to condition on: "" -> None (joint samples); "balanced" -> 0, 1, ..., num_classes-1
  cycled; "3" or "0,1,2" -> those classes cycled. Returns int32 (num_samples,) or None.

  Raises:
    ValueError naming --sample_labels and what is allowed.
  """
  if not spec:
    return None
  if num_classes == 0:
    raise BadValueError(f"--sample_labels={spec!r}: this model has no categorical modality (a "
                        f"label, or a class it is conditioned on) whose classes could be given")
  if spec == "balanced":
    classes = np.arange(num_classes)
  else:
    try:
      classes = np.asarray([int(x) for x in spec.split(",")])
    except ValueError:
      classes = None
    if classes is None or np.any((classes < 0) | (classes >= num_classes)):
      raise BadValueError(f"--sample_labels={spec!r}: expected 'balanced' or class ids in "
                          f"0..{num_classes - 1} separated by commas")
  return np.resize(classes, num_samples).astype(np.int32)


def generate(experiment, params, *, num_samples: int, batch_size: int, rng: jax.Array,
             labels: np.ndarray | None, sampler) -> dict[str, np.ndarray]:
  """{"images": uint8 (N, H, W, C), "labels": int32 (N,) (where there is a label modality), and each
  other generated modality's values by its name (a segmentation map int32 (N, H, W), an embedding
  float32 (N, D), ...)}.

  Every process must call it (the sampler runs over the whole mesh).
  """
  base = experiment.specs[0]
  label = experiment.class_modality  # exported as "labels"; every other generated one by its name
  others = [s.name for s in experiment.specs
            if s.is_aggregated and (label is None or s.name != label.name)]
  taken = [name for name in others if name in ("images", "labels", "arr_0")]
  if taken:
    raise BadValueError(f"config.modalities.{taken[0]}: the name is the export's own key; rename it")
  if labels is None and experiment.model.conditions:
    raise BadValueError(f"this model is conditioned on {experiment.model.conditions[0].name!r}: give "
                        f"--sample_labels (e.g. 'balanced')")
  def exported_batch(p, r, y, n):  # named: compile logs and profiles show this name
    return sampler.sample(p, r, n, observed=None if y is None else {label.name: y})

  sample = jax.jit(exported_batch, static_argnums=(3,))
  parts = {name: [] for name in ["images", *(["labels"] if label else []), *others]}
  for i, start in enumerate(range(0, num_samples, batch_size)):
    count = min(batch_size, num_samples - start)
    given = None if labels is None else labels[start:start + count]
    out = fetch(sample(params, jax.random.fold_in(rng, i), given, count))
    parts["images"].append(grids.to_uint8(out[base.name]))
    if label is not None:
      parts["labels"].append(np.asarray(out[label.name], np.int32))
    for name in others:
      parts[name].append(np.asarray(out[name]))
  return {name: np.concatenate(values) for name, values in parts.items()}


MANIFEST = "mmdiff_jax_export.json"


def _written_by_an_export(out_dir: str) -> bool:
  """Whether out_dir's png/ and samples.npz are what an export writes (those of exports from before
  the manifest: PNGs named 000000.png ..., an npz with "arr_0")."""
  png = os.path.join(out_dir, "png")
  if os.path.isdir(png) and not all(re.fullmatch(r"\d{6}\.png", name) for name in os.listdir(png)):
    return False
  npz = os.path.join(out_dir, "samples.npz")
  if os.path.exists(npz):
    try:
      with np.load(npz, allow_pickle=False) as arrays:
        return "arr_0" in arrays.files
    except (OSError, ValueError):
      return False
  return os.path.isdir(png)


def _claim(out_dir: str) -> None:
  """Marks out_dir as an export in progress, refusing a folder whose outputs someone else wrote."""
  manifest = os.path.join(out_dir, MANIFEST)
  theirs = [name for name in ("samples.npz", "png", "png.partial", "png.old")
            if os.path.exists(os.path.join(out_dir, name))]
  if theirs and not os.path.exists(manifest) and not _written_by_an_export(out_dir):
    raise BadValueError(
        f"--sample_dir={out_dir}: it holds {theirs}, which no export wrote (there is no {MANIFEST}), "
        f"and an export would replace them: choose a new or empty folder, or move them away")
  replace_file(manifest, json.dumps({"complete": False}) + "\n")


def write(samples: dict[str, np.ndarray], out_dir: str, formats: Sequence[str]) -> list[str]:
  """Writes `samples` (see generate) in `formats` under out_dir; returns the paths written.

  Each file is written under a temporary name and renamed, and the PNG folder is written whole
  beside the old one and swapped in, so an interrupted export never leaves a truncated file, and a
  second export into the same folder nothing of the first (the format it does not write is removed),
  for a metric tool to read. MANIFEST says whether the folder holds a finished export.
  """
  rgb = samples["images"]
  if rgb.shape[-1] == 1:
    rgb = np.repeat(rgb, 3, axis=-1)
  os.makedirs(out_dir, exist_ok=True)
  _claim(out_dir)
  if "npz" not in formats and os.path.exists(os.path.join(out_dir, "samples.npz")):
    os.remove(os.path.join(out_dir, "samples.npz"))
  if "png" not in formats:
    shutil.rmtree(os.path.join(out_dir, "png"), ignore_errors=True)
  paths = []
  if "npz" in formats:
    path = os.path.join(out_dir, "samples.npz")
    arrays = {"arr_0": rgb, **{k: v for k, v in samples.items() if k != "images"}}
    with replacing(path, "wb") as f:
      np.savez(f, **arrays)
    paths.append(path)
  if "png" in formats:
    folder = os.path.join(out_dir, "png")
    partial, old = folder + ".partial", folder + ".old"
    for leftover in (partial, old):  # of an interrupted export
      shutil.rmtree(leftover, ignore_errors=True)
    os.makedirs(partial)
    for i, image in enumerate(rgb):
      Image.fromarray(image).save(os.path.join(partial, f"{i:06d}.png"), format="PNG")
    if os.path.exists(folder):
      os.rename(folder, old)
    os.rename(partial, folder)
    shutil.rmtree(old, ignore_errors=True)
    paths.append(folder)
  replace_file(os.path.join(out_dir, MANIFEST), json.dumps(
      {"complete": True, "num_samples": int(len(rgb)), "formats": sorted(formats)}) + "\n")
  return paths


def default_out_dir(workdir: str, step: int, labels: str) -> str:
  """WORKDIR/samples/export_step<step>, with _given_<labels> for samples given labels (so joint and
  given-label exports of one step do not share a folder)."""
  given = f"_given_{labels.replace(',', '-')}" if labels else ""
  return os.path.join(workdir, "samples", f"export_step{step}{given}")


def export_samples(config, workdir: str, *, num_samples: int, formats: Sequence[str],
                   labels: str = "", out_dir: str | None = None,
                   params_path: str | None = None) -> list[str]:
  """Samples num_samples from the newest checkpoint's EMA parameters, or from an exported parameter
  file (`params_path`, --params; its step read from its name), with config.sampling's sampler (every
  option, as the grids), random stream "sample_export" of config.seed and batches of
  config.eval.batch_size, and writes them; returns the paths.

  out_dir defaults to `default_out_dir`.
  """
  if num_samples < 1:
    raise BadValueError(f"--num_samples={num_samples}: expected >= 1")
  if not formats or set(formats) - set(FORMATS):
    raise BadValueError(f"--sample_format={','.join(formats)}: expected names from {FORMATS}")
  if params_path is None:
    experiment, step, state = restore_latest(config, workdir)
    params = state.ema_params
  else:
    experiment, params = params_export.load_params(config, params_path, workdir=workdir)
    step = params_export.step_of(params_path)
  if not experiment.is_generative:
    raise BadValueError(f"task {experiment.task!r}: a predictor baseline has no samples to export")
  label = experiment.class_modality
  given = sample_labels(labels, num_samples=num_samples,
                        num_classes=label.num_classes if label else 0)
  samples = generate(experiment, params, num_samples=num_samples,
                     batch_size=config.eval.batch_size,
                     rng=random_streams.key(config.seed, "sample_export"), labels=given,
                     sampler=experiment.configured_sampler(config.sampling))
  if jax.process_index() != 0:
    return []
  return write(samples, out_dir or default_out_dir(workdir, step, labels), formats)
