"""Named random streams: every random draw of a run starts from `key(seed, name)`.

A stream is the seed folded with a fixed number derived from its name. Two uses of one seed never
share draws by accident (as `seed + 1` for one use would share them with the next run's `seed`), and a
new use takes a new name, not the next free offset. The input pipeline's numpy draws (crops, flips,
derived features) have streams of their own in mmdiff_jax/data.
"""

from __future__ import annotations

import zlib

import jax

STREAMS = (
    "params",  # parameter initialisation
    "train_steps",  # per-step noise, timesteps and dropout (the train state's rng)
    "sample_grids",  # the grids written during and after training
    "sample_export",  # --mode=sample
    "generation",  # evaluators' generated samples; given-label samples share it, so that a model
                   # that ignores its label scores alike on both
    "segmentation_pairs",  # joint (image, map) samples of segmentation_agreement
    "embedding_pairs",  # joint (image, embedding) samples of embedding_consistency
    "label_agreement",  # joint (image, label) samples of label_agreement
    "image_to_label",  # label_accuracy
    "label_by_bound",  # label_accuracy_by_bound's timesteps and noise
    "image_to_segmentation",  # segmentation_miou
    "inpainting",  # every inpainting evaluator (the same draws for each method)
    "bound",  # the variational bound's timesteps and noise
)
# An evaluator added by a user (mmdiff_jax/evaluation/evaluators/) draws from "evaluator/<its name>".
EVALUATOR_PREFIX = "evaluator/"


def key(seed: int, name: str) -> jax.Array:
  """The PRNG key of stream `name` (one of STREAMS, or "evaluator/<name>") for `seed`."""
  own = name.startswith(EVALUATOR_PREFIX) and len(name) > len(EVALUATOR_PREFIX)
  if name not in STREAMS and not own:
    raise ValueError(f"random stream {name!r} is not one of {STREAMS} or {EVALUATOR_PREFIX}<name>")
  return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)
