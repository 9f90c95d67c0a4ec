"""Decoder-only Transformer with h block-prediction heads (Stern et al. 2018; Kim et al. 2024).

The model maps tokens to logits of every head; it never samples. Attention either runs over the
given sequence (training; packed segments are kept apart) or against an explicit `KVCache`
(decoding): the new tokens are written after each row's committed length and attend to the
committed prefix plus, among themselves, whatever `block_mask` allows (causal by default).

Logical axis names on parameters and activations (see `partitioning.py`):
  batch, length, embed, act_embed, vocab, heads, kv_heads, head_dim, mlp, head_mlp.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bpdjax import cache as cache_lib
from bpdjax import heads as heads_lib

_HEAD_TYPES = ("ffn", "medusa") + heads_lib.CONDITIONED_HEAD_TYPES
_ACTIVATIONS = ("swiglu", "gelu")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static model hyperparameters (hashable, so it can sit inside jitted closures)."""
  vocab_size: int
  num_layers: int
  emb_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_len: int
  num_heads_bpd: int
  mlp_activation: str = "swiglu"
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  head_type: str = "ffn"
  head_hidden_dim: int = 1024
  markov_rank: int = 0        # > 0: heads 2..h get a rank-r bigram correction (heads.py).
  dtype: str = "float32"

  @classmethod
  def from_config(cls, model_config) -> "TransformerConfig":
    """Builds from the `model` ConfigDict; unknown fields there are an error."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(model_config)
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f"Unknown model config field(s): {unknown}")
    return cls(**values)

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)


def _dense_init():
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class RMSNorm(nn.Module):
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("act_embed",)),
                       (x.shape[-1],), jnp.float32)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


def rotary_embedding(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Applies rotary embeddings (Hugging Face Llama's half-split convention).

  Args:
    x: [B, L, N, D] queries or keys.
    positions: [B, L] integer positions.
  Returns:
    [B, L, N, D], same dtype as x.
  """
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))     # [D/2]
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


class Attention(nn.Module):
  config: TransformerConfig

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

    d, hd = cfg.emb_dim, cfg.head_dim
    q = project("query", (d, cfg.num_heads, hd), ("embed", "heads", "head_dim"), 0, (1, 2),
                "bld,dhk->blhk", x)                                              # [B, L, H, Dh]
    k = project("key", (d, cfg.num_kv_heads, hd), ("embed", "kv_heads", "head_dim"), 0, (1, 2),
                "bld,dhk->blhk", x)                                              # [B, L, K, Dh]
    v = project("value", (d, cfg.num_kv_heads, hd), ("embed", "kv_heads", "head_dim"), 0, (1, 2),
                "bld,dhk->blhk", x)
    q = rotary_embedding(q, positions, cfg.rope_theta)
    k = rotary_embedding(k, positions, cfg.rope_theta)

    new_layer_cache = None
    if layer_cache is not None:
      new_layer_cache = layer_cache.write(k, v)
      k, v = new_layer_cache.k.astype(dtype), new_layer_cache.v.astype(dtype)     # [B, S, K, Dh]

    b, l, h, dh = q.shape
    groups = h // cfg.num_kv_heads
    q = q.reshape(b, l, cfg.num_kv_heads, groups, dh)
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k,
                        preferred_element_type=jnp.float32) / jnp.sqrt(dh).astype(jnp.float32)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgls,bskd->blkgd", probs, v).reshape(b, l, h, dh)
    out = project("out", (h, dh, d), ("heads", "head_dim", "embed"), (0, 1), 2,
                  "blhk,hkd->bld", out)
    return out, new_layer_cache


class Mlp(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype = cfg.jnp_dtype
    dense = lambda features, names, name: nn.Dense(
        features, dtype=dtype, use_bias=False, name=name,
        kernel_init=nn.with_logical_partitioning(_dense_init(), names))
    if cfg.mlp_activation == "swiglu":
      hidden = nn.silu(dense(cfg.mlp_dim, ("embed", "mlp"), "gate")(x)) * dense(
          cfg.mlp_dim, ("embed", "mlp"), "up")(x)
    else:
      hidden = nn.gelu(dense(cfg.mlp_dim, ("embed", "mlp"), "up")(x))
    return dense(cfg.emb_dim, ("mlp", "embed"), "down")(hidden)


class DecoderLayer(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, positions, mask, layer_cache):
    cfg = self.config
    attn, layer_cache = Attention(cfg, name="attention")(
        RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="attention_norm")(x), positions, mask, layer_cache)
    x = x + attn
    x = x + Mlp(cfg, name="mlp")(RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="mlp_norm")(x))
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    return x, layer_cache


class FfnHead(nn.Module):
  """The paper's block head: one FFN with a single hidden layer and a residual connection.

  The output layer starts at zero, so every head starts as the plain next-token head.
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    hidden = nn.Dense(cfg.head_hidden_dim, dtype=cfg.jnp_dtype, use_bias=True, name="hidden",
                      kernel_init=nn.with_logical_partitioning(_dense_init(), ("embed", "head_mlp")),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("head_mlp",)))(x)
    out = nn.Dense(cfg.emb_dim, dtype=cfg.jnp_dtype, use_bias=True, name="output",
                   kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("head_mlp", "embed")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(
                       nn.relu(hidden))
    return x + out


class MedusaHead(nn.Module):
  """Medusa's head: ResBlock (zero-initialised linear + SiLU + residual), own vocabulary projection."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    res = nn.Dense(cfg.emb_dim, dtype=cfg.jnp_dtype, use_bias=True, name="resblock",
                   kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "act_embed")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("act_embed",)))(x)
    x = x + nn.silu(res)
    return nn.Dense(cfg.vocab_size, dtype=cfg.jnp_dtype, use_bias=False, name="vocab",
                    kernel_init=nn.with_logical_partitioning(_dense_init(), ("embed", "vocab")))(x)


class Transformer(nn.Module):
  """The blockwise parallel LM.

  __call__(tokens [B, L], positions [B, L], segment_ids [B, L] | None, cache | None,
           block_mask [B, L, L] | None) -> (logits [B, L, h, V] float32, cache | None)

  With a cache, the L tokens are written at slots `cache.lengths + arange(L)`; the returned cache
  holds them but its `lengths` are unchanged: the caller commits what it accepts.

  Decoding calls the two halves apart (`hidden_states`, then `head_logits` for the heads it
  needs), since the h vocabulary projections can cost more than the layers.
  """
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.embedding = nn.Embed(
        cfg.vocab_size, cfg.emb_dim, dtype=cfg.jnp_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
        name="embedding")
    self.layers = [DecoderLayer(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]
    self.final_norm = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="final_norm")
    if not cfg.tie_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, dtype=cfg.jnp_dtype, use_bias=False, name="lm_head",
                              kernel_init=nn.with_logical_partitioning(_dense_init(), ("embed", "vocab")))
    if cfg.head_type == "ffn":
      self.heads = [FfnHead(cfg, name=f"head_{i + 1}") for i in range(cfg.num_heads_bpd)]
    elif cfg.head_type == "sequential":  # Head 1 reads no drafted token: an FFN head.
      self.heads = [FfnHead(cfg, name="head_1")] + [
          heads_lib.SequentialHead(cfg, name=f"head_{i + 1}") for i in range(1, cfg.num_heads_bpd)]
    else:  # Medusa: head 1 is the base LM head; heads 2..h have their own projections.
      self.heads = [MedusaHead(cfg, name=f"head_{i + 1}") for i in range(1, cfg.num_heads_bpd)]
    self.markov = [heads_lib.MarkovCorrection(cfg, name=f"head_{i + 1}_markov")
                   for i in range(1, cfg.num_heads_bpd if cfg.markov_rank > 0 else 1)]

  def _vocab_logits(self, x):
    if self.config.tie_embeddings:
      return self.embedding.attend(x)
    return self.lm_head(x)

  def hidden_states(self, tokens, positions, segment_ids=None, cache=None, block_mask=None):
    """The final (normalised) hidden states [B, L, D] that feed the heads, and the cache."""
    x = self.embedding(tokens)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    b, l = tokens.shape
    if cache is None:
      committed = jnp.zeros((b,), jnp.int32)
      k_slots = jnp.arange(l)
    else:
      committed = cache.lengths
      k_slots = jnp.arange(cache.max_len)
    q_slots = committed[:, None] + jnp.arange(l)[None, :]
    mask = attention_mask(q_slots, k_slots, committed, block_mask,
                          segment_ids if cache is None else None)
    new_layers = []
    for i, layer in enumerate(self.layers):
      layer_cache = None if cache is None else cache.layer(i)
      x, layer_cache = layer(x, positions, mask, layer_cache)
      new_layers.append(layer_cache)
    new_cache = None if cache is None else cache.replace_layers(new_layers)
    return self.final_norm(x), new_cache

  def head_logits(self, x, start: int = 0, stop: Optional[int] = None, following=None):
    """Logits [B, L, stop - start, V] float32 of heads start..stop-1 (0-based) for x [B, L, D].

    following: [B, L, >= stop - 1] int, the tokens after each position, read by heads that
    condition on the tokens drafted before them (heads.py); None: their own greedy chain."""
    stop = self.config.num_heads_bpd if stop is None else stop

    def one_head(i, previous):
      if self.config.head_type == "ffn":
        logits = self._vocab_logits(self.heads[i](x))
      elif self.config.head_type == "sequential":
        logits = self._vocab_logits(
            self.heads[i](x, self.embedding(previous)) if i else self.heads[0](x))
      elif i == 0:
        logits = self._vocab_logits(x)
      else:
        logits = self.heads[i - 1](x)
      if i and self.config.markov_rank > 0:
        logits = logits.astype(jnp.float32) + self.markov[i - 1](previous[..., -1])
      return logits

    return heads_lib.chain_logits(one_head, x, start, stop, following,
                                  heads_lib.reads_tokens(self.config))

  def __call__(self, tokens, positions, segment_ids=None, cache=None, block_mask=None):
    """Training's view: heads that read earlier drafts read the data's next tokens."""
    x, new_cache = self.hidden_states(tokens, positions, segment_ids, cache, block_mask)
    following = None
    if heads_lib.reads_tokens(self.config):
      following = heads_lib.following_tokens(tokens, self.config.num_heads_bpd - 1)
    return self.head_logits(x, following=following), new_cache
