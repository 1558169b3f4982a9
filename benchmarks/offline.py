"""Stand-ins for the data-loading packages, so that the benchmarks import mmdiff_jax where those are absent.

The benchmarks build models, random batches and train steps; they never read a dataset. mmdiff_jax imports
its data pipeline (grain, tensorflow_datasets, array_record) at module level all the same, and the GPU
machines' image has none of the three (nor ml_collections, which the configs do need: gpu_all.sh puts the
wheel in benchmarks/wheels/ on the path for that). install() puts a stand-in module into sys.modules for
each of them that cannot be imported (or for all of them with $MMDIFF_BENCH_STUB_DATA=1, to check this
path on a machine that has them): every attribute is a class that can be subclassed, called and used as a
decorator, so the module-level definitions of mmdiff_jax.data import; anything that actually loads data
fails at its first use of a stand-in's result (an AttributeError naming the stand-in).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

DATA_PACKAGES = ("tensorflow_datasets", "grain", "array_record")


class _StandInMeta(type):
  """Attribute access on a stand-in class gives another stand-in class (tfds.core.GeneratorBasedBuilder)."""

  def __getattr__(cls, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    return _stand_in(f"{cls.__qualname__}.{name}")


def _stand_in(qualname: str) -> type:
  def __init__(self, *args, **kwargs):  # tfds.core.Version("1.0.0"), decorators: accept anything
    pass
  return _StandInMeta(qualname.rpartition(".")[2], (), {"__init__": __init__, "__qualname__": qualname,
                                                         "__module__": "benchmarks.offline"})


class _StandInModule(types.ModuleType):

  def __getattr__(self, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    return _stand_in(f"{self.__name__}.{name}")


def install() -> list[str]:
  """Installs the stand-ins that are needed; returns the names stood in for (empty when all import)."""
  force = os.environ.get("MMDIFF_BENCH_STUB_DATA") == "1"
  stood_in = []
  for name in DATA_PACKAGES:
    if name in sys.modules and not isinstance(sys.modules[name], _StandInModule) and not force:
      continue
    if force or importlib.util.find_spec(name) is None:
      module = _StandInModule(name, f"stand-in for {name} (benchmarks/offline.py): no data loading")
      module.__path__ = []  # a package, for `import name.sub` forms
      sys.modules[name] = module
      stood_in.append(name)
  return stood_in


STOOD_IN = install()
