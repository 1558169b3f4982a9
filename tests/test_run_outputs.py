"""What a run shows and leaves: the console, TensorBoard event files (read back), evaluations during
training, exported parameters. One smoke run (real data, real checkpoints) serves every test here.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import struct
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from configs import imglabel
from mmdiff_jax import installed_configs
from mmdiff_jax.data import fashion_mnist
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.models.mtdiffusion import MTDiffusion
from mmdiff_jax.sampling import grids
from mmdiff_jax.training import dashboard, restore, train
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training import params_export as export


def read_events(logdir: str) -> list[event_pb2.Event]:
  """Every event in the TFRecord event files under `logdir` (length, crc, data, crc records)."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    data, offset = open(path, "rb").read(), 0
    while offset < len(data):
      (length,) = struct.unpack("Q", data[offset:offset + 8])
      events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
      offset += 12 + length + 4
  return events


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  """(config, workdir, console output) of a 6-step smoke run evaluated and sampled at step 3."""
  config = imglabel.get_config("smoke")
  config.data.data_dir = data_dir
  config.training.update(num_steps=6, log_every=2, save_every=6, sample_every=3, eval_every=3)
  config.sampling.update(num_samples=10, sampler_steps=2)
  config.eval.update(after_training=("label_accuracy",), during_training=("label_accuracy", "bound"),
                     during_training_examples=16, num_examples=32, batch_size=16, sampler_steps=2)
  workdir = str(tmp_path_factory.mktemp("run") / "wd")
  console = io.StringIO()
  with contextlib.redirect_stdout(console):
    train.train_and_evaluate(config, workdir)
  return config, workdir, console.getvalue()


def test_console_is_a_handful_of_readable_lines(run):
  _, workdir, out = run
  lines = out.strip().splitlines()
  assert len(lines) <= 11, out
  # One line as each evaluator after training starts and one as it ends (some take minutes).
  assert [re.sub(r"[0-9.]+ s$", "T s", l) for l in lines if l.startswith("Evaluator ")] == [
      "Evaluator label_accuracy (1/1) ...", "Evaluator label_accuracy done in T s"]
  # 6 steps at the smoke config's EMA decay: the EMA that is sampled is still mostly the start.
  assert [l for l in lines if l.startswith("Note: ")] == [
      "Note: training.ema_decay=0.9 over training.num_steps=6 leaves 53% of the starting parameters "
      "in the EMA that is sampled, evaluated and exported; a decay of at most 0.5 leaves under 5%."]
  assert f"Outputs in {workdir}" in lines[0] and "tensorboard --logdir=" in lines[0]
  progress = [l for l in lines if l.startswith("step ")]
  assert [l.split()[1] for l in progress] == ["2/6", "4/6", "6/6"]
  assert "ETA" in progress[0] and "bits_per_dim" not in out  # the noisy estimate is left to the dashboard


def test_metrics_jsonl_has_evaluations_during_training(run):
  config, workdir, _ = run
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  periodic = [r for r in rows if any(k.startswith("periodic_eval/") for k in r)]
  assert [r["step"] for r in periodic] == [3, 6]  # the curve ends at the last step
  assert periodic[0]["periodic_eval/label_accuracy_examples"] == 16
  assert np.isfinite(periodic[0]["periodic_eval/test_bound/image_bits_per_dim"])
  assert rows[-1]["eval/label_accuracy_examples"] == config.eval.num_examples
  assert all(np.isfinite(r["steps_per_s"]) for r in rows if "loss" in r)


def test_tensorboard_shows_loss_curves_evaluations_and_sample_grids(run):
  _, workdir, _ = run
  events = read_events(os.path.join(workdir, dashboard.SUBDIR))
  scalars, images = {}, {}
  for event in events:
    for value in event.summary.value:
      if value.HasField("image"):
        images.setdefault(value.tag, []).append((event.step, value.image))
      else:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert scalars["loss"] == [(r["step"], pytest.approx(r["loss"])) for r in rows if "loss" in r]
  assert [s for s, _ in scalars["bound/image_bits_per_dim"]] == [2, 4, 6]
  assert [s for s, _ in scalars["periodic_eval/label_accuracy"]] == [3, 6]
  assert [s for s, _ in scalars["eval/label_accuracy"]] == [6]
  assert sorted(images) == ["samples/class_conditional", "samples/joint"]
  for tag, series in images.items():
    assert [s for s, _ in series] == [3, 6], tag
    png = series[-1][1]
    assert png.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and png.height > 28


def test_exported_parameters_sample_the_same_images_as_the_checkpoint(run):
  config, workdir, _ = run
  path = export.export_ema_params(config, workdir)
  assert path == os.path.join(workdir, "export", "ema_params_step6.msgpack")
  experiment, step, state = restore.restore_latest(config, workdir)
  _, params = export.load_params(config, path)
  sample = jax.jit(experiment.sampler("ddim", 3).sample, static_argnums=(2,))
  rng = jax.random.PRNGKey(7)
  from_checkpoint = jax.device_get(sample(state.ema_params, rng, 8))
  from_export = jax.device_get(sample(params, rng, 8))
  for name in from_checkpoint:
    np.testing.assert_array_equal(from_export[name], from_checkpoint[name], err_msg=name)

  other = imglabel.get_config("smoke")
  other.model.base_channels = 8
  other.model.num_groups = 4
  with pytest.raises(ValueError, match=r"ema_params_step6.msgpack: the parameters do not fit the "
                                       r"model this config describes \(\d+ problems: \['backbone'\]"
                                       r"\['AttentionBlock_0'\]\['GroupNorm_0'\]\['bias'\]: shape "
                                       r"\(32,\), the model's \(16,\);"):
    export.load_params(other, path)

  # A truncated copy (an interrupted transfer) is named, not a msgpack traceback.
  truncated = os.path.join(os.path.dirname(path), "truncated.msgpack")
  with open(path, "rb") as f, open(truncated, "wb") as g:
    g.write(f.read()[:1000])
  with pytest.raises(ValueError, match=r"--params=.*truncated.msgpack: not a readable parameter "
                                       r"file .*export it again with --mode=export"):
    export.load_params(config, truncated)


def test_config_paths_fall_back_to_the_installed_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ here, as after a wheel install
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "mmdiff_jax_configs", raising=False)
  (tmp_path / "mmdiff_jax_configs").mkdir()
  (tmp_path / "mmdiff_jax_configs" / "__init__.py").write_text("")
  (tmp_path / "mmdiff_jax_configs" / "imglabel.py").write_text("def get_config(v=''): pass\n")
  installed = str(tmp_path / "mmdiff_jax_configs" / "imglabel.py")
  argv = ["main", "--config=configs/imglabel.py:smoke", "--workdir=x", "--config.seed=1"]
  assert installed_configs.with_installed_configs(argv) == [
      "main", f"--config={installed}:smoke", "--workdir=x", "--config.seed=1"]
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "imglabel.py").write_text("")  # a file here wins
  assert installed_configs.with_installed_configs(argv) == argv
  with pytest.raises(FileNotFoundError, match=r"no config 'imgfoo.py' .*\['imglabel.py'\]"):
    installed_configs.with_installed_configs(["main", "--config=configs/imgfoo.py"])


def test_sample_grids_read_back_as_the_images_they_show(tmp_path):
  from mmdiff_jax.sampling import grids
  images = np.random.default_rng(0).uniform(-1, 1, (13, 28, 28, 1))  # a partial last row
  path = grids.save_grid(str(tmp_path / "g.png"), images, captions=[str(i) for i in range(13)])
  back = grids.load_grid(path, image_size=(28, 28))
  np.testing.assert_allclose(back, grids.to_uint8(images) / 127.5 - 1.0, atol=1e-6)
  plain = grids.save_grid(str(tmp_path / "plain.png"), images[:10])
  assert grids.load_grid(plain, image_size=(28, 28), captioned=False).shape == (10, 28, 28, 1)
  with pytest.raises(ValueError, match=r"plain.png: a 600 x 60 PNG is not a grid of 10 columns"):
    grids.load_grid(plain, image_size=(28, 28))


def test_evaluate_command_prints_its_results_not_the_library_logs(run, data_dir):
  _, workdir, _ = run
  command = [sys.executable, "-m", "mmdiff_jax.evaluate", "--config=configs/imglabel.py:smoke",
             f"--config.data.data_dir={data_dir}", "--config.eval.num_examples=32",
             "--config.eval.batch_size=16", "--evaluators=label_accuracy",
             "--metrics_name=eval_from_the_command", f"--workdir={workdir}"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for extra, info_lines_expected in (([], False), (["--library_logs"], True)):
    done = subprocess.run(command + extra, cwd=root, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert '"eval/label_accuracy":' in done.stdout
    # absl's INFO lines ("I1205 12:00:00.000 ...": orbax writes them on every checkpoint it opens)
    assert bool(re.search(r"^I\d{4} \d\d:\d\d", out, re.M)) == info_lines_expected, out[-3000:]


@pytest.mark.parametrize("num_classes, expected", [
    (10, ["T-shirt/top", "Trouser"]),  # the dataset's labels: its class names
    (12, ["0", "1"])])  # another class count: not the dataset's classes, so their ids
def test_sample_grid_captions_name_classes_only_for_the_datasets_labels(
    tmp_path, monkeypatch, num_classes, expected):
  config = imglabel.get_config("smoke")
  config.modalities.label.update(num_classes=num_classes, encoder="categorical")
  config.sampling.update(num_samples=num_classes * 2, sampler_steps=2)
  experiment = build_experiment(config)
  batch = {k: jnp.zeros(v.shape, v.dtype)
           for k, v in state_lib.example_batch(experiment.model, 2).items()}
  params = nn.meta.unbox(experiment.model.init(
      jax.random.PRNGKey(0), batch, batch["image"], jnp.ones((2,), jnp.int32),
      method=MTDiffusion.initialize))["params"]
  captioned = {}

  def record_captions(path, images, captions=None, **_):
    captioned[os.path.basename(path)] = list(captions or [])
    return path

  monkeypatch.setattr(grids, "save_grid", record_captions)
  train.save_sample_grids(experiment, params, config, str(tmp_path), 1,
                          class_names=list(fashion_mnist.CLASS_NAMES))
  assert captioned["class_conditional_step1.png"][::2][:2] == expected
