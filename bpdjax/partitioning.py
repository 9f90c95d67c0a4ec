"""Mesh construction and logical-axis sharding, shared by training and decoding.

Parameters and activations carry logical axis names (see model.py); `config.logical_axis_rules`
maps them onto the mesh axes (data, fsdp, tensor). Nothing else in the code names mesh axes.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Resolves the (data, fsdp, tensor) sizes; -1 takes the devices left over.

  Raises ValueError when the shape cannot cover exactly `num_devices` devices.
  """
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"Mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f"Mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices: "
          f"{num_devices} is not divisible by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
        f"{num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  device_array = np.asarray(devices).reshape(shape)
  try:  # Topology-aware placement where jax knows the hardware (TPU slices).
    device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # pylint: disable=broad-except
    pass
  return Mesh(device_array, MESH_AXES)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules) -> Any:
  """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, tuple(tuple(r) for r in rules))


def params_sharding(abstract_boxed_params: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for parameters initialised with nn.with_logical_partitioning."""
  return logical_to_sharding(nn.get_partition_spec(abstract_boxed_params), mesh, rules)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Sharding of a [batch, length] input array."""
  return logical_to_sharding(PartitionSpec("batch", "length"), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def strip_boxes(tree: Any) -> Any:
  """Replaces nn.Partitioned boxes by their values (nn.meta.unbox would add a sharding
  constraint under an active mesh, which abstract shapes outside jit cannot take)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def check_divisible(abstract_boxed_params: Any, mesh: Mesh, rules) -> None:
  """Raises ValueError naming the parameter whose dimension a mesh axis does not divide."""
  specs = nn.get_partition_spec(abstract_boxed_params)
  shardings = logical_to_sharding(specs, mesh, rules)
  values = strip_boxes(abstract_boxed_params)
  flat_values = jax.tree_util.tree_flatten_with_path(values)[0]
  flat_shardings = jax.tree_util.tree_leaves(
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, value), sharding in zip(flat_values, flat_shardings):
    for dim, axes in zip(value.shape, sharding.spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      size = math.prod(mesh.shape[a] for a in axes)
      if dim % size:
        raise ValueError(
            f"Parameter {jax.tree_util.keystr(path)} of shape {value.shape} cannot be sharded: "
            f"dimension {dim} is not divisible by mesh axes {axes} of size {size}")
