r"""Prepares your own images (and masks, labels, embeddings) as a TFDS array_record dataset.

No TensorFlow and no code: one command writes a dataset the input pipeline reads by its name.

  python3 -m mmdiff_jax.data.prepare --from_folder=DIR --name=NAME [--data_dir=...] [options]
  python3 -m mmdiff_jax.data.prepare --manifest=FILE.csv|FILE.json --name=NAME [options]

Inputs:
  --from_folder=DIR   class sub-folders (DIR/<class>/*.png: labels from the folder names, sorted;
                      the class names are kept in the dataset info) or a flat folder (DIR/*.png:
                      unlabelled). With --split_folders, the first level is the split:
                      DIR/<split>/<class>/*.png or DIR/<split>/*.png. Images are .png, .jpg, .jpeg,
                      .bmp, .gif, .tif, .tiff, .webp (case-insensitive), in sorted path order.
  --mask_suffix=_mask segmentation masks as PNG files beside the images: the mask of a.png is
                      a_mask.png (files ending in the suffix are masks, not images).
  --manifest=FILE     a CSV (header row) or JSON (a list of objects) with one row per example:
                      "image" (path, required), "label" (class name or integer), "mask" (path of a
                      single-channel PNG of class ids), "embedding" (path of a .npy 1-D float
                      vector), "split"; paths are relative to the manifest's folder.
Splits: explicit (--split_folders, or the manifest's "split" column), or --holdout=F: a fraction F of
  the examples (drawn with --seed) goes to split "test", the rest to "train"; otherwise one "train".
Labels: --classes=a,b,c declares the classes (index = position); without it they are the folder
  names, or the manifest's sorted label names (integers: 0..max). A label outside them is an error.
Size: --size=S or --size=HxW stores every image at that size: --fit=crop scales it to cover HxW and
  crops the centre, --fit=stretch resizes to exactly HxW; --filter=area|bilinear for images, always
  nearest for masks (a mask may have another resolution than its image, with the same aspect ratio;
  both are resized together). Without --size all images must have one size and are stored as they
  are (the input pipeline can still resize and crop: config.data.resize / crop).
--channels=1|3 converts every image to grayscale or RGB; without it all images must have the same
  channel count (grayscale 1, RGB or palette 3; an alpha channel is an error).

Stored features: "image" uint8 (H, W, C); "label" (ClassLabel) when labelled; "segmentation" uint8
(H, W) with masks; "embedding" float32 (D,) with embeddings. Train on it with
--config.data.name=NAME (and --config.data.data_dir=... if not the default).

Every input is read and checked before anything is written: a bad file gives an error naming it and
what was expected, and leaves the data directory as it was. TFDS writes into a temporary folder that is
renamed into place when complete, so an interrupted run leaves nothing a later run would read. The
dataset records a fingerprint of its inputs (paths, sizes, modification times, options): a re-run with
the same inputs does nothing; a re-run with other inputs under the same name and version is refused
(give another --version or --name) so a prepared dataset is never overwritten.

--library_logs shows the INFO logs of TFDS and absl underneath (by default only this command's lines).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import inspect
import json
import os
import re
import shlex
import sys
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags
from etils import epath
from PIL import Image

from mmdiff_jax import command_line, console
from mmdiff_jax.data import sources
from mmdiff_jax.errors import BadValueError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FITS = ("crop", "stretch")
FILTERS = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}
MANIFEST_COLUMNS = ("image", "label", "mask", "embedding", "split")
HOLDOUT_SPLITS = ("train", "test")
FINGERPRINT_KEY = "mmdiff_prepare_fingerprint"
# Channels of the PIL modes accepted as images (palette images are read as RGB).
_MODE_CHANNELS = {"1": 1, "L": 1, "I;16": 1, "I": 1, "RGB": 3, "P": 3, "CMYK": 3, "YCbCr": 3}


class PrepareError(BadValueError):
  """Bad input to prepare: the message names the file, flag or value and what was expected."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One row to prepare: paths are absolute; label is an index into the classes or None."""
  split: str
  image: str
  label: int | None = None
  mask: str | None = None
  embedding: str | None = None


@dataclasses.dataclass(frozen=True)
class Options:
  """How images are stored. size: (H, W) or None (as they are); channels: 1, 3 or None (as read)."""
  size: tuple[int, int] | None = None
  fit: str = "crop"
  filter: str = "area"
  channels: int | None = None


# ----------------------------------------------------------------------------------------- listing


def _is_image(name: str, mask_suffix: str | None) -> bool:
  stem, ext = os.path.splitext(name)
  return ext.lower() in IMAGE_EXTENSIONS and not (mask_suffix and stem.endswith(mask_suffix))


def _mask_beside(image: str, mask_suffix: str | None) -> str | None:
  """The mask file of `image` (same folder, stem + suffix + ".png"), or None without a suffix."""
  if not mask_suffix:
    return None
  mask = os.path.splitext(image)[0] + mask_suffix + ".png"
  if not os.path.isfile(mask):
    raise PrepareError(f"{image}: its mask {mask} does not exist (--mask_suffix={mask_suffix!r}: "
                       f"every image needs a mask beside it)")
  return mask


def _folder_entries(folder: str, mask_suffix: str | None) -> tuple[list[str], list[str]]:
  """(image files, sub-folders) directly in `folder`, sorted; hidden entries are skipped."""
  names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
  images = [os.path.join(folder, n) for n in names
            if os.path.isfile(os.path.join(folder, n)) and _is_image(n, mask_suffix)]
  subdirs = [n for n in names if os.path.isdir(os.path.join(folder, n))]
  return images, subdirs


def _list_one_split(folder: str, split: str, mask_suffix: str | None, *, split_folders: bool):
  """(rows of (split, image, class name or None, mask), class names or None) of one folder
  (`split_folders`: whether it is one of --split_folders' splits, for the errors' advice)."""
  images, subdirs = _folder_entries(folder, mask_suffix)
  if images and subdirs:
    raise PrepareError(f"{folder}: holds both images ({os.path.basename(images[0])}, ...) and "
                       f"sub-folders ({subdirs[0]}, ...); expected either class sub-folders "
                       f"(labelled) or images only (unlabelled)")
  if images:
    return [(split, p, None, _mask_beside(p, mask_suffix)) for p in images], None
  rows = []
  for name in subdirs:
    class_images, nested = _folder_entries(os.path.join(folder, name), mask_suffix)
    if nested:
      hint = ("" if split_folders else
              f"; if {os.path.basename(folder)}'s sub-folders are splits ({name}/, ...), each with "
              f"class folders in it, pass --split_folders")
      raise PrepareError(f"{os.path.join(folder, name)}: class folder holds sub-folders "
                         f"({nested[0]}, ...); expected only images{hint}")
    if not class_images:
      print(f"prepare: note: class folder {os.path.join(folder, name)} holds no images: no "
            f"{split!r} examples of class {name!r}", file=sys.stderr, flush=True)
    rows += [(split, p, name, _mask_beside(p, mask_suffix)) for p in class_images]
  if not rows:
    raise PrepareError(f"{folder}: no images found (expected files ending in "
                       f"{', '.join(IMAGE_EXTENSIONS)}, directly or in class sub-folders)")
  return rows, subdirs


def _label_index(value, classes: Sequence[str], where: str) -> int:
  """A label (class name, or integer / integer string) as an index into `classes`."""
  text = str(value).strip()
  if text in classes:
    return classes.index(text)
  if re.fullmatch(r"-?\d+", text) and not any(re.fullmatch(r"-?\d+", c) for c in classes):
    index = int(text)
    if 0 <= index < len(classes):
      return index
  raise PrepareError(f"{where}: label {text!r} is not among the declared classes "
                     f"{list(classes)} (names, or integers 0..{len(classes) - 1})")


def _classes_from(labels: Sequence[str], where: str) -> list[str]:
  """Classes implied by the labels seen: sorted names, or "0".."max" if they are all integers."""
  if all(re.fullmatch(r"-?\d+", x) for x in labels):
    negative = [x for x in labels if int(x) < 0]
    if negative:
      raise PrepareError(f"{where}: label {negative[0]!r}; integer labels are class ids 0, 1, ... "
                         f"(to use such labels as class names, list them with --classes)")
    return [str(i) for i in range(max(int(x) for x in labels) + 1)]
  return sorted(set(labels))


def list_folder(folder: str, *, split_folders: bool = False, mask_suffix: str | None = None,
                classes: Sequence[str] | None = None) -> tuple[list[Example], list[str] | None]:
  """The examples of an image folder (see the module doc) and the class names (None: unlabelled)."""
  folder = os.path.abspath(folder)
  if not os.path.isdir(folder):
    raise PrepareError(f"--from_folder={folder}: not a directory")
  if split_folders:
    _, splits = _folder_entries(folder, mask_suffix)
    if not splits:
      raise PrepareError(f"{folder}: --split_folders expects one sub-folder per split "
                         f"(e.g. train/, test/); found none")
    listed = [_list_one_split(os.path.join(folder, s), s, mask_suffix, split_folders=True)
              for s in splits]
  else:
    listed = [_list_one_split(folder, "train", mask_suffix, split_folders=False)]
  rows = [row for part, _ in listed for row in part]
  labelled = {names is not None for _, names in listed}
  if len(labelled) > 1:
    raise PrepareError(f"{folder}: some splits have class sub-folders and others not; expected "
                       f"the same layout in every split")
  if labelled == {False}:
    return [Example(split, image, None, mask) for split, image, _, mask in rows], None
  # Numbered folders in numeric order (2 before 10); each folder's label is its place in the order.
  names = {name for _, _, name, _ in rows}
  numbered = all(re.fullmatch(r"\d+", name) for name in names)
  order = (lambda n: (int(n), n)) if numbered else None
  classes = list(classes) if classes else sorted(names, key=order)
  examples = [Example(split, image, _label_index(name, classes, os.path.dirname(image)), mask)
              for split, image, name, mask in rows]
  return examples, classes


def _read_manifest_rows(path: str) -> list[dict[str, Any]]:
  if path.lower().endswith(".json"):
    try:
      with open(path) as f:
        rows = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise PrepareError(f"--manifest={path}: cannot read it as JSON ({e})") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
      raise PrepareError(f"--manifest={path}: expected a JSON list of objects (one per example)")
    return rows
  try:
    with open(path, newline="") as f:
      return list(csv.DictReader(f))
  except (OSError, csv.Error, UnicodeDecodeError) as e:
    raise PrepareError(f"--manifest={path}: cannot read it as CSV ({e})") from e


def list_manifest(path: str, *, classes: Sequence[str] | None = None
                  ) -> tuple[list[Example], list[str] | None]:
  """The examples of a CSV/JSON manifest (see the module doc) and the class names."""
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise PrepareError(f"--manifest={path}: no such file")
  rows = _read_manifest_rows(path)
  if not rows:
    raise PrepareError(f"--manifest={path}: has no rows")
  root = os.path.dirname(path)
  where = lambda i: f"{path} row {i + 1}"
  for i, row in enumerate(rows):
    unknown = set(row) - set(MANIFEST_COLUMNS)
    if unknown:
      raise PrepareError(f"{where(i)}: unknown columns {sorted(unknown)}; expected "
                         f"{list(MANIFEST_COLUMNS)}")
    if not row.get("image"):
      raise PrepareError(f"{where(i)}: no 'image' path")
  value = lambda row, key: (str(row[key]).strip() if row.get(key) not in (None, "") else None)
  labels = [value(row, "label") for row in rows]
  if len({x is None for x in labels}) > 1:
    first = labels.index(None)
    raise PrepareError(f"{where(first)}: no 'label' while other rows have one; expected a label "
                       f"in every row or in none")
  if labels[0] is not None:
    classes = list(classes) if classes else _classes_from(labels, f"--manifest={path}")
  else:
    classes = None
  resolve = lambda p: p if p is None else os.path.normpath(os.path.join(root, p))
  examples = [Example(split=value(row, "split") or "train", image=resolve(value(row, "image")),
                      label=None if classes is None else _label_index(labels[i], classes, where(i)),
                      mask=resolve(value(row, "mask")), embedding=resolve(value(row, "embedding")))
              for i, row in enumerate(rows)]
  for key in ("mask", "embedding"):
    given = [getattr(e, key) is not None for e in examples]
    if any(given) and not all(given):
      raise PrepareError(f"{where(given.index(False))}: no {key!r} while other rows have one; "
                         f"expected one in every row or in none")
  for i, e in enumerate(examples):
    for key in ("image", "mask", "embedding"):
      file = getattr(e, key)
      if file is not None and not os.path.isfile(file):
        raise PrepareError(f"{where(i)}: {key} {file}: no such file (paths are relative to the "
                           f"manifest's folder)")
  return examples, classes


def holdout(examples: Sequence[Example], *, fraction: float, seed: int) -> list[Example]:
  """Moves round(fraction * N) examples, drawn with `seed`, to split "test"; the rest to "train"."""
  if not 0.0 < fraction < 1.0:
    raise PrepareError(f"--holdout={fraction}: expected a fraction in (0, 1)")
  if len({e.split for e in examples}) > 1:
    raise PrepareError("--holdout: the inputs already have explicit splits "
                       f"{sorted({e.split for e in examples})}; give one or the other")
  count = int(round(fraction * len(examples)))
  if not 0 < count < len(examples):
    raise PrepareError(f"--holdout={fraction}: of {len(examples)} examples that holds out {count}; "
                       f"expected at least one example in each of {HOLDOUT_SPLITS}")
  held = set(np.random.default_rng(seed).permutation(len(examples))[:count].tolist())
  return [dataclasses.replace(e, split=HOLDOUT_SPLITS[int(i in held)])
          for i, e in enumerate(examples)]


# ----------------------------------------------------------------------------------------- reading


def _open(path: str, what: str) -> Image.Image:
  try:
    image = Image.open(path)
    image.load()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL raises all
    raise PrepareError(f"{path}: cannot read this {what} ({type(e).__name__}: {e})") from e
  return image


def _to_mode(image: Image.Image, path: str, channels: int | None) -> Image.Image:
  """`image` as "L" (1 channel) or "RGB" (3): `channels` if given, else its own channel count."""
  alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa")
  if (alpha and channels is None) or (not alpha and image.mode not in _MODE_CHANNELS):
    raise PrepareError(f"{path}: image mode {image.mode!r} is not supported; expected grayscale or "
                       f"RGB without alpha (--channels=1|3 converts an image with alpha)")
  if image.mode in ("I;16", "I"):  # 16-bit grayscale: keep the top 8 bits
    image = Image.fromarray((np.asarray(image, np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")
  target = channels or _MODE_CHANNELS[image.mode]
  return image.convert("L" if target == 1 else "RGB")


def _resize(image: Image.Image, size: tuple[int, int], fit: str,
            resample: Image.Resampling) -> Image.Image:
  """`image` at (H, W) = size: "stretch" resizes to it; "crop" scales to cover it, crops the centre."""
  h, w = size
  if fit == "stretch":
    return image.resize((w, h), resample=resample)
  scale = max(h / image.height, w / image.width)
  scaled_w, scaled_h = max(w, round(image.width * scale)), max(h, round(image.height * scale))
  image = image.resize((scaled_w, scaled_h), resample=resample)
  left, top = (scaled_w - w) // 2, (scaled_h - h) // 2
  return image.crop((left, top, left + w, top + h))


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
  """Whether (W, H) sizes a and b have the same aspect ratio up to one pixel of rounding."""
  return abs(a[0] * b[1] - a[1] * b[0]) <= max(a[0], a[1], b[0], b[1])


def read_example(example: Example, options: Options) -> dict[str, np.ndarray]:
  """The stored features of one example (see the module doc); PrepareError names a bad file."""
  image = _to_mode(_open(example.image, "image"), example.image, options.channels)
  if options.size is not None:
    image = _resize(image, options.size, options.fit, FILTERS[options.filter])
  array = np.asarray(image, np.uint8)
  features = {"image": array[..., None] if array.ndim == 2 else array}
  if example.label is not None:
    features["label"] = example.label
  if example.mask is not None:
    features["segmentation"] = _read_mask(example, options)
  if example.embedding is not None:
    features["embedding"] = _read_embedding(example.embedding)
  return features


def _read_mask(example: Example, options: Options) -> np.ndarray:
  mask = _open(example.mask, "mask")
  if mask.mode not in ("L", "P", "1"):
    raise PrepareError(f"{example.mask}: mask mode {mask.mode!r}; expected a single-channel PNG of "
                       f"class ids (mode L or P)")
  with Image.open(example.image) as image:
    image_size = image.size
  if mask.size != image_size:
    if options.size is None or not _same_aspect(mask.size, image_size):
      raise PrepareError(
          f"{example.mask}: mask is {mask.size[0]}x{mask.size[1]} (WxH) but its image "
          f"{example.image} is {image_size[0]}x{image_size[1]}; expected the same size, or the same "
          f"aspect ratio with --size (then both are resized together)")
  if options.size is not None:
    # Class ids: nearest neighbour (a mask of another resolution is first brought to the image's).
    mask = mask.resize(image_size, resample=Image.Resampling.NEAREST)
    mask = _resize(mask, options.size, options.fit, Image.Resampling.NEAREST)
  return np.asarray(mask, np.uint8)


def _read_embedding(path: str) -> np.ndarray:
  try:
    vector = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise PrepareError(f"{path}: cannot read this embedding as .npy ({e})") from e
  if vector.ndim != 1 or not np.issubdtype(vector.dtype, np.number):
    raise PrepareError(f"{path}: embedding has shape {vector.shape} and dtype {vector.dtype}; "
                       f"expected a 1-D numeric vector")
  vector = vector.astype(np.float32)
  if not np.all(np.isfinite(vector)):
    raise PrepareError(f"{path}: embedding holds non-finite values")
  return vector


def check_examples(examples: Sequence[Example], options: Options) -> dict[str, tuple]:
  """Reads every example once; returns the stored shapes {feature: shape}.

  Raises:
    PrepareError naming the first unreadable file, or the first whose image size, channel count,
    mask size or embedding length differs from the first example's.
  """
  shapes, first = {}, {}
  for example in examples:
    features = read_example(example, options)
    for key, value in features.items():
      if key == "label":
        continue
      shape = np.shape(value)
      if key not in shapes:
        shapes[key], first[key] = shape, example
        continue
      if shape == shapes[key]:
        continue
      path = {"image": example.image, "segmentation": example.mask,
              "embedding": example.embedding}[key]
      other = {"image": first[key].image, "segmentation": first[key].mask,
               "embedding": first[key].embedding}[key]
      if key == "image" and shape[:2] == shapes[key][:2]:
        raise PrepareError(f"{path}: has {shape[2]} channel(s) but {other} has {shapes[key][2]}; "
                           f"expected one channel count (--channels=1|3 converts all)")
      if key == "image":
        raise PrepareError(f"{path}: is {shape[1]}x{shape[0]} (WxH) but {other} is "
                           f"{shapes[key][1]}x{shapes[key][0]}; expected one size (--size=S or "
                           f"--size=HxW resizes all)")
      raise PrepareError(f"{path}: {key} has shape {shape} but {other} has {shapes[key]}; expected "
                         f"one shape")
  return shapes


# ----------------------------------------------------------------------------------------- writing


def fingerprint(examples: Sequence[Example], options: Options, classes) -> str:
  """sha256 of what defines the dataset: every file's path, size and mtime, the labels, options."""
  digest = hashlib.sha256()
  digest.update(json.dumps([dataclasses.asdict(options), classes]).encode())
  for e in examples:
    files = [e.image, e.mask, e.embedding]
    stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) if p else None for p in files]
    digest.update(json.dumps([e.split, e.label, stats]).encode())
  return digest.hexdigest()


def _builder_class(name: str, version: str, description: str):
  """A GeneratorBasedBuilder for one preparation (created per call, never registered by name, so
  tfds.builder(name) reads the prepared files)."""

  with tfds.core.registered.skip_registration():
    class FolderDataset(tfds.core.GeneratorBasedBuilder):  # pylint: disable=unused-variable
      """Images prepared by mmdiff_jax.data.prepare."""
      VERSION = tfds.core.Version(version)
      RELEASE_NOTES = {version: description}

      # As in fashion_mnist.py: TFDS's default code_path needs the optional importlib_resources.
      @tfds.core.utils.classproperty
      @classmethod
      def code_path(cls):
        return epath.Path(inspect.getfile(_builder_class))

      def __init__(self, *, examples, options, shapes, classes, fingerprint_hex, **kwargs):
        self._examples, self._options, self._shapes = examples, options, shapes
        self._classes, self._fingerprint = classes, fingerprint_hex
        super().__init__(file_format="array_record", **kwargs)

      def _info(self):
        features = {"image": tfds.features.Tensor(shape=self._shapes["image"], dtype=np.uint8)}
        if self._classes is not None:
          features["label"] = tfds.features.ClassLabel(names=list(self._classes))
        if "segmentation" in self._shapes:
          features["segmentation"] = tfds.features.Tensor(shape=self._shapes["segmentation"],
                                                          dtype=np.uint8)
        if "embedding" in self._shapes:
          features["embedding"] = tfds.features.Tensor(shape=self._shapes["embedding"],
                                                       dtype=np.float32)
        return tfds.core.DatasetInfo(
            builder=self, description=description, features=tfds.features.FeaturesDict(features),
            # Keep the input order: record i of a split is its i-th example in sorted order.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict({FINGERPRINT_KEY: self._fingerprint}))

      def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        splits = sorted({e.split for e in self._examples})
        return {s: self._generate_examples(s) for s in splits}

      def _generate_examples(self, split) -> Iterator[tuple[int, dict]]:
        for i, e in enumerate(x for x in self._examples if x.split == split):
          yield i, read_example(e, self._options)

    FolderDataset.name = name
  return FolderDataset


def _stored_fingerprint(version_dir: str) -> str | None:
  path = os.path.join(version_dir, "metadata.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f).get(FINGERPRINT_KEY)


def _check_name(name: str, version: str) -> None:
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
    raise PrepareError(f"--name={name!r}: expected a TFDS name: lower case letters, digits and "
                       f"underscores, starting with a letter (e.g. 'my_flowers')")
  try:
    tfds.builder_cls(name)
  except tfds.core.registered.DatasetNotFoundError:
    pass  # not one of TFDS's own: config.data.name will find the prepared files
  else:
    raise PrepareError(f"--name={name!r}: TFDS has a dataset of that name, whose own code "
                       f"config.data.name={name!r} would load instead of these files: choose another "
                       f"name, e.g. '{name}_own'")
  if not re.fullmatch(r"\d+\.\d+\.\d+", version or ""):
    raise PrepareError(f"--version={version!r}: expected MAJOR.MINOR.PATCH, e.g. '1.0.0'")


def _check_splits(examples: Sequence[Example]) -> None:
  for split in sorted({e.split for e in examples}):
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_]*", split):
      raise PrepareError(f"split {split!r}: expected a name of letters, digits and underscores "
                         f"(e.g. 'train', 'validation')")


def prepare(examples: Sequence[Example], *, name: str, classes: Sequence[str] | None = None,
            options: Options = Options(), data_dir: str | None = None, version: str = "1.0.0",
            source: str = "") -> tuple[str, bool]:
  """Writes `examples` as the TFDS dataset `name` in data_dir; returns (its folder, whether written).

  A dataset already prepared from the same inputs is left as it is (returns written=False).

  Raises:
    PrepareError: bad inputs (nothing is written), or `name`/`version` already prepared from other
      inputs (it is left untouched).
  """
  _check_name(name, version)
  if not examples:
    raise PrepareError(f"{source or name}: no examples to prepare")
  _check_splits(examples)
  data_dir = sources.resolve_data_dir(data_dir)
  version_dir = os.path.join(data_dir, name, version)
  digest = fingerprint(examples, options, list(classes) if classes else None)
  stored = _stored_fingerprint(version_dir)
  if stored == digest:
    return version_dir, False
  if os.path.exists(version_dir):
    raise PrepareError(
        f"--name={name} --version={version}: {version_dir} already holds a dataset prepared from "
        f"other inputs or options; it was left untouched. Give another --version (e.g. a higher "
        f"one: the pipeline reads the newest) or --name, or delete that folder to replace it")
  shapes = check_examples(examples, options)  # before anything is written
  description = f"Prepared by mmdiff_jax.data.prepare from {source}."
  os.makedirs(data_dir, exist_ok=True)
  with sources.file_lock(os.path.join(data_dir, f".{name}.lock")):
    if _stored_fingerprint(version_dir) == digest:  # another process finished it meanwhile
      return version_dir, False
    sources.remove_incomplete(os.path.join(data_dir, name))
    builder = _builder_class(name, version, description)(
        examples=list(examples), options=options, shapes=shapes,
        classes=list(classes) if classes else None, fingerprint_hex=digest, data_dir=data_dir)
    with sources.tfds_output_kept_unless_failing():
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return version_dir, True


# ----------------------------------------------------------------------------------------- command

FLAGS = flags.FLAGS
flags.DEFINE_string("from_folder", None, "Image folder: class sub-folders or images (see --help).")
flags.DEFINE_string("manifest", None, "CSV or JSON manifest with image, label, mask, embedding, "
                    "split columns.")
flags.DEFINE_string("name", None, "Dataset name (then config.data.name).")
flags.DEFINE_string("data_dir", None, "TFDS data dir; default $TFDS_DATA_DIR or "
                    "~/tensorflow_datasets.")
flags.DEFINE_string("version", "1.0.0", "Dataset version (MAJOR.MINOR.PATCH).")
flags.DEFINE_bool("split_folders", False, "--from_folder's first level is the split.")
flags.DEFINE_string("mask_suffix", None, "Masks beside the images: a.png -> a<suffix>.png.")
flags.DEFINE_list("classes", None, "Declared class names (index = position).")
flags.DEFINE_float("holdout", None, "Fraction of examples held out as split 'test'.")
flags.DEFINE_integer("seed", 0, "Seed of --holdout.")
flags.DEFINE_string("size", None, "Stored size: S or HxW; default: as the images are.")
flags.DEFINE_enum("fit", "crop", list(FITS), "With --size: crop (cover, centre crop) or stretch.")
flags.DEFINE_enum("filter", "area", list(FILTERS), "With --size: image resampling (masks: nearest).")
flags.DEFINE_enum("channels", None, ["1", "3"], "Convert every image to 1 (gray) or 3 (RGB).")


def parse_size(text: str | None) -> tuple[int, int] | None:
  """"S" -> (S, S); "HxW" -> (H, W); None -> None."""
  if text is None:
    return None
  match = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
  if not match or int(match.group(1)) < 1 or (match.group(2) and int(match.group(2)) < 1):
    raise PrepareError(f"--size={text!r}: expected S or HxW with positive integers, e.g. 64 or "
                       f"128x256")
  h = int(match.group(1))
  return (h, int(match.group(2) or h))


def main(argv: Sequence[str]) -> None:
  """The command (flags parsed). A bad input raises PrepareError, which the entry point prints as
  one FATAL line (exit status 1), nothing written."""
  if len(argv) > 1:
    raise PrepareError(f"unexpected arguments {list(argv[1:])}: every argument is a --flag=value")
  console.quiet_library_logs()
  if (FLAGS.from_folder is None) == (FLAGS.manifest is None):
    raise PrepareError("expected exactly one of --from_folder=DIR or --manifest=FILE")
  if FLAGS.name is None:
    raise PrepareError("--name is required (the dataset name, then config.data.name)")
  options = Options(size=parse_size(FLAGS.size), fit=FLAGS.fit, filter=FLAGS.filter,
                    channels=int(FLAGS.channels) if FLAGS.channels else None)
  if FLAGS.from_folder is not None:
    source = FLAGS.from_folder
    examples, classes = list_folder(source, split_folders=FLAGS.split_folders,
                                    mask_suffix=FLAGS.mask_suffix, classes=FLAGS.classes)
  else:
    source = FLAGS.manifest
    examples, classes = list_manifest(source, classes=FLAGS.classes)
  if FLAGS.holdout is not None:
    examples = holdout(examples, fraction=FLAGS.holdout, seed=FLAGS.seed)
  folder, written = prepare(examples, name=FLAGS.name, classes=classes, options=options,
                            data_dir=FLAGS.data_dir, version=FLAGS.version,
                            source=os.path.abspath(source))
  counts = {s: sum(e.split == s for e in examples) for s in sorted({e.split for e in examples})}
  state = "prepared" if written else "already prepared from the same inputs (nothing done)"
  print(f"{FLAGS.name}: {state} in {folder}: {counts}"
        + (f", {len(classes)} classes {list(classes)}" if classes else ", unlabelled")
        + f". Train with --config.data.name={FLAGS.name}"
        + (f" --config.data.data_dir={shlex.quote(FLAGS.data_dir)}" if FLAGS.data_dir else ""),
        flush=True)


if __name__ == "__main__":
  app.run(console.exit_on_user_error(main), flags_parser=command_line.parse_flags)
