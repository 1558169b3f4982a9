"""Data sources: TFDS datasets in array_record format, found (or, for the offline Fashion-MNIST
builders, prepared once from the raw files) under a TFDS data dir. No TensorFlow, no downloads.

The config keys (``name``, ``data_dir``, ``raw_dir``, ``label_key``) are described in
mmdiff_jax/data/pipeline.py, which turns these sources into batches.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import os
import shutil
import sys
from typing import Any, Iterator, Mapping

import tensorflow_datasets as tfds

from mmdiff_jax.data import fashion_mnist
from mmdiff_jax.errors import BadValueError, MissingFileError, StorageError

OFFLINE_FASHION_MNIST = fashion_mnist.NAME
# Datasets this package prepares itself from the raw files (never downloaded).
OFFLINE_BUILDERS = {
    fashion_mnist.NAME: fashion_mnist.FashionMnistOffline,
    fashion_mnist.EMBEDDING_NAME: fashion_mnist.FashionMnistOfflineAlexnet,
}
# What preparing each takes on 2 CPU cores (the second runs AlexNet over all 70,000 images).
PREPARATION_TIME = {fashion_mnist.NAME: "about 10 s", fashion_mnist.EMBEDDING_NAME: "about 2 minutes"}

class DatasetNotPreparedError(MissingFileError):
  """A TFDS dataset is not prepared (in array_record format) in data_dir."""


# ----------------------------------------------------------------------------
# Config helpers.


def config_value(config: Any, key: str, default: Any = None) -> Any:
  """config.get(key, default) for ConfigDicts and mappings (None -> default)."""
  if isinstance(config, Mapping) or hasattr(config, "get"):
    value = config.get(key, default)
  else:
    value = getattr(config, key, default)
  return default if value is None else value


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
  if data_dir:
    return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  # Read at call time so a TFDS_DATA_DIR set after import is honoured.
  return os.path.abspath(tfds.core.constants.get_default_data_dir())


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
  """Exclusive advisory lock (fcntl.flock) held for the ``with`` body."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


# ----------------------------------------------------------------------------
# Builders and data sources.


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  # Checking the file first avoids TFDS's "Variant folder ... has no
  # dataset_info.json" warning on every first use.
  info_file = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
  return os.path.isfile(info_file) and builder.is_prepared()


def prepare_fashion_mnist(
    *, data_dir: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    name: str = OFFLINE_FASHION_MNIST,
) -> fashion_mnist.FashionMnistOffline:
  """Prepares ``name`` (one of OFFLINE_BUILDERS) into data_dir once; returns the builder.

  Safe when several processes call it at once: preparation runs under an
  exclusive file lock ``<data_dir>/.<name>.lock`` and TFDS
  writes into a temporary ``incomplete.*`` directory that is renamed into place
  when done, so readers never see partial data. Later calls (in any process)
  just open the prepared files; the raw files are then not needed.

  Raises:
    fashion_mnist.RawDataNotFoundError: raw files missing (message names the
      directory, `apt-get install dataset-fashion-mnist` and `data.raw_dir`).
    fashion_mnist.IdxFormatError: a raw file is malformed.
  """
  data_dir = resolve_data_dir(data_dir)
  raw_dir = os.fspath(raw_dir) if raw_dir else fashion_mnist.DEFAULT_RAW_DIR
  builder_class = OFFLINE_BUILDERS[name]
  builder = builder_class(data_dir=data_dir, raw_dir=raw_dir)
  if _is_prepared(builder):
    return builder
  # Check before creating anything on disk, for a clear error.
  fashion_mnist.check_raw_files(raw_dir)
  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as e:
    raise StorageError(e.errno, f"The TFDS data dir {data_dir} (config key data.data_dir, or "
                       f"$TFDS_DATA_DIR) cannot be created ({e.strerror}); set data.data_dir to a "
                       f"writable directory.") from e
  with file_lock(os.path.join(data_dir, f".{name}.lock")):
    # Another process may have finished while we waited: re-open.
    builder = builder_class(data_dir=data_dir, raw_dir=raw_dir)
    if not _is_prepared(builder):
      remove_incomplete(os.path.join(data_dir, name))
      print(f"Preparing {name} from {raw_dir} into {data_dir} (one time, "
            f"{PREPARATION_TIME[name]})", flush=True)
      with tfds_output_kept_unless_failing():
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(
                # The default (True) makes TFDS ask GCS over the network.
                try_download_gcs=False,
                compute_stats=tfds.download.ComputeStatsMode.SKIP,
            ),
        )
      builder = builder_class(data_dir=data_dir, raw_dir=raw_dir)
  return builder


def remove_incomplete(dataset_dir: str) -> None:
  """Deletes the ``incomplete.*`` directories a killed preparation left in ``dataset_dir`` (called
  under the preparation lock, so no other process is writing one)."""
  stale = sorted(glob.glob(os.path.join(dataset_dir, "incomplete.*")))
  for path in stale:
    shutil.rmtree(path)
  if stale:
    print(f"Removed {len(stale)} unfinished dataset preparation(s) left by an interrupted run: "
          f"{stale}", flush=True)


def _not_prepared_message(name: str, data_dir: str, reason: str) -> str:
  prepared = prepared_datasets(data_dir)
  return (
      f"TFDS dataset {name!r} is not available in array_record format under "
      f"data_dir={data_dir} ({reason}); prepared there: {prepared or 'none'}. "
      "Your own images or arrays: `python3 -m mmdiff_jax.data.prepare --help`. A public TFDS "
      "dataset (mmdiff_jax never downloads data): prepare it once on a machine with internet "
      "access and copy the "
      f"directory {os.path.join(data_dir, name.split(':')[0].split('/')[0])} "
      f"here, e.g. `tfds build {name} --data_dir={data_dir} "
      "--file_format=array_record` (or `tfds.builder(name, data_dir=...)"
      ".download_and_prepare(file_format='array_record')`), or set "
      "`data.data_dir` to the directory that holds it. For Fashion-MNIST "
      f"without internet use data.name='{OFFLINE_FASHION_MNIST}'."
  )


def prepared_datasets(data_dir: str) -> list[str]:
  """The names of the datasets prepared in `data_dir` (a folder NAME/VERSION/dataset_info.json)."""
  found = glob.glob(os.path.join(glob.escape(data_dir), "*", "*", "dataset_info.json"))
  return sorted({os.path.basename(os.path.dirname(os.path.dirname(path))) for path in found})


def get_builder(data_config) -> tfds.core.DatasetBuilder:
  """Returns the prepared TFDS builder for ``data_config`` (see module doc).

  For ``fashion_mnist_offline`` this prepares the dataset on first use.

  Raises:
    DatasetNotPreparedError: any other dataset that is not prepared in
      array_record format in data_dir (names the dataset, data_dir and how to
      prepare it).
  """
  name = config_value(data_config, "name", OFFLINE_FASHION_MNIST)
  data_dir = resolve_data_dir(config_value(data_config, "data_dir"))
  if name in OFFLINE_BUILDERS:
    return prepare_fashion_mnist(data_dir=data_dir,
                                 raw_dir=config_value(data_config, "raw_dir"), name=name)
  try:
    # For registered names TFDS returns the code builder; for unknown names it
    # falls back to the prepared files (builder_from_directory).
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends.
    first_line = (str(e).strip().splitlines() or [""])[0]
    raise DatasetNotPreparedError(
        _not_prepared_message(name, data_dir,
                              f"{type(e).__name__}: {first_line}")
    ) from e
  if not _is_prepared(builder):
    raise DatasetNotPreparedError(
        _not_prepared_message(name, data_dir, f"nothing at {builder.data_dir}"))
  file_format = builder.info.file_format
  if file_format is None or file_format.value != "array_record":
    raise DatasetNotPreparedError(_not_prepared_message(
        name, data_dir,
        f"prepared as {getattr(file_format, 'value', file_format)!r} at "
        f"{builder.data_dir}, which cannot be read without TensorFlow"))
  return builder


def choose_fashion_mnist(data_dir: str | None = None, raw_dir: str | None = None, *,
                         download: bool = True) -> str:
  """The `config.data.name` to use for Fashion-MNIST on this machine (notebooks, Colab).

  "fashion_mnist_offline" (our builder) when it is prepared in the TFDS data dir or the raw files are
  installed (`apt-get install dataset-fashion-mnist`); otherwise TFDS's standard "fashion_mnist",
  which with download=True is downloaded and prepared once in array_record format (that needs
  internet access and TensorFlow, as on Colab; reading it back needs neither). This is the only place
  mmdiff_jax downloads anything, and only when asked to.
  """
  data_dir = resolve_data_dir(data_dir)
  raw_dir = raw_dir or fashion_mnist.DEFAULT_RAW_DIR
  offline = fashion_mnist.FashionMnistOffline(data_dir=data_dir, raw_dir=raw_dir)
  if _is_prepared(offline):
    return OFFLINE_FASHION_MNIST
  with contextlib.suppress(FileNotFoundError):
    fashion_mnist.check_raw_files(raw_dir)
    return OFFLINE_FASHION_MNIST
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  if not _is_prepared(builder):
    if not download:
      raise DatasetNotPreparedError(_not_prepared_message("fashion_mnist", data_dir,
                                                          "download=False"))
    print(f"No offline Fashion-MNIST in {raw_dir}: downloading TFDS 'fashion_mnist' to {data_dir}.")
    builder.download_and_prepare(file_format="array_record")
  return "fashion_mnist"


@contextlib.contextmanager
def tfds_output_kept_unless_failing():
  """Holds back what TFDS prints while preparing (its size banner, progress bars: a dozen lines of
  carriage returns in a log file) and writes it out only if the preparation fails."""
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      yield
  except BaseException:
    sys.stdout.write(out.getvalue())
    sys.stderr.write(err.getvalue())
    raise


def unversioned_name(name) -> str:
  """A TFDS dataset name without its version: "name:1.0.0" -> "name" ("name/config" kept)."""
  return str(name).split(":")[0]


def check_splits(data_config, keys: tuple[str, ...] = ("train_split", "eval_split")) -> None:
  """Refuses, before anything trains, a data.<key> the prepared dataset has no examples for (a
  dataset prepared without a held-out split has no "test"), naming the key and the splits it has.

  Raises:
    BadValueError: an unknown or malformed split, or an empty one.
  """
  builder = get_builder(data_config)
  name = config_value(data_config, "name", OFFLINE_FASHION_MNIST)
  for key in keys:
    split = config_value(data_config, key, None)
    try:
      count = builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
      first_line = (str(e).strip().splitlines() or [""])[0]
      raise BadValueError(
          f"data.{key}={split!r}: dataset {name!r} has the splits {sorted(builder.info.splits)} "
          f"({first_line}); a part of one also works, e.g. 'train[:90%]' and 'train[90%:]'") from e
    if count <= 0:  # an empty slice, or a reversed one ('train[50:10]')
      raise BadValueError(f"data.{key}={split!r}: split {split!r} of dataset {name!r} is empty")


def load_source(data_config, split: str):
  """Returns a random-access data source for one split.

  Args:
    data_config: see the module docstring (name, data_dir, raw_dir, ...).
    split: a TFDS split, e.g. "train", "test" or "train[:10%]".

  Returns:
    A TFDS ``ArrayRecordDataSource``: ``len(src)`` examples, ``src[i]`` and
    ``src.__getitems__([i, ...])`` return dicts of numpy values; for
    Fashion-MNIST ``image`` uint8 (28, 28, 1) and ``label`` int in 0..9.
  """
  return get_builder(data_config).as_data_source(split=split)


def num_examples(data_config, split: str) -> int:
  """Number of examples in ``split`` (e.g. 60000 for Fashion-MNIST train)."""
  return len(load_source(data_config, split))


def class_names(data_config) -> list[str] | None:
  """Names of the label classes (index -> name), or None if not a ClassLabel."""
  builder = get_builder(data_config)
  label_key = config_value(data_config, "label_key", "label")
  if label_key not in builder.info.features:  # an unlabelled dataset
    return None
  names = getattr(builder.info.features[label_key], "names", None)
  return list(names) if names is not None else None
