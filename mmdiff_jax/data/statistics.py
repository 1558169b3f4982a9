"""Statistics of a training split that a model can be built from (e.g. a data-derived label code)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from mmdiff_jax.data import pipeline
from mmdiff_jax.errors import BadValueError


def class_mean_codes(images: np.ndarray, labels: np.ndarray, *, num_classes: int) -> np.ndarray:
  """Each class's mean image minus the mean of all images, at unit RMS per class.

  A label code that looks like the class it stands for (a garment's silhouette against the average
  garment), instead of a white-noise pattern the denoiser could take for image texture.

  Args:
    images: float (N, H, W, C); labels: int (N,) in [0, num_classes).
  Returns:
    float32 (num_classes, H * W * C).
  Raises:
    ValueError: a class without examples, or one whose mean image is the overall mean (no code).
  """
  images = np.asarray(images, np.float64).reshape(len(images), -1)
  labels = np.asarray(labels)
  counts = np.bincount(labels, minlength=num_classes)
  if len(counts) > num_classes:
    raise BadValueError(f"class_mean label code: the training split has labels up to {len(counts) - 1}, "
                        f"but modalities.<label>.num_classes = {num_classes} expects labels in "
                        f"[0, {num_classes}): set it to the dataset's class count")
  if np.any(counts == 0):
    raise BadValueError(f"class_mean label code: classes without examples in the training split: "
                        f"{np.flatnonzero(counts == 0).tolist()}; every class in [0, {num_classes}) "
                     f"(modalities.<label>.num_classes) must occur")
  sums = np.zeros((num_classes, images.shape[1]))
  np.add.at(sums, labels, images)
  codes = sums / counts[:, None] - images.mean(axis=0)
  rms = np.sqrt(np.mean(np.square(codes), axis=1, keepdims=True))
  if np.any(rms < 1e-6):
    raise BadValueError(f"class_mean label code: classes {np.flatnonzero(rms[:, 0] < 1e-6).tolist()} "
                        f"have the mean image of the whole split, so no code tells them apart")
  return (codes / rms).astype(np.float32)


# Examples the class-mean code is averaged over: the code is a fixed pattern that tells the classes
# apart, not an estimate that needs the whole split (with 1000 per class its pixels are within ~3% of
# a pixel's spread of the full split's), and a large split is not read in full at every start.
CLASS_MEAN_EXAMPLES = 10_000


def read_class_mean_codes(data_config, *, label_feature: str, num_classes: int,
                          max_examples: int = CLASS_MEAN_EXAMPLES,
                          check_first_batch: Callable[[dict], None] | None = None) -> np.ndarray:
  """class_mean_codes of `max_examples` examples of the training split drawn at random (a fixed
  draw; more if a class has not occurred by then, all if the split is smaller), at data.image_size,
  with the training stream's preprocessing but not its random augmentations. `check_first_batch`
  (e.g. data.checks.check_batch) raises if the split's batches do not hold what the model needs."""
  iterator = pipeline.make_iterator(data_config, split=data_config.train_split,
                                    global_batch_size=1000, seed=0, shuffle=True, num_epochs=1,
                                    drop_remainder=False)
  images, labels, seen = [], [], np.zeros(num_classes, bool)
  for batch in iterator:
    if check_first_batch is not None and not images:
      check_first_batch(batch)
    images.append(batch["image"])
    labels.append(batch[label_feature])
    seen[np.asarray(labels[-1])[np.asarray(labels[-1]) < num_classes]] = True
    if sum(len(x) for x in labels) >= max_examples and seen.all():
      break
  return class_mean_codes(np.concatenate(images), np.concatenate(labels), num_classes=num_classes)
