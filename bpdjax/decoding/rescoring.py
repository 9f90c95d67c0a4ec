"""Draft refinement: local neural rescoring (Kim et al. 2024, Algorithm 2) and global n-gram
rescoring on device.

Left to right over heads 2..L, pick among head i's top-k the token v that maximises
  (1 - alpha) * log p_head_i(v) + alpha * log p_rescorer(v | context, draft so far),
where the rescorer is a small causal LM (any bpdjax checkpoint with the model's vocabulary).
Head 1's token is the model's own and never changes; alpha = 0 gives plain BPD's draft.

The rescorer keeps its own KV cache inside the jitted decode loop. Its committed length covers
the context except the last accepted token, which each proposal feeds again together with the
model's next token (two tokens in, one call), so a fully accepted block needs no extra call.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from bpdjax import cache as cache_lib
from bpdjax.decoding import drafters
from bpdjax.decoding import tree as tree_lib


@flax.struct.dataclass
class RescorerState:
  """params: rescorer weights; cache: its KV cache (lengths = context tokens fed, minus one);
  last: [B] int32 the last accepted token, not yet committed in the rescorer cache."""
  params: Any
  cache: cache_lib.KVCache
  last: jax.Array


@dataclasses.dataclass(frozen=True)
class LocalRescoreDrafter:
  """draft_len: L heads used; k: candidates per head; alpha in [0, 1]; rescorer: the LM's
  loop.ModelFns; cache_len: slots of the rescorer cache (prompt + new tokens + L)."""
  draft_len: int
  k: int
  alpha: float
  rescorer: Any
  cache_init: Any
  cache_len: int
  uses_heads: bool = True

  def __post_init__(self):
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

  def start(self, drafter_params, prompts, prompt_lengths):
    b, p = prompts.shape
    cache = self.cache_init(b, self.cache_len)
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    _, cache = self.rescorer.forward(drafter_params, prompts, positions, cache)
    last = jnp.take_along_axis(prompts, jnp.maximum(prompt_lengths - 1, 0)[:, None], axis=1)[:, 0]
    cache = cache_lib.set_lengths(cache, jnp.maximum(prompt_lengths - 1, 0))
    return RescorerState(params=drafter_params, cache=cache, last=last)

  def _step(self, state: RescorerState, tokens: jax.Array, offset: int):
    """Feeds tokens [B, n] at slots lengths + offset.. ; returns log-probs after the last one."""
    cache = state.cache
    shifted = cache_lib.set_lengths(cache, cache.lengths + offset)
    positions = shifted.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    hidden, shifted = self.rescorer.forward(state.params, tokens, positions, shifted)
    logits = self.rescorer.logits(state.params, hidden[:, -1:], 0, 1)[:, 0, 0]    # [B, V]
    return jax.nn.log_softmax(logits, axis=-1), state.replace(
        cache=cache_lib.set_lengths(shifted, cache.lengths))

  def propose(self, state: RescorerState, head_logits, next_token):
    cand_ids, cand_logp = drafters.head_lattice(head_logits, self.draft_len, self.k)
    rescorer_logp, state = self._step(state, jnp.stack([state.last, next_token], axis=1), 0)
    chosen = [next_token]
    for i in range(self.draft_len - 1):
      if i > 0:
        rescorer_logp, state = self._step(state, chosen[-1][:, None], i + 1)
      score = ((1.0 - self.alpha) * cand_logp[:, i]
               + self.alpha * jnp.take_along_axis(rescorer_logp, cand_ids[:, i], axis=1))
      best = jnp.argmax(score, axis=1)
      chosen.append(jnp.take_along_axis(cand_ids[:, i], best[:, None], axis=1)[:, 0])
    return jnp.stack(chosen, axis=1).astype(jnp.int32), state

  def commit(self, state: RescorerState, tokens, num_kept):
    """Kept tokens tokens[:, :num_kept] were fed by the last proposal (after `last`)."""
    last = jnp.take_along_axis(tokens, jnp.maximum(num_kept - 1, 0)[:, None], axis=1)[:, 0]
    return state.replace(cache=cache_lib.commit(state.cache, num_kept),
                         last=jnp.where(num_kept > 0, last, state.last))


@flax.struct.dataclass
class NgramState:
  """tables: the n-gram LM's device tables (ngram.dp.NgramTables); history: [B, n-1] int32 the
  last decided tokens before the lattice, most recent last, -1 where the context is shorter."""
  tables: Any
  history: jax.Array


@dataclasses.dataclass(frozen=True)
class NgramPBestDrafter:
  """Global n-gram rescoring on device (Kim et al. 2024): the p best paths of the heads' top-k
  lattice under (1 - alpha) * head log-prob + alpha * n-gram log-prob, by the exact dynamic
  program of ngram/dp.py, verified together as p chains sharing the model's next token.
  p = 1 is "n-gram BPD"; alpha = 0 is "p-best 0-gram"."""
  draft_len: int
  k: int
  p: int
  alpha: float
  order: int
  uses_heads: bool = True

  def __post_init__(self):
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
    drafters.check_num_drafts(self.p, self.k, self.draft_len)

  @property
  def tree(self):
    return tree_lib.chains(self.p, self.draft_len)

  def start(self, drafter_params, prompts, prompt_lengths):
    n = self.order - 1
    idx = prompt_lengths[:, None] - n + jnp.arange(n)[None, :]                  # [B, n-1]
    history = jnp.take_along_axis(prompts, jnp.maximum(idx, 0), axis=1)
    return NgramState(tables=drafter_params, history=jnp.where(idx >= 0, history, -1))

  def propose(self, state: NgramState, head_logits, next_token):
    from bpdjax.ngram import dp  # pylint: disable=g-import-not-at-top
    cand_ids, cand_logp = drafters.head_lattice(head_logits, self.draft_len, self.k)
    b = next_token.shape[0]
    first_ids = jnp.zeros((b, 1, self.k), jnp.int32).at[:, 0, 0].set(next_token)
    first_logp = jnp.full((b, 1, self.k), -jnp.inf).at[:, 0, 0].set(0.0)
    paths, _ = dp.pbest_dp(state.tables, jnp.concatenate([first_ids, cand_ids], axis=1),
                           jnp.concatenate([first_logp, cand_logp], axis=1), state.history,
                           self.alpha, self.p, ks=(1,) + (self.k,) * (self.draft_len - 1))
    paths = jnp.maximum(paths[:, :, 1:], 0)                                     # [B, p, L-1]
    return jnp.concatenate([next_token[:, None], paths.reshape(b, -1)], axis=1), state

  def commit(self, state: NgramState, tokens, num_kept):
    """The kept tokens tokens[:, :num_kept] join the history."""
    n = self.order - 1
    joined = jnp.concatenate([state.history, tokens], axis=1)
    idx = num_kept[:, None] + jnp.arange(n)[None, :]
    return state.replace(history=jnp.take_along_axis(joined, idx, axis=1))
