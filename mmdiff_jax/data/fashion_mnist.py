"""Offline Fashion-MNIST as a TFDS builder (array_record, no TensorFlow needed).

The dataset is prepared from the raw IDX files that Debian's
``dataset-fashion-mnist`` package installs (``apt-get install
dataset-fashion-mnist``) into ``/usr/share/datasets/fashion-mnist``::

    train-images-idx3-ubyte.gz   60000 x 28 x 28 uint8
    train-labels-idx1-ubyte.gz   60000 uint8 in 0..9
    t10k-images-idx3-ubyte.gz    10000 x 28 x 28 uint8
    t10k-labels-idx1-ubyte.gz    10000 uint8 in 0..9

Nothing is ever downloaded. The builder is registered with TFDS as
``fashion_mnist_offline`` so it does not clash with TFDS's own ``fashion_mnist``
(which downloads). It writes ``array_record`` files, which can be read back
without TensorFlow through ``builder.as_data_source(split)``,
``tfds.data_source`` or ``tfds.builder_from_directory``.

Features (per example):
  image: uint8 Tensor of shape (28, 28, 1), 0 = background, 255 = ink.
  label: ClassLabel with the 10 names in ``CLASS_NAMES`` (int64 when read).

A second builder, ``fashion_mnist_offline_alexnet`` (``FashionMnistOfflineAlexnet``), holds the same
records plus a precomputed representation of each image:
  embedding: float32 Tensor of shape (256,): ImageNet-pretrained AlexNet relu5 features of the
             stored image, pooled and scaled to unit RMS (``features.image_embedding``).
Preparing it runs AlexNet over all 70000 images once (about a minute on 2 CPU cores).

``tfds.features.Image`` is deliberately not used: encoding PNGs needs
TensorFlow. Use ``mmdiff_jax.data.pipeline`` for the training input pipeline.
"""

from __future__ import annotations

import gzip
import inspect
import os
import zlib
from typing import Iterator, Mapping

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from mmdiff_jax.data import images as images_lib
from mmdiff_jax.errors import BadValueError, MissingFileError
from mmdiff_jax.models import alexnet_features as features

NAME = "fashion_mnist_offline"
EMBEDDING_NAME = "fashion_mnist_offline_alexnet"
DEFAULT_RAW_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_COMMAND = "apt-get install dataset-fashion-mnist"
CONFIG_KEY = "data.raw_dir"

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# split -> (images file, labels file). The release has 60000 / 10000 examples; any count is read
# (a subset, or another 28x28 grayscale set in the same format), as long as the two files agree.
RAW_FILES: Mapping[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

_IDX_UBYTE_MAGIC = {1: 0x00000801, 3: 0x00000803}  # ndim -> magic (ubyte type)


class RawDataNotFoundError(MissingFileError):
  """A raw Fashion-MNIST file (or its directory) is missing."""


class IdxFormatError(BadValueError):
  """A raw IDX file has an unexpected header, size or contents."""


def missing_raw_files_message(raw_dir: str, missing: list[str]) -> str:
  """Builds the error message for missing raw files."""
  raw_dir = os.path.abspath(os.fspath(raw_dir))
  where = (
      f"the directory {raw_dir} does not exist"
      if not os.path.isdir(raw_dir)
      else "missing: " + ", ".join(missing)
  )
  return (
      f"Fashion-MNIST raw files not found in {raw_dir} ({where}). "
      f"Expected {', '.join(sorted(f for t in RAW_FILES.values() for f in t))}. "
      f"Install them with `{INSTALL_COMMAND}` (Debian/Ubuntu; run "
      "`apt-get update` first), or point the config key "
      f"`{CONFIG_KEY}` at a directory holding these files. "
      "Nothing is downloaded automatically."
  )


def check_raw_files(raw_dir: str, splits=None) -> dict[str, tuple[str, str]]:
  """Checks that the raw files exist; returns split -> (images, labels) paths.

  Raises:
    RawDataNotFoundError: naming the directory looked in, the missing files, the
      install command and the ``data.raw_dir`` config key.
  """
  raw_dir = os.path.abspath(os.fspath(raw_dir))
  splits = list(RAW_FILES) if splits is None else list(splits)
  paths, missing = {}, []
  for split in splits:
    images, labels = RAW_FILES[split]
    pair = (os.path.join(raw_dir, images), os.path.join(raw_dir, labels))
    missing += [p for p in pair if not os.path.isfile(p)]
    paths[split] = pair
  if missing:
    raise RawDataNotFoundError(missing_raw_files_message(raw_dir, missing))
  return paths


def read_idx(path: str, *, ndim: int, expected_count: int | None = None,
             expected_item_shape: tuple[int, ...] | None = None) -> np.ndarray:
  """Reads a gzipped (or plain) IDX ubyte file into a uint8 array.

  Args:
    path: the ``.gz`` (or uncompressed) IDX file.
    ndim: expected number of dimensions (1 for labels, 3 for images).
    expected_count: expected size of the first dimension, if known.
    expected_item_shape: expected trailing dimensions, e.g. (28, 28).

  Returns:
    uint8 array of shape (count, *item_shape).

  Raises:
    IdxFormatError: bad magic number, dimensions, counts or truncated data;
      the message names the file.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; damaged data zlib's
    raise IdxFormatError(
        f"Cannot read IDX file {path} ({type(e).__name__}: {e}): it is damaged or cut short. "
        f"Reinstall it (`{INSTALL_COMMAND} --reinstall`) or point `{CONFIG_KEY}` at intact "
        f"copies.") from e
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise IdxFormatError(
        f"IDX file {path} is truncated: {len(data)} bytes, header needs "
        f"{header_len}.")
  magic = int.from_bytes(data[:4], "big")
  if magic != _IDX_UBYTE_MAGIC[ndim]:
    raise IdxFormatError(
        f"IDX file {path} has magic number 0x{magic:08x}, expected "
        f"0x{_IDX_UBYTE_MAGIC[ndim]:08x} (unsigned bytes, {ndim} dims).")
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
               for i in range(ndim))
  if expected_count is not None and dims[0] != expected_count:
    raise IdxFormatError(
        f"IDX file {path} holds {dims[0]} items, expected {expected_count}.")
  if expected_item_shape is not None and dims[1:] != tuple(expected_item_shape):
    raise IdxFormatError(
        f"IDX file {path} has item shape {dims[1:]}, expected "
        f"{tuple(expected_item_shape)}.")
  n_bytes = int(np.prod(dims))
  if len(data) != header_len + n_bytes:
    raise IdxFormatError(
        f"IDX file {path} has {len(data) - header_len} data bytes, expected "
        f"{n_bytes} for shape {dims}.")
  return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def load_raw_split(raw_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes one split from the raw files.

  Returns:
    images: uint8 (N, 28, 28, 1); labels: uint8 (N,) in 0..9.
  """
  if split not in RAW_FILES:
    raise ValueError(f"Unknown split {split!r}; expected one of {list(RAW_FILES)}.")
  images_path, labels_path = check_raw_files(raw_dir, [split])[split]
  images = read_idx(images_path, ndim=3, expected_item_shape=IMAGE_SHAPE[:2])
  labels = read_idx(labels_path, ndim=1, expected_count=images.shape[0])
  if labels.max(initial=0) >= NUM_CLASSES:
    raise IdxFormatError(
        f"IDX file {labels_path} has label {int(labels.max())}, expected "
        f"0..{NUM_CLASSES - 1}.")
  return images[..., None], labels


class FashionMnistOffline(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST prepared offline from the raw IDX files (array_record)."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Prepared from the raw IDX files, no download."}

  # TFDS 4.9.10's default `code_path` evaluates
  # `isinstance(path, importlib_resources.abc.Traversable)` for any builder that
  # lives in a package, which raises ModuleNotFoundError unless the optional
  # `importlib_resources` backport is installed. Point it at this file directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, raw_dir: str | os.PathLike | None = None, **kwargs):
    """Args: raw_dir: directory with the raw .gz files (see module doc)."""
    kwargs.setdefault("file_format", "array_record")
    self._raw_dir = os.fspath(raw_dir) if raw_dir else DEFAULT_RAW_DIR
    super().__init__(**kwargs)
    # Keep raw_dir (and the format) when the builder is pickled.
    self._original_state = dict(
        self._original_state, raw_dir=self._raw_dir,
        file_format=kwargs["file_format"])

  @property
  def raw_dir(self) -> str:
    return self._raw_dir

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Fashion-MNIST (Zalando): 28x28 grayscale images of 10 clothing "
            "classes, prepared offline from the raw IDX files. "
            + inspect.getdoc(type(self)).splitlines()[0]),
        features=tfds.features.FeaturesDict(self._features()),
        supervised_keys=("image", "label"),
        # Keep the raw file order: record i of a split is raw example i.
        disable_shuffling=True,
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        license="MIT",
    )

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    return {"image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES))}

  def _split_generators(self, dl_manager):
    del dl_manager  # Never downloads.
    check_raw_files(self._raw_dir)  # Fail before writing anything.
    return {split: self._generate_examples(split) for split in RAW_FILES}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    images, labels = load_raw_split(self._raw_dir, split)
    for i in range(images.shape[0]):
      yield i, {"image": images[i], "label": int(labels[i])}


class FashionMnistOfflineAlexnet(FashionMnistOffline):
  """Offline Fashion-MNIST plus "embedding": the image's AlexNet representation, precomputed."""

  name = EMBEDDING_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "fashion_mnist_offline + unit-RMS AlexNet relu5 embedding (256)."}

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    return dict(super()._features(), embedding=tfds.features.Tensor(
        shape=(features.EMBEDDING_DIM,), dtype=np.float32))

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    images, labels = load_raw_split(self._raw_dir, split)
    embeddings = features.image_embedding(
        images_lib.preprocess_images(images, image_size=IMAGE_SHAPE[0]))
    for i in range(images.shape[0]):
      yield i, {"image": images[i], "label": int(labels[i]), "embedding": embeddings[i]}
