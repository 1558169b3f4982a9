"""Tests for mmdiff_jax.data: offline Fashion-MNIST builder and grain pipeline.

Uses the real raw files of Debian's `dataset-fashion-mnist` package. The
dataset is prepared once per module into a temporary data_dir, by two
processes racing each other (which also tests that preparation is safe under
concurrency).
"""

import gzip
import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

import mmdiff_jax
from mmdiff_jax.data import fashion_mnist as fm
from mmdiff_jax.data import images as images_lib
from mmdiff_jax.data import derived, pipeline, sources

RAW_DIR = fm.DEFAULT_RAW_DIR
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mmdiff_jax.__file__)))

_PREPARE_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from mmdiff_jax.data import fashion_mnist as fm
    from mmdiff_jax.data import pipeline, sources
    data_dir, barrier_dir, me = sys.argv[1], sys.argv[2], sys.argv[3]
    calls = []
    original = fm.FashionMnistOffline.download_and_prepare
    def counted(self, **kwargs):
      calls.append(1)
      return original(self, **kwargs)
    fm.FashionMnistOffline.download_and_prepare = counted
    # Barrier: start preparing only when both processes are ready.
    open(os.path.join(barrier_dir, me), "w").close()
    deadline = time.time() + 60
    while len(os.listdir(barrier_dir)) < 2 and time.time() < deadline:
      time.sleep(0.01)
    cfg = dict(name="fashion_mnist_offline", data_dir=data_dir, raw_dir=None)
    result = dict(train=sources.num_examples(cfg, "train"),
                  test=sources.num_examples(cfg, "test"))
    result["calls"] = len(calls)  # After the calls above.
    print("RESULT " + json.dumps(result))
""")


def _read_raw(split):
  """Independent IDX decoding (not using the library's reader)."""
  images_name, labels_name = fm.RAW_FILES[split]
  with gzip.open(os.path.join(RAW_DIR, images_name), "rb") as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  with gzip.open(os.path.join(RAW_DIR, labels_name), "rb") as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  return images, labels


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Prepares the dataset once; two processes race to do it."""
  data_dir = tmp_path_factory.mktemp("tfds")
  barrier = tmp_path_factory.mktemp("barrier")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
  procs = [
      subprocess.Popen(
          [sys.executable, "-c", _PREPARE_SCRIPT, str(data_dir), str(barrier),
           f"p{i}"],
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
      for i in range(2)
  ]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"prepare process failed:\n{err[-3000:]}"
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert lines, f"no result from prepare process:\n{out}\n{err[-3000:]}"
    results.append({**json.loads(lines[-1][len("RESULT "):]), "stdout": out, "stderr": err})
  return {"data_dir": str(data_dir), "results": results}


def _config(prepared, **overrides):
  cfg = ml_collections.ConfigDict(dict(
      name="fashion_mnist_offline", data_dir=prepared["data_dir"],
      raw_dir=RAW_DIR, image_key="image", label_key="label", image_size=28))
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="module")
def raw_test():
  return _read_raw("test")


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --------------------------------------------------------------------------
# Preparation and source.


def test_concurrent_prepare_runs_once(prepared):
  results = prepared["results"]
  # Exactly one of the two racing processes prepared; both could read.
  assert sum(r["calls"] for r in results) == 1, results
  # The preparing process says so in one line; TFDS's banner and progress bars are held back.
  said = [l for r in results for l in r["stdout"].splitlines() if l.startswith("Preparing ")]
  assert len(said) == 1 and "fashion_mnist_offline" in said[0], said
  for r in results:
    assert "Downloading and preparing" not in r["stdout"] + r["stderr"]
    assert "Generating train examples" not in r["stdout"] + r["stderr"]
  for r in results:
    assert r["train"] == 60000 and r["test"] == 10000, r
  base = os.path.join(prepared["data_dir"], "fashion_mnist_offline")
  assert os.listdir(base) == ["1.0.0"]  # No leftover incomplete.* dirs.
  files = os.listdir(os.path.join(base, "1.0.0"))
  assert any(".array_record" in f for f in files), files


def test_num_examples_and_class_names(prepared):
  cfg = _config(prepared)
  assert sources.num_examples(cfg, "train") == 60000
  assert sources.num_examples(cfg, "test") == 10000
  assert sources.class_names(cfg) == list(fm.CLASS_NAMES)
  assert len(fm.CLASS_NAMES) == 10 and fm.CLASS_NAMES[9] == "Ankle boot"


def test_source_record_equals_raw_bytes(prepared, raw_test):
  raw_images, raw_labels = raw_test
  src = sources.load_source(_config(prepared), "test")
  for i in (0, 1, 4321, 9999):
    ex = src[i]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (28, 28, 1)
    np.testing.assert_array_equal(ex["image"][..., 0], raw_images[i])
    assert int(ex["label"]) == int(raw_labels[i])
  # First image of both files is an ankle boot (class 9).
  assert int(src[0]["label"]) == 9


def test_train_split_full_pass_matches_raw(prepared):
  """Whole train split, in order, through the pipeline vs the raw files."""
  raw_images, raw_labels = _read_raw("train")
  it = pipeline.make_iterator(
      _config(prepared), split="train", global_batch_size=2000, seed=0,
      shuffle=False, num_epochs=1, with_index=True)
  batches = list(it)
  assert len(batches) == it.num_batches == 30
  labels = np.concatenate([b["label"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(index, np.arange(60000))
  assert labels.dtype == np.int32 and labels.min() == 0 and labels.max() == 9
  np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                np.full(10, 6000))
  np.testing.assert_array_equal(labels, raw_labels.astype(np.int32))
  np.testing.assert_allclose(images[..., 0],
                             raw_images.astype(np.float32) / 127.5 - 1.0,
                             atol=1e-6)


def test_generic_tfds_name_reads_prepared_dir(prepared):
  # "name:version" goes through tfds.builder(...) rather than our preparer.
  src = sources.load_source(_config(prepared, name="fashion_mnist_offline:1.0.0"),
                             "test")
  assert len(src) == 10000
  ours = sources.load_source(_config(prepared), "test")
  np.testing.assert_array_equal(src[123]["image"], ours[123]["image"])


def test_unprepared_tfds_dataset_error(tmp_path):
  cfg = ml_collections.ConfigDict(dict(name="mnist", data_dir=str(tmp_path)))
  with pytest.raises(sources.DatasetNotPreparedError) as e:
    sources.load_source(cfg, "train")
  msg = str(e.value)
  assert "'mnist'" in msg and str(tmp_path) in msg
  assert "tfds build mnist" in msg and "array_record" in msg
  assert "prepared there: none" in msg and "python3 -m mmdiff_jax.data.prepare --help" in msg
  assert os.listdir(tmp_path) == []  # Nothing downloaded or created.
  cfg.name = "no_such_dataset_abc"
  with pytest.raises(sources.DatasetNotPreparedError, match="no_such_dataset_abc"):
    sources.load_source(cfg, "train")


def test_a_mistyped_dataset_name_is_shown_what_is_prepared(prepared):
  with pytest.raises(sources.DatasetNotPreparedError,
                     match=r"'fashion_mnist_offlin'.*prepared there: \['fashion_mnist_offline'\]"):
    sources.load_source(_config(prepared, name="fashion_mnist_offlin"), "train")


def test_choose_fashion_mnist(prepared, tmp_path):
  # Prepared here, or raw files installed: our offline builder; neither: TFDS's own (downloaded only
  # when allowed; here it is not, and the error names the dataset and data dir).
  assert sources.choose_fashion_mnist(prepared["data_dir"], "/nonexistent/raw") == "fashion_mnist_offline"
  assert sources.choose_fashion_mnist(str(tmp_path / "empty"), fm.DEFAULT_RAW_DIR) == "fashion_mnist_offline"
  with pytest.raises(sources.DatasetNotPreparedError, match=r"'fashion_mnist'.*download=False"):
    sources.choose_fashion_mnist(str(tmp_path / "empty"), "/nonexistent/raw", download=False)


def test_data_dir_none_uses_tfds_data_dir_env(prepared, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", prepared["data_dir"])
  # A missing raw_dir proves the already prepared data was found (no re-prep).
  cfg = _config(prepared, data_dir=None, raw_dir="/nonexistent/raw")
  assert sources.num_examples(cfg, "test") == 10000


# --------------------------------------------------------------------------
# Errors from raw files.


@pytest.mark.parametrize("exists", [False, True])
def test_missing_raw_dir_error(tmp_path, exists):
  raw_dir = tmp_path / "raw"
  if exists:
    raw_dir.mkdir()
  cfg = ml_collections.ConfigDict(dict(
      name="fashion_mnist_offline", data_dir=str(tmp_path / "tfds"),
      raw_dir=str(raw_dir)))
  with pytest.raises(FileNotFoundError) as e:
    sources.load_source(cfg, "train")
  assert isinstance(e.value, fm.RawDataNotFoundError)
  msg = str(e.value)
  assert str(raw_dir) in msg
  assert "apt-get install dataset-fashion-mnist" in msg
  assert "data.raw_dir" in msg
  if exists:
    assert str(raw_dir / "train-images-idx3-ubyte.gz") in msg
  assert not (tmp_path / "tfds").exists()


def _write_idx(path, magic, dims, payload):
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
  with gzip.open(path, "wb") as f:
    f.write(header + payload)


def test_idx_header_validation(tmp_path):
  good = tmp_path / "good.gz"
  _write_idx(good, 0x803, (2, 28, 28), bytes(range(256)) * 6 + bytes(32))
  arr = fm.read_idx(str(good), ndim=3, expected_count=2,
                    expected_item_shape=(28, 28))
  assert arr.shape == (2, 28, 28) and arr[0, 0, 5] == 5

  bad_magic = tmp_path / "bad_magic.gz"
  _write_idx(bad_magic, 0x801, (2, 28, 28), bytes(2 * 784))
  with pytest.raises(fm.IdxFormatError, match="bad_magic.gz.*magic"):
    fm.read_idx(str(bad_magic), ndim=3)
  with pytest.raises(fm.IdxFormatError, match="good.gz.*2 items, expected 60000"):
    fm.read_idx(str(good), ndim=3, expected_count=60000)
  with pytest.raises(fm.IdxFormatError, match="good.gz.*item shape"):
    fm.read_idx(str(good), ndim=3, expected_item_shape=(32, 32))
  truncated = tmp_path / "truncated.gz"
  _write_idx(truncated, 0x803, (2, 28, 28), bytes(784))
  with pytest.raises(fm.IdxFormatError, match="truncated.gz.*data bytes"):
    fm.read_idx(str(truncated), ndim=3)

  # Through the split loader: any count is read (a subset of the release, say) while images and
  # labels agree; labels for another number of images name the labels file and both counts.
  raw = tmp_path / "raw"
  raw.mkdir()
  _write_idx(raw / "t10k-images-idx3-ubyte.gz", 0x803, (2, 28, 28), bytes(2 * 784))
  _write_idx(raw / "t10k-labels-idx1-ubyte.gz", 0x801, (2,), bytes([3, 9]))
  images, labels = fm.load_raw_split(str(raw), "test")
  assert images.shape == (2, 28, 28, 1) and labels.tolist() == [3, 9]
  _write_idx(raw / "t10k-labels-idx1-ubyte.gz", 0x801, (3,), bytes(3))
  with pytest.raises(fm.IdxFormatError, match="t10k-labels-idx1-ubyte.gz holds 3 items, expected 2"):
    fm.load_raw_split(str(raw), "test")


# --------------------------------------------------------------------------
# Iterator: shapes, shuffling, sharding, state.


def test_batch_shapes_dtypes_ranges(prepared):
  it = pipeline.make_iterator(_config(prepared), split="train",
                              global_batch_size=128, seed=0)
  batch = next(it)
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (128, 28, 28, 1)
  assert batch["image"].dtype == np.float32
  assert batch["label"].shape == (128,) and batch["label"].dtype == np.int32
  assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
  assert np.all((batch["label"] >= 0) & (batch["label"] < 10))


def test_preprocess_maps_uint8_to_unit_range():
  x = np.array([0, 255, 51], np.uint8).reshape(1, 1, 3, 1).repeat(3, axis=1)
  with pytest.raises(ValueError):
    images_lib.preprocess_images(x, image_size=3 + 1)
  y = images_lib.preprocess_images(x, image_size=7)
  np.testing.assert_allclose(y[0, 2, 2:5, 0], [-1.0, 1.0, -0.6], atol=1e-6)
  assert np.all(y[:, :2] == -1) and np.all(y[:, -2:] == -1)


def test_image_size_32_pads_with_background(prepared):
  kw = dict(split="test", global_batch_size=32, seed=7)
  b28 = next(pipeline.make_iterator(_config(prepared, image_size=28), **kw))
  b32 = next(pipeline.make_iterator(_config(prepared, image_size=32), **kw))
  assert b32["image"].shape == (32, 32, 32, 1) and b32["image"].dtype == np.float32
  np.testing.assert_array_equal(b32["image"][:, 2:30, 2:30], b28["image"])
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert np.all(b32["image"][:, border] == -1.0)
  np.testing.assert_array_equal(b32["label"], b28["label"])
  for bad in (30, 64):
    with pytest.raises(ValueError, match="image_size"):
      pipeline.make_iterator(_config(prepared, image_size=bad), **kw)


def test_shuffle_deterministic_and_seed_dependent(prepared):
  cfg = _config(prepared)
  kw = dict(split="test", global_batch_size=64, with_index=True)
  a = _take(pipeline.make_iterator(cfg, seed=1, **kw), 3)
  b = _take(pipeline.make_iterator(cfg, seed=1, read_threads=0, **kw), 3)
  c = _take(pipeline.make_iterator(cfg, seed=2, **kw), 3)
  d = _take(pipeline.make_iterator(cfg, seed=1, shuffle=False, **kw), 3)
  _assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["index"], c[0]["index"])
  np.testing.assert_array_equal(d[0]["index"], np.arange(64))
  assert not np.array_equal(a[0]["index"], d[0]["index"])


def test_each_epoch_is_a_new_permutation(prepared):
  it = pipeline.make_iterator(
      _config(prepared), split="test", global_batch_size=2500, seed=5,
      num_epochs=2, with_index=True)
  batches = list(it)
  assert len(batches) == it.num_batches == 8
  epoch1 = np.concatenate([b["index"] for b in batches[:4]])
  epoch2 = np.concatenate([b["index"] for b in batches[4:]])
  np.testing.assert_array_equal(np.sort(epoch1), np.arange(10000))
  np.testing.assert_array_equal(np.sort(epoch2), np.arange(10000))
  assert not np.array_equal(epoch1, epoch2)


def test_drop_remainder(prepared):
  kw = dict(split="test", global_batch_size=3000, seed=0, num_epochs=1,
            with_index=True)
  cfg = _config(prepared)
  dropped = list(pipeline.make_iterator(cfg, **kw))
  assert [len(b["label"]) for b in dropped] == [3000] * 3
  kept = list(pipeline.make_iterator(cfg, drop_remainder=False, **kw))
  assert [len(b["label"]) for b in kept] == [3000] * 3 + [1000]
  np.testing.assert_array_equal(
      np.sort(np.concatenate([b["index"] for b in kept])), np.arange(10000))
  with pytest.raises(ValueError, match="one global batch"):
    pipeline.make_iterator(cfg, split="test", global_batch_size=20000, seed=0,
                           num_epochs=1)


def test_process_shards_disjoint_and_cover_global_batch(prepared):
  cfg = _config(prepared)
  kw = dict(split="train", global_batch_size=64, seed=11, with_index=True)
  full = _take(pipeline.make_iterator(cfg, **kw), 4)
  shards = [
      _take(pipeline.make_iterator(cfg, process_index=i, process_count=2, **kw), 4)
      for i in range(2)
  ]
  for step in range(4):
    s0, s1 = shards[0][step], shards[1][step]
    assert s0["image"].shape == (32, 28, 28, 1) and s1["label"].shape == (32,)
    assert not set(s0["index"]) & set(s1["index"])
    for key in ("index", "image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([s0[key], s1[key]]), full[step][key], err_msg=key)
  with pytest.raises(ValueError, match="divisible"):
    pipeline.make_iterator(cfg, split="train", global_batch_size=64, seed=0,
                           process_index=0, process_count=3)
  with pytest.raises(ValueError, match="process_index"):
    pipeline.make_iterator(cfg, split="train", global_batch_size=64, seed=0,
                           process_index=2, process_count=2)


def test_derived_features_depend_on_the_stream_position_only(prepared):
  """Random masks (and the augmentation drawing from them) are the same for an example whether the
  global batch is read by one process or split over two, and whatever the batch size."""
  cfg = _config(prepared, derived=("random_square_mask", "masked_image_augmentation"))
  kw = dict(split="train", seed=5, with_index=True, training=True)
  full = _take(pipeline.make_iterator(cfg, global_batch_size=32, **kw), 2)
  shards = [_take(pipeline.make_iterator(cfg, global_batch_size=32, process_index=i,
                                         process_count=2, **kw), 2) for i in range(2)]
  for step in range(2):
    for key in ("index", "mask", "masked_image", "image"):
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][key], shards[1][step][key]]), full[step][key],
          err_msg=f"step {step}: {key}")
  (double,) = _take(pipeline.make_iterator(cfg, global_batch_size=64, **kw), 1)
  for key in ("index", "mask", "image"):
    np.testing.assert_array_equal(double[key], np.concatenate([b[key] for b in full]), err_msg=key)
  replaced = np.all(double["image"] == double["masked_image"], axis=(1, 2, 3))
  assert 0 < replaced.sum() < len(replaced)  # some examples replaced by their masked copy, not all


@pytest.mark.parametrize("read_threads", [0, 2])
def test_state_resume_gives_identical_batches(prepared, read_threads):
  cfg = _config(prepared, image_size=32)
  kw = dict(split="train", global_batch_size=48, seed=3, with_index=True,
            read_threads=read_threads)
  it = pipeline.make_iterator(cfg, **kw)
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # JSON round trip.
  expected = _take(it, 4)
  restored = pipeline.make_iterator(cfg, **kw)
  next(restored)  # Position is overwritten by set_state.
  restored.set_state(state)
  _assert_batches_equal(_take(restored, 4), expected)
  # A fresh iterator without restore gives different (earlier) batches.
  fresh = _take(pipeline.make_iterator(cfg, **kw), 1)
  assert not np.array_equal(fresh[0]["index"], expected[0]["index"])


def test_state_restores_across_process_counts(prepared):
  cfg = _config(prepared)
  kw = dict(split="test", global_batch_size=32, seed=9, with_index=True)
  single = pipeline.make_iterator(cfg, **kw)
  _take(single, 3)
  state = single.get_state()
  expected = next(single)
  parts = []
  for i in range(2):
    it = pipeline.make_iterator(cfg, process_index=i, process_count=2, **kw)
    it.set_state(state)
    parts.append(next(it))
  np.testing.assert_array_equal(
      np.concatenate([p["index"] for p in parts]), expected["index"])


def test_set_state_rejects_other_settings(prepared):
  cfg = _config(prepared)
  kw = dict(split="test", global_batch_size=32)
  state = pipeline.make_iterator(cfg, seed=1, **kw).get_state()
  other = pipeline.make_iterator(cfg, seed=2, **kw)
  with pytest.raises(ValueError, match=r"for other data settings \(seed: saved 1, now 2\); resume with "
                                       r"the saved values"):
    other.set_state(state)
  with pytest.raises(ValueError, match=r"training.batch_size: saved 32, now 16"):
    pipeline.make_iterator(cfg, seed=1, split="test", global_batch_size=16).set_state(state)
  # An augmentation saved but not asked for now is refused as much as the other way round.
  flipped = pipeline.make_iterator(_config(prepared, random_flip=True), seed=1, training=True,
                                   **kw).get_state()
  for saved, resumed in ((flipped, cfg), (state, _config(prepared, random_flip=True))):
    with pytest.raises(ValueError, match=r"data.resize / data.crop / data.random_flip: saved"):
      pipeline.make_iterator(resumed, seed=1, training=True, **kw).set_state(saved)


class _TestDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A real TFDS dataset made here: prepared to array_record (no TensorFlow) in a test's data_dir."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # see fashion_mnist.FashionMnistOffline.code_path
    return epath.Path(__file__)

  @classmethod
  def prepare(cls, data_dir) -> None:
    cls(data_dir=str(data_dir)).download_and_prepare(
        file_format="array_record", download_config=tfds.download.DownloadConfig(
            try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))


class _TinySegmentation(_TestDataset):
  """A dataset that stores its own per-pixel maps (as real segmentation datasets do)."""

  name = "tiny_segmentation_for_tests"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=3),
        "mask": tfds.features.Tensor(shape=(8, 8), dtype=np.int32),
        "name": tfds.features.Text()}), disable_shuffling=True)  # record i = example i

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      mask = np.zeros((8, 8), np.int32)
      mask[: i + 1] = 1 + i % 3
      yield i, {"image": (mask[..., None] * 60).astype(np.uint8), "label": i % 3, "mask": mask,
                "name": f"example {i}"}


def test_stored_features_pass_through_for_a_real_segmentation_dataset(tmp_path):
  """Select a dataset's own maps: data.name + the modality's feature; numeric features pass through
  (text does not), and the batch satisfies an imgseg modality reading them."""
  from mmdiff_jax.data.checks import check_batch
  from mmdiff_jax.models.modalities import ModalitySpec
  _TinySegmentation.prepare(tmp_path)
  cfg = ml_collections.ConfigDict(dict(name=_TinySegmentation.name, data_dir=str(tmp_path)))
  batch = next(pipeline.make_iterator(cfg, split="train", global_batch_size=6, seed=0,
                                      shuffle=False, read_threads=0, with_index=True))
  assert sorted(batch) == ["image", "index", "label", "mask"]
  for row, i in enumerate(batch["index"]):
    assert np.all(batch["mask"][row, : i + 1] == 1 + i % 3) and np.all(batch["mask"][row, i + 1:] == 0)
  specs = [ModalitySpec(name="image", kind="image", feature="image", encoder="identity"),
           ModalitySpec(name="segmentation", kind="segmentation", feature="mask",
                        encoder="pixel_categorical", num_classes=4)]
  check_batch(batch, specs, (8, 8, 1), where="tiny")


def test_a_derived_feature_never_replaces_the_datasets_own():
  """garment_segmentation on a dataset with masks of its own would train on other maps, silently."""
  batch = {"image": np.full((2, 4, 4, 1), 0.5, np.float32), "label": np.array([1, 2], np.int32),
           "segmentation": np.zeros((2, 4, 4), np.int32)}
  with pytest.raises(ValueError, match=r"config.data.derived: 'garment_segmentation' makes "
                                       r"\['segmentation'\], and the batch already has "
                                       r"\['segmentation'\].*--config.data.derived='\(\)'"):
    derived.derive(dict(batch), ("garment_segmentation",), seed=0, positions=[0, 1])
  del batch["segmentation"]
  made = derived.derive(dict(batch), ("garment_segmentation",), seed=0, positions=[0, 1])
  np.testing.assert_array_equal(made["segmentation"][:, 0, 0], [2, 3])
  with pytest.raises(ValueError, match=r"config.data.derived: 'garment_segmentation' .* no 'label' "
                                       r"feature \(it has \['image'\]\).*--config.data.derived='\(\)'"):
    derived.derive({"image": batch["image"]}, ("garment_segmentation",), seed=0, positions=[0, 1])


def _read_batch(records, *, keys, geometry, read_features=None):
  """A _ReadBatch over in-memory records (a list indexes like a data source), in stored order."""
  full_keys = {"image": "image", "label": "label", "segmentation": "segmentation",
               "embedding": "embedding", **keys}
  return pipeline._ReadBatch(source=records, order=np.arange(len(records)), stream_len=len(records),
                             global_batch_size=len(records), local_batch_size=len(records),
                             process_index=0, keys=full_keys, geometry=geometry, with_index=False,
                             read_features=read_features)


def test_a_stored_feature_named_like_a_modality_never_replaces_the_selected_one():
  """data.label_key="coarse_label" on a dataset that also stores "label" (CIFAR-100's fine labels):
  the batch's labels are the coarse ones, not overwritten by the stored feature of the default name."""
  records = [{"image": np.full((8, 8, 3), i, np.uint8), "label": np.int64(70 + i),
              "coarse_label": np.int64(i), "segmentation": np.zeros((8, 8), np.uint8)}
             for i in range(4)]
  batch = _read_batch(records, keys={"label": "coarse_label", "segmentation": "mask"},
                      geometry=pipeline.Geometry(8))(0)
  np.testing.assert_array_equal(batch["label"], [0, 1, 2, 3])
  assert sorted(batch) == ["image", "label"]  # neither the fine labels nor an unselected map


def test_images_of_varying_size_are_resized_one_by_one():
  """Photo datasets store each image at its own size: with data.resize the batch is S x S, masks
  follow their images, and per-pixel features that cannot follow are refused only if read."""
  sizes = [(40, 50), (43, 50), (32, 60)]
  records = [{"image": np.full((h, w, 3), 10 * i, np.uint8), "label": np.int64(i),
              "segmentation": np.full((h, w), i, np.uint8), "depth": np.zeros((h, w), np.float32),
              "score": np.float32(i)} for i, (h, w) in enumerate(sizes)]
  geometry = pipeline.Geometry(16, resize="area")
  batch = _read_batch(records, keys={}, geometry=geometry)(0)
  assert batch["image"].shape == (3, 16, 16, 3) and batch["segmentation"].shape == (3, 16, 16)
  np.testing.assert_array_equal(batch["segmentation"][:, 5, 5], [0, 1, 2])
  np.testing.assert_allclose(batch["image"][:, 0, 0, 0], np.array([0, 10, 20]) / 127.5 - 1.0)
  np.testing.assert_array_equal(batch["score"], [0, 1, 2])
  assert "depth" not in batch
  with pytest.raises(ValueError, match=r"stored feature 'depth' varies in shape from record to "
                                       r"record, like the images, but only the image"):
    _read_batch(records, keys={}, geometry=geometry, read_features=("image", "depth"))(0)
  # Without resize a center crop works while every image is large enough, and names the one that is not.
  cropped = _read_batch(records, keys={}, geometry=pipeline.Geometry(32))(0)
  assert cropped["image"].shape == (3, 32, 32, 3)
  for crop in ("center", "random"):
    with pytest.raises(ValueError, match=r"record 0: its 40x50 image is smaller than "
                                         r"data.image_size=42 with data.resize='none'"):
      _read_batch(records, keys={}, geometry=pipeline.Geometry(42, crop=crop))(0)


class _TinyPhotos(_TestDataset):
  """Images of varying size, as TFDS's photo datasets store them (tf_flowers, oxford_iiit_pet), with a
  fine and a coarse label (as CIFAR-100 has)."""

  name = "tiny_photos_for_tests"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="bytes"),
        "label": tfds.features.ClassLabel(num_classes=10),
        "coarse_label": tfds.features.ClassLabel(num_classes=2)}), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, (h, w) in enumerate([(12, 16), (20, 13), (9, 30), (16, 16)]):
      yield i, {"image": np.full((h, w, 3), 40 * i, np.uint8), "label": 5 + i, "coarse_label": i % 2}


def test_a_real_dataset_of_images_of_varying_size_trains_with_resize(tmp_path):
  _TinyPhotos.prepare(tmp_path)
  cfg = ml_collections.ConfigDict(dict(name=_TinyPhotos.name, data_dir=str(tmp_path), image_size=8,
                                       resize="area", label_key="coarse_label"))
  batch = next(pipeline.make_iterator(cfg, split="train", global_batch_size=4, seed=0,
                                      shuffle=False, read_threads=0))
  assert batch["image"].shape == (4, 8, 8, 3)
  np.testing.assert_allclose(batch["image"][:, 3, 3, 0], np.array([0, 40, 80, 120]) / 127.5 - 1.0,
                             atol=1e-6)
  np.testing.assert_array_equal(batch["label"], [0, 1, 0, 1])  # the coarse labels asked for
