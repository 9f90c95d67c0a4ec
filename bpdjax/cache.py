"""Explicit key/value cache: a pytree with per-row committed lengths.

A model call writes its L new tokens at slots `lengths + arange(L)` of each row but does not move
`lengths`; the decoder then commits what it accepted (`commit`) or moves a row back
(`set_lengths`). Slots at or beyond `lengths` are never attended to except by the block being
written, so rolling back needs no data movement.
"""
from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class LayerCache:
  """One layer's view. k, v: [B, S, K, Dh]; lengths: [B] int32."""
  k: jax.Array
  v: jax.Array
  lengths: jax.Array

  def write(self, k_new: jax.Array, v_new: jax.Array) -> "LayerCache":
    """Writes [B, L, K, Dh] at slots lengths..lengths+L-1; slots past S are dropped."""
    b, l = k_new.shape[:2]
    slots = self.lengths[:, None] + jnp.arange(l)[None, :]                      # [B, L]
    rows = jnp.arange(b)[:, None]
    k = self.k.at[rows, slots].set(k_new.astype(self.k.dtype), mode="drop")
    v = self.v.at[rows, slots].set(v_new.astype(self.v.dtype), mode="drop")
    return self.replace(k=k, v=v)


@flax.struct.dataclass
class KVCache:
  """All layers. k, v: tuples of num_layers arrays [B, S, K, Dh]; lengths: [B] int32."""
  k: tuple
  v: tuple
  lengths: jax.Array

  @property
  def max_len(self) -> int:
    return self.k[0].shape[1]

  @property
  def batch_size(self) -> int:
    return self.k[0].shape[0]

  def layer(self, i: int) -> LayerCache:
    return LayerCache(k=self.k[i], v=self.v[i], lengths=self.lengths)

  def replace_layers(self, layers: Sequence[LayerCache]) -> "KVCache":
    return self.replace(k=tuple(c.k for c in layers), v=tuple(c.v for c in layers))


def init(num_layers: int, batch_size: int, max_len: int, num_kv_heads: int, head_dim: int,
         dtype=jnp.float32) -> KVCache:
  """An empty cache of S = max_len slots per row."""
  shape = (batch_size, max_len, num_kv_heads, head_dim)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
  return KVCache(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                 lengths=jnp.zeros((batch_size,), jnp.int32))


def init_for_model(config, batch_size: int, max_len: int) -> KVCache:
  """An empty cache shaped for a `TransformerConfig`."""
  return init(config.num_layers, batch_size, max_len, config.num_kv_heads, config.head_dim,
              config.jnp_dtype)


def commit(cache: KVCache, num_new: jax.Array) -> KVCache:
  """Keeps the first num_new [B] slots of the block last written to each row."""
  return cache.replace(lengths=jnp.minimum(cache.lengths + num_new, cache.max_len))


def set_lengths(cache: KVCache, lengths: jax.Array) -> KVCache:
  """Sets each row's committed length [B] (a roll back when smaller)."""
  return cache.replace(lengths=jnp.asarray(lengths, jnp.int32))


def gather_block(cache: KVCache, offsets: jax.Array) -> KVCache:
  """Compacts a written block: slot lengths+j takes what was written at slot lengths+offsets[:, j].

  Used when the accepted tokens are not the block's first slots (a tree path, or the winning row
  of several drafts). offsets: [B, n] int32, relative to each row's committed length.
  """
  rows = jnp.arange(cache.batch_size)[:, None]
  src = cache.lengths[:, None] + offsets
  dst = cache.lengths[:, None] + jnp.arange(offsets.shape[1])[None, :]
  src = jnp.clip(src, 0, cache.max_len - 1)

  def move(x):
    return x.at[rows, dst].set(x[rows, src], mode="drop")

  return cache.replace(k=tuple(move(x) for x in cache.k), v=tuple(move(x) for x in cache.v))
