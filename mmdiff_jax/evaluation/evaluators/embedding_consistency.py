"""The evaluator `embedding_consistency`, found by this file's name (evaluators/__init__.py)."""

from __future__ import annotations

import numpy as np

from mmdiff_jax.data import fashion_mnist, pipeline, sources
from mmdiff_jax.data import images as images_lib
from mmdiff_jax.evaluation import harness, metrics
from mmdiff_jax.evaluation.evaluators import Evaluator
from mmdiff_jax.models import alexnet_features as features


def embedding_consistency(experiment, params, config) -> dict[str, float]:
  """Joint samples: cosine similarity between the generated embedding and the embedding of the
  generated image (features.image_embedding, as precomputed in the dataset, on the image cropped back
  to the dataset's stored size); beside it the same with the pairs shuffled, the level that says
  nothing about pairing (AlexNet's post-ReLU features share a positive mean direction: about 0.55
  for random pairs of test images, 0.71 within a class)."""
  base, emb = experiment.specs[0], harness.spec_of(experiment, "embedding")
  native_size = pipeline.native_image_size(config.data, config.data.eval_split)
  generated, of_images = [], []
  for out in harness.generate(experiment, params, config, "embedding_pairs"):
    generated.append(np.asarray(out[emb.name]))
    of_images.append(features.image_embedding(
        images_lib.native_images(np.asarray(out[base.name]), native_size=native_size)))
  generated, of_images = np.concatenate(generated), np.concatenate(of_images)
  cosines = metrics.cosine_similarity(generated, of_images)
  # Chance level: each generated embedding vs the embedding of another generated image.
  shuffled = metrics.cosine_similarity(generated, np.roll(of_images, 1, axis=0))
  return harness.with_bootstrap(f"{emb.name}_cosine", cosines,
                                **{f"{emb.name}_cosine_shuffled": float(np.mean(shuffled))})


EVALUATOR = Evaluator(
    name="embedding_consistency", evaluate=embedding_consistency,
    needs="embedding", generative=True,
    unavailable=lambda config:
    None if sources.unversioned_name(config.data.name) == fashion_mnist.EMBEDDING_NAME else
    f"compares with the AlexNet features of {fashion_mnist.EMBEDDING_NAME}'s embeddings; "
    f"data.name={config.data.name!r} has embeddings of its own")
