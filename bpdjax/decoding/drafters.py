"""Drafters: turn the heads' output at the last accepted position into the next block to verify.

A drafter is a small object with static settings and pure methods, so the decode loop can run it
under jit:
  draft_len                         L, the number of tokens verified per call (1 = plain decoding)
  uses_heads                        False: propose gets head 1 only (h' = 1), so plain decoding
                                    costs what a plain LM costs
  start(drafter_params, prompts [B, P], prompt_lengths [B]) -> state
                                    per-row drafter state (a pytree; () when stateless);
                                    drafter_params are the drafter's own weights, if any
  propose(state, head_logits [B, h', V], next_token [B]) -> (draft [B, L] int32, state)
      draft[:, 0] must be next_token, the model's own next token.
  commit(state, tokens [B, L + 1], num_kept [B]) -> state
      tokens[:, :num_kept + 1] are the tokens just appended to each row (the kept block and the
      model's next token); a stateful drafter (e.g. a rescoring LM with its own cache) follows.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bpdjax.decoding import tree as tree_lib


@dataclasses.dataclass(frozen=True)
class NoDraft:
  """Autoregressive decoding on the same loop: verify only the model's own next token."""
  draft_len: int = 1
  uses_heads: bool = False

  def start(self, drafter_params, prompts, prompt_lengths):
    del drafter_params, prompts, prompt_lengths
    return ()

  def propose(self, state, head_logits, next_token):
    del head_logits
    return next_token[:, None], state

  def commit(self, state, tokens, num_kept):
    del tokens, num_kept
    return state


@dataclasses.dataclass(frozen=True)
class TopOneDrafter:
  """Blockwise parallel decoding (Stern et al. 2018): head i's argmax for position t+i."""
  draft_len: int
  uses_heads: bool = True

  def start(self, drafter_params, prompts, prompt_lengths):
    del drafter_params, prompts, prompt_lengths
    return ()

  def propose(self, state, head_logits, next_token):
    if head_logits.shape[1] < self.draft_len:
      raise ValueError(f"draft_len {self.draft_len} exceeds the model's {head_logits.shape[1]} heads")
    guesses = jnp.argmax(head_logits[:, 1:self.draft_len], axis=-1).astype(jnp.int32)
    return jnp.concatenate([next_token[:, None], guesses], axis=1), state

  def commit(self, state, tokens, num_kept):
    del tokens, num_kept
    return state


def head_lattice(head_logits: jax.Array, draft_len: int, k: int) -> tuple[jax.Array, jax.Array]:
  """The top-k lattice of heads 2..L: [B, h, V] -> (ids [B, L-1, k] int32, log-probs [B, L-1, k])."""
  logp = jax.nn.log_softmax(head_logits[:, 1:draft_len].astype(jnp.float32), axis=-1)
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


@dataclasses.dataclass(frozen=True)
class PBestDrafter:
  """The p best paths through the heads' top-k lattice, verified together as p chains sharing
  the model's own next token ("p-best 0-gram" in Kim et al. 2024: head scores alone).

  draft_len: L (heads used, including head 1); k: candidates per head; p: drafts per call.
  """
  draft_len: int
  k: int
  p: int
  uses_heads: bool = True

  def __post_init__(self):
    check_num_drafts(self.p, self.k, self.draft_len)

  @property
  def tree(self) -> tree_lib.Tree:
    return tree_lib.chains(self.p, self.draft_len)

  def start(self, drafter_params, prompts, prompt_lengths):
    del drafter_params, prompts, prompt_lengths
    return ()

  def propose(self, state, head_logits, next_token):
    ids, logp = head_lattice(head_logits, self.draft_len, self.k)
    ranks, _ = pbest_paths(logp, self.p)                                         # [B, p, L-1]
    tokens = jnp.take_along_axis(ids[:, None], ranks[..., None], axis=3)[..., 0]  # [B, p, L-1]
    b = tokens.shape[0]
    return jnp.concatenate([next_token[:, None], tokens.reshape(b, -1)], axis=1), state

  def commit(self, state, tokens, num_kept):
    del tokens, num_kept
    return state
