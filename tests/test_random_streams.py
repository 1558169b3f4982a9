"""Named random streams: distinct per name and per seed, and no stream of one seed is another's."""

import itertools

import jax
import numpy as np
import pytest

from mmdiff_jax import random_streams


def _data(key):
  return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_streams_differ_across_names_and_seeds():
  keys = {(seed, name): _data(random_streams.key(seed, name))
          for seed, name in itertools.product(range(3), random_streams.STREAMS)}
  assert len(set(keys.values())) == len(keys)
  # The old `seed + k` offsets made seed 0's grids draw what seed 1's parameters drew.
  assert _data(random_streams.key(0, "sample_grids")) != _data(random_streams.key(1, "params"))
  assert _data(random_streams.key(0, "bound")) == keys[(0, "bound")]  # a stream is reproducible


def test_an_unknown_stream_is_named():
  with pytest.raises(ValueError, match=r"random stream 'noise' is not one of \('params'"):
    random_streams.key(0, "noise")
  with pytest.raises(ValueError, match=r"random stream 'evaluator/' is not one of .* or evaluator/"):
    random_streams.key(0, "evaluator/")


def test_an_added_evaluator_has_a_stream_of_its_own():
  own = _data(random_streams.key(0, "evaluator/depth_error"))
  assert own == _data(random_streams.key(0, "evaluator/depth_error"))
  assert own not in {_data(random_streams.key(0, name)) for name in random_streams.STREAMS}
  assert own != _data(random_streams.key(0, "evaluator/other"))
