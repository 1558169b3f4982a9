"""Device mesh and shardings, from the config.

Mesh axes are ("data", "fsdp"). The batch is split over both. Parameters carry logical axis names
(mmdiff_jax/models/layers.py); with FSDP on, "channels_out" (else "channels_in") dimensions are split over
"fsdp", otherwise parameters are replicated. A dimension that the axis size does not divide stays whole.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmdiff_jax.errors import BadValueError

MESH_AXES = ("data", "fsdp")
BATCH_SPEC = P(MESH_AXES)
# Logical names tried in order for the "fsdp" mesh axis.
FSDP_LOGICAL_AXES = ("channels_out", "channels_in")


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> Mesh:
  """A ("data", "fsdp") mesh; one size may be -1 (filled from the device count).

  Raises:
    ValueError naming config.mesh when the sizes do not match the devices.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  unknown = set(mesh_config) - set(MESH_AXES)
  if unknown:
    raise BadValueError(f"config.mesh: unknown axes {sorted(unknown)}; expected {list(MESH_AXES)}")
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise BadValueError(f"config.mesh: got {dict(zip(MESH_AXES, sizes))}; expected positive sizes "
                        f"with at most one -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if devices.size % known:
      raise BadValueError(f"config.mesh: {dict(zip(MESH_AXES, sizes))} cannot fill {devices.size} "
                          f"devices ({devices.size} is not divisible by {known})")
    sizes[sizes.index(-1)] = devices.size // known
  if math.prod(sizes) != devices.size:
    raise BadValueError(f"config.mesh: {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices, "
                        f"but {devices.size} are available")
  return Mesh(devices.reshape(sizes), MESH_AXES)


def _param_spec(names: tuple, shape: tuple[int, ...], mesh: Mesh, fsdp: bool) -> P:
  if not fsdp or mesh.shape["fsdp"] == 1:
    return P()
  for logical in FSDP_LOGICAL_AXES:
    if logical in names:
      dim = names.index(logical)
      if shape[dim] % mesh.shape["fsdp"] == 0:
        return P(*[("fsdp" if i == dim else None) for i in range(len(shape))])
  return P()


def tree_shardings(abstract_boxed: Any, mesh: Mesh, *, fsdp: bool) -> Any:
  """NamedShardings for a tree whose parameters are flax Partitioned boxes (from jax.eval_shape).

  The result has the structure of the unboxed tree; leaves without logical names are replicated.
  """
  def to_sharding(leaf):
    if isinstance(leaf, nn.Partitioned):
      return NamedSharding(mesh, _param_spec(tuple(leaf.names), leaf.value.shape, mesh, fsdp))
    return NamedSharding(mesh, P())
  return jax.tree.map(to_sharding, abstract_boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, BATCH_SPEC)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays sharded over the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
