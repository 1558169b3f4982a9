"""Your own data without code: small real image sets on disk (PIL), prepared with
`python -m mmdiff_jax.data.prepare`, then trained, sampled and evaluated through `python -m
mmdiff_jax.main`; bad inputs; resize / crop / flip; resume with augmentation on.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import imglabel
from mmdiff_jax.data import pipeline, prepare, sources
from mmdiff_jax.training import restore, train
from mmdiff_jax.training.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600
# Tiny runs: enough to go through training, sample grids, the export and an evaluator.
SMOKE = {"training.num_steps": 2, "training.save_every": 2, "training.log_every": 1,
         "sampling.sampler_steps": 2, "sampling.num_samples": 4, "eval.sampler_steps": 2,
         "eval.batch_size": 8, "eval.num_examples": 8, "eval.num_generated": 8,
         "eval.bound_batches": 1, "data.image_size": 8,
         # the smoke U-Net attends at 14x14, a size 8x8 images never reach
         "model.attention_resolutions": ()}


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)
  return path


def _images(rng, count, shape):
  return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def _run(args, env):
  result = subprocess.run([sys.executable, "-u", "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
  return result


def _prepare_cli(env, *flags):
  result = _run(["mmdiff_jax.data.prepare", *flags], env)
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


def _main(env, config, workdir, *flags, **overrides):
  result = _run(["mmdiff_jax.main", f"--config=configs/{config}", f"--workdir={workdir}", *flags]
                + [f"--config.{k}={v}" for k, v in {**SMOKE, **overrides}.items()], env)
  assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
  return result.stdout


def _final_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return json.loads(f.read().splitlines()[-1])


def _tree_listing(folder):
  return sorted((os.path.relpath(os.path.join(d, n), folder), os.path.getsize(os.path.join(d, n)))
                for d, _, names in os.walk(folder) for n in names if not n.endswith(".lock"))


@pytest.fixture(scope="module")
def env():
  """The subprocesses' environment (compilation cache shared through conftest)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  return env


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
  """The raw image sets: class sub-folders, an unlabelled flat folder per split, a manifest with
  masks of half their image's size, and a non-square set."""
  root = tmp_path_factory.mktemp("raw")
  rng = np.random.default_rng(0)
  for name in ("cat", "dog"):
    for i, image in enumerate(_images(rng, 8, (8, 8, 3))):
      _save(root / "classes" / name / f"{i}.png", image)
  for split, count in (("train", 8), ("test", 4)):
    for i, image in enumerate(_images(rng, count, (8, 8))):
      _save(root / "flat" / split / f"{i:02d}.png", image)
  rows = []
  for i, image in enumerate(_images(rng, 12, (16, 16, 3))):
    mask = rng.integers(0, 3, (8, 8)).astype(np.uint8)
    mask[0, :] = 255  # unlabelled pixels (the ignore label)
    _save(root / "manifest" / "img" / f"{i}.png", image)
    _save(root / "manifest" / "masks" / f"{i}.png", mask)
    rows.append({"image": f"img/{i}.png", "mask": f"masks/{i}.png", "label": "ab"[i % 2],
                 "split": "test" if i >= 8 else "train"})
  with open(root / "manifest" / "examples.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  for name in ("a", "b"):
    for i, image in enumerate(_images(rng, 8, (12, 20, 3))):
      _save(root / "wide" / name / f"{i}.png", image)
  return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, name, **overrides):
  config = imglabel.get_config("smoke")
  config.data.update(name=name, data_dir=data_dir, channels=3)
  config.update_from_flattened_dict({**SMOKE, "data.image_size": 8, **overrides})
  return config


def test_class_folders_prepare_train_sample_export(sets, data_dir, env, tmp_path):
  flags = [f"--from_folder={sets / 'classes'}", "--name=pets", f"--data_dir={data_dir}",
           "--holdout=0.25", "--seed=3"]
  assert "prepared" in _prepare_cli(env, *flags)
  source = sources.load_source({"name": "pets", "data_dir": data_dir}, "train")
  assert len(source) == 12 and source[0]["image"].shape == (8, 8, 3)
  assert sources.class_names({"name": "pets", "data_dir": data_dir}) == ["cat", "dog"]
  assert len(sources.load_source({"name": "pets", "data_dir": data_dir}, "test")) == 4
  before = _tree_listing(os.path.join(data_dir, "pets"))
  assert "nothing done" in _prepare_cli(env, *flags)  # the same inputs: a no-op
  assert _tree_listing(os.path.join(data_dir, "pets")) == before

  workdir = tmp_path / "wd"
  out = _main(env, "imglabel.py:smoke", workdir, **{
      "data.name": "pets", "data.data_dir": data_dir, "data.channels": 3,
      "modalities.label.num_classes": 2})
  assert "Done at step 2" in out
  assert 0 <= _final_metrics(workdir)["eval/label_accuracy"] <= 1
  assert os.path.isfile(workdir / "samples" / "class_conditional_step2.png")

  export_dir = tmp_path / "export"
  _main(env, "imglabel.py:smoke", workdir, "--mode=sample", "--num_samples=6",
        "--sample_labels=balanced", f"--sample_dir={export_dir}", **{
            "data.name": "pets", "data.data_dir": data_dir, "data.channels": 3,
            "modalities.label.num_classes": 2})
  with np.load(export_dir / "samples.npz") as npz:
    assert npz["arr_0"].shape == (6, 8, 8, 3) and npz["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(npz["labels"], [0, 1, 0, 1, 0, 1])
    first = npz["arr_0"][0]
  pngs = sorted(os.listdir(export_dir / "png"))
  assert pngs == [f"{i:06d}.png" for i in range(6)]
  np.testing.assert_array_equal(np.asarray(Image.open(export_dir / "png" / pngs[0])), first)

  # The same samples from the exported parameter file (--params), into the default folder, whose
  # name says the labels were given; a second, smaller export into the first folder leaves none of
  # the first's PNGs behind.
  data = {"data.name": "pets", "data.data_dir": data_dir, "data.channels": 3,
          "modalities.label.num_classes": 2}
  _main(env, "imglabel.py:smoke", workdir, "--mode=export", **data)
  params = workdir / "export" / "ema_params_step2.msgpack"
  _main(env, "imglabel.py:smoke", workdir, "--mode=sample", "--num_samples=6",
        "--sample_labels=balanced", f"--params={params}", **data)
  with np.load(workdir / "samples" / "export_step2_given_balanced" / "samples.npz") as npz:
    np.testing.assert_array_equal(npz["arr_0"][0], first)
  _main(env, "imglabel.py:smoke", workdir, "--mode=sample", "--num_samples=2",
        f"--sample_dir={export_dir}", **data)
  assert sorted(os.listdir(export_dir / "png")) == ["000000.png", "000001.png"]
  _main(env, "imglabel.py:smoke", workdir, "--mode=sample", "--num_samples=2", "--sample_format=npz",
        f"--sample_dir={export_dir}", **data)
  # not the PNGs of the export before; the manifest says the export is complete
  assert sorted(os.listdir(export_dir)) == ["mmdiff_jax_export.json", "samples.npz"]
  with open(export_dir / "mmdiff_jax_export.json") as f:
    assert json.load(f) == {"complete": True, "num_samples": 2, "formats": ["npz"]}
  # Joint samples follow sampling.categorical_feedback, as the grids do.
  feedback = {}
  for mode in ("expected", "argmax"):
    _main(env, "imglabel.py:smoke", workdir, "--mode=sample", "--num_samples=4",
          f"--sample_dir={tmp_path / mode}", "--sample_format=npz",
          **data, **{"sampling.categorical_feedback": mode})
    with np.load(tmp_path / mode / "samples.npz") as npz:
      feedback[mode] = npz["arr_0"]
  assert not np.array_equal(feedback["expected"], feedback["argmax"])


def test_unlabelled_flat_folder_trains_without_label(sets, data_dir, env, tmp_path):
  _prepare_cli(env, f"--from_folder={sets / 'flat'}", "--split_folders", "--name=flat_gray",
               f"--data_dir={data_dir}")
  source = sources.load_source({"name": "flat_gray", "data_dir": data_dir}, "test")
  assert len(source) == 4 and set(source[0]) == {"image"} and source[0]["image"].shape == (8, 8, 1)
  assert sources.class_names({"name": "flat_gray", "data_dir": data_dir}) is None

  workdir = tmp_path / "wd"
  _main(env, "baseline_uncond.py:smoke", workdir, **{
      "data.name": "flat_gray", "data.data_dir": data_dir, "eval.after_training": "('bound',)"})
  assert np.isfinite(_final_metrics(workdir)["eval/test_bound/image_bits_per_dim"])
  _main(env, "baseline_uncond.py:smoke", workdir, "--mode=sample", "--num_samples=3",
        "--sample_format=npz", **{"data.name": "flat_gray", "data.data_dir": data_dir})
  with np.load(workdir / "samples" / "export_step2" / "samples.npz") as npz:
    images = npz["arr_0"]
    assert images.shape == (3, 8, 8, 3) and "labels" not in npz  # grayscale replicated to RGB
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  assert not os.path.exists(workdir / "samples" / "export_step2" / "png")

  # Configs that need labels name the missing feature in one line (the label code is read from the
  # training split before the first step; the segmentation map is derived from the label).
  for config, message in (
      ("imglabel.py:smoke", "FATAL dataset 'flat_gray' (train): feature 'label' is missing "
                            "(modality 'label'); the batch has ['image']"),
      ("imgseg.py:smoke", "FATAL config.data.derived: 'garment_segmentation' makes the segmentation "
                          "map from the image and its class, and the dataset has no 'label' feature")):
    result = _run(["mmdiff_jax.main", f"--config=configs/{config}", f"--workdir={tmp_path / config}"]
                  + [f"--config.{k}={v}" for k, v in {**SMOKE, "data.name": "flat_gray",
                                                      "data.data_dir": data_dir}.items()], env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-3000:]


def test_manifest_masks_of_another_size_resized_together(sets, data_dir, env, tmp_path):
  _prepare_cli(env, f"--manifest={sets / 'manifest' / 'examples.csv'}", "--name=seg_set",
               f"--data_dir={data_dir}", "--size=8")
  source = sources.load_source({"name": "seg_set", "data_dir": data_dir}, "train")
  record = source[0]
  assert record["image"].shape == (8, 8, 3) and record["segmentation"].shape == (8, 8)
  # Masks keep their class ids (nearest), the image is area-resized from 16 x 16.
  np.testing.assert_array_equal(record["segmentation"],
                                np.asarray(Image.open(sets / "manifest" / "masks" / "0.png")))
  image = np.asarray(Image.open(sets / "manifest" / "img" / "0.png"), np.float64)
  area = image.reshape(8, 2, 8, 2, 3).mean(axis=(1, 3))
  assert np.abs(record["image"] - area).max() <= 1
  assert sources.class_names({"name": "seg_set", "data_dir": data_dir}) == ["a", "b"]

  workdir = tmp_path / "wd"
  _main(env, "imgseg.py:smoke", workdir, **{
      "data.name": "seg_set", "data.data_dir": data_dir, "data.derived": "()",
      "data.channels": 3, "data.ignore_label": 255, "modalities.segmentation.num_classes": 3,
      "eval.after_training": "('segmentation_miou',)"})
  assert 0 <= _final_metrics(workdir)["eval/segmentation_miou"] <= 1
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  # The void pixels (255) neither stop the data checks nor make the loss non-finite.
  assert all(np.isfinite(r["recovery/segmentation"]) and r["skipped"] == 0
             for r in rows if "recovery/segmentation" in r)


def test_non_square_set_resized_and_cropped(sets, data_dir, env, tmp_path):
  _prepare_cli(env, f"--from_folder={sets / 'wide'}", "--name=wide", f"--data_dir={data_dir}",
               "--holdout=0.25")
  assert sources.load_source({"name": "wide", "data_dir": data_dir}, "train")[0][
      "image"].shape == (12, 20, 3)
  evaluation = next(pipeline.make_iterator(
      _config(data_dir, "wide", **{"data.resize": "area"}).data, split="test", global_batch_size=4,
      seed=0, shuffle=False))
  assert evaluation["image"].shape == (4, 8, 8, 3)

  workdir = tmp_path / "wd"
  _main(env, "imglabel.py:smoke", workdir, **{
      "data.name": "wide", "data.data_dir": data_dir, "data.channels": 3,
      "data.resize": "bilinear", "data.crop": "random", "data.random_flip": True,
      "modalities.label.num_classes": 2, "eval.after_training": "('label_accuracy',)"})
  assert _final_metrics(workdir)["eval/label_accuracy_examples"] == 4


# ------------------------------------------------------------------------------- bad inputs


def _prepared_listing(data_dir):
  return _tree_listing(data_dir) if os.path.isdir(data_dir) else []


@pytest.fixture
def good(tmp_path):
  """A prepared dataset 'good' in its own data dir, to check that bad inputs leave it untouched."""
  rng = np.random.default_rng(1)
  for name in ("x", "y"):
    for i, image in enumerate(_images(rng, 2, (6, 6, 3))):
      _save(tmp_path / "good" / name / f"{i}.png", image)
  data_dir = str(tmp_path / "tfds")
  examples, classes = prepare.list_folder(str(tmp_path / "good"))
  prepare.prepare(examples, name="good", classes=classes, data_dir=data_dir)
  return tmp_path, data_dir


def _bad_case(tmp_path, kind):
  """(folder or manifest, kwargs of list_*, the file or key the error must name, its problem)."""
  rng = np.random.default_rng(2)
  base = tmp_path / kind
  if kind == "unreadable":
    _save(base / "x" / "0.png", _images(rng, 1, (6, 6, 3))[0])
    (base / "x" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return base, {}, str(base / "x" / "1.png"), "cannot read"
  if kind == "mixed_channels":
    _save(base / "x" / "0.png", _images(rng, 1, (6, 6, 3))[0])
    _save(base / "x" / "1.png", _images(rng, 1, (6, 6))[0])
    return base, {}, str(base / "x" / "1.png"), "1 channel.*has 3.*--channels"
  if kind == "mixed_sizes":
    _save(base / "x" / "0.png", _images(rng, 1, (6, 6, 3))[0])
    _save(base / "x" / "1.png", _images(rng, 1, (7, 6, 3))[0])
    return base, {}, str(base / "x" / "1.png"), "expected one size.*--size"
  if kind == "mask_size":
    _save(base / "0.png", _images(rng, 1, (6, 6, 3))[0])
    _save(base / "0_mask.png", np.zeros((6, 9), np.uint8))
    return base, {"mask_suffix": "_mask"}, str(base / "0_mask.png"), "9x6.*6x6.*same size"
  if kind == "missing_mask":
    _save(base / "0.png", _images(rng, 1, (6, 6, 3))[0])
    return base, {"mask_suffix": "_mask"}, str(base / "0_mask.png"), "does not exist"
  if kind == "label_outside":
    _save(base / "img" / "0.png", _images(rng, 1, (6, 6, 3))[0])
    (base / "m.json").write_text(json.dumps([{"image": "img/0.png", "label": "zebra"}]))
    return base / "m.json", {"classes": ["cat", "dog"]}, str(base / "m.json") + " row 1", \
        "'zebra' is not among the declared classes"
  if kind == "manifest_missing_file":
    _save(base / "img" / "0.png", _images(rng, 1, (6, 6, 3))[0])
    (base / "m.csv").write_text("image,label\nimg/0.png,0\nimg/gone.png,1\n")
    return base / "m.csv", {}, str(base / "m.csv") + " row 2", "image .*gone.png: no such file"
  if kind == "negative_label":
    _save(base / "img" / "0.png", _images(rng, 1, (6, 6, 3))[0])
    (base / "m.csv").write_text("image,label\nimg/0.png,0\nimg/0.png,-1\nimg/0.png,2\n")
    return base / "m.csv", {}, str(base / "m.csv"), "label '-1'; integer labels are class ids"
  if kind == "manifest_column":
    _save(base / "img" / "0.png", _images(rng, 1, (6, 6, 3))[0])
    (base / "m.csv").write_text("image,lable\nimg/0.png,1\n")
    return base / "m.csv", {}, str(base / "m.csv") + " row 1", "unknown columns \\['lable'\\]"
  if kind == "splits_without_split_folders":
    _save(base / "train" / "cat" / "0.png", _images(rng, 1, (6, 6, 3))[0])
    return base, {}, str(base / "train"), "class folder holds sub-folders \\(cat, ...\\).*pass --split_folders"
  raise ValueError(kind)


@pytest.mark.parametrize("kind", ["unreadable", "mixed_channels", "mixed_sizes", "mask_size",
                                  "missing_mask", "label_outside", "manifest_missing_file",
                                  "negative_label", "manifest_column",
                                  "splits_without_split_folders"])
def test_bad_inputs_name_the_file_and_leave_prepared_data_alone(good, kind):
  tmp_path, data_dir = good
  before = _prepared_listing(data_dir)
  source, kwargs, named, problem = _bad_case(tmp_path, kind)
  with pytest.raises(prepare.PrepareError, match=problem) as error:
    if str(source).endswith((".csv", ".json")):
      examples, classes = prepare.list_manifest(str(source), **kwargs)
    else:
      examples, classes = prepare.list_folder(str(source), **kwargs)
    prepare.prepare(examples, name="good", classes=classes, data_dir=data_dir, version="1.0.1")
  assert named in str(error.value)
  assert _prepared_listing(data_dir) == before  # nothing written, "good" untouched
  assert len(sources.load_source({"name": "good", "data_dir": data_dir}, "train")) == 4


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_name_tfds_already_has_is_refused(good, name):
  """config.data.name=mnist loads TFDS's own MNIST builder, never files prepared under that name."""
  tmp_path, data_dir = good
  examples, classes = prepare.list_folder(str(tmp_path / "good"))
  with pytest.raises(prepare.PrepareError, match=rf"--name='{name}': TFDS has a dataset of that "
                                                 rf"name.*e.g. '{name}_own'"):
    prepare.prepare(examples, name=name, classes=classes, data_dir=data_dir)
  assert not os.path.exists(os.path.join(data_dir, name))


def test_other_inputs_under_a_prepared_name_are_refused(good):
  tmp_path, data_dir = good
  before = _prepared_listing(data_dir)
  _save(tmp_path / "good" / "x" / "9.png", np.zeros((6, 6, 3), np.uint8))  # the folder changed
  examples, classes = prepare.list_folder(str(tmp_path / "good"))
  with pytest.raises(prepare.PrepareError, match="good.*1.0.0.*other inputs.*--version"):
    prepare.prepare(examples, name="good", classes=classes, data_dir=data_dir)
  assert _prepared_listing(data_dir) == before
  # A new version is written beside it; the pipeline reads the newest.
  prepare.prepare(examples, name="good", classes=classes, data_dir=data_dir, version="1.0.1")
  assert len(sources.load_source({"name": "good", "data_dir": data_dir}, "train")) == 5


def test_interrupted_preparation_leaves_nothing_to_read(good, monkeypatch):
  tmp_path, data_dir = good
  rng = np.random.default_rng(3)
  for i, image in enumerate(_images(rng, 3, (6, 6, 3))):
    _save(tmp_path / "other" / f"{i}.png", image)
  examples, _ = prepare.list_folder(str(tmp_path / "other"))
  calls = []

  def dies_on_the_third(example, options):
    calls.append(example)
    if len(calls) == 3 + 2:  # the check reads all three, then generation dies on its second
      raise KeyboardInterrupt
    return read_example(example, options)

  read_example = prepare.read_example
  monkeypatch.setattr(prepare, "read_example", dies_on_the_third)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(examples, name="other", data_dir=data_dir)
  assert not os.path.exists(os.path.join(data_dir, "other", "1.0.0"))
  with pytest.raises(sources.DatasetNotPreparedError, match="other"):
    sources.load_source({"name": "other", "data_dir": data_dir}, "train")
  monkeypatch.setattr(prepare, "read_example", read_example)
  # What a SIGKILL leaves (an exception lets TFDS remove its own): an unfinished version folder.
  leftover = os.path.join(data_dir, "other", "incomplete.killed_1.0.0")
  os.makedirs(leftover)
  open(os.path.join(leftover, "part-00000"), "w").close()
  _, written = prepare.prepare(examples, name="other", data_dir=data_dir)  # a rerun completes it
  assert written and len(sources.load_source({"name": "other", "data_dir": data_dir}, "train")) == 3
  assert not glob.glob(os.path.join(data_dir, "other", "incomplete.*"))


def test_numbered_class_folders_in_numeric_order(tmp_path, capsys):
  rng = np.random.default_rng(4)
  for name in ("10", "2", "0", "1"):
    _save(tmp_path / "numbered" / name / "a.png", _images(rng, 1, (6, 6, 3))[0])
  (tmp_path / "numbered" / "3").mkdir()
  examples, classes = prepare.list_folder(str(tmp_path / "numbered"))
  assert classes == ["0", "1", "2", "10"]
  assert f"class folder {tmp_path / 'numbered' / '3'} holds no images" in capsys.readouterr().err
  assert {os.path.basename(os.path.dirname(e.image)): e.label for e in examples} == {
      "0": 0, "1": 1, "2": 2, "10": 3}


def test_cli_error_names_the_flag_and_exits_nonzero(tmp_path, env):
  result = _run(["mmdiff_jax.data.prepare", f"--from_folder={tmp_path / 'nope'}", "--name=x",
                 f"--data_dir={tmp_path / 'tfds'}"], env)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [
      f"FATAL --from_folder={tmp_path / 'nope'}: not a directory"], result.stderr
  assert not os.path.exists(tmp_path / "tfds")


# ------------------------------------------------------------------------------- pipeline geometry


def test_masks_of_shape_hw1_and_hw_give_the_same_batches():
  masks = np.arange(2 * 4 * 6).reshape(2, 4, 6) % 5
  np.testing.assert_array_equal(pipeline._as_masks(masks[..., None]), masks)
  with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 1\)"):
    pipeline._as_masks(np.zeros((2, 4, 6, 3)))


def test_flip_and_crop_move_image_and_mask_together():
  image = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10, 1)
  mask = image[..., 0].astype(np.int32) % 7
  geometry = pipeline.Geometry(image_size=4, crop="random", random_flip=True)
  seen = set()
  for seed in range(20):
    out_image, out_mask = pipeline.transform_example(image, mask, geometry=geometry,
                                                     rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(out_image[..., 0].astype(np.int32) % 7, out_mask)
    seen.add(out_image.tobytes())
  assert len(seen) > 4  # crops and flips differ
  centre, _ = pipeline.transform_example(image, mask, geometry=pipeline.Geometry(4), rng=None)
  np.testing.assert_array_equal(centre[..., 0], image[1:5, 3:7, 0])
  # Bilinear / area: the shorter side to the size, masks nearest at the image's scale.
  resized, resized_mask = pipeline.transform_example(
      image, mask[::2, ::2], geometry=pipeline.Geometry(3, resize="area"), rng=None)
  assert resized.shape == (3, 3, 1) and resized_mask.shape == (3, 3)


def test_random_geometry_pads_images_stored_4_px_smaller_like_the_fixed_one():
  """Stored S - 4 with image_size S: 2 px of background on each side, with or without a random
  crop or flip (both take the per-example path), the mask padded with class 0."""
  image = np.arange(1, 1 + 6 * 6, dtype=np.uint8).reshape(6, 6, 1)
  mask = (image[..., 0] % 3 + 1).astype(np.int32)
  fixed = pipeline.transform_example(image, mask, geometry=pipeline.Geometry(10), rng=None)
  np.testing.assert_array_equal(fixed[0][2:8, 2:8], image)
  for geometry in [pipeline.Geometry(10, crop="random"), pipeline.Geometry(10, random_flip=True)]:
    flips = set()
    for seed in range(8):
      out_image, out_mask = pipeline.transform_example(image, mask, geometry=geometry,
                                                       rng=np.random.default_rng(seed))
      assert out_image.shape == (10, 10, 1) and out_mask.shape == (10, 10)
      flipped = not np.array_equal(out_image, fixed[0])
      flips.add(flipped)
      expected = fixed[0][:, ::-1] if flipped else fixed[0]
      np.testing.assert_array_equal(out_image, expected)
      np.testing.assert_array_equal(out_mask, fixed[1][:, ::-1] if flipped else fixed[1])
    assert out_mask[0].sum() == 0 and out_image[0].sum() == 0  # the border is background
    assert flips == ({False, True} if geometry.random_flip else {False})


def test_bad_geometry_names_the_key():
  with pytest.raises(ValueError, match="data.resize='cubic'"):
    pipeline.geometry_from_config({"resize": "cubic"}, (8, 8), training=True)
  with pytest.raises(ValueError, match="data.image_size=10.*8x12.*data.resize='none'"):
    pipeline.geometry_from_config({"image_size": 10}, (8, 12), training=True)
  evaluation = pipeline.geometry_from_config({"crop": "random", "random_flip": True, "image_size": 8},
                                             (8, 12), training=False)
  assert evaluation.crop == "center" and not evaluation.random_flip


def test_augmented_iterator_restores_exactly_and_ignores_process_count(sets, data_dir, env):
  _prepare_cli(env, f"--from_folder={sets / 'wide'}", "--name=wide", f"--data_dir={data_dir}",
               "--holdout=0.25")
  config = _config(data_dir, "wide", **{"data.resize": "area", "data.crop": "random",
                                        "data.random_flip": True}).data
  kw = dict(split="train", global_batch_size=4, seed=5, training=True, read_threads=0)
  it = pipeline.make_iterator(config, **kw)
  [next(it) for _ in range(2)]
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  restored = pipeline.make_iterator(config, **kw)
  restored.set_state(json.loads(json.dumps(state)))
  for a, b in zip(expected, [next(restored) for _ in range(3)]):
    np.testing.assert_array_equal(a["image"], b["image"])
  halves = [pipeline.make_iterator(config, process_index=i, process_count=2, **kw) for i in (0, 1)]
  for it_half in halves:
    it_half.set_state(json.loads(json.dumps(state)))
  np.testing.assert_array_equal(np.concatenate([next(h)["image"] for h in halves]),
                                expected[0]["image"])
  plain = next(pipeline.make_iterator(_config(data_dir, "wide", **{"data.resize": "area"}).data,
                                      **kw))
  assert not np.array_equal(plain["image"], next(pipeline.make_iterator(config, **kw))["image"])
  with pytest.raises(ValueError, match="data.resize / data.crop / data.random_flip: saved"):
    pipeline.make_iterator(_config(data_dir, "wide", **{"data.resize": "area"}).data,
                           **kw).set_state(state)


def test_training_resume_is_bit_exact_with_augmentation(sets, data_dir, env, tmp_path):
  _prepare_cli(env, f"--from_folder={sets / 'wide'}", "--name=wide", f"--data_dir={data_dir}",
               "--holdout=0.25")
  import jax  # pylint: disable=import-outside-toplevel
  augmented = {"data.resize": "bilinear", "data.crop": "random", "data.random_flip": True,
               "eval.after_training": (), "sampling.num_samples": 0,
               "modalities.label.num_classes": 2}
  straight = _config(data_dir, "wide", **augmented, **{"training.num_steps": 4})
  train.train_and_evaluate(straight, str(tmp_path / "straight"))
  train.train_and_evaluate(_config(data_dir, "wide", **augmented, **{"training.num_steps": 2}),
                           str(tmp_path / "resumed"))
  train.train_and_evaluate(straight, str(tmp_path / "resumed"))
  restored = []
  for name in ("straight", "resumed"):
    experiment, step, state = restore.restore_latest(straight, str(tmp_path / name))
    restored.append(state)
    assert step == 4
  jax.tree.map(np.testing.assert_array_equal, restored[0], restored[1])  # params, EMA, optimizer
  checkpointer = Checkpointer(str(tmp_path / "resumed" / "checkpoints"), max_to_keep=10)
  assert checkpointer.all_steps() == [2, 4]
  del experiment


# ------------------------------------------------------------------------------- ignore label, export


def test_ignore_label_is_left_out_of_the_segmentation_loss():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mmdiff_jax.models.modalities import specs_from_config  # pylint: disable=import-outside-toplevel
  from mmdiff_jax.training.losses import recovery_nll  # pylint: disable=import-outside-toplevel
  spec = specs_from_config({"image": {"kind": "image"}, "seg": {"kind": "segmentation",
                                                               "num_classes": 3}})[1]
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  target = rng.integers(0, 3, (2, 4, 4)).astype(np.int32)
  target[:, 0] = 255
  loss = recovery_nll(spec, jnp.asarray(logits), jnp.asarray(target), ignore_label=255)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_p[:, 1:], target[:, 1:, :, None], axis=-1)
  np.testing.assert_allclose(loss, -picked.reshape(2, -1).mean(1), rtol=1e-5)
  logits[:, 0] = 100.0  # what the head says on ignored pixels does not count
  np.testing.assert_allclose(
      recovery_nll(spec, jnp.asarray(logits), jnp.asarray(target), ignore_label=255), loss)


def test_unlabelled_pixels_encode_as_zero_in_training_and_in_an_observed_map():
  """Training puts no code at an unlabelled pixel; a map given to the sampler is encoded the same
  way (before, its ignore value was looked up as a class id beyond the encoder's table)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from configs import imgseg  # pylint: disable=import-outside-toplevel
  from mmdiff_jax.experiment import build_experiment  # pylint: disable=import-outside-toplevel
  from mmdiff_jax.training import state as state_lib  # pylint: disable=import-outside-toplevel
  config = imgseg.get_config("smoke")
  config.data.ignore_label = 255
  experiment = build_experiment(config)
  model = experiment.model
  batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in state_lib.example_batch(model, 2).items()}
  params = model.init(jax.random.PRNGKey(0), batch, batch["image"], jnp.ones((2,), jnp.int32),
                      method="initialize")["params"]
  seg = next(s for s in model.aggregated if s.kind == "segmentation")
  rng = np.random.default_rng(0)
  maps = rng.integers(0, seg.num_classes, batch[seg.feature].shape).astype(np.int32)
  maps[:, :5] = 255
  batch = dict(batch, **{seg.feature: jnp.asarray(maps)})
  index = model.aggregated.index(seg)
  trained = experiment.objective()._encode({"params": params}, batch, 2)[index]
  sampler = experiment.sampler("ddim", 2)
  _, observed, _ = sampler.prepare_observed(params, {seg.name: jnp.asarray(maps)})
  np.testing.assert_array_equal(observed[index], trained)
  assert np.all(np.asarray(trained)[:, :5] == 0) and np.any(np.asarray(trained)[:, 5:] != 0)
  labelled = np.where(maps == 255, 0, maps)  # elsewhere the encoding is the map's
  np.testing.assert_array_equal(
      np.asarray(trained)[:, 5:],
      np.asarray(model.apply({"params": params}, seg.name, jnp.asarray(labelled),
                             method=type(model).encode_value))[:, 5:])


def test_ignore_label_must_be_outside_the_classes():
  from mmdiff_jax.config_validation import validate_config  # pylint: disable=import-outside-toplevel
  from configs import imgseg  # pylint: disable=import-outside-toplevel
  config = imgseg.get_config("smoke")
  config.data.ignore_label = 3
  with pytest.raises(ValueError, match="data.ignore_label: got 3; expected .*outside 0..num_classes"):
    validate_config(config)
  config.data.ignore_label = 255
  validate_config(config)
  config = imglabel.get_config("smoke")
  config.data.ignore_label = 255
  with pytest.raises(ValueError, match="data.ignore_label.*with a segmentation modality"):
    validate_config(config)


def test_sample_labels_spec():
  from mmdiff_jax.sampling import sample_export as export  # pylint: disable=import-outside-toplevel
  assert export.sample_labels("", num_samples=4, num_classes=3) is None
  np.testing.assert_array_equal(export.sample_labels("balanced", num_samples=5, num_classes=3),
                                [0, 1, 2, 0, 1])
  np.testing.assert_array_equal(export.sample_labels("2", num_samples=3, num_classes=3), [2, 2, 2])
  for bad in ("3", "cat", "-1"):
    with pytest.raises(ValueError, match=f"--sample_labels={bad!r}: expected 'balanced' or class"):
      export.sample_labels(bad, num_samples=3, num_classes=3)


def test_a_sample_export_replaces_only_what_an_export_wrote(tmp_path):
  """--sample_dir may name a folder of the user's: its png/ or samples.npz are never removed unless an
  export wrote them; the manifest says whether the folder holds a finished export."""
  from mmdiff_jax.sampling import sample_export as export  # pylint: disable=import-outside-toplevel
  samples = {"images": np.zeros((2, 4, 4, 1), np.uint8), "labels": np.array([0, 1], np.int32)}
  theirs = tmp_path / "fid_refs"
  (theirs / "png").mkdir(parents=True)
  (theirs / "png" / "reference.png").write_bytes(b"theirs")
  with pytest.raises(ValueError, match=r"--sample_dir=.*fid_refs: it holds \['png'\], which no "
                                       r"export wrote \(there is no mmdiff_jax_export.json\)"):
    export.write(samples, str(theirs), ("npz",))
  assert (theirs / "png" / "reference.png").read_bytes() == b"theirs"
  assert sorted(p.name for p in theirs.iterdir()) == ["png"]
  ours = tmp_path / "export"
  export.write(samples, str(ours), ("npz", "png"))
  manifest = json.loads((ours / export.MANIFEST).read_text())
  assert manifest == {"complete": True, "num_samples": 2, "formats": ["npz", "png"]}
  export.write(samples, str(ours), ("npz",))  # a second export replaces the first, png/ included
  assert sorted(p.name for p in ours.iterdir()) == [export.MANIFEST, "samples.npz"]
  # An export written before the manifest existed is recognised by its layout, and replaced.
  (ours / export.MANIFEST).unlink()
  export.write(samples, str(ours), ("png",))
  assert sorted(p.name for p in ours.iterdir()) == [export.MANIFEST, "png"]


def test_a_resume_on_a_newer_prepared_version_is_refused_naming_the_saved_one(good):
  tmp_path, data_dir = good
  config = {"name": "good", "data_dir": data_dir, "image_size": 6}
  kw = dict(split="train", global_batch_size=2, seed=0, training=True, read_threads=0)
  it = pipeline.make_iterator(config, **kw)
  next(it)
  state = json.loads(json.dumps(it.get_state()))
  assert state["settings"]["dataset_version"] == "1.0.0"
  _save(tmp_path / "good" / "x" / "9.png", np.zeros((6, 6, 3), np.uint8))  # the folder changed
  examples, classes = prepare.list_folder(str(tmp_path / "good"))
  prepare.prepare(examples, name="good", classes=classes, data_dir=data_dir, version="1.0.1")
  newer = pipeline.make_iterator(config, **kw)  # the newest version, by default
  with pytest.raises(ValueError, match=r"dataset_version: saved '1.0.0', now '1.0.1'\).*name the saved "
                                       r"one, --config.data.name=good:1.0.0"):
    newer.set_state(state)
  older = pipeline.make_iterator(dict(config, name="good:1.0.0"), **kw)
  older.set_state(state)
  expected = next(it)
  np.testing.assert_array_equal(next(older)["image"], expected["image"])
  # A state saved before the version was recorded still resumes.
  del state["settings"]["dataset_version"]
  pipeline.make_iterator(dict(config, name="good:1.0.0"), **kw).set_state(state)
