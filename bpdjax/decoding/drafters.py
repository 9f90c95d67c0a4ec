"""Drafters: turn the heads' output at the last accepted position into the next block to verify.

A drafter is a small object with static settings and pure methods, so the decode loop can run it
under jit:
  draft_len                         L, the number of tokens verified per call (1 = plain decoding)
  uses_heads                        False: propose gets head 1 only (h' = 1), so plain decoding
                                    costs what a plain LM costs
  init(batch_size) -> state         per-row drafter state (a pytree; () when stateless)
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


@dataclasses.dataclass(frozen=True)
class NoDraft:
  """Autoregressive decoding on the same loop: verify only the model's own next token."""
  draft_len: int = 1
  uses_heads: bool = False

  def init(self, batch_size):
    del batch_size
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

  def init(self, batch_size):
    del batch_size
    return ()

  def propose(self, state, head_logits, next_token):
    if head_logits.shape[1] < self.draft_len:
      raise ValueError(f"draft_len {self.draft_len} exceeds the model's {head_logits.shape[1]} heads")
    guesses = jnp.argmax(head_logits[:, 1:self.draft_len], axis=-1).astype(jnp.int32)
    return jnp.concatenate([next_token[:, None], guesses], axis=1), state

  def commit(self, state, tokens, num_kept):
    del tokens, num_kept
    return state


def head_topk(head_logits: jax.Array, k: int) -> jax.Array:
  """[B, h, V] -> [B, h, k] int32: each head's k most likely tokens, best first (the lattice)."""
  return jax.lax.top_k(head_logits, k)[1].astype(jnp.int32)
