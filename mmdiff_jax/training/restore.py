"""Reading a trained run back: is this config the model the run was trained with, and its newest
intact checkpoint on this machine's mesh.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from etils import epath

from mmdiff_jax.config import RENAMED_KEYS, default_config
from mmdiff_jax.config_validation import validate_config
from mmdiff_jax.errors import BadValueError, MissingFileError
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.multihost import fetch
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training.checkpoint import Checkpointer

# The keys that define what a checkpoint's parameters mean: a run evaluated, sampled or resumed with
# other values would load the same arrays and silently compute something else.
MODEL_DEFINING_KEYS = ("task", "prediction", "diffusion", "modalities", "model.base_channels",
                       "model.channel_mults", "model.num_res_blocks", "model.attention_resolutions",
                       "model.num_heads", "model.num_groups", "data.image_size", "data.channels")


def flatten(tree: Mapping[str, Any], *, separator: str = ".") -> dict[str, Any]:
  """{"a.b": leaf} of a nested mapping {"a": {"b": leaf}} (config trees, flax parameter trees)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update({f"{key}{separator}{sub}": leaf
                  for sub, leaf in flatten(value, separator=separator).items()})
    else:
      out[str(key)] = value
  return out


def model_differences(trained: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{dotted key: (trained value, given value)} for the MODEL_DEFINING_KEYS that differ between a
  run's config.json (`trained`, parsed) and `config`. Only keys the run's file has are compared (so
  older runs, made before a key existed, still load), plus modalities it does not have at all."""
  trained = upgraded(trained)
  given = flatten(json.loads(config.to_json_best_effort()))
  selected = lambda key: any(key == k or key.startswith(k + ".") for k in MODEL_DEFINING_KEYS)
  trained_modalities = trained.get("modalities", {})
  differences = {}
  for key, value in sorted(flatten(trained).items()):
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


# Modality keys that earlier versions wrote into config.json: each could take one value per kind,
# which the kind (models/kinds/) now fixes. A run's file that has them still loads.
RETIRED_MODALITY_KEYS = ("head", "recovery_loss")


def upgraded(trained: dict) -> dict:
  """A run's parsed config.json in today's key names: RETIRED_MODALITY_KEYS dropped, RENAMED_KEYS
  (config.py) renamed."""
  trained = {k: dict(v) if isinstance(v, Mapping) else v for k, v in trained.items()}
  for old, new in RENAMED_KEYS.items():
    (section, old_key), (_, new_key) = old.split("."), new.split(".")
    if old_key in trained.get(section, {}):
      trained[section][new_key] = trained[section].pop(old_key)
  if "modalities" in trained:
    trained["modalities"] = {
        name: {k: v for k, v in fields.items() if k not in RETIRED_MODALITY_KEYS}
        for name, fields in trained["modalities"].items()}
  return trained


def _fill_missing(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  """Adds to `config`, in place, every key of `defaults` it lacks (recursively)."""
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key],
                                                                     ml_collections.ConfigDict):
      if key != "modalities":  # a run's modalities are its own, not the default's
        _fill_missing(config[key], value)


def run_config(workdir: str, *, name: str, hint: str = "expected a trained run's workdir"):
  """The config a run in `workdir` was trained with (its config.json), with the keys added to the
  library since (absent from that file) at their defaults, so older runs still load.

  name: what `workdir` is, for errors (e.g. "config.training.init_from=DIR").
  """
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise MissingFileError(f"{name}: no config.json there; {hint}")
  try:
    config = ml_collections.ConfigDict(upgraded(json.loads(path.read_text())))
  except json.JSONDecodeError as e:
    raise BadValueError(f"{name}: {path} is not valid JSON ({e}; cut short?)") from e
  _fill_missing(config, default_config())
  return config


def check_same_model(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ValueError, naming the keys, when `config` describes another model than the one the run
  in `workdir` was trained with (its config.json; MODEL_DEFINING_KEYS): its checkpoints
  would load and silently compute something else."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    return
  try:
    trained = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise BadValueError(
        f"{path} is not valid JSON ({e}; cut short?), so the model this workdir was trained with is "
        f"unknown. Put back a copy of it, or delete it: the checkpoint's array shapes are still "
        f"checked against the config on restore.") from e
  differences = model_differences(trained, config)
  if differences:
    listing = "; ".join(f"{k}: trained {a!r}, given {b!r}" for k, (a, b) in differences.items())
    raise BadValueError(
        f"--workdir={workdir} holds a run trained with another model than this config describes "
        f"({listing}). Give the run's values (its config.json has them, e.g. --config.<key>=<trained "
        f"value>) or use another workdir.")


def restore_latest(config: ml_collections.ConfigDict, workdir: str, *, another_run: bool = False):
  """(experiment, step, state) of the newest checkpoint in `workdir`, on this machine's mesh.

  another_run: `config` is that of another run read for its parameters (training.init_from,
  eval.classifier_workdir): its batch sizes and mesh were for the machine it trained on, so they are
  not checked against this one, and the state is replicated over all devices here.
  """
  if another_run:
    validate_config(config)
    mesh, fsdp = sharding_lib.make_mesh({"data": -1, "fsdp": 1}), False
  else:
    validate_config(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    mesh, fsdp = sharding_lib.make_mesh(config.mesh), config.fsdp
  check_same_model(config, workdir)
  experiment = build_experiment(config)
  tx = state_lib.make_optimizer(config)
  directory = os.path.join(workdir, "checkpoints")
  if not epath.Path(directory).exists():  # checked first: the Checkpointer would create it
    raise MissingFileError(f"--workdir={workdir}: no checkpoint in {directory} (it does not "
                           f"exist); train first (--mode=train)")
  checkpointer = Checkpointer(directory, max_to_keep=config.training.keep_checkpoints)
  abstract, _ = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=fsdp, seed=config.seed)
  # Damaged checkpoints are skipped, not moved: the training run owns the directory.
  found = checkpointer.restore_newest_intact(abstract, move_damaged=False)
  checkpointer.close()
  if found is None:
    raise MissingFileError(f"--workdir={workdir}: no checkpoint in {checkpointer.directory}; "
                           f"train first (--mode=train)")
  step, state, _ = found
  return experiment, step, state


def check_classifier(workdir: str, image_shape) -> ml_collections.ConfigDict:
  """The config of the image -> label predictor in `workdir`, after checking (without loading it)
  that it is one, for images of `image_shape`, with a checkpoint; errors name the config key."""
  name = f"config.eval.classifier_workdir={workdir}"
  hint = (f"train the classifier first: python -m mmdiff_jax.main "
          f"--config=configs/classifier.py:small --workdir={workdir}")
  config = run_config(workdir, name=name, hint=hint)
  experiment = build_experiment(config)
  model = experiment.model
  if experiment.is_generative or model.spec(model.target).kind != "label":
    raise BadValueError(f"{name}: expected an image -> label predictor (task 'prediction', target of "
                        f"kind 'label'), got task {experiment.task!r}")
  if tuple(image_shape) != tuple(model.z_shape):
    raise BadValueError(f"{name}: the classifier takes images of shape {model.z_shape}, the evaluated "
                        f"model makes {tuple(image_shape)}")
  checkpoints = epath.Path(workdir) / "checkpoints"
  if not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    raise MissingFileError(f"{name}: no checkpoint in {checkpoints}; {hint}")
  return config


def load_classifier(workdir: str, image_shape) -> Callable[[np.ndarray], np.ndarray]:
  """The image -> label predictor trained in `workdir` (configs/classifier.py; its config.json and
  newest checkpoint): returns images (B, H, W, C) -> predicted labels (B,)."""
  config = check_classifier(workdir, image_shape)
  experiment, _, state = restore_latest(config, workdir, another_run=True)
  model = experiment.model
  def prediction(p, x):  # named: compile logs and profiles show this name
    return experiment.sampler("ddim", 1).sample(p, None, x.shape[0], observed={model.input: x})[model.target]

  predict = jax.jit(prediction)
  return lambda images: np.asarray(fetch(predict(state.ema_params, images)))


def classifier_for(config: ml_collections.ConfigDict, experiment):
  """load_classifier of config.eval.classifier_workdir for `experiment`'s images, or None if unset."""
  workdir = config.eval.get("classifier_workdir")
  return load_classifier(workdir, experiment.model.z_shape) if workdir else None
