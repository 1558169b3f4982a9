"""The training loop: `train_and_evaluate(config, workdir)` is what main, tests and notebooks call.

Rerunning with the same workdir resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from mmdiff_jax import random_streams
from mmdiff_jax.atomic_files import replace_file
from mmdiff_jax.config_validation import validate_config
from mmdiff_jax.data import pipeline, sources
from mmdiff_jax.data.checks import check_batch, training_source
from mmdiff_jax.errors import BadValueError, DivergedError
from mmdiff_jax.evaluation.evaluators import run_evaluators
from mmdiff_jax.evaluation.harness import (BOOTSTRAP_KEY, conditions_of, masked_test_images,
                                           save_eval_metrics, test_batches)
from mmdiff_jax.evaluation.metrics import composite
from mmdiff_jax.experiment import Experiment, build_experiment
from mmdiff_jax.models import kinds
from mmdiff_jax.multihost import fetch, place
from mmdiff_jax.sampling import grids
from mmdiff_jax.training import distributed, label_codes
from mmdiff_jax.training.restore import (check_classifier, check_same_model, classifier_for,
                                         restore_latest, run_config)
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training import transplant
from mmdiff_jax.training import workdir_lock
from mmdiff_jax.training.checkpoint import Checkpointer, NonFiniteStateError
from mmdiff_jax.training.dashboard import Dashboard
from mmdiff_jax.training.preemption import StopRequest
from mmdiff_jax.training.run_files import (MetricsWriter, RunRecord, check_writable,
                                           set_aside_earlier_results)


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _progress_line(step: int, total: int, steps_per_s: float | None,
                   metrics: dict[str, float]) -> str:
  """steps_per_s: None until a compiled step has been timed. The one-t bound estimates (bits/dim)
  are too noisy per log interval to read here: they are in metrics.jsonl and on the dashboard."""
  shown = ("loss", "denoise_mse")
  terms = " ".join(f"{k} {metrics[k]:.4g}" for k in metrics
                   if k in shown or k.startswith(("recovery/", "prediction/")))
  speed = (f"{steps_per_s:.2f} steps/s | ETA {_format_duration((total - step) / steps_per_s)}"
           if steps_per_s else "first step")
  return f"step {step}/{total} ({100 * step / total:.0f}%) | {speed} | {terms}"


def _reads_eval_split(config: ml_collections.ConfigDict) -> bool:
  """Whether a run reads data.eval_split: evaluators after or during training, or the inpainting
  sample grid of a model with a masked image (the first test images)."""
  periodic = config.training.eval_every and config.eval.during_training
  grid = config.sampling.num_samples and any(
      spec.get("kind") == "masked_image" for spec in config.modalities.values())
  return bool(config.eval.after_training or periodic or grid)


def ema_note(*, ema_decay: float, num_steps: int) -> str | None:
  """A note when the EMA of the parameters, which is what is sampled, evaluated and exported, would
  still hold more than 5% of the parameters the run started from at its end."""
  left = ema_decay ** num_steps
  if left <= 0.05:
    return None
  return (f"Note: training.ema_decay={ema_decay} over training.num_steps={num_steps} leaves "
          f"{100 * left:.0f}% of the starting parameters in the EMA that is sampled, evaluated and "
          f"exported; a decay of at most {max(0.0, 1 - 3 / num_steps):.4g} leaves under 5%.")


def evaluate_during_training(experiment: Experiment, params, config) -> dict[str, Any]:
  """config.eval.during_training's evaluators on at most eval.during_training_examples test examples
  (and samples) each: {"periodic_eval/<metric>": value}. Every process must call it."""
  e, n = config.eval, int(config.eval.during_training_examples)
  cheap = config.copy_and_resolve_references()
  cheap.eval.update(num_examples=min(e.num_examples, n), num_generated=min(e.num_generated, n),
                    batch_size=min(e.batch_size, n),
                    bound_batches=max(1, min(e.bound_batches, -(-n // min(e.batch_size, n)))))
  results = run_evaluators(experiment, params, cheap, tuple(e.during_training),
                           classify=classifier_for(config, experiment))
  # Per-example tables (a dict of bootstrap replicates, where an evaluator gives them) stay out of
  # metrics.jsonl rows.
  return {"periodic_eval/" + k.removeprefix("eval/"): v for k, v in results.items()
          if k != "eval/evaluated" and not isinstance(v, dict)}


# The inpainting grid's test images: its columns, and the share of each one's pixels hidden.
INPAINTING_GRID_COLUMNS = 10
INPAINTING_GRID_MASK_RATIO = 0.5


def save_sample_grids(experiment: Experiment, params, config, workdir: str, step: int,
                      class_names: list[str] | None = None) -> list[str]:
  """Joint samples (each image captioned with its generated label; each beside its generated map,
  for every modality whose kind has a preview); where it has a label modality, class-conditional
  samples (one row per class); where it has a masked image, inpainting of the first test images
  (inpainting_grid). Returns the PNG paths.

  Every process must call it (the sampler runs over the whole mesh); process 0 writes the PNGs, the
  others return [].
  """
  s = config.sampling
  if s.num_samples == 0 or not experiment.is_generative:  # predictor baselines have no samples
    return []
  sampler = experiment.configured_sampler(s)
  sample = jax.jit(sampler.sample, static_argnums=(2,))
  base = experiment.specs[0]
  label_spec = experiment.class_modality
  previewed = [x for x in experiment.model.aggregated if kinds.get(x.kind).preview is not None]
  rng = random_streams.key(config.seed, "sample_grids")
  # The dataset's class names caption the labels only if the label modality reads the dataset's
  # labels (batch feature "label", from data.label_key) and has as many classes; else class ids.
  if not (label_spec and label_spec.feature == "label" and class_names
          and len(class_names) == label_spec.num_classes):
    class_names = None
  name = lambda i: class_names[i] if class_names else str(i)
  out_dir = os.path.join(workdir, "samples")
  paths = []
  primary = jax.process_index() == 0
  if not experiment.model.conditions:  # a class-conditional model has no joint samples
    joint = fetch(sample(params, rng, s.num_samples))
    captions = [name(int(c)) for c in joint[label_spec.name]] if label_spec else None
    if primary:
      paths.append(grids.save_grid(os.path.join(out_dir, f"joint_step{step}.png"), joint[base.name],
                                   captions=captions))
    for spec in previewed if primary else ():
      images = np.broadcast_to(joint[base.name], (*joint[base.name].shape[:3], 3))
      shown = kinds.get(spec.kind).preview(spec, joint[spec.name])
      pairs = np.stack([images, shown], axis=1).reshape(-1, *shown.shape[1:])  # image, its map, ...
      paths.append(grids.save_grid(os.path.join(out_dir, f"joint_{spec.name}_step{step}.png"),
                                   pairs))
  if label_spec is not None:
    per_class = max(1, s.num_samples // label_spec.num_classes)
    labels = np.repeat(np.arange(label_spec.num_classes, dtype=np.int32), per_class)
    conditional = fetch(jax.jit(
        lambda p, r, y: sampler.sample(p, r, y.shape[0], observed={label_spec.name: y}))(
            params, jax.random.fold_in(rng, 1), labels))
    if primary:
      paths.append(grids.save_grid(
          os.path.join(out_dir, f"class_conditional_step{step}.png"), conditional[base.name],
          captions=[name(int(c)) for c in labels], num_columns=per_class))
  masked_spec = next((x for x in experiment.specs if x.kind == "masked_image"), None)
  if masked_spec is not None:
    rows = inpainting_grid(experiment, sampler, params, config, jax.random.fold_in(rng, 2),
                           masked_name=masked_spec.name)
    if primary:
      paths.append(grids.save_grid(os.path.join(out_dir, f"inpainting_step{step}.png"), rows,
                                   num_columns=len(rows) // 4))
  return paths


def inpainting_grid(experiment: Experiment, sampler, params, config, rng, *,
                    masked_name: str) -> np.ndarray:
  """Masked image -> image on the first INPAINTING_GRID_COLUMNS test images, each with
  INPAINTING_GRID_MASK_RATIO of its 4x4 cells hidden (filled as config.data says, as in training).

  Returns (4 * N, H, W, C), four rows of N: the observed masked images, the generated images, the
  composites (the known pixels put back) and the originals.
  """
  base = experiment.specs[0]
  batches = [b for b, _ in test_batches(config, INPAINTING_GRID_COLUMNS)]  # eval.batch_size each
  batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  originals = batch[base.feature]
  count = len(originals)
  observed, masks = masked_test_images(config, originals, ratio=INPAINTING_GRID_MASK_RATIO,
                                       rng=np.random.default_rng(config.eval.seed))
  def inpainting_grid_samples(p, r, obs):  # named: compile logs and profiles show this name
    return sampler.sample(p, r, count, observed=obs)

  generated = fetch(jax.jit(inpainting_grid_samples)(
      params, rng, {masked_name: observed, **conditions_of(experiment, batch)}))[base.name]
  return np.concatenate([observed, generated, composite(generated, originals, masks), originals])


def _restore_or_init(experiment, tx, mesh, config, checkpointer, train_iter):
  abstract, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=config.fsdp,
                                                  seed=config.seed)
  found = checkpointer.restore_newest_intact(abstract, move_damaged=True)  # damaged: set aside
  if found is None:
    state = state_lib.create_train_state(experiment.model, tx, shardings, config.seed)
    state = label_codes.with_class_mean_codes(state, experiment, config)
    if config.training.init_from:
      state = _initialise_from(state, config.training.init_from)
    return state, shardings
  latest, state, data_state = found
  print(f"Resuming from step {latest}", flush=True)
  if data_state:
    train_iter.set_state(data_state)
  return state, shardings


def _initialise_from(state, workdir: str):
  """`state` with the parameters (and their EMA) of the newest checkpoint in `workdir` (its EMA
  parameters) wherever paths and shapes match (transplant.transplant); the optimizer state stays fresh."""
  name = f"config.training.init_from={workdir}"
  source_config = run_config(workdir, name=name)
  _, source_step, source_state = restore_latest(source_config, workdir, another_run=True)
  source = fetch(source_state.ema_params)
  params, copied, kept = transplant.transplant(fetch(state.params), source, source_name=name)
  print(f"Initialised {len(copied)} parameter arrays ({', '.join(transplant.top_level(copied))}) from "
        f"{workdir} step {source_step}; fresh: {', '.join(transplant.top_level(kept)) or 'none'}",
        flush=True)
  return state.replace(params=place(params, state.params), ema_params=place(params, state.params))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints), then samples and evaluates.
  Holds the workdir's lock throughout: a second run on it stops at once.

  Returns:
    {"step": the last step, "stopped": whether SIGTERM stopped the run before its end,
     "sample_grids": the PNG paths written, **the final evaluators' metrics (also appended to
     WORKDIR/metrics.jsonl)}; a stopped run has neither grids nor metrics.
  """
  validate_config(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  # The evaluation split too, where anything reads it (after training: fail now, not then).
  sources.check_splits(config.data, ("train_split", "eval_split") if _reads_eval_split(config)
                       else ("train_split",))
  if config.eval.get("classifier_workdir"):  # used after training: fail now, not then
    check_classifier(config.eval.classifier_workdir, build_experiment(config).model.z_shape)
  check_writable(workdir)
  with workdir_lock.hold(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  # Whatever ends the run (an error in the input, a bad batch, non-finite updates), the checkpoint
  # manager finishes its saves and closes, and the dashboard is flushed.
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                              max_to_keep=config.training.keep_checkpoints)
  try:
    if checkpointer.all_steps():  # resuming: the same model only
      check_same_model(config, workdir)
    with contextlib.closing(Dashboard(workdir)) as dashboard:
      results = _run(config, workdir, checkpointer, dashboard)
  except BaseException:
    with contextlib.suppress(Exception):  # the run's own error is the one to report
      checkpointer.close()
    raise
  checkpointer.close()
  return results


def _run(config: ml_collections.ConfigDict, workdir: str, checkpointer: Checkpointer,
         dashboard: Dashboard) -> dict[str, Any]:
  # ---------------------------------------------------------------- set-up and validation
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  t = config.training
  writer = MetricsWriter(workdir, dashboard)
  if jax.process_index() == 0:
    # The viewer is not a dependency (the events are written with tensorboardX alone).
    viewer_missing = "" if shutil.which("tensorboard") else " (after pip install tensorboard)"
    samples = ", samples/" if experiment.is_generative else ""  # predictor baselines have none
    print(f"Outputs in {workdir}: metrics.jsonl, checkpoints/{samples}; dashboard: tensorboard "
          f"--logdir={dashboard.logdir}{viewer_missing}", flush=True)
  prior = experiment.prior_report()  # empty for a predictor baseline: no forward process
  print(f"Mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
        f"{jax.process_count()} process(es)." + (f" Prior check: {prior}" if prior else ""),
        flush=True)

  # ---------------------------------------------------------------- input
  train_iter = pipeline.make_iterator(
      config.data, split=config.data.train_split, global_batch_size=t.batch_size, seed=config.seed,
      shuffle=True,
      process_index=jax.process_index(), process_count=jax.process_count(), training=True,
      read_features=[spec.feature for spec in experiment.specs])

  # ---------------------------------------------------------------- state: restore or init
  tx = state_lib.make_optimizer(config)
  checkpointer.remove_stale_tmp()  # under the workdir lock: no other run's save is in flight
  state, shardings = _restore_or_init(experiment, tx, mesh, config, checkpointer, train_iter)
  train_step = state_lib.make_train_step(experiment.objective(), tx, ema_decay=t.ema_decay,
                                         mesh=mesh, shardings=shardings,
                                         grad_accum_steps=int(t.grad_accum_steps))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  start = int(state.step)
  _write_config(config, workdir)  # only now: the checkpoint (if any) restored into this model
  dropped = writer.drop_after(start)
  if dropped:
    print(dropped, flush=True)
  if start == 0:
    for moved in set_aside_earlier_results(workdir):
      print(moved, flush=True)
  print(f"{num_params / 1e6:.2f}M parameters; training steps {start} -> {t.num_steps}", flush=True)
  note = ema_note(ema_decay=float(t.ema_decay), num_steps=int(t.num_steps))
  if note and jax.process_index() == 0:
    print(note, flush=True)
  if jax.process_count() > 1 and start < t.num_steps:
    # Compile, then take the first step together: CPU (gloo) collectives fail when one process
    # reaches its first collective more than 30 s after another (a slower compile on a busy host).
    train_step = train_step.lower(
        state, state_lib.example_batch(experiment.model, t.batch_size)).compile()
    distributed.barrier("train_step_compiled")

  # ---------------------------------------------------------------- loop
  pending: list[dict] = []
  last_time, last_step = time.perf_counter(), start
  run_record, loop_start = RunRecord(workdir, config), time.perf_counter()
  if start < t.num_steps:
    run_record.start(first_step=start)
  stop = StopRequest(first_step=start)
  with run_record.noting_errors(), stop.on_signals():
    for step in range(start + 1, t.num_steps + 1):
      local_batch = next(train_iter)
      check_batch(local_batch, experiment.specs, experiment.model.z_shape,
                  where=training_source(config.data),
                  ignore_label=config.data.ignore_label)
      # Only the features the model reads go in: derived extras (a mask beside its masked image)
      # would change the step's input tree, which a precompiled multi-process step refuses.
      model_batch = {spec.feature: local_batch[spec.feature] for spec in experiment.specs}
      state, metrics = train_step(state, sharding_lib.global_batch(model_batch, mesh))
      pending.append(metrics)
      if step == start + 1:  # compiled and done: speed and ETA count from here
        jax.block_until_ready(metrics)
        last_time, last_step = time.perf_counter(), step
      # Asked once per step (several processes agree on it through a sync point).
      stopping = stop.requested(step=step)
      # A stop logs the steps since the last row: a resumed run would not train them again.
      if step % t.log_every == 0 or step == t.num_steps or stopping:
        fetched = jax.device_get(pending)
        pending = []
        means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        means["skipped"] = float(np.sum([m["skipped"] for m in fetched]))
        means["nonfinite_streak"] = max(int(m["nonfinite_streak"]) for m in fetched)
        now = time.perf_counter()
        steps_per_s = (step - last_step) / (now - last_time) if step > last_step else None
        last_time, last_step = now, step
        if steps_per_s:
          means["steps_per_s"] = steps_per_s
        writer.write(step, means)
        run_record.update(last_step=step, wall_s=time.perf_counter() - loop_start)
        if jax.process_index() == 0:
          print(_progress_line(step, t.num_steps, steps_per_s, means), flush=True)
        if t.max_nonfinite_steps and means["nonfinite_streak"] >= t.max_nonfinite_steps:
          run_record.update(last_step=step, wall_s=time.perf_counter() - loop_start,
                            outcome="stopped: non-finite updates")
          raise DivergedError(
              f"{means['nonfinite_streak']} updates in a row had a non-finite loss or gradient norm "
              f"(by step {step}); they were skipped and no checkpoint holds them. Stopping: lower "
              f"config.optimizer.learning_rate or check the data (the limit is "
              f"config.training.max_nonfinite_steps={t.max_nonfinite_steps}).")
      if step % t.save_every == 0 or step == t.num_steps:
        _save(checkpointer, step, state, train_iter)
      if stopping:
        if step % t.save_every and step != t.num_steps:
          _save(checkpointer, step, state, train_iter)
        checkpointer.close()  # the save is complete before the message says so
        run_record.update(last_step=step, wall_s=time.perf_counter() - loop_start,
                          outcome=f"stopped by {stop.signal_name}")
        print(f"Received {stop.signal_name}: saved a checkpoint at step {step} in "
              f"{checkpointer.directory}; "
              f"exiting. Rerun the same command to resume.", flush=True)
        return {"step": step, "stopped": True, "sample_grids": []}
      sampling_now = step % t.sample_every == 0 and step != t.num_steps
      # At the last step too, so that each periodic curve ends where training did (the evaluations
      # after training use other examples and counts, under eval/ rather than periodic_eval/).
      evaluating_now = bool(t.eval_every) and step % t.eval_every == 0
      if sampling_now or evaluating_now:
        jax.block_until_ready(state)  # the step's own time stays in steps/s; what follows does not
        paused = time.perf_counter()
        if sampling_now:
          dashboard.images(step, save_sample_grids(experiment, state.ema_params, config, workdir,
                                                   step))
        if evaluating_now:
          writer.write(step, evaluate_during_training(experiment, state.ema_params, config))
        last_time += time.perf_counter() - paused
  checkpointer.wait()
  if int(state.step) > start:
    run_record.update(last_step=int(state.step), wall_s=time.perf_counter() - loop_start,
                      outcome="finished")

  # ---------------------------------------------------------------- samples and evaluation
  final_step = int(state.step)
  grids = save_sample_grids(experiment, state.ema_params, config, workdir, final_step,
                            class_names=sources.class_names(config.data))
  dashboard.images(final_step, grids)
  evaluated = run_evaluators(experiment, state.ema_params, config, config.eval.after_training,
                             classify=classifier_for(config, experiment), show_progress=True)
  results: dict[str, Any] = {"sample_grids": grids, **evaluated}
  if evaluated:
    merged = save_eval_metrics(workdir, final_step, evaluated)
    writer.write_evaluation(final_step, {k: v for k, v in merged.items() if k != "step"})
  if jax.process_index() == 0:
    summary = json.dumps({k: v for k, v in results.items() if k != BOOTSTRAP_KEY})
    where = (f" (bootstrap replicates: {os.path.join(workdir, 'eval_metrics.bootstrap.json')})"
             if BOOTSTRAP_KEY in results else "")
    print(f"Done at step {final_step}: {summary}{where}", flush=True)
  return {"step": final_step, "stopped": False, **results}


def _save(checkpointer: Checkpointer, step: int, state, train_iter) -> None:
  try:
    checkpointer.save(step, state, train_iter.get_state())
  except NonFiniteStateError as e:
    checkpointer.wait()
    raise DivergedError(
        f"Stopping: {e}. Updates that overflow leave no way back; lower "
        f"config.optimizer.learning_rate or config.optimizer.grad_clip_norm, or check the data, "
        f"then rerun to resume from the newest checkpoint.") from e


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """WORKDIR/config.json: what this workdir was trained with (evaluators and resumes check it)."""
  if jax.process_index() == 0:
    # Replaced atomically: other processes may be reading it in check_same_model.
    replace_file(epath.Path(workdir) / "config.json", config.to_json_best_effort(indent=1))


def check_grids_wanted(config: ml_collections.ConfigDict) -> None:
  """Raises, naming the key, where --mode=sample would write no grid."""
  if config.task != "diffusion":
    raise BadValueError(f"--mode=sample: config.task={config.task!r} is a predictor baseline, which "
                        f"has no samples")
  if not config.sampling.num_samples:
    raise BadValueError("--mode=sample: config.sampling.num_samples=0 writes no grid; give >= 1 (or "
                        "--num_samples=N for samples for external metrics)")


def sample_from_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Writes sample grids from the newest checkpoint's EMA parameters; returns the PNG paths."""
  check_grids_wanted(config)
  experiment, step, state = restore_latest(config, workdir)
  paths = save_sample_grids(experiment, state.ema_params, config, workdir, step,
                            class_names=sources.class_names(config.data))
  print(f"Wrote {paths}", flush=True)
  return paths
