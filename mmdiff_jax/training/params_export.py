"""The EMA parameters alone, as one msgpack file (flax.serialization), and loading them for sampling.

An exported file is all a sampler needs besides the run's config (WORKDIR/config.json holds it): no
optimizer state, no orbax, and about a third of a checkpoint's size.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import serialization

from mmdiff_jax.atomic_files import replace_file
from mmdiff_jax.data import sources
from mmdiff_jax.config_validation import validate_config
from mmdiff_jax.errors import BadValueError, MissingFileError
from mmdiff_jax.experiment import Experiment, build_experiment
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.multihost import fetch, place
from mmdiff_jax.training.restore import check_same_model, restore_latest
from mmdiff_jax.training.train import check_grids_wanted, save_sample_grids


def exported_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, "export", f"ema_params_step{step}.msgpack")


def export_ema_params(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the newest checkpoint's EMA parameters to WORKDIR/export/ema_params_step<N>.msgpack
  (process 0 writes; every process must call it); returns the path."""
  _, step, state = restore_latest(config, workdir)
  params = fetch(state.ema_params)
  path = exported_path(workdir, step)
  if jax.process_index() == 0:
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, serialization.to_bytes(params))
  return path


def _flat(tree) -> dict[str, Any]:
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def step_of(path: str) -> int:
  """The training step in an exported file's name (ema_params_step<N>.msgpack), 0 if none."""
  step = re.search(r"step(\d+)", os.path.basename(path))
  return int(step[1]) if step else 0


def load_params(config: ml_collections.ConfigDict, path: str, *,
                workdir: str | None = None) -> tuple[Experiment, Any]:
  """(experiment, parameters) from an exported file, checked against the model `config` describes
  (ValueError naming every missing, unexpected or differently shaped parameter; with `workdir`,
  also against the model its run was trained with, which catches what shapes cannot, e.g. another
  parameterization), placed on this machine's mesh as training would place them."""
  if not epath.Path(path).is_file():
    raise MissingFileError(f"--params={path}: no such file (an exported parameter file: "
                           f"--mode=export writes WORKDIR/export/ema_params_step<N>.msgpack)")
  validate_config(config)  # not its batch sizes against this machine: sampling does not use them
  if workdir is not None:
    check_same_model(config, workdir)
  experiment = build_experiment(config)
  abstract, _ = state_lib.state_shardings(
      experiment.model, state_lib.make_optimizer(config), sharding_lib.make_mesh(config.mesh),
      fsdp=config.fsdp, seed=config.seed)
  expected = abstract.params
  try:
    params = serialization.msgpack_restore(epath.Path(path).read_bytes())
  except ValueError as e:  # msgpack's "Unpack failed: incomplete input" and the like
    raise BadValueError(f"--params={path}: not a readable parameter file ({e}); it may be truncated "
                        f"or damaged: export it again with --mode=export") from e
  if not isinstance(params, dict):
    raise BadValueError(f"--params={path}: holds a {type(params).__name__}, not a parameter tree; "
                        f"export one with --mode=export")
  want, got = _flat(expected), _flat(params)
  problems = [f"{k}: missing" for k in want if k not in got]
  problems += [f"{k}: not in this model" for k in got if k not in want]
  problems += [f"{k}: shape {tuple(np.shape(got[k]))}, the model's {want[k].shape}"
               for k in want if k in got and tuple(np.shape(got[k])) != want[k].shape]
  if problems:
    raise BadValueError(f"{path}: the parameters do not fit the model this config describes "
                        f"({len(problems)} problems: {'; '.join(problems[:10])}). Use the config of "
                        f"the run they were exported from (its config.json).")
  return experiment, place(params, expected)


def sample_from_exported(config: ml_collections.ConfigDict, path: str, workdir: str) -> list[str]:
  """Writes sample grids (as --mode=sample does from a checkpoint) from an exported file into
  WORKDIR/samples, named with the step in the file's name (0 if it has none); returns the paths."""
  check_grids_wanted(config)
  experiment, params = load_params(config, path, workdir=workdir)
  paths = save_sample_grids(experiment, params, config, workdir, step_of(path),
                            class_names=sources.class_names(config.data))
  print(f"Wrote {paths}", flush=True)
  return paths
