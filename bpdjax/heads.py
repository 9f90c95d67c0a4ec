"""Block heads that read the tokens drafted before them.

Head i (1-based) at position t predicts token t+i. The paper's heads (model.FfnHead,
model.MedusaHead) read only the final hidden state at t, so head i never sees what heads
1..i-1 drafted. Two answers live here:

- `SequentialHead` (Hydra, Ankner et al. 2024): head i >= 2 reads the hidden state at t and the
  embeddings (the base's own table) of the tokens t+1..t+i-1 drafted before it;
- `MarkovCorrection` (DSpark 2026): head i >= 2's logits gain a rank-r term of token t+i-1,
  a learned bigram correction on any head type (model.markov_rank > 0).

Both read `following` tokens [B, L, m]: following[b, t, j] is the token at t+1+j, and head i
reads its first i-1. In training these are the data's own next tokens (teacher forcing; for
heads on a frozen base the distillation data, i.e. the base's own samples); in decoding, the
drafter's tokens (`chain_logits`), or the heads' own greedy chain when none are given, so every
method that reads heads without tokens still gets deterministic drafts.
"""
from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# Head types whose head i reads the tokens drafted before it (besides any head with a Markov
# correction).
CONDITIONED_HEAD_TYPES = ("sequential",)


def reads_tokens(config) -> bool:
  """Whether the model's heads 2..h read the tokens drafted before them."""
  return config.head_type in CONDITIONED_HEAD_TYPES or config.markov_rank > 0


def _dense_init():
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class SequentialHead(nn.Module):
  """Hydra's head: an FFN with a residual connection over [h_t; e(t+1); ...; e(t+i-1)].

  The output layer starts at zero, so the head starts as the plain next-token head (as FfnHead).
  """
  config: object

  @nn.compact
  def __call__(self, x: jax.Array, previous: jax.Array) -> jax.Array:
    """x [B, L, D], previous [B, L, i-1, D] embeddings of the tokens before this head ->
    [B, L, D]."""
    cfg = self.config
    b, l, n, d = previous.shape
    features = jnp.concatenate([x, previous.reshape(b, l, n * d).astype(x.dtype)], axis=-1)
    hidden = nn.Dense(cfg.head_hidden_dim, dtype=cfg.jnp_dtype, use_bias=True, name="hidden",
                      kernel_init=nn.with_logical_partitioning(_dense_init(), ("embed", "head_mlp")),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("head_mlp",))
                      )(features)
    out = nn.Dense(cfg.emb_dim, dtype=cfg.jnp_dtype, use_bias=True, name="output",
                   kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("head_mlp", "embed")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(
                       nn.relu(hidden))
    return x + out


class MarkovCorrection(nn.Module):
  """logits += U[token] @ W, U [V, r], W [r, V]: a rank-r bigram term of the token before the
  head's. W starts at zero, so a fresh correction changes nothing."""
  config: object

  @nn.compact
  def __call__(self, previous_token: jax.Array, ids: Optional[jax.Array] = None) -> jax.Array:
    """previous_token [B, L] int -> [B, L, V] float32; with ids [B, L, k] int, only the term of
    those tokens, [B, L, k] (r x k multiply-accumulates per position instead of r x V)."""
    cfg = self.config
    u = self.param("token_factors", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("vocab", None)), (cfg.vocab_size, cfg.markov_rank),
        jnp.float32)
    w = self.param("vocab_factors", nn.with_logical_partitioning(
        nn.initializers.zeros, (None, "vocab")), (cfg.markov_rank, cfg.vocab_size), jnp.float32)
    factors = jnp.take(u, previous_token, axis=0)                                 # [B, L, r]
    if ids is None:
      return factors @ w
    return jnp.einsum("blr,rblk->blk", factors, jnp.take(w, ids, axis=1))


def correct_candidates(logits: jax.Array, correction, previous_token: jax.Array,
                       k: int) -> jax.Array:
  """The Markov term added to the k best tokens of logits [B, L, V] only; every other token
  gets -inf, so argmax and top-k (up to k) of the result rank the corrected candidates.
  correction: a MarkovCorrection."""
  logits = logits.astype(jnp.float32)
  values, ids = jax.lax.top_k(logits, k)                                        # [B, L, k]
  corrected = values + correction(previous_token, ids)
  b, l, _ = ids.shape
  rows, cols = jnp.arange(b)[:, None, None], jnp.arange(l)[None, :, None]
  return jnp.full_like(logits, -jnp.inf).at[rows, cols, ids].set(corrected)


def following_tokens(tokens: jax.Array, m: int) -> jax.Array:
  """tokens [B, L] -> [B, L, m]: entry [b, t, j] is tokens[b, t+1+j] (0 past the end; heads
  whose targets lie there carry no loss, losses.head_targets)."""
  padded = jnp.pad(tokens, ((0, 0), (0, m)))
  return jnp.stack([padded[:, 1 + j:1 + j + tokens.shape[1]] for j in range(m)], axis=-1)


def chain_logits(one_head: Callable[[int, jax.Array], jax.Array], x: jax.Array, start: int,
                 stop: int, following: Optional[jax.Array], conditioned: bool) -> jax.Array:
  """Logits [B, L, stop - start, V] float32 of heads start..stop-1 (0-based).

  x: [B, L, D] the hidden states the heads read; one_head(i, previous) -> [B, L, V]: head
  i's logits there given previous [B, L, i] int32, the
  tokens before it (ignored by heads that read none). following: [B, L, >= stop - 1] the tokens
  after each position, or None: each head then reads the argmax chain of the heads before it
  (head 1's argmax first), computed here from head 1 on.
  """
  if not conditioned:
    return jnp.stack([one_head(i, None) for i in range(start, stop)], axis=2).astype(jnp.float32)
  if following is not None:
    if following.shape[-1] < stop - 1:
      raise ValueError(f"Heads up to {stop} read {stop - 1} tokens after the position; got "
                       f"{following.shape[-1]}")
    following = following.astype(jnp.int32)
    return jnp.stack([one_head(i, following[..., :i]) for i in range(start, stop)],
                     axis=2).astype(jnp.float32)
  logits, chain = [], jnp.zeros(x.shape[:2] + (0,), jnp.int32)
  for i in range(stop):
    head = one_head(i, chain)
    if i >= start:
      logits.append(head)
    chain = jnp.concatenate([chain, jnp.argmax(head, -1)[..., None].astype(jnp.int32)], -1)
  return jnp.stack(logits, axis=2).astype(jnp.float32)
