"""Writing data-derived label codes (encoder "class_mean") into a freshly initialised train state."""

from __future__ import annotations

import functools

from mmdiff_jax.data.checks import check_batch, training_source
from mmdiff_jax.data.statistics import CLASS_MEAN_EXAMPLES, read_class_mean_codes
from mmdiff_jax.errors import BadValueError
from mmdiff_jax.multihost import place


def with_class_mean_codes(state, experiment, config):
  """`state` with the "codes" of every "class_mean" encoder (in params and EMA params) set to the
  training split's class-mean code; unchanged if there is none. Works on sharded, multi-process
  arrays (each process fills its own shards)."""
  specs = [s for s in experiment.specs if s.is_aggregated and s.encoder == "class_mean"]
  if not specs:
    return state
  params, ema = dict(state.params), dict(state.ema_params)
  for spec in specs:
    name = f"encoders_{spec.name}"
    # The training loop's check of a batch, on the first batch read here: a dataset without labels,
    # or with other image shapes, gets the loop's error naming the feature, not a failure in here.
    check = functools.partial(check_batch, specs=experiment.specs, z_shape=experiment.model.z_shape,
                              where=training_source(config.data), ignore_label=config.data.ignore_label)
    table = read_class_mean_codes(config.data, label_feature=spec.feature,
                                  num_classes=spec.num_classes, check_first_batch=check)
    old = params[name]["codes"]
    if table.shape != old.shape:
      raise BadValueError(f"modalities.{spec.name}.encoder='class_mean': the training split's images "
                          f"give codes of shape {table.shape}, the model's are {old.shape} (a code is "
                          f"a class's mean image: check data.image_size={config.data.image_size} and "
                          f"data.channels={config.data.channels} against the dataset's images)")
    # Two arrays, not one shared: the train step donates the state's buffers.
    params[name] = {**params[name], "codes": place(table, old)}
    ema[name] = {**ema[name], "codes": place(table, old)}
    print(f"Label code of '{spec.name}': class means of up to {CLASS_MEAN_EXAMPLES} random examples of "
          f"{config.data.train_split} (frozen)", flush=True)
  return state.replace(params=params, ema_params=ema)
