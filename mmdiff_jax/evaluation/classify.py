"""Image -> label through the joint model: the image is observed, the label is generated."""

from __future__ import annotations

import jax
import numpy as np

from mmdiff_jax.data import pipeline
from mmdiff_jax.sampling.samplers import Sampler


def label_accuracy(sampler: Sampler, params, data_config, *, label_modality: str, num_examples: int,
                   batch_size: int, seed: int = 0, split: str = "test") -> dict[str, float]:
  """Accuracy of labels generated for the first `num_examples` images of `split` (in stored order).

  Returns:
    {"accuracy": fraction correct, "num_examples": count}.
  """
  base = sampler.model.specs[0]
  label_spec = next(s for s in sampler.model.specs if s.name == label_modality)
  num_examples = min(num_examples, pipeline.num_examples(data_config, split))
  iterator = pipeline.make_iterator(data_config, split=split, global_batch_size=batch_size,
                                    seed=seed, shuffle=False, num_epochs=1, drop_remainder=False,
                                    read_threads=0)
  sample = jax.jit(lambda p, r, x: sampler.sample(p, r, x.shape[0], observed={base.name: x}))
  correct = seen = 0
  rng = jax.random.PRNGKey(seed)
  for i, batch in enumerate(iterator):
    if seen >= num_examples:
      break
    images = batch[base.feature][: num_examples - seen]
    labels = batch[label_spec.feature][: num_examples - seen]
    generated = sample(params, jax.random.fold_in(rng, i), images)
    correct += int(np.sum(np.asarray(generated[label_modality]) == labels))
    seen += len(labels)
  return {"accuracy": correct / max(seen, 1), "num_examples": seen}
