"""The Transformer's layers: RMSNorm, rotary embeddings, attention masks, attention, MLP, block.

One config-driven block covers the decoder families bpdjax imports (see importers/hf_config.py):
  Llama    pre-norm block, SwiGLU, RoPE
  Mistral  + sliding-window attention on every layer
  Qwen2    + biases on q, k, v
  Qwen3    + RMSNorm of q and k per head (before RoPE)
  Gemma 2  + GeGLU (tanh GELU), norms after attention and MLP too, attention-logit soft-capping,
           query scaling by query_pre_attn_scalar, sliding window on some layers
  Gemma 3  + q/k RMSNorm, a separate RoPE base (and scaling) for the sliding-window layers
Gemma's RMSNorm weight w scales by (1 + w); the importer stores 1 + w, so one RMSNorm serves all.

`config` below is a model.TransformerConfig (not imported: model.py imports this module).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bpdjax import cache as cache_lib

# swiglu: silu(gate) * up; geglu: gelu_tanh(gate) * up (Gemma); gelu: gelu_tanh(up), no gate.
ACTIVATIONS = ("swiglu", "gelu", "geglu")


def dense_init():
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class RMSNorm(nn.Module):
  """RMSNorm over the last axis, computed in float32; `axis_name` is the scale's logical axis."""
  eps: float
  dtype: jnp.dtype = jnp.float32
  axis_name: str = "act_embed"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             (self.axis_name,)),
                       (x.shape[-1],), jnp.float32)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


def rotary_embedding(x: jax.Array, positions: jax.Array, theta: float,
                     factor: float = 1.0) -> jax.Array:
  """Applies rotary embeddings (Hugging Face Llama's half-split convention).

  Args:
    x: [B, L, N, D] queries or keys.
    positions: [B, L] integer positions.
    theta: the RoPE base.
    factor: linear RoPE scaling (positions divided by it; 1 = none).
  Returns:
    [B, L, N, D], same dtype as x.
  """
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))     # [D/2]
  if factor != 1.0:
    inv_freq = inv_freq / factor
  angles = positions.astype(jnp.float32)[..., None] * inv_freq                  # [B, L, D/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]            # [B, L, 1, D]
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (xf * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def attention_mask(q_slots: jax.Array, k_slots: jax.Array, committed: jax.Array,
                   block_mask: Optional[jax.Array], segment_ids: Optional[jax.Array]) -> jax.Array:
  """Which keys each query may see.

  Args:
    q_slots: [B, L] cache slot of each new token (committed length + index in the block).
    k_slots: [S] slot index of each key.
    committed: [B] committed length per row; slots below it hold the accepted prefix.
    block_mask: [B, L, L] bool, which new tokens a new token sees (None = causal).
    segment_ids: [B, L] packed-segment ids (training without a cache), or None.
  Returns:
    [B, L, S] bool.
  """
  in_prefix = k_slots[None, None, :] < committed[:, None, None]
  if block_mask is None:
    in_block = (k_slots[None, None, :] <= q_slots[:, :, None]) & ~in_prefix
  else:
    rel = k_slots[None, :] - committed[:, None]                                  # [B, S]
    valid = (rel >= 0) & (rel < q_slots.shape[1])
    picked = jnp.take_along_axis(
        block_mask, jnp.broadcast_to(jnp.clip(rel, 0, q_slots.shape[1] - 1)[:, None, :],
                                     (block_mask.shape[0], q_slots.shape[1], rel.shape[1])),
        axis=2)
    in_block = picked & valid[:, None, :]
  mask = in_prefix | in_block
  if segment_ids is not None:
    mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
  return mask


def key_positions(positions: jax.Array, k_slots: jax.Array, committed: jax.Array) -> jax.Array:
  """The position of each key of a cache: [B, S].

  A committed slot s holds the token at position s; a slot of the block being written holds the
  position given for that token (a tree node's is committed length + its depth, not its slot).

  Args:
    positions: [B, L] positions of the new tokens; k_slots: [S]; committed: [B].
  """
  rel = k_slots[None, :] - committed[:, None]                                    # [B, S]
  in_block = (rel >= 0) & (rel < positions.shape[1])
  block_pos = jnp.take_along_axis(positions, jnp.clip(rel, 0, positions.shape[1] - 1), axis=1)
  return jnp.where(in_block, block_pos, k_slots[None, :])


def window_mask(q_positions: jax.Array, k_positions: jax.Array, window: int) -> jax.Array:
  """[B, L, S] bool: keys fewer than `window` positions behind the query (transformers'
  sliding window: key position > query position - window). Combined with `attention_mask` by
  AND, a tree node sees the window of its own path: its ancestors' positions are their depths."""
  return (q_positions[:, :, None] - k_positions[:, None, :]) < window


def soft_cap(x: jax.Array, cap: float) -> jax.Array:
  """cap * tanh(x / cap) in float32 (Gemma 2's logit soft-capping); x unchanged when cap is 0."""
  if not cap:
    return x
  return cap * jnp.tanh(x.astype(jnp.float32) / cap)


class Attention(nn.Module):
  """Grouped-query attention; `sliding` picks the sliding-window RoPE base (Gemma 3)."""
  config: Any
  sliding: bool = False

  @nn.compact
  def __call__(self, x, positions, mask, layer_cache: Optional[cache_lib.LayerCache]):
    cfg = self.config
    dtype = cfg.jnp_dtype
    # Kernels are declared directly (not nn.DenseGeneral) so that their logical sharding applies
    # to the 3-D shape at init time.
    def project(name, shape, names, in_axis, out_axis, spec, operand):
      init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                              in_axis=in_axis, out_axis=out_axis)
      kernel = self.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)
      return jnp.einsum(spec, operand, kernel.astype(dtype))

    def bias(name, y, names):
      if not cfg.qkv_bias:
        return y
      b = self.param(f"{name}_bias", nn.with_logical_partitioning(nn.initializers.zeros, names),
                     y.shape[2:], jnp.float32)
      return y + b.astype(dtype)

    d, hd = cfg.emb_dim, cfg.head_dim
    q_names, kv_names = ("heads", "head_dim"), ("kv_heads", "head_dim")
    q = bias("query", project("query", (d, cfg.num_heads, hd), ("embed",) + q_names, 0, (1, 2),
                              "bld,dhk->blhk", x), q_names)                     # [B, L, H, Dh]
    k = bias("key", project("key", (d, cfg.num_kv_heads, hd), ("embed",) + kv_names, 0, (1, 2),
                            "bld,dhk->blhk", x), kv_names)                      # [B, L, K, Dh]
    v = bias("value", project("value", (d, cfg.num_kv_heads, hd), ("embed",) + kv_names, 0,
                              (1, 2), "bld,dhk->blhk", x), kv_names)
    if cfg.qk_norm:
      q = RMSNorm(cfg.norm_eps, dtype, "head_dim", name="query_norm")(q)
      k = RMSNorm(cfg.norm_eps, dtype, "head_dim", name="key_norm")(k)
    theta, factor = cfg.rope_theta, cfg.rope_factor
    if self.sliding and cfg.local_rope_theta:
      theta, factor = cfg.local_rope_theta, 1.0
    q = rotary_embedding(q, positions, theta, factor)
    k = rotary_embedding(k, positions, theta, factor)

    new_layer_cache = None
    if layer_cache is not None:
      new_layer_cache = layer_cache.write(k, v)
      k, v = new_layer_cache.k.astype(dtype), new_layer_cache.v.astype(dtype)     # [B, S, K, Dh]

    b, l, h, dh = q.shape
    groups = h // cfg.num_kv_heads
    q = q.reshape(b, l, cfg.num_kv_heads, groups, dh)
    scale = float(cfg.query_pre_attn_scalar or dh) ** -0.5
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k, preferred_element_type=jnp.float32) * scale
    scores = soft_cap(scores, cfg.attn_logit_softcap)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgls,bskd->blkgd", probs, v).reshape(b, l, h, dh)
    out = project("out", (h, dh, d), ("heads", "head_dim", "embed"), (0, 1), 2,
                  "blhk,hkd->bld", out)
    return out, new_layer_cache


class Mlp(nn.Module):
  config: Any

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype = cfg.jnp_dtype
    dense = lambda features, names, name: nn.Dense(
        features, dtype=dtype, use_bias=False, name=name,
        kernel_init=nn.with_logical_partitioning(dense_init(), names))
    if cfg.mlp_activation == "gelu":
      hidden = nn.gelu(dense(cfg.mlp_dim, ("embed", "mlp"), "up")(x))
    else:
      act = nn.silu if cfg.mlp_activation == "swiglu" else lambda y: nn.gelu(y, approximate=True)
      hidden = act(dense(cfg.mlp_dim, ("embed", "mlp"), "gate")(x)) * dense(
          cfg.mlp_dim, ("embed", "mlp"), "up")(x)
    return dense(cfg.emb_dim, ("mlp", "embed"), "down")(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm block; with config.post_norms (Gemma 2/3) the attention and MLP outputs are
  normalised again before they join the residual stream."""
  config: Any
  sliding: bool = False

  @nn.compact
  def __call__(self, x, positions, mask, layer_cache):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name=name)
    attn, layer_cache = Attention(cfg, self.sliding, name="attention")(
        norm("attention_norm")(x), positions, mask, layer_cache)
    if cfg.post_norms:
      attn = norm("post_attention_norm")(attn)
    x = x + attn
    mlp = Mlp(cfg, name="mlp")(norm("mlp_norm")(x))
    if cfg.post_norms:
      mlp = norm("post_mlp_norm")(mlp)
    x = x + mlp
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    return x, layer_cache
