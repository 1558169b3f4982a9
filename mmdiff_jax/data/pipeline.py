"""Input pipeline: a checkpointable grain loader over the data sources of mmdiff_jax/data/sources.py.

No TensorFlow is needed and nothing is ever downloaded.

``data_config`` is an ``ml_collections.ConfigDict`` (a plain mapping works too)
with the keys:

  name:       "fashion_mnist_offline" -> the offline Fashion-MNIST builder in
              ``mmdiff_jax.data.fashion_mnist``, prepared on first use into
              ``data_dir`` from the raw IDX files in ``raw_dir``;
              "fashion_mnist_offline_alexnet" -> the same plus a precomputed
              "embedding" per image (see that module). Any other name
              -> a TFDS dataset (``"name"``, ``"name:1.2.3"``,
              ``"name/config"``) that was already prepared in array_record
              format under ``data_dir``.
  data_dir:   TFDS data directory; None -> $TFDS_DATA_DIR or
              ~/tensorflow_datasets.
  raw_dir:    directory of the raw Fashion-MNIST .gz files; None ->
              /usr/share/datasets/fashion-mnist.
  image_key:  feature holding the uint8 image (H, W[, C]), default "image".
  label_key:  feature holding the integer label, default "label"; optional:
              a dataset without it has no "label" in its batches.
  segmentation_key: feature holding a segmentation mask (H, W) or (H, W, 1)
              of class ids, default "segmentation"; optional.
  embedding_key: feature holding a float vector (D,), default "embedding";
              optional.
  image_size: output side S (``make_iterator`` only), default: native size.
  resize:     "none" (default): stored size S -> as is; S - 4 (square) ->
              padded by 2 pixels on each side with the background value -1;
              larger -> cropped to S x S. "area" / "bilinear": the shorter side
              is resized to S (aspect kept; masks always nearest), then
              cropped to S x S.
  crop:       "center" (default) or "random": where the S x S window is cut
              (random on the training stream only; evaluation cuts the centre).
  random_flip: on the training stream, flip each image left-right with
              probability 1/2, its mask with it (default False).

Batches (``make_iterator``) are dicts of numpy arrays:

  image: float32 (B, S, S, C) in [-1, 1] (C = 1 for Fashion-MNIST; 0 -> -1,
         255 -> +1),
  label: int32 (B,) (when the dataset has label_key),
  segmentation: int32 (B, S, S) (when it has segmentation_key),
  embedding: as stored (when it has embedding_key),
  any other numeric feature the dataset stores, stacked as stored (e.g.
         "embedding": float32 (B, 256)),
  the features named in ``derived`` (``mmdiff_jax.data.derived``),

where B = global_batch_size // process_count is the per-process batch.

Ordering: with ``shuffle=True`` every epoch e is a permutation of the split
drawn from (seed, e) only (grain's stateless ``index_shuffle``), identical on
all processes. The epochs are concatenated into one stream that is cut into
global batches of ``global_batch_size`` consecutive elements (a global batch
may straddle an epoch boundary; nothing is dropped between epochs). Process i
of P takes elements [i*B, (i+1)*B) of every global batch, so the processes'
batches are disjoint and, concatenated in process order, give exactly the
global batch. Every batch is a pure function of its step number, so the
iterator state is just the step (see ``DataIterator``). Random crops and
flips, and the random draws of derived features, are drawn per stream
position from (seed, position) only, so they too are the same after a resume
and with any process count.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Collection

import grain
import numpy as np
from PIL import Image

from mmdiff_jax.data.sources import (OFFLINE_FASHION_MNIST, config_value, get_builder, load_source,
                                     unversioned_name)
from mmdiff_jax.data.images import preprocess_images
from mmdiff_jax.data.derived import TRAINING_ONLY, derive
from mmdiff_jax.errors import BadValueError

_STATE_VERSION = 1
RESIZE_METHODS = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}
RESIZES = ("none", *RESIZE_METHODS)
CROPS = ("center", "random")
# Mixed into the seed of the per-position augmentation draws (distinct from derived features').
_AUGMENT_STREAM = 0x6175676D


# ----------------------------------------------------------------------------
# Batching.


@dataclasses.dataclass(frozen=True)
class Geometry:
  """How stored images become S x S (S = image_size); see the module doc.

  crop "random" and random_flip are set only for the training stream (``geometry_from_config``).
  """
  image_size: int
  resize: str = "none"
  crop: str = "center"
  random_flip: bool = False

  @property
  def is_random(self) -> bool:
    return self.crop == "random" or self.random_flip


def geometry_from_config(data_config, native_hw: tuple[int, int], *, training: bool) -> Geometry:
  """The Geometry of ``data_config`` for images stored at native_hw = (H, W).

  Raises:
    ValueError naming the data.* key, its value and what is allowed.
  """
  resize = config_value(data_config, "resize", "none")
  crop = config_value(data_config, "crop", "center")
  if resize not in RESIZES:
    raise BadValueError(f"data.resize={resize!r}: expected one of {RESIZES}")
  if crop not in CROPS:
    raise BadValueError(f"data.crop={crop!r}: expected one of {CROPS}")
  geometry = Geometry(
      image_size=int(config_value(data_config, "image_size", min(native_hw))), resize=resize,
      crop=crop if training else "center",
      random_flip=bool(config_value(data_config, "random_flip", False)) and training)
  _check_geometry(native_hw, geometry)
  return geometry


def _check_geometry(native_hw: tuple[int, int], geometry: Geometry) -> None:
  h, w = native_hw
  size = geometry.image_size
  if size < 1:
    raise BadValueError(f"data.image_size={size}: expected a positive integer")
  if geometry.resize == "none" and min(h, w) < size and not _is_padded(native_hw, size):
    raise BadValueError(
        f"data.image_size={size} is not supported for {h}x{w} images with data.resize='none': "
        f"use at most {min(h, w)} (as is, or cropped)"
        + (f", {h + 4} (pad 2 px of background on each side)" if h == w else "")
        + ", or data.resize='area' or 'bilinear' (the shorter side resized to data.image_size)")


def _is_padded(native_hw: tuple[int, int], image_size: int) -> bool:
  """Whether images are padded by 2 px of background (square images, image_size = side + 4)."""
  return native_hw[0] == native_hw[1] and image_size == native_hw[0] + 4


def _resize_image(image: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
  """uint8 (H, W, C) -> uint8 (h, w, C) = size, each channel with PIL's area (box) or bilinear."""
  channels = [np.asarray(Image.fromarray(image[..., c]).resize(
      (size[1], size[0]), resample=RESIZE_METHODS[method])) for c in range(image.shape[-1])]
  return np.stack(channels, axis=-1)


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W) class ids -> (h, w) = size, nearest neighbour (pixel centres), any integer dtype."""
  rows = (np.arange(size[0]) + 0.5) * mask.shape[0] // size[0]
  cols = (np.arange(size[1]) + 0.5) * mask.shape[1] // size[1]
  return mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def transform_example(image: np.ndarray, mask: np.ndarray | None, *, geometry: Geometry,
                      rng: np.random.Generator | None):
  """One example's resize, crop and flip (see the module doc).

  Args:
    image: uint8 (H, W, C) as stored.
    mask: (H', W') class ids or None; brought to the image's size by nearest neighbour first.
    geometry: what to do; crop "random" and random_flip draw from `rng`.

  Returns:
    (uint8 (S, S, C), int32 (S, S) or None).
  """
  size = geometry.image_size
  h, w = image.shape[:2]
  if geometry.resize != "none":
    scale = size / min(h, w)
    h, w = max(size, round(h * scale)), max(size, round(w * scale))
    image = _resize_image(image, (h, w), geometry.resize)
  if mask is not None and mask.shape != (h, w):
    mask = _resize_nearest(mask, (h, w))
  if geometry.resize == "none" and _is_padded((h, w), size):
    # As preprocess_images pads: 2 px of background (uint8 0 becomes -1), the mask's class 0.
    image = np.pad(image, [(2, 2), (2, 2)] + [(0, 0)] * (image.ndim - 2))
    mask = None if mask is None else np.pad(mask, 2)
    h, w = size, size
  if geometry.crop == "random":
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
  else:
    top, left = (h - size) // 2, (w - size) // 2
  image = image[top:top + size, left:left + size]
  mask = None if mask is None else mask[top:top + size, left:left + size]
  if geometry.random_flip and rng.random() < 0.5:
    image = image[:, ::-1]
    mask = None if mask is None else mask[:, ::-1]
  return image, None if mask is None else mask.astype(np.int32)


def _as_masks(masks: np.ndarray) -> np.ndarray:
  """(B, H, W) or (B, H, W, 1) class ids -> (B, H, W)."""
  if masks.ndim == 4 and masks.shape[-1] == 1:
    return masks[..., 0]
  if masks.ndim != 3:
    raise BadValueError(f"segmentation masks of shape {masks.shape[1:]}; expected (H, W) or (H, W, 1)")
  return masks


class _ReadBatch:
  """Maps a local batch number to a preprocessed batch (vectorized where the geometry allows).

  Global stream position q holds record ``order[q]``; local batch b of process
  p covers positions b*G + p*B + [0, B) (clipped to the stream length).
  """

  def __init__(self, *, source, order, stream_len, global_batch_size,
               local_batch_size, process_index, keys, geometry, with_index, derived=(), seed=0,
               mask_fill_value=0.0, mask_fill_pattern="constant", read_features=None):
    self._source = source
    self._order = order
    self._stream_len = stream_len
    self._g = global_batch_size
    self._b = local_batch_size
    self._p = process_index
    self._keys = dict(keys)  # batch name ("image", "label", "segmentation", "embedding") -> stored
    self._geometry = geometry
    self._with_index = with_index
    self._derived = tuple(derived)
    self._seed = int(seed)
    self._mask_fill_value = float(mask_fill_value)
    self._mask_fill_pattern = str(mask_fill_pattern)
    self._read_features = None if read_features is None else frozenset(read_features)

  def _positions(self, batch_index: int) -> range:
    start = batch_index * self._g + self._p * self._b
    return range(start, min(start + self._b, self._stream_len))

  def record_indices(self, batch_index: int) -> list[int]:
    return [int(self._order[q]) for q in self._positions(batch_index)]

  def _geometric(self, images, masks, positions):
    """(float32 (B, S, S, C) in [-1, 1], int32 (B, S, S) or None) of the stored images and masks.

    images: uint8 (B, H, W, C), or a list of (H_i, W_i, C) where the stored sizes vary; masks alike.
    """
    g = self._geometry
    ragged = isinstance(images, list)
    native_hw = None if ragged else images.shape[1:3]
    if not ragged and g.resize == "none" and not g.is_random and (
        _is_padded(native_hw, g.image_size) or native_hw == (g.image_size,) * 2):
      if masks is not None and _is_padded(native_hw, g.image_size):
        masks = np.pad(masks, ((0, 0), (2, 2), (2, 2)))  # background class 0
      return (preprocess_images(images, image_size=g.image_size),
              None if masks is None else masks.astype(np.int32))
    out_images, out_masks = [], []
    for i, q in enumerate(positions):
      rng = np.random.default_rng([self._seed, _AUGMENT_STREAM, q]) if g.is_random else None
      hw = images[i].shape[:2]
      if g.resize == "none" and min(hw) < g.image_size and not _is_padded(hw, g.image_size):
        raise BadValueError(
            f"record {int(self._order[q])}: its {images[i].shape[0]}x{images[i].shape[1]} image is "
            f"smaller than data.image_size={g.image_size} with data.resize={g.resize!r}: set "
            f"data.resize='area' or 'bilinear' (the shorter side resized to data.image_size), or a "
            f"data.image_size of at most the smallest stored side")
      image, mask = transform_example(images[i], None if masks is None else masks[i],
                                      geometry=g, rng=rng)
      out_images.append(image)
      out_masks.append(mask)
    images = preprocess_images(np.stack(out_images), image_size=g.image_size)
    return images, None if masks is None else np.stack(out_masks)

  def _unmoved(self, key: str, values: np.ndarray, *, native_hw) -> bool:
    """Whether `values` is a stored per-pixel feature (the images' height and width) other than the
    segmentation map while the geometry moves the images' pixels: it would not follow their flip,
    crop, padding or resize, and would silently no longer match its image. Such a feature is an
    error if the model reads it (`read_features`), and is left out of the batch otherwise."""
    g = self._geometry
    moved = g.resize != "none" or g.is_random or tuple(native_hw) != (g.image_size,) * 2
    if not (moved and values.ndim >= 3 and tuple(values.shape[1:3]) == tuple(native_hw)):
      return False
    self._refuse_if_read(key, f"has the images' size {tuple(native_hw)}")
    return True

  def _refuse_if_read(self, key: str, what: str) -> None:
    """A stored per-pixel feature that cannot follow the images' geometry: an error if the model
    reads it."""
    g = self._geometry
    if self._read_features is not None and key in self._read_features:
      raise BadValueError(
          f"stored feature {key!r} {what}, but only the image and "
          f"the segmentation map (data.segmentation_key) follow data.image_size={g.image_size}, "
          f"data.resize={g.resize!r}, data.crop={g.crop!r} and data.random_flip={g.random_flip}: "
          f"train at the stored size without resize, random crop or flip, or derive it after them "
          f"(data.derived)")

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    positions = self._positions(batch_index)
    keys = self.record_indices(batch_index)
    getitems = getattr(self._source, "__getitems__", None)
    records = (getitems(keys) if getitems is not None
               else [self._source[k] for k in keys])
    stack = lambda key: np.stack([np.asarray(r[key]) for r in records])
    present = {name: key for name, key in self._keys.items() if key in records[0]}
    images = [np.asarray(r[present["image"]]) for r in records]
    images = [image[..., None] if image.ndim == 2 else image for image in images]
    # Datasets whose images vary in size (most photo sets) go through the per-example geometry.
    ragged = len({image.shape for image in images}) > 1
    images = images if ragged else np.stack(images)
    masks = None
    if "segmentation" in present:
      masks = ([_as_masks(np.asarray(r[present["segmentation"]])[None])[0] for r in records]
               if ragged else _as_masks(stack(present["segmentation"])))
    batch = {}
    batch["image"], segmentation = self._geometric(images, masks, positions)
    if segmentation is not None:
      batch["segmentation"] = segmentation
    if "label" in present:
      batch["label"] = np.asarray([r[present["label"]] for r in records], dtype=np.int32)
    # Stored features pass through as they are, but never under a modality's name: with
    # data.label_key="coarse_label", a stored "label" must not replace the labels asked for.
    for key in records[0].keys() - set(present.values()) - set(self._keys):
      values = [np.asarray(r[key]) for r in records]
      if len({v.shape for v in values}) > 1:
        self._refuse_if_read(key, "varies in shape from record to record, like the images")
        continue  # per-pixel like the images: it cannot follow them to data.image_size
      values = np.stack(values)
      if np.issubdtype(values.dtype, np.number) and (ragged or not self._unmoved(
          key, values, native_hw=images.shape[1:3])):
        batch[key] = values
    if "embedding" in present:
      batch["embedding"] = stack(present["embedding"])
    if self._with_index:
      batch["index"] = np.asarray(keys, dtype=np.int64)
    return derive(batch, self._derived, seed=self._seed, positions=positions,
                  mask_fill_value=self._mask_fill_value, mask_fill_pattern=self._mask_fill_pattern)


def native_image_size(data_config, split: str) -> int:
  """The side of the images as the dataset stores them (28 for Fashion-MNIST)."""
  source = load_source(data_config, split)
  return int(np.asarray(source[0][config_value(data_config, "image_key", "image")]).shape[0])


class DataIterator(grain.DatasetIterator):
  """Checkpointable iterator over preprocessed batches.

  A ``grain.DatasetIterator`` (so grain's Orbax ``CheckpointHandler`` /
  ``grain.checkpoint.CheckpointSave`` accept it). ``get_state()`` returns a
  JSON-serializable dict: the grain state (the number of batches produced so
  far) plus the pipeline settings that define the batch order; ``set_state``
  refuses a state whose settings differ. ``process_index``/``process_count``
  are not part of them: a state saved with P processes restores with any
  other process count (same global batch size) and continues the same global
  batch sequence.

  Attributes:
    num_batches: batches this process will yield in total (None = infinite).
    settings: dict of the settings that define the batch order.
  """

  def __init__(self, inner: grain.DatasetIterator, *, settings: dict,
               num_batches: int | None):
    super().__init__(inner)
    self._inner = inner
    self.settings = dict(settings)
    self.num_batches = num_batches

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._inner)

  def get_state(self) -> dict[str, Any]:
    return {
        "version": _STATE_VERSION,
        "settings": dict(self.settings),
        "grain": self._inner.get_state(),
    }

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("version") != _STATE_VERSION:
      raise BadValueError(f"Unsupported data iterator state version "
                          f"{state.get('version')!r}; expected {_STATE_VERSION}.")
    saved, current = dict(state["settings"]), dict(self.settings)
    saved["name"] = unversioned_name(saved["name"])  # states saved with "name:1.0.0" in their name
    # The geometry is stored only where it is not the default (states saved before it resume).
    default_geometry = dataclasses.asdict(Geometry(int(current["image_size"])))
    for settings in (saved, current):
      settings.setdefault("geometry", default_geometry)
    # Keys added since the state format began are compared only where saved.
    diff = {k: (saved.get(k), v) for k, v in current.items()
            if saved.get(k) != v and (k in saved or k not in _SETTINGS_ADDED_LATER)}
    if diff:
      hint = ("; the dataset's prepared version changed (a newer one is read by default): name "
              f"the saved one, --config.data.name={current['name']}:{saved['dataset_version']}, "
              "or use another --workdir" if "dataset_version" in diff else
              "; resume with the saved values (the run's config.json has them) or use another "
              "--workdir")
      listing = "; ".join(f"{_SETTING_KEYS.get(k, k)}: saved {a!r}, now {b!r}"
                          for k, (a, b) in diff.items())
      raise BadValueError(f"the input position saved with the checkpoint is for other data settings "
                          f"({listing}){hint}")
    self._inner.set_state(state["grain"])

  def __str__(self) -> str:
    return f"DataIterator({self.settings})"


# Settings that states saved before them lack (those still resume).
_SETTINGS_ADDED_LATER = frozenset({"dataset_version"})
# The config keys behind the settings, for the message of a resume with other ones.
_SETTING_KEYS = {"name": "data.name", "split": "data.train_split", "num_examples": "the split's size",
                 "global_batch_size": "training.batch_size", "seed": "seed",
                 "image_size": "data.image_size", "derived": "data.derived",
                 "geometry": "data.resize / data.crop / data.random_flip"}


def make_iterator(
    data_config,
    *,
    split: str,
    global_batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    drop_remainder: bool = True,
    read_threads: int = 2,
    prefetch_batches: int = 4,
    with_index: bool = False,
    training: bool = False,
    read_features: Collection[str] | None = None,
) -> DataIterator:
  """Builds this process's checkpointable batch iterator.

  Args:
    data_config: see the module docstring; ``image_size`` picks S.
    split: TFDS split name, e.g. "train" or "test".
    global_batch_size: examples per step summed over all processes; must be
      divisible by process_count.
    seed: shuffle seed in [0, 2**32); the same on every process.
    shuffle: False -> records in stored order (epoch after epoch).
    num_epochs: passes over the split; None = forever.
    process_index: this process, in [0, process_count).
    process_count: number of processes sharing the global batch.
    drop_remainder: with finite num_epochs, drop the last global batch when it
      is incomplete. If kept, it is split like the others, so some processes
      may get a short (or no) last batch.
    read_threads: grain threads reading/preprocessing batches ahead (0 = read
      in the calling thread). Batch order and state restore do not depend on it.
    prefetch_batches: batches read ahead when read_threads > 0.
    with_index: also yield "index": int64 (B,), the record indices in the
      split (for debugging and tests).
    training: whether this is the training stream; derived features that are
      training-time augmentations (derived.TRAINING_ONLY) apply only then.
    read_features: the batch keys the model reads (None: unknown). A stored map at the images' size
      other than the segmentation map does not follow their padding, crop, flip or resize: where
      they move, it is an error if the model reads it, and left out of the batch otherwise.

  Returns:
    A ``DataIterator`` yielding {"image": float32 (B, S, S, C) in [-1, 1],
    "label": int32 (B,)} with B = global_batch_size // process_count.

  Raises:
    ValueError: bad sizes/indices, unsupported image_size, or a finite run
      too short to fill one global batch with drop_remainder.
  """
  if global_batch_size <= 0 or process_count <= 0:
    raise ValueError(f"global_batch_size ({global_batch_size}) and "
                     f"process_count ({process_count}) must be positive.")
  if global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} is not divisible by "
        f"process_count={process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in "
                     f"[0, {process_count}).")
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f"num_epochs must be positive or None, got {num_epochs}.")
  if shuffle and not (isinstance(seed, (int, np.integer))
                      and 0 <= seed < 2**32):
    raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}.")
  local_batch_size = global_batch_size // process_count

  name = config_value(data_config, "name", OFFLINE_FASHION_MNIST)
  keys = {"image": config_value(data_config, "image_key", "image"),
          "label": config_value(data_config, "label_key", "label"),
          "segmentation": config_value(data_config, "segmentation_key", "segmentation"),
          "embedding": config_value(data_config, "embedding_key", "embedding")}
  builder = get_builder(data_config)  # opened once: its source, and its version for the state
  source = builder.as_data_source(split=split)
  n = len(source)
  if n == 0:
    raise BadValueError(f"Split {split!r} of {name!r} is empty.")
  first = source[0]
  if keys["image"] not in first:
    raise BadValueError(f"data.image_key={keys['image']!r}: dataset {name!r} (split {split!r}) has "
                        f"no such feature; it has {sorted(first)}")
  native_hw = tuple(np.asarray(first[keys["image"]]).shape[:2])
  geometry = geometry_from_config(data_config, native_hw, training=training)

  order = grain.MapDataset.range(n)
  if shuffle:
    order = order.shuffle(seed=int(seed))  # New permutation for each epoch.
  order = order.repeat(num_epochs)
  if num_epochs is None:
    stream_len = sys.maxsize
    num_batches = None
    n_local_batches = sys.maxsize // global_batch_size
  else:
    stream_len = n * num_epochs
    full, rest = divmod(stream_len, global_batch_size)
    if drop_remainder or rest == 0:
      n_local_batches = full
    else:
      n_local_batches = full + int(rest > process_index * local_batch_size)
    num_batches = n_local_batches
    if full == 0 and drop_remainder:
      raise BadValueError(
          f"{n} examples x {num_epochs} epochs of split {split!r} do not fill "
          f"one global batch of {global_batch_size} (drop_remainder=True).")

  derived_names = tuple(name for name in config_value(data_config, "derived", ())
                        if training or name not in TRAINING_ONLY)
  read_batch = _ReadBatch(
      source=source, order=order, stream_len=stream_len,
      global_batch_size=global_batch_size, local_batch_size=local_batch_size,
      process_index=process_index, keys=keys, geometry=geometry, with_index=with_index,
      derived=derived_names, seed=int(seed),
      mask_fill_value=config_value(data_config, "mask_fill_value", 0.0),
      mask_fill_pattern=config_value(data_config, "mask_fill_pattern", "constant"),
      read_features=read_features)
  batches = grain.MapDataset.range(n_local_batches).map(read_batch)
  read_options = grain.ReadOptions(
      num_threads=max(0, int(read_threads)),
      prefetch_buffer_size=max(1, int(prefetch_batches)) if read_threads else 0)
  inner = iter(batches.to_iter_dataset(read_options=read_options))

  settings = {
      "name": unversioned_name(name),  # the version is its own setting
      "split": str(split),
      "num_examples": int(n),
      "global_batch_size": int(global_batch_size),
      "seed": int(seed) if shuffle else None,
      "shuffle": bool(shuffle),
      "num_epochs": num_epochs if num_epochs is None else int(num_epochs),
      "drop_remainder": bool(drop_remainder),
      "image_size": int(geometry.image_size),
      "derived": list(derived_names),
      "dataset_version": str(builder.version),
  }
  if geometry != Geometry(geometry.image_size):  # only then: states saved before it existed resume
    settings["geometry"] = dataclasses.asdict(geometry)
  return DataIterator(inner, settings=settings, num_batches=num_batches)

