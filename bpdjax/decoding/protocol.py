"""What the decode loop sees: the model's callbacks and a drafter, as typed Protocols.

Shapes: B rows, L tokens fed per call, D model width, h heads, V vocabulary, T nodes of the
drafter's verify tree, P prompt slots.

The loop calls, per row and iteration: verify the T fed nodes in one `ModelFns.forward` (head 1
at every node gives the model's own next tokens), keep the longest accepted root path, then ask
the drafter for the next T nodes from heads 2..last_head at the last kept position. Drafter
weights (a rescoring LM, n-gram tables) are passed in as `params` by the loop, never carried in
its state, so they are an argument of the jitted loop rather than part of the loop carry.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol

import jax

from bpdjax import cache as cache_lib
from bpdjax.decoding import tree as tree_lib


class ModelFns(Protocol):
  """The model as the loop sees it. Implementations are hashable (static under jit)."""

  @property
  def num_heads(self) -> int:
    """h, the model's block heads (head 1 is the next-token head)."""

  def forward(self, params: Any, tokens: jax.Array, positions: jax.Array,
              cache: cache_lib.KVCache, block_mask: Optional[jax.Array] = None
              ) -> tuple[jax.Array, cache_lib.KVCache]:
    """tokens, positions [B, L]; block_mask [B, L, L] (None: causal) -> (hidden [B, L, D],
    cache with the L tokens written after each row's committed length, lengths unchanged)."""

  def heads(self, params: Any, hidden: jax.Array, start: int, stop: int) -> jax.Array:
    """hidden [B, n, D] -> logits [B, n, stop - start, V] float32 of heads start..stop-1
    (0-based: 0 is head 1)."""


class Drafter(Protocol):
  """Turns the heads at the last kept position into the next nodes to verify.

  Implementations are frozen dataclasses (hashable: static under jit) whose methods are pure.
  """

  @property
  def topology(self) -> tree_lib.Tree:
    """The static tree of nodes verified per call (node 0 = the model's own next token). A
    chain of n tokens is `tree.chain(n)`; plain decoding is `tree.chain(1)`."""

  @property
  def last_head(self) -> int:
    """propose reads heads 2..last_head (1-based) at the last kept position; 1 reads none, so
    plain decoding computes no head beyond the next-token head verification needs anyway."""

  def start(self, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
            cache_len: int) -> Any:
    """Per-row state (a pytree; () when stateless) after the prompts [B, P] (lengths [B]).
    cache_len: slots the decode uses per row, for a drafter with a KV cache of its own."""

  def propose(self, params: Any, state: Any, head_logits: jax.Array,
              next_token: jax.Array) -> tuple[jax.Array, Any]:
    """head_logits [B, last_head - 1, V] of heads 2..last_head, next_token [B] (the model's
    own) -> (nodes [B, T] int32 with nodes[:, 0] == next_token, state)."""

  def commit(self, params: Any, state: Any, tokens: jax.Array, num_kept: jax.Array) -> Any:
    """tokens [B, D + 1]: each row's accepted root path then the model's next token;
    tokens[:, :num_kept + 1] were appended to the row (num_kept [B], 0 for finished rows)."""
