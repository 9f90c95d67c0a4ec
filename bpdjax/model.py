"""Decoder-only Transformer with h block-prediction heads (Stern et al. 2018; Kim et al. 2024).

The model maps tokens to logits of every head; it never samples. Attention either runs over the
given sequence (training; packed segments are kept apart) or against an explicit `KVCache`
(decoding): the new tokens are written after each row's committed length and attend to the
committed prefix plus, among themselves, whatever `block_mask` allows (causal by default).

The layers (norms, attention, MLP, the decoder block) and the family features the config
switches on (Mistral, Qwen2/3, Gemma 2/3) live in `layers.py`; the block heads live here.

Logical axis names on parameters and activations (see `partitioning.py`):
  batch, length, embed, act_embed, vocab, heads, kv_heads, head_dim, mlp, head_mlp.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from bpdjax import heads as heads_lib
from bpdjax import layers

_HEAD_TYPES = ("ffn", "medusa") + heads_lib.CONDITIONED_HEAD_TYPES
_ACTIVATIONS = layers.ACTIVATIONS


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
  # Family features (layers.py; the importers set them from config.json; defaults: Llama).
  qkv_bias: bool = False             # Biases on the q, k, v projections (Qwen2).
  qk_norm: bool = False              # RMSNorm of q and k per head before RoPE (Qwen3, Gemma 3).
  post_norms: bool = False           # RMSNorm of the attention and MLP outputs (Gemma 2/3).
  embed_scale: float = 1.0           # Input embeddings times this (Gemma: sqrt(emb_dim)).
  query_pre_attn_scalar: float = 0.0   # Scores scale by its -1/2 power; 0: head_dim.
  attn_logit_softcap: float = 0.0    # cap * tanh(scores / cap) (Gemma 2); 0: none.
  final_logit_softcap: float = 0.0   # The same on the LM head's logits; 0: none.
  sliding_window: int = 0            # Layers in sliding_window_layers see this many positions.
  sliding_window_layers: tuple = ()  # Indices of the sliding-window layers.
  rope_factor: float = 1.0           # Linear RoPE scaling (positions / factor).
  local_rope_theta: float = 0.0      # RoPE base of the sliding layers (Gemma 3); 0: rope_theta.
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
    if "sliding_window_layers" in values:    # A list once the config went through JSON.
      values["sliding_window_layers"] = tuple(int(i) for i in values["sliding_window_layers"])
    return cls(**values)

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)


def _dense_init():
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


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
    self.layers = [layers.DecoderLayer(cfg, i in cfg.sliding_window_layers, name=f"layer_{i}")
                   for i in range(cfg.num_layers)]
    self.final_norm = layers.RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="final_norm")
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
      logits = self.embedding.attend(x)
    else:
      logits = self.lm_head(x)
    return layers.soft_cap(logits, self.config.final_logit_softcap)

  def hidden_states(self, tokens, positions, segment_ids=None, cache=None, block_mask=None):
    """The final (normalised) hidden states [B, L, D] that feed the heads, and the cache."""
    cfg = self.config
    x = self.embedding(tokens)
    if cfg.embed_scale != 1.0:
      x = x * jnp.asarray(cfg.embed_scale, cfg.jnp_dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    b, l = tokens.shape
    if cache is None:
      committed = jnp.zeros((b,), jnp.int32)
      k_slots = jnp.arange(l)
    else:
      committed = cache.lengths
      k_slots = jnp.arange(cache.max_len)
    q_slots = committed[:, None] + jnp.arange(l)[None, :]
    mask = layers.attention_mask(q_slots, k_slots, committed, block_mask,
                                 segment_ids if cache is None else None)
    window_mask = None
    if cfg.sliding_window_layers:
      k_positions = positions if cache is None else layers.key_positions(positions, k_slots,
                                                                         committed)
      window_mask = mask & layers.window_mask(positions, k_positions, cfg.sliding_window)
    new_layers = []
    for i, layer in enumerate(self.layers):
      layer_cache = None if cache is None else cache.layer(i)
      layer_mask = window_mask if i in cfg.sliding_window_layers else mask
      x, layer_cache = layer(x, positions, layer_mask, layer_cache)
      new_layers.append(layer_cache)
    new_cache = None if cache is None else cache.replace_layers(new_layers)
    return self.final_norm(x), new_cache

  def head_logits(self, x, start: int = 0, stop: Optional[int] = None, following=None,
                  markov_candidates: int = 0):
    """Logits [B, L, stop - start, V] float32 of heads start..stop-1 (0-based) for x [B, L, D].

    following: [B, L, >= stop - 1] int, the tokens after each position, read by heads that
    condition on the tokens drafted before them (heads.py); None: their own greedy chain.
    markov_candidates > 0: a Markov correction scores only each head's that many best tokens,
    the others get -inf (heads_lib.correct_candidates); 0: the whole vocabulary."""
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
      if i and self.config.markov_rank > 0 and markov_candidates > 0:
        logits = heads_lib.correct_candidates(logits, self.markov[i - 1], previous[..., -1],
                                              markov_candidates)
      elif i and self.config.markov_rank > 0:
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
