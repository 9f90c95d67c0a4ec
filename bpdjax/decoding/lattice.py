"""The heads' top-k "sausage" lattice (Kim et al. 2024) and exact p-best paths through it."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def head_lattice(head_logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The top-k lattice of heads 2..L: logits [B, L-1, V] -> (ids [B, L-1, k] int32, log-probs
  [B, L-1, k]), best first."""
  logp = jax.nn.log_softmax(head_logits.astype(jnp.float32), axis=-1)
  values, ids = jax.lax.top_k(logp, k)
  return ids.astype(jnp.int32), values


def check_num_drafts(p: int, k: int, draft_len: int) -> None:
  """Raises ValueError when p exceeds the k^(L-1) distinct drafts of the lattice."""
  if p > k ** (draft_len - 1):
    raise ValueError(f"p={p} exceeds the k^(h-1) = {k}^{draft_len - 1} distinct drafts of the "
                     "lattice")


def head_topk(head_logits: jax.Array, k: int) -> jax.Array:
  """[B, h, V] -> [B, h, k] int32: each head's k most likely tokens, best first (the lattice)."""
  return jax.lax.top_k(head_logits, k)[1].astype(jnp.int32)


def pbest_paths(cand_logp: jax.Array, p: int) -> tuple[jax.Array, jax.Array]:
  """Exact p best paths through a sausage lattice under additive scores.

  Args:
    cand_logp: [B, n, k] score of candidate j at position i (best first within a position).
    p: paths to return; must not exceed k**n.
  Returns:
    (ranks [B, p, n] int32 candidate index per position, scores [B, p]) best first. Exactly
    equal scores are ordered by lax.top_k's lower-index rule at each merge (deterministic, but
    not a global lexicographic order).
  """
  b, n, k = cand_logp.shape
  if p > k ** n:
    raise ValueError(f"p={p} exceeds the {k}^{n} = {k ** n} paths of the lattice")
  scores = cand_logp[:, 0]                                                       # [B, k]
  ranks = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32)[None, :, None], (b, k, 1))
  for i in range(1, n):
    width = scores.shape[1]
    total = (scores[:, :, None] + cand_logp[:, i, None, :]).reshape(b, width * k)
    keep = min(p, width * k)
    scores, flat = jax.lax.top_k(total, keep)
    parent, choice = flat // k, flat % k
    ranks = jnp.concatenate([jnp.take_along_axis(ranks, parent[:, :, None], axis=1),
                             choice[:, :, None].astype(jnp.int32)], axis=2)
  scores, order = jax.lax.top_k(scores, p)
  return jnp.take_along_axis(ranks, order[:, :, None], axis=1), scores
