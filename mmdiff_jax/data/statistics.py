"""Statistics of a training split that a model can be built from (e.g. a data-derived label code)."""

from __future__ import annotations

import numpy as np

from mmdiff_jax.data import pipeline


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
  if len(counts) > num_classes or np.any(counts == 0):
    raise ValueError(f"class_mean label code: classes without examples in the training split: "
                     f"{np.flatnonzero(counts[:num_classes] == 0).tolist()}; labels must lie in "
                     f"[0, {num_classes}) (modalities.<label>.num_classes) and every class occur")
  sums = np.zeros((num_classes, images.shape[1]))
  np.add.at(sums, labels, images)
  codes = sums / counts[:, None] - images.mean(axis=0)
  rms = np.sqrt(np.mean(np.square(codes), axis=1, keepdims=True))
  if np.any(rms < 1e-6):
    raise ValueError(f"class_mean label code: classes {np.flatnonzero(rms[:, 0] < 1e-6).tolist()} "
                     f"have the mean image of the whole split, so no code tells them apart")
  return (codes / rms).astype(np.float32)


def read_class_mean_codes(data_config, *, label_feature: str, num_classes: int) -> np.ndarray:
  """class_mean_codes of the training split (data.train_split, at data.image_size, the training
  stream's preprocessing without its random augmentations)."""
  iterator = pipeline.make_iterator(data_config, split=data_config.train_split,
                                    global_batch_size=1000, seed=0, shuffle=False, num_epochs=1,
                                    drop_remainder=False)
  images, labels = [], []
  for batch in iterator:
    images.append(batch["image"])
    labels.append(batch[label_feature])
  return class_mean_codes(np.concatenate(images), np.concatenate(labels), num_classes=num_classes)
