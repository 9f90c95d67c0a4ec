"""Parameter trees of a Transformer: their abstract shapes, a structure check, a checksum."""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from bpdjax import model as model_lib
from bpdjax import partitioning


def abstract_params(model: model_lib.Transformer,
                    keep: Optional[Callable[[str], bool]] = None) -> dict:
  """ShapeDtypeStructs of the model's parameters on the default device (top-level entries
  `keep(name)` only, when given)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          partitioning.strip_boxes(boxed))
  if keep is not None:
    abstract = {k: v for k, v in abstract.items() if keep(k)}
  return abstract


def check_params(cfg: model_lib.TransformerConfig, params: Any) -> None:
  """Raises ValueError unless params has exactly the tree and shapes Transformer(cfg) expects."""
  expected = abstract_params(model_lib.Transformer(cfg))
  want = {jax.tree_util.keystr(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  got = {jax.tree_util.keystr(k): tuple(np.shape(v))
         for k, v in jax.tree_util.tree_leaves_with_path(params)}
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise ValueError(f"Parameters do not match the model: missing {missing}, unexpected {extra}")
  for name, shape in want.items():
    if got[name] != shape:
      raise ValueError(f"Parameter {name} has shape {got[name]}, expected {shape}")


def params_checksum(params: Any, exclude_prefix: Optional[str] = "head_") -> str:
  """sha256 (hex) of a parameter tree's names, dtypes, shapes and bytes, in sorted name order.

  Top-level entries whose name starts with `exclude_prefix` (default: the block heads) are
  left out, so the checksum of a model's base does not depend on its heads; None includes all.
  Bitwise: any change to any value (even -0.0 vs 0.0) changes it. Works on host, device and
  sharded arrays (gathered from all processes when not fully addressable).
  """
  digest = hashlib.sha256()
  named = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    top = path[0]
    top = getattr(top, "key", getattr(top, "name", str(top)))
    if exclude_prefix and str(top).startswith(exclude_prefix):
      continue
    named.append((jax.tree_util.keystr(path), leaf))
  for name, leaf in sorted(named, key=lambda x: x[0]):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    arr = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
    digest.update(arr.tobytes())
  return digest.hexdigest()


@jax.jit
def _finite_leaves(tree):
  return jax.tree.map(
      lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
      else jnp.bool_(True), tree)


def nonfinite_leaves(tree: Any) -> list[str]:
  """Names of the leaves of a parameter (or state) tree holding a NaN or an infinity, in tree
  order; [] when all are finite. One reduction per leaf on device (sharded arrays too)."""
  flags = jax.device_get(_finite_leaves(tree))
  return [jax.tree_util.keystr(path)
          for path, ok in jax.tree_util.tree_leaves_with_path(flags) if not bool(ok)]
