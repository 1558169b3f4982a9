"""Reliability: kills and preemption notices, non-finite updates, damaged checkpoints, concurrent
runs on one workdir, bad configs and bad data.

Kill and concurrency tests run the real entry point in a subprocess and send real signals; every
subprocess is bounded in time and killed on failure. Damage is done to real orbax checkpoints the way
a disk or a user does it: flipped bits, a deleted file, an emptied metadata file, an empty step.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jax.numpy as jnp
import orbax.checkpoint as ocp

from configs import imglabel
from mmdiff_jax import atomic_files, console, errors, evaluate
from mmdiff_jax.config_validation import validate_config
from mmdiff_jax.data import fashion_mnist, sources
from mmdiff_jax.data.checks import check_batch
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training import restore, run_files, train, workdir_lock
from mmdiff_jax.training.checkpoint import (Checkpointer, ModelMismatchError,
                                            NonFiniteStateError)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600  # generous: a loaded machine can take minutes to start a run


def _main_command(data_dir, workdir, **overrides):
  flags = {"data.data_dir": data_dir, "eval.after_training": "()", "sampling.num_samples": 0,
           "training.log_every": 1, **overrides}
  return [sys.executable, "-u", "-m", "mmdiff_jax.main", "--config=configs/imglabel.py:smoke",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  return env


def _run_until(command, env, pattern: str):
  """Starts `command` and returns (process, output so far) once a line contains `pattern`."""
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines, deadline = [], time.monotonic() + TIMEOUT_S
  try:
    for line in proc.stdout:
      lines.append(line)
      if pattern in line:
        return proc, lines
      if time.monotonic() > deadline:
        break
  except BaseException:
    proc.kill()
    raise
  proc.kill()
  pytest.fail(f"{pattern!r} never appeared:\n{''.join(lines[-40:])}")


def _finish(proc, lines):
  try:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
  finally:
    proc.kill()
  return "".join(lines) + (out or "")


def _checkpoint_steps(workdir):
  return Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=100).all_steps()


def _run_json(workdir):
  with open(os.path.join(workdir, "run.json")) as f:
    return json.load(f)


def _trained_steps(workdir):
  """The steps of metrics.jsonl's training rows, in file order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [row["step"] for row in map(json.loads, f) if "loss" in row]


def _smoke_config(data_dir, **training):
  config = imglabel.get_config("smoke")
  config.data.data_dir = data_dir
  config.training.update(log_every=2, **training)
  config.eval.after_training = ()
  config.sampling.num_samples = 0
  return config


def test_sigterm_saves_current_step_and_exits_cleanly(data_dir, tmp_path):
  workdir = str(tmp_path / "wd")
  env = _env()
  proc, lines = _run_until(
      _main_command(data_dir, workdir, **{"training.num_steps": 100_000,
                                          "training.save_every": 1000}),
      env, "step 3/")
  proc.send_signal(signal.SIGTERM)
  out = _finish(proc, lines)
  assert proc.returncode == 0, out[-3000:]
  assert "Received SIGTERM: saved a checkpoint at step" in out
  stopped = int(out.split("saved a checkpoint at step ")[1].split()[0])
  assert stopped >= 3 and _checkpoint_steps(workdir) == [stopped]

  proc, lines = _run_until(
      _main_command(data_dir, workdir, **{"training.num_steps": stopped + 2}), env, "Done at step")
  out = _finish(proc, lines)
  assert f"Resuming from step {stopped}" in out and proc.returncode == 0
  invocations = _run_json(workdir)["invocations"]
  assert [i["outcome"] for i in invocations] == ["stopped by SIGTERM", "finished"]
  assert [i["steps"] for i in invocations] == [[0, stopped], [stopped, stopped + 2]]


def test_ctrl_c_saves_like_sigterm_and_a_second_one_interrupts(data_dir, tmp_path):
  workdir = str(tmp_path / "wd")
  command = _main_command(data_dir, workdir, **{"training.num_steps": 100_000,
                                                "training.save_every": 1000})
  proc, lines = _run_until(command, _env(), "step 3/")
  proc.send_signal(signal.SIGINT)
  out = _finish(proc, lines)
  assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
  assert "Ctrl-C: saving a checkpoint after this step" in out
  stopped = int(out.split("Received Ctrl-C (SIGINT): saved a checkpoint at step ")[1].split()[0])
  assert stopped >= 3 and _checkpoint_steps(workdir) == [stopped]
  assert _run_json(workdir)["invocations"][-1]["outcome"] == "stopped by Ctrl-C (SIGINT)"


def test_an_error_in_the_loop_is_the_invocations_outcome(tmp_path):
  record = run_files.RunRecord(str(tmp_path), _smoke_config(str(tmp_path)))
  record.start(first_step=0)
  record.update(last_step=4, wall_s=1.0)
  with pytest.raises(errors.BadValueError), record.noting_errors():
    raise errors.BadValueError("dataset 'x' (train): feature 'label' is missing\nmore")
  invocation = _run_json(str(tmp_path))["invocations"][-1]
  assert invocation["outcome"] == ("failed: BadValueError: dataset 'x' (train): feature 'label' is "
                                   "missing")
  assert invocation["steps"] == [0, 4]
  record = run_files.RunRecord(str(tmp_path), _smoke_config(str(tmp_path)))
  record.start(first_step=4)
  with pytest.raises(KeyboardInterrupt), record.noting_errors():
    raise KeyboardInterrupt
  assert [i["outcome"] for i in _run_json(str(tmp_path))["invocations"]] == [
      "failed: BadValueError: dataset 'x' (train): feature 'label' is missing", "interrupted (Ctrl-C)"]


def test_sigkill_loses_at_most_save_interval_and_never_restores_partial(data_dir, tmp_path):
  workdir = str(tmp_path / "wd")
  env = _env()
  save_every = 2  # saves are nearly always in flight: the kill lands during one
  proc, lines = _run_until(
      _main_command(data_dir, workdir, **{"training.num_steps": 100_000,
                                          "training.save_every": save_every}),
      env, "step 9/")
  proc.kill()
  proc.wait(timeout=60)
  last_logged = max(int(l.split("step ")[1].split("/")[0]) for l in lines if l.startswith("step "))
  complete = _checkpoint_steps(workdir)
  assert complete and max(complete) >= last_logged - save_every - 1

  proc, lines = _run_until(
      _main_command(data_dir, workdir, **{"training.num_steps": max(complete) + 2,
                                          "training.save_every": save_every}),
      env, "Done at step")
  out = _finish(proc, lines)
  assert proc.returncode == 0, out[-3000:]
  assert f"Resuming from step {max(complete)}" in out
  # The rows the killed run logged past its checkpoint were dropped, then trained again: once each.
  assert _trained_steps(workdir) == list(range(1, max(complete) + 3))
  # The killed invocation counts up to its last logged step.
  run = _run_json(workdir)
  killed, resumed = run["invocations"]
  assert killed["outcome"] == "ended at its last logged step (killed or failed)"
  assert killed["steps"][0] == 0 and killed["steps"][1] >= last_logged and killed["wall_s"] > 0
  assert resumed["outcome"] == "finished" and resumed["steps"] == [max(complete), max(complete) + 2]
  assert run["train_wall_s"] == pytest.approx(killed["wall_s"] + resumed["wall_s"], abs=0.2)


def test_repeated_nonfinite_updates_stop_the_run_and_checkpoints_stay_finite(data_dir, tmp_path):
  config = imglabel.get_config("smoke")
  config.data.data_dir = data_dir
  config.optimizer.update(learning_rate=1e30, warmup_steps=1)  # the first update makes it diverge
  config.training.update(num_steps=40, log_every=1, save_every=1, max_nonfinite_steps=3)
  config.eval.after_training = ()
  config.sampling.num_samples = 0
  workdir = str(tmp_path / "wd")
  with pytest.raises(errors.DivergedError, match="max_nonfinite_steps=3"):
    train.train_and_evaluate(config, workdir)
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = state_lib.make_optimizer(config)
  abstract, _ = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=False)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=3)
  assert checkpointer.all_steps()
  for step in checkpointer.all_steps():
    state, _ = checkpointer.restore(step, abstract)
    for leaf in jax.tree.leaves(jax.device_get(state)):
      assert np.all(np.isfinite(leaf))
  checkpointer.close()


def test_an_input_error_at_start_still_closes_the_checkpoint_manager(data_dir, tmp_path,
                                                                       monkeypatch):
  # An input pipeline that fails as it is built (a dataset that cannot be read, say) used to leave
  # the checkpoint manager, created before it, open with its threads.
  config = imglabel.get_config("smoke")
  config.data.data_dir = data_dir
  closed = []
  real_close = Checkpointer.close
  monkeypatch.setattr(Checkpointer, "close", lambda self: (closed.append(self.directory),
                                                           real_close(self)))

  def broken_iterator(*args, **kwargs):
    raise OSError("the input broke")

  monkeypatch.setattr(train.pipeline, "make_iterator", broken_iterator)
  workdir = str(tmp_path / "wd")
  with pytest.raises(OSError, match="the input broke"):
    train.train_and_evaluate(config, workdir)
  assert closed == [os.path.join(workdir, "checkpoints")]


@pytest.mark.parametrize("key,value,message", [
    ("training.num_step", 3, r"'training.num_step' is unknown; allowed under training: \["),
    ("modalities.label.kind", "text", r"modalities.label.kind: got 'text'; expected one of \["),
    ("modalities.label.encoder", "cnn",
     r"modalities.label.encoder: got 'cnn'.*\['categorical', 'smooth_categorical', 'class_mean'\]"),
    # The kind fixes the head (models/kinds/): the key is no longer the config's.
    ("modalities.label.head", "conv", r"modalities.label: unknown keys \['head'\]"),
    ("modalities.label.profile", "constant", r"modalities.label.profile: got 'constant.*lambda_T"),
    ("training.batch_size", 12, r"training.batch_size: got 12; expected a multiple of 8"),
    ("sampling.sampler", "euler", r"sampling.sampler: got 'euler'; expected one of"),
    ("sampling.sampler_steps", 1000, r"sampling.sampler_steps: got 1000; expected 1..100"),
    ("sampling.eta", -1.0, r"sampling.eta: got -1.0; expected a finite number in \[0.0, 1.0\]"),
    ("model.dtype", "float16", r"model.dtype: got 'float16'; expected one of"),
    ("data.image_size", 29, r"data.image_size: got 29; expected a multiple of 2"),
    ("data.mask_fill_value", 2.0, r"data.mask_fill_value: got 2.0; expected a finite number in "
                                  r"\[-1.0, 1.0\]"),
    ("sampling.hard_feedback_fraction", -0.5, r"sampling.hard_feedback_fraction: got -0.5; expected "
                                              r"a finite number in \[0.0, 1.0\]"),
    ("data.mask_fill_pattern", "noise", r"data.mask_fill_pattern: got 'noise'; expected one of "
                                        r"\('constant', 'checkerboard'\)"),
    # Values that used to be accepted (learning_rate -1 trained by gradient ascent and exited 0).
    ("optimizer.learning_rate", -1.0, r"optimizer.learning_rate: got -1.0; expected a finite "
                                      r"number > 0"),
    ("optimizer.learning_rate", 0.0, r"optimizer.learning_rate: got 0.0; expected .* > 0"),
    ("optimizer.learning_rate", float("nan"), r"optimizer.learning_rate: got nan; expected"),
    ("optimizer.warmup_steps", -5, r"optimizer.warmup_steps: got -5; expected an integer >= 0"),
    ("optimizer.grad_clip_norm", -1.0, r"optimizer.grad_clip_norm: got -1.0; expected .* > 0"),
    ("optimizer.b1", 1.5, r"optimizer.b1: got 1.5; expected a finite number in \[0.0, 1.0\)"),
    ("optimizer.b2", -0.1, r"optimizer.b2: got -0.1; expected a finite number in \[0.0, 1.0\)"),
    ("optimizer.weight_decay", -1.0, r"optimizer.weight_decay: got -1.0; expected .* >= 0"),
    ("training.max_nonfinite_steps", -1, r"training.max_nonfinite_steps: got -1; expected an "
                                         r"integer >= 0"),
    ("model.dropout", 1.5, r"model.dropout: got 1.5; expected a finite number in \[0.0, 1.0\)"),
    ("model.num_heads", 3, r"model.num_heads: got 3; expected a divisor of the channels at every "
                           r"attention layer \(\[32\]\)"),
    ("model.num_res_blocks", 0, r"model.num_res_blocks: got 0; expected an integer >= 1"),
    ("model.attention_resolutions", (5,), r"model.attention_resolutions: got \(5,\); expected "
                                          r"feature-map sizes the U-Net reaches .*\[28, 14\] "
                                          r"\(5 never occurs; e.g. --config.model."
                                          r"attention_resolutions='\(14,\)' at the lowest level\)"),
    ("data.channels", 0, r"data.channels: got 0; expected an integer >= 1"),
    ("modalities.label.loss_weight", -1.0, r"modalities.label.loss_weight: got -1.0; expected"),
    ("eval.mask_ratios", (1.5,), r"eval.mask_ratios: got 1.5; expected a finite number in "
                                 r"\(0.0, 1.0\)"),
    ("eval.num_examples", -1, r"eval.num_examples: got -1; expected an integer >= 1"),
    ("eval.num_generated", 0, r"eval.num_generated: got 0; expected an integer >= 4"),
    ("eval.batch_size", 0, r"eval.batch_size: got 0; expected an integer >= 1"),
    ("eval.label_bound_draws", 0, r"eval.label_bound_draws: got 0; expected an integer >= 1"),
    ("sampling.eta", 5.0, r"sampling.eta: got 5.0; expected a finite number in \[0.0, 1.0\]"),
    ("modalities.label.profile_scale", -2.0, r"modalities.label.profile_scale: got -2.0; expected a "
                                             r"finite number >= 0"),
    ("modalities.label.profile", "zero", r"modalities.label.profile_scale: got 0.5; expected 0 with "
                                         r"profile 'zero', which injects nothing at any scale; .* "
                                         r"modalities.label.profile to one of \['bump', "
                                         r"'observation', 'constant'\]"),
    ("modalities.label.loss_weight", 0.0, r"modalities.label: got \{'profile': 'zero', "
                                          r"'profile_scale': 0.0, 'loss_weight': 0.0\}; expected a "
                                          r"modality in the forward process .* with neither it does "
                                          r"nothing"),
])
def test_config_errors_name_key_value_and_allowed(key, value, message):
  config = imglabel.get_config("smoke")
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  if leaf == "profile":
    node["profile_scale"] = 0.5
  if key == "modalities.label.loss_weight" and value == 0.0:  # and out of the forward process
    node.update(profile="zero", profile_scale=0.0)
  with pytest.raises(ValueError, match=message):
    validate_config(config, num_devices=8)


def test_fsdp_without_an_fsdp_axis_to_shard_over_is_refused():
  """config.fsdp=True on the default mesh (data=-1, fsdp=1) would replicate every parameter on every
  device without a word."""
  config = imglabel.get_config("smoke")
  config.fsdp = True
  with pytest.raises(ValueError, match=r"config.fsdp: got True; expected a mesh with an fsdp axis over "
                                       r"more than one device .*--config.mesh.data=1 "
                                       r"--config.mesh.fsdp=-1"):
    validate_config(config, num_devices=8)
  validate_config(config, num_devices=1)  # nothing to shard over: nothing lost
  for data, fsdp in ((1, -1), (2, 4), (-1, 2)):
    config.mesh.update(data=data, fsdp=fsdp)
    validate_config(config, num_devices=8)
  config.mesh.update(data=8, fsdp=-1)
  with pytest.raises(ValueError, match=r"config.fsdp: got True"):
    validate_config(config, num_devices=8)


def test_periodic_evaluations_that_sample_need_four_examples():
  config = imglabel.get_config("smoke")
  config.training.eval_every = 5
  config.eval.during_training_examples = 3
  validate_config(config)  # label_accuracy and bound (the config's) need no neighbours
  config.eval.during_training = ("generation", "bound")
  with pytest.raises(ValueError, match=r"eval.during_training_examples: got 3; expected an integer "
                                       r">= 4 with \['generation'\] in eval.during_training"):
    validate_config(config)
  config.training.eval_every = 0  # never run
  validate_config(config)


def test_a_note_says_when_the_ema_would_still_be_mostly_the_initial_parameters():
  note = train.ema_note(ema_decay=0.9999, num_steps=500)
  assert note == ("Note: training.ema_decay=0.9999 over training.num_steps=500 leaves 95% of the "
                  "starting parameters in the EMA that is sampled, evaluated and exported; a decay of "
                  "at most 0.994 leaves under 5%.")
  assert train.ema_note(ema_decay=0.994, num_steps=500) is None
  assert train.ema_note(ema_decay=0.995, num_steps=1500) is None  # the small configs
  assert train.ema_note(ema_decay=0.9, num_steps=2).endswith("a decay of at most 0 leaves under 5%.")


def test_batches_that_each_process_reads_a_share_of_are_checked_for_the_process_count():
  """eval.batch_size, and the periodic evaluations' batches (capped at during_training_examples)."""
  config = imglabel.get_config("smoke")
  config.eval.batch_size = 32
  config.training.eval_every = 5
  validate_config(config, num_processes=2)
  config.eval.during_training_examples = 5  # batches of 5 cannot be split over 2 processes
  with pytest.raises(ValueError, match=r"eval.during_training_examples: got 5; expected a multiple "
                                       r"of the 2 processes where it is below eval.batch_size"):
    validate_config(config, num_processes=2)
  validate_config(config, num_processes=1)
  config.eval.batch_size = 33
  with pytest.raises(ValueError, match=r"eval.batch_size: got 33; expected a multiple of the 2 "
                                       r"processes"):
    validate_config(config, num_processes=2)


def test_a_value_of_the_wrong_type_is_named():
  config = imglabel.get_config("smoke")
  config.optimizer = dict(config.optimizer.to_dict(), learning_rate="1e-3")  # e.g. read from JSON
  with pytest.raises(ValueError, match=r"optimizer.learning_rate: got '1e-3'; expected a value of "
                                       r"type float"):
    validate_config(config, num_devices=8)


def test_mesh_not_matching_devices_fails_before_compiling(tmp_path):
  config = imglabel.get_config("smoke")
  config.mesh.update(data=3, fsdp=1)
  start = time.monotonic()
  with pytest.raises(ValueError, match=r"config.mesh: .*3 devices, but 8 are available"):
    train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert time.monotonic() - start < 30


def test_unwritable_workdir_is_named(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(errors.StorageError, match=r"--workdir=.*file/wd is not writable"):
    train.train_and_evaluate(imglabel.get_config("smoke"), str(blocker / "wd"))


def test_bad_batches_name_the_feature():
  specs = build_experiment(imglabel.get_config("smoke")).specs
  good = {"image": np.zeros((2, 28, 28, 1), np.float32), "label": np.array([0, 9], np.int32)}
  check_batch(good, specs, (28, 28, 1), where="ds")
  cases = [
      ({"label": np.array([0, 10], np.int32)}, r"ds: feature 'label' has values in \[0, 10\]; "
                                               r"expected 0..9 \(modalities.label.num_classes\)"),
      ({"label": np.array([0.0, 1.0])}, r"'label' has dtype float64; expected integers"),
      ({"image": np.zeros((2, 28, 28, 3), np.float32)},
       r"'image' has shape \(2, 28, 28, 3\); modality 'image' \(image\) expects \(2, 28, 28, 1\) "
       r"\(data.image_size, data.image_size, data.channels\)"),
      ({"image": np.full((2, 28, 28, 1), np.nan, np.float32)}, r"'image' holds 1568 non-finite"),
  ]
  for change, message in cases:
    with pytest.raises(ValueError, match=message):
      check_batch({**good, **change}, specs, (28, 28, 1), where="ds")
  with pytest.raises(ValueError, match=r"feature 'label' is missing"):
    check_batch({"image": good["image"]}, specs, (28, 28, 1), where="ds")


@pytest.fixture
def tiny_filesystem(tmp_path):
  """A 5 MB tmpfs (needs root, as CI has); unmounted afterwards."""
  if os.geteuid() != 0:
    pytest.skip("mounting a tmpfs to fill the disk needs root (CI runs as root)")
  mount_point = tmp_path / "tiny"
  mount_point.mkdir()
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount_point)], check=True)
  yield str(mount_point)
  subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_full_during_save_is_explained_and_earlier_checkpoints_survive(tiny_filesystem):
  checkpointer = Checkpointer(os.path.join(tiny_filesystem, "checkpoints"), max_to_keep=10)
  states = {}
  with pytest.raises(OSError, match=r"No space left on device.*complete checkpoints \[1, 2.*\] are "
                                    r"intact") as error:
    for step in range(1, 10):  # 1.6 MB of incompressible floats each: the disk fills in a few
      states[step] = {"w": jax.random.normal(jax.random.PRNGKey(step), (400_000,))}
      checkpointer.save(step, states[step], {"position": step})
      checkpointer.wait()
  intact = checkpointer.all_steps()
  assert f"complete checkpoints {intact} are intact" in str(error.value)
  assert intact == list(range(1, step))  # all but the one that failed
  abstract = {"w": jax.ShapeDtypeStruct((400_000,), np.float32)}
  for step in intact:
    restored, data_state = checkpointer.restore(step, abstract)
    np.testing.assert_array_equal(restored["w"], states[step]["w"])
    assert data_state == {"position": step}


# --------------------------------------------------------------------------- damaged checkpoints


def _small_state(seed: int) -> dict:
  """A state with arrays big enough to span several orbax data files."""
  key = jax.random.PRNGKey(seed)
  return {"w": jax.random.normal(key, (200, 256)), "b": jax.random.normal(key, (64,)),
          "step": jnp.int32(seed), "opt": ({"mu": jnp.full((300,), float(seed))},)}


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _data_files(step_dir):
  """The step's array data files, largest last."""
  return sorted(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")),
                key=os.path.getsize)


def _flip_bits(step_dir):
  """Inverts 4 bytes at 5 offsets in each of the 4 largest data files (what a failing disk does)."""
  files = _data_files(step_dir)[-4:]
  assert files
  for path in files:
    with open(path, "rb") as f:
      data = bytearray(f.read())
    for offset in np.linspace(len(data) // 4, len(data) - 4, 5).astype(int):
      data[offset:offset + 4] = bytes(b ^ 0xFF for b in data[offset:offset + 4])
    with open(path, "wb") as f:
      f.write(bytes(data))


def _empty_step_dir(step_dir):
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def _swap_in_other_arrays(step_dir):
  """Readable, finite, wrong: the arrays of the step before, under this step's checksums."""
  shutil.rmtree(os.path.join(step_dir, "state"))
  previous = os.path.join(os.path.dirname(step_dir), str(int(os.path.basename(step_dir)) - 1))
  shutil.copytree(os.path.join(previous, "state"), os.path.join(step_dir, "state"))


DAMAGES = {
    "bit_flips": _flip_bits,
    "deleted_data_file": lambda step_dir: os.remove(_data_files(step_dir)[-1]),
    "emptied_metadata": lambda step_dir: open(os.path.join(step_dir, "state", "_METADATA"),
                                              "w").close(),
    "empty_step_dir": _empty_step_dir,
    "other_arrays": _swap_in_other_arrays,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_next_older_restored(damage, tmp_path):
  directory = str(tmp_path / "checkpoints")
  states = {step: _small_state(step) for step in (1, 2, 3)}
  checkpointer = Checkpointer(directory, max_to_keep=3)
  for step, state in states.items():
    checkpointer.save(step, state, {"position": step})
  checkpointer.close()
  DAMAGES[damage](os.path.join(directory, "3"))

  notes = []
  checkpointer = Checkpointer(directory, max_to_keep=3)
  step, restored, data_state = checkpointer.restore_newest_intact(
      _abstract(states[1]), move_damaged=True, note=notes.append)
  assert step == 2 and data_state == {"position": 2}
  for leaf, expected in zip(jax.tree.leaves(restored), jax.tree.leaves(states[2])):
    np.testing.assert_array_equal(leaf, expected)
  assert len(notes) == 1, notes
  assert notes[0].startswith("Checkpoint 3 is damaged (") and os.path.join(
      directory, "corrupt", "3") in notes[0]
  assert os.listdir(os.path.join(directory, "corrupt")) == ["3"]  # kept, not deleted
  assert checkpointer.all_steps() == [1, 2]
  checkpointer.close()


def test_a_checkpoint_without_checksums_holding_nonfinite_values_is_damaged(tmp_path):
  """What an earlier version could save: orbax restores it without complaint."""
  directory = str(tmp_path / "checkpoints")
  good, bad = _small_state(1), _small_state(2)
  bad["w"] = bad["w"].at[3, 4].set(jnp.nan)
  manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
  for step, state in ((1, good), (2, bad)):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave({})))
  manager.wait_until_finished()
  manager.close()
  notes = []
  checkpointer = Checkpointer(directory, max_to_keep=3)
  step, _, _ = checkpointer.restore_newest_intact(_abstract(good), move_damaged=True,
                                                  note=notes.append)
  assert step == 1 and "Checkpoint 2 is damaged (it holds non-finite values)" in notes[0]
  checkpointer.close()


def test_when_no_checkpoint_restores_all_are_kept_and_named(tmp_path):
  """Damage on every checkpoint looks the same as a change of this run's own that no check
  recognises, so none is moved: a rerun with the right config still finds them."""
  directory = str(tmp_path / "checkpoints")
  checkpointer = Checkpointer(directory, max_to_keep=3)
  checkpointer.save(1, _small_state(1), {})
  checkpointer.save(2, _small_state(2), {})
  checkpointer.close()
  for step in ("1", "2"):
    _empty_step_dir(os.path.join(directory, step))
  checkpointer = Checkpointer(directory, max_to_keep=3)
  notes = []
  with pytest.raises(OSError, match=r"No checkpoint in .* \(\[1, 2\]\) restores intact; all were "
                                    r"left in place"):
    checkpointer.restore_newest_intact(_abstract(_small_state(1)), move_damaged=True,
                                       note=notes.append)
  assert [n.split(" (")[0] for n in notes] == ["Checkpoint 2 is damaged", "Checkpoint 1 is damaged"]
  assert not os.path.exists(os.path.join(directory, "corrupt"))
  assert _checkpoint_steps(str(tmp_path)) == [1, 2]


@pytest.mark.parametrize("change", ["shape", "array_added", "array_removed"])
def test_a_checkpoint_of_another_model_is_refused_and_not_moved(tmp_path, change):
  directory = str(tmp_path / "checkpoints")
  checkpointer = Checkpointer(directory, max_to_keep=3)
  checkpointer.save(1, _small_state(1), {})
  checkpointer.close()
  other = _abstract(_small_state(1))
  if change == "shape":
    other["w"] = jax.ShapeDtypeStruct((200, 128), jnp.float32)
  elif change == "array_added":  # e.g. one more block
    other["w2"] = jax.ShapeDtypeStruct((3,), jnp.float32)
  else:  # e.g. one block fewer
    del other["b"]
  with pytest.raises(ModelMismatchError, match=r"Checkpoint 1 in .* holds another model"):
    Checkpointer(directory, max_to_keep=3).restore_newest_intact(other, move_damaged=True)
  assert not os.path.exists(os.path.join(directory, "corrupt"))
  assert _checkpoint_steps(str(tmp_path)) == [1]


def test_a_nonfinite_state_is_never_saved(tmp_path):
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=3)
  good = _small_state(1)
  checkpointer.save(1, good, {})
  bad = dict(good, w=good["w"].at[7, 0].set(jnp.inf))
  with pytest.raises(NonFiniteStateError, match=r"step 2 holds non-finite values; it was not saved "
                                                r"\(the complete checkpoints \[1\]"):
    checkpointer.save(2, bad, {})
  checkpointer.close()
  assert checkpointer.all_steps() == [1]


def test_checksums_are_the_bit_sums_of_each_array_however_it_is_sharded():
  """The saved checksum of an array is the sum of its elements' bits modulo 2**32, the same for any
  sharding: each element counted once, replicas not counted again."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from mmdiff_jax.training.checkpoint import integrity

  def reference(x):  # plain Python integers, no wrap-around arithmetic to trust
    x = np.asarray(x).ravel()  # 64-bit values count as two 32-bit words
    bits = x.view(np.uint32 if x.dtype.itemsize == 8 else np.dtype(f"uint{x.dtype.itemsize * 8}"))
    return sum(int(b) for b in bits) % 2**32

  rng = np.random.default_rng(0)
  w = rng.normal(size=(64, 24)).astype(np.float32) * 1e3  # big values: the sum wraps around
  tree = {"w": w, "h": w.astype(jnp.bfloat16), "n": np.arange(-5, 5, dtype=np.int32)}
  expected = {name: reference(x) for name, x in tree.items()}
  assert sum(int(b) for b in w.view(np.uint32).ravel()) > 2**32
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("a", "b"))
  for spec in (P(), P("b"), P(("a", "b"), None), P("a", "b")):
    sharded = {name: jax.device_put(x, NamedSharding(mesh, spec if x.ndim == 2 else P()))
               for name, x in tree.items()}
    assert integrity(sharded) == (True, expected), spec
  flipped = w.copy()
  flipped.view(np.uint32)[3, 5] ^= 1 << 20
  assert integrity(dict(tree, w=flipped))[1]["w"] != expected["w"]
  with_nan = tree["h"].copy()
  with_nan[0, 0] = np.nan
  assert integrity(dict(tree, h=jnp.asarray(with_nan)))[0] is False
  # A host float64 leaf: every bit counts, the sign and exponent (the high word) too.
  d = np.linspace(-1, 1, 7)
  assert integrity({"d": d}) == (True, {"d": reference(d)})
  sign_flipped = d.copy()
  sign_flipped[1] = -sign_flipped[1]
  assert integrity({"d": sign_flipped})[1]["d"] != reference(d)


def test_rotation_never_deletes_the_newest_intact_checkpoint(tmp_path, capsys):
  directory = str(tmp_path / "checkpoints")
  checkpointer = Checkpointer(directory, max_to_keep=1)
  checkpointer.save(1, _small_state(1), {})
  checkpointer.save(2, _small_state(2), {})  # reads 1 back: intact
  checkpointer.wait()
  assert checkpointer.all_steps() == [1, 2]  # 2 is not read back yet: 1 stays
  _flip_bits(os.path.join(directory, "2"))
  checkpointer.save(3, _small_state(3), {})  # reads 2 back: damaged, so 1 is still the newest intact
  checkpointer.wait()
  assert "Checkpoint 2 is damaged" in capsys.readouterr().out
  assert checkpointer.all_steps() == [1, 3]
  checkpointer.close()  # reads 3 back: intact, so 1 may go
  assert checkpointer.all_steps() == [3]
  assert os.listdir(os.path.join(directory, "corrupt")) == ["2"]


def test_bit_flips_in_the_newest_checkpoint_resume_from_the_newest_intact_one(data_dir, tmp_path,
                                                                              capsys):
  """The failure this guards against: a corrupted newest checkpoint restored into non-finite values,
  every update skipped, and rotation deleting the intact older checkpoints."""
  workdir = str(tmp_path / "wd")
  config = _smoke_config(data_dir, num_steps=6, save_every=2, keep_checkpoints=3)
  train.train_and_evaluate(config, workdir)
  assert _checkpoint_steps(workdir) == [2, 4, 6]
  _flip_bits(os.path.join(workdir, "checkpoints", "6"))

  config.training.num_steps = 10
  capsys.readouterr()
  train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "Checkpoint 6 is damaged (" in out and "Resuming from step 4\n" in out
  assert os.listdir(os.path.join(workdir, "checkpoints", "corrupt")) == ["6"]
  assert _checkpoint_steps(workdir) == [6, 8, 10]
  assert _trained_steps(workdir) == [2, 4, 6, 8, 10]  # the damaged run's row 6 was dropped
  experiment, step, state = restore.restore_latest(config, workdir)
  assert step == 10 and "damaged" not in capsys.readouterr().out
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


def test_without_config_json_another_model_is_refused_and_leaves_nothing_behind(data_dir,
                                                                                tmp_path):
  workdir = str(tmp_path / "wd")
  config = _smoke_config(data_dir, num_steps=2, save_every=2)
  train.train_and_evaluate(config, workdir)
  config_json = os.path.join(workdir, "config.json")
  os.remove(config_json)
  wrong = config.copy_and_resolve_references()
  wrong.model.base_channels = 32
  with pytest.raises(ValueError, match=r"Checkpoint 2 in .* holds another model"):
    train.train_and_evaluate(wrong, workdir)
  assert not os.path.exists(config_json)  # written only once a checkpoint restored into the model
  assert _checkpoint_steps(workdir) == [2]
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "corrupt"))
  config.training.num_steps = 4
  train.train_and_evaluate(config, workdir)  # the right model still resumes
  with open(config_json) as f:
    assert json.load(f)["model"]["base_channels"] == 16
  assert _checkpoint_steps(workdir) == [2, 4]


def test_a_truncated_config_json_is_named(tmp_path):
  (tmp_path / "config.json").write_text('{"model": {"base_chan')
  with pytest.raises(ValueError, match=r"config.json is not valid JSON .*cut short"):
    restore.check_same_model(imglabel.get_config("smoke"), str(tmp_path))


def test_stale_unfinished_saves_and_dataset_preparations_are_removed_with_a_note(tmp_path, capsys):
  directory = tmp_path / "checkpoints"
  checkpointer = Checkpointer(str(directory), max_to_keep=3)
  stale = directory / "7.orbax-checkpoint-tmp-1764620000000000"
  (stale / "state").mkdir(parents=True)
  notes = []
  assert checkpointer.remove_stale_tmp(note=notes.append) == [str(stale)]
  assert not stale.exists() and notes[0].startswith("Removed 1 unfinished checkpoint save")
  checkpointer.close()
  incomplete = tmp_path / "tfds" / fashion_mnist.NAME / "incomplete.0123abcd.1.0.0"
  incomplete.mkdir(parents=True)
  sources.remove_incomplete(str(tmp_path / "tfds" / fashion_mnist.NAME))
  assert not incomplete.exists()
  assert "Removed 1 unfinished dataset preparation" in capsys.readouterr().out


# --------------------------------------------------------------------------- one run per workdir


def test_a_second_run_on_a_busy_workdir_stops_at_once_naming_the_first(data_dir, tmp_path):
  workdir = str(tmp_path / "wd")
  proc, lines = _run_until(
      _main_command(data_dir, workdir, **{"training.num_steps": 100_000,
                                          "training.save_every": 2}),
      _env(), "step 2/")
  try:
    config = _smoke_config(data_dir, num_steps=4)
    start = time.monotonic()
    with pytest.raises(workdir_lock.WorkdirBusyError,
                       match=rf"in use by another run \(host {socket.gethostname()}, pid "
                             rf"{proc.pid}, since 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC: .*main"):
      train.train_and_evaluate(config, workdir)
    assert time.monotonic() - start < 20
    assert proc.poll() is None  # the first run goes on
  finally:
    proc.kill()
    proc.wait(timeout=60)
  # Its process is gone but it never released the lock: the next run takes it over, with a note.
  notes = []
  fd = workdir_lock.acquire(workdir, note=notes.append)
  workdir_lock.release(fd)
  assert len(notes) == 1 and f"pid {proc.pid}" in notes[0] and "process is gone" in notes[0]
  fd = workdir_lock.acquire(workdir, note=notes.append)  # released cleanly: no note
  workdir_lock.release(fd)
  assert len(notes) == 1


def test_the_lock_is_exclusive_within_one_machine(tmp_path):
  fd = workdir_lock.acquire(str(tmp_path))
  try:
    with pytest.raises(workdir_lock.WorkdirBusyError, match=rf"pid {os.getpid()}"):
      workdir_lock.acquire(str(tmp_path))
  finally:
    workdir_lock.release(fd)


# --------------------------------------------------------------------------- evaluate, raw data


def test_evaluate_neither_creates_a_missing_workdir_nor_skips_a_named_evaluator(tmp_path):
  config = imglabel.get_config("smoke")
  missing = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*missing/checkpoints \(it does "
                                              r"not exist\)"):
    evaluate.evaluate(config, missing)
  with pytest.raises(FileNotFoundError, match=r"missing/checkpoints"):
    train.sample_from_checkpoint(config, missing)
  assert not os.path.exists(missing)
  with pytest.raises(ValueError, match=r"--evaluators: \['segmentation_miou'\] do not apply to this "
                                       r"experiment .*those that apply: \[[^]]*'label_accuracy'") as e:
    evaluate.evaluate(config, missing, ("label_accuracy", "segmentation_miou"))
  assert "'segmentation_miou'" not in str(e.value).split("those that apply")[1]
  with pytest.raises(ValueError, match=r"--evaluators: got \[\]; expected names from"):
    evaluate.evaluate(config, missing, ())


def test_a_damaged_raw_file_and_an_uncreatable_data_dir_are_named(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  for name in os.listdir(fashion_mnist.DEFAULT_RAW_DIR):
    os.symlink(os.path.join(fashion_mnist.DEFAULT_RAW_DIR, name), raw / name)
  damaged = raw / "t10k-labels-idx1-ubyte.gz"
  data = bytearray(damaged.read_bytes())
  damaged.unlink()
  data[20:28] = b"\xff" * 8  # inside the deflate stream: zlib's own error, not a CRC mismatch
  damaged.write_bytes(bytes(data))
  with pytest.raises(fashion_mnist.IdxFormatError,
                     match=rf"Cannot read IDX file {damaged} \(error: .*\): it is damaged or cut "
                           rf"short.*data.raw_dir"):
    fashion_mnist.load_raw_split(str(raw), "test")
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match=r"data dir .*file/tfds \(config key data.data_dir.*\) cannot be "
                                    r"created"):
    sources.prepare_fashion_mnist(data_dir=str(blocker / "tfds"), raw_dir=str(raw))


def test_metrics_rows_past_the_resumed_step_go_and_an_earlier_runs_rows_are_kept_aside(tmp_path):
  writer = run_files.MetricsWriter(str(tmp_path))
  for step in range(1, 6):
    writer.write(step, {"loss": 1.0 / step})
  with open(writer.path, "a") as f:
    f.write('{"step": 6, "lo')  # cut short by a kill
  assert "removed the rows past step 3" in writer.drop_after(3)
  assert _trained_steps(str(tmp_path)) == [1, 2, 3]
  assert writer.drop_after(3) is None
  # From step 0 (no checkpoint left): none of them will be written again, so they are kept whole.
  for expected in ("metrics.jsonl.earlier", "metrics.jsonl.earlier.1"):
    before = open(writer.path).read()
    assert writer.drop_after(0).endswith(expected)
    assert not os.path.exists(writer.path) and open(tmp_path / expected).read() == before
    writer.write(1, {"loss": 0.5})


def test_a_fresh_start_in_a_used_workdir_sets_the_earlier_runs_results_aside(data_dir, tmp_path):
  """With its checkpoints moved away, a workdir starts again from step 0: the earlier run's
  run.json and evaluation files describe weights that are gone, so they are set aside, not merged
  into the new run's (its wall time added, its metrics kept where the step matches)."""
  workdir = str(tmp_path / "wd")
  config = _smoke_config(data_dir, num_steps=2, save_every=2)
  train.train_and_evaluate(config, workdir)
  stale = {"step": 2, "eval/label_accuracy": 0.99}
  with open(os.path.join(workdir, "eval_metrics.json"), "w") as f:
    json.dump(stale, f)
  with open(os.path.join(workdir, "notes.json"), "w") as f:  # the user's, not a run's
    json.dump({"dataset": "mine"}, f)
  earlier_run = open(os.path.join(workdir, "run.json")).read()
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "run.json")) as f:
    assert len(json.load(f)["invocations"]) == 1
  assert open(os.path.join(workdir, "run.json.earlier")).read() == earlier_run
  assert not os.path.exists(os.path.join(workdir, "eval_metrics.json"))
  with open(os.path.join(workdir, "eval_metrics.json.earlier")) as f:
    assert json.load(f) == stale
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl.earlier"))
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert json.loads(open(os.path.join(workdir, "notes.json")).read()) == {"dataset": "mine"}


def test_a_file_written_whole_is_the_old_or_the_new_never_a_part(tmp_path):
  path = tmp_path / "config.json"
  atomic_files.replace_file(path, "old")
  with pytest.raises(RuntimeError, match="killed"):
    with atomic_files.replacing(path, "wb") as f:
      f.write(b"half of the ne")
      raise RuntimeError("killed while writing")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]
  atomic_files.replace_file(path, b"new")
  assert path.read_text() == "new" and os.listdir(tmp_path) == ["config.json"]


def test_two_evaluations_merging_into_one_workdir_keep_each_others_values(tmp_path, monkeypatch):
  """Two evaluate runs on one workdir (different evaluators, same step) each read, merge and replace
  eval_metrics.json: under the merge lock neither loses the other's values, even when both read
  before either writes (a slow write makes that certain here)."""
  import threading  # pylint: disable=import-outside-toplevel
  from mmdiff_jax.evaluation import harness  # pylint: disable=import-outside-toplevel
  write_json = harness._write_json

  def slow_write_json(path, values):
    time.sleep(0.3)
    write_json(path, values)

  monkeypatch.setattr(harness, "_write_json", slow_write_json)
  names = ("generation", "label_accuracy", "bound")
  threads = [threading.Thread(target=harness.save_eval_metrics, args=(str(tmp_path), 6, {
      f"eval/{name}": 1.0, "eval/evaluated": [name],
      harness.BOOTSTRAP_KEY: {f"eval/{name}": [1.0, 2.0]}})) for name in names]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  merged = json.loads((tmp_path / "eval_metrics.json").read_text())
  assert sorted(merged["eval/evaluated"]) == sorted(names)
  assert all(merged[f"eval/{name}"] == 1.0 for name in names)
  replicates = json.loads((tmp_path / "eval_metrics.bootstrap.json").read_text())
  assert sorted(replicates) == sorted(["step", *(f"eval/{name}" for name in names)])
  assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_rerun_evaluation_replaces_the_earlier_one_of_its_step(tmp_path):
  writer = run_files.MetricsWriter(str(tmp_path))
  writer.write(2, {"loss": 0.5})
  writer.write(2, {"eval/label_accuracy": 0.5, "eval/evaluated": ["label_accuracy"]})  # an earlier run
  writer.write(4, {"loss": 0.4})
  for accuracy in (0.7, 0.8):  # the run finished at 4, then the same command again
    writer.write_evaluation(4, {"eval/label_accuracy": accuracy, "eval/evaluated": ["label_accuracy"]})
  rows = [json.loads(line) for line in open(writer.path)]
  assert [(r["step"], r.get("loss"), r.get("eval/label_accuracy")) for r in rows] == [
      (2, 0.5, None), (2, None, 0.5), (4, 0.4, None), (4, None, 0.8)]


def test_the_final_row_of_metrics_jsonl_merges_every_evaluation_of_its_step(data_dir, tmp_path):
  """A rerun of a finished run evaluating something else keeps the earlier values, in metrics.jsonl
  as in eval_metrics.json."""
  config = imglabel.get_config("smoke")
  config.data.data_dir = data_dir
  config.training.update(num_steps=2, log_every=1, save_every=2)
  config.sampling.num_samples = 0
  config.eval.update(num_examples=8, batch_size=8, bound_batches=1, after_training=("bound",))
  workdir = str(tmp_path / "wd")
  train.train_and_evaluate(config, workdir)
  config.eval.after_training = ("label_accuracy",)
  train.train_and_evaluate(config, workdir)  # finished: evaluates again
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  final = [r for r in rows if r["step"] == 2 and "loss" not in r]
  assert len(final) == 1 and final[0]["eval/evaluated"] == ["bound", "label_accuracy"]
  assert "eval/test_bound/image_bits_per_dim" in final[0] and "eval/label_accuracy" in final[0]
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    assert {k: v for k, v in json.load(f).items() if k != "step"} == {
        k: v for k, v in final[0].items() if k != "step"}


@pytest.mark.parametrize("override, named", [
    ("training.foo", r"config key 'training.foo' is unknown; allowed under training: \[.*'num_steps'"),
    ("trainng.num_steps", r"config key 'trainng' is unknown; allowed under config: \[.*'training'"),
    ("modalities.foo.kind", r"config key 'modalities.foo' is unknown; allowed under modalities: "
                            r"\['image', 'label'\]"),
    ("sampling.num_steps", r"config key 'sampling.num_steps' is now 'sampling.sampler_steps' \(renamed"),
])
def test_an_override_of_an_unknown_config_key_is_named_in_full_without_a_traceback(tmp_path, override,
                                                                                   named):
  workdir = tmp_path / "run"
  command = _main_command(str(tmp_path / "tfds"), str(workdir), **{override: 1})
  result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
  assert result.returncode == 1
  assert re.search(rf"FATAL Flags parsing error: --config.{override}=1: {named}", result.stderr), \
      result.stderr[-2000:]
  assert "Traceback" not in result.stderr and not workdir.exists()


@pytest.mark.parametrize("key,split,message", [
    ("eval_split", "validation", r"data.eval_split='validation': dataset 'fashion_mnist_offline' has "
                                 r"the splits \['test', 'train'\] \(Unknown split 'validation'"),
    ("train_split", "train[:200%]", r"data.train_split='train\[:200%\]': .*Error parsing split"),
    ("eval_split", "test[:0]", r"data.eval_split='test\[:0\]': split 'test\[:0\]' of dataset "
                               r"'fashion_mnist_offline' is empty")])
def test_a_split_the_dataset_lacks_is_named_before_anything_trains(data_dir, tmp_path, key, split,
                                                                  message):
  """The evaluation split is first read after training: without this check, a dataset prepared
  without a held-out split trains in full, then fails with a bare 'Unknown split'."""
  config = _smoke_config(data_dir, num_steps=2)
  config.eval.after_training = ("label_accuracy",)  # reads the evaluation split
  config.data[key] = split
  with pytest.raises(errors.BadValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


def test_a_run_that_never_reads_the_evaluation_split_does_not_need_one():
  """A dataset prepared without --holdout has only "train": a run without evaluations or an
  inpainting grid trains on it."""
  config = imglabel.get_config("smoke")
  config.training.eval_every = 0
  config.eval.after_training = ()
  assert not train._reads_eval_split(config)
  config.training.eval_every = 5  # with periodic evaluators (the config's default ones)
  assert train._reads_eval_split(config)
  config.training.eval_every = 0
  config.modalities.masked_image = dict(kind="masked_image", feature="masked_image",
                                        encoder="identity")
  assert train._reads_eval_split(config)  # the inpainting grid shows the first test images
  config.sampling.num_samples = 0
  assert not train._reads_eval_split(config)


def test_a_bad_config_value_ends_the_run_with_one_line_naming_it(tmp_path):
  workdir = tmp_path / "run"
  command = _main_command(str(tmp_path / "tfds"), str(workdir), **{"optimizer.learning_rate": -1})
  result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "FATAL config.optimizer.learning_rate: got -1.0; expected a finite number > 0.0")
  assert not workdir.exists()
  # The traceback is there for whoever asks for it.
  result = subprocess.run(command, cwd=ROOT, env=dict(_env(), MMDIFF_JAX_TRACEBACK="1"),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
  assert result.returncode == 1 and "Traceback" in result.stderr
  assert "mmdiff_jax.errors.BadValueError: config.optimizer.learning_rate" in result.stderr


def test_only_user_errors_lose_their_traceback(monkeypatch, capsys):
  def fails_with(error):
    def main(argv):
      raise error
    return console.exit_on_user_error(main)

  with pytest.raises(SystemExit) as exit_info:
    fails_with(errors.MissingFileError("--workdir=x: no checkpoint"))(["main"])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == "FATAL --workdir=x: no checkpoint\n"
  with pytest.raises(ValueError, match="a bug"):  # not the user's: the traceback stays
    fails_with(ValueError("a bug"))(["main"])
  monkeypatch.setenv(console.TRACEBACK_ENV, "1")
  with pytest.raises(errors.BadValueError):
    fails_with(errors.BadValueError("config.x: got 1"))(["main"])
  with pytest.raises(KeyboardInterrupt):
    fails_with(KeyboardInterrupt())(["main"])
  monkeypatch.delenv(console.TRACEBACK_ENV)
  with pytest.raises(SystemExit) as exit_info:
    fails_with(KeyboardInterrupt())(["main"])
  assert exit_info.value.code == 130
  assert capsys.readouterr().err == "Interrupted (Ctrl-C).\n"
  # Each user error is also the builtin a caller would catch.
  assert issubclass(ModelMismatchError, ValueError) and issubclass(ModelMismatchError, errors.UserError)
  assert issubclass(sources.DatasetNotPreparedError, FileNotFoundError)
  assert issubclass(workdir_lock.WorkdirBusyError, errors.UserError)


@pytest.mark.parametrize("extra, message", [
    (["--mode=sampl"], "FATAL Flags parsing error: flag --mode=sampl: value should be one of "
                       "<train|sample|export>"),
    (["--num_samples=3"], "--num_samples is for --mode=sample (given --mode=train)"),
    (["--mode=sample", "--sample_labels=3"], "--sample_labels is for --num_samples=N"),
    (["--mode=sample", "--params=nowhere.msgpack", "--num_samples=2"],
     "FATAL --params=nowhere.msgpack: no such file"),
    (["stray"], "FATAL unexpected arguments ['stray']"),
    (["--config=configs/imglabel.py:smol"], "FATAL config variant: unknown 'smol'"),
    (["--config=nowhere.py"], "FATAL --config=nowhere.py: no such file"),
])
def test_flags_a_mode_would_ignore_or_cannot_use_are_one_line_errors(tmp_path, extra, message):
  command = [sys.executable, "-m", "mmdiff_jax.main", "--config=configs/imglabel.py:smoke",
             f"--workdir={tmp_path / 'run'}", *extra]
  result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines[0].startswith("FATAL ") and message in lines[0], result.stderr[-2000:]
  assert lines[1:] in ([], ["Pass --helpshort or --helpfull to see help on flags."]), lines


@pytest.mark.parametrize("module, flag", [
    ("mmdiff_jax.main", "--help"), ("mmdiff_jax.evaluate", "--helpfull"),
    ("mmdiff_jax.evaluation.report", "--help"), ("mmdiff_jax.data.prepare", "--helpshort")])
def test_asking_for_help_succeeds(module, flag):
  """absl ends its help flags with exit status 1; a script under `set -e` that only asked for help
  must not fail."""
  result = subprocess.run([sys.executable, "-m", module, flag], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "--" in result.stdout and "FATAL" not in result.stderr, result.stdout[-2000:]


def test_a_changed_input_position_is_damage(tmp_path):
  """The input position is part of what a checkpoint promises: resuming from an edited one would
  feed other batches than the run would have seen, silently."""
  directory = str(tmp_path / "checkpoints")
  checkpointer = Checkpointer(directory, max_to_keep=3)
  checkpointer.save(1, _small_state(1), {"next_index": 48})
  checkpointer.save(2, _small_state(2), {"next_index": 96})
  checkpointer.close()
  (data_file,) = glob.glob(os.path.join(directory, "2", "data", "*metadata*"))
  with open(data_file) as f:
    assert json.load(f) == {"next_index": 96}
  with open(data_file, "w") as f:
    json.dump({"next_index": 0}, f)
  notes = []
  step, _, data_state = Checkpointer(directory, max_to_keep=3).restore_newest_intact(
      _abstract(_small_state(1)), move_damaged=True, note=notes.append)
  assert (step, data_state) == (1, {"next_index": 48})
  assert notes == [f"Checkpoint 2 is damaged (the input position differs from the one saved): moved "
                   f"to {os.path.join(directory, 'corrupt', '2')}."]


def test_evaluate_names_an_unknown_config_key_too(tmp_path):
  command = [sys.executable, "-m", "mmdiff_jax.evaluate", "--config=configs/imglabel.py:smoke",
             f"--workdir={tmp_path}", "--config.eval.num_steps=3"]
  result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert "config key 'eval.num_steps' is now 'eval.sampler_steps'" in result.stderr, result.stderr[-2000:]
