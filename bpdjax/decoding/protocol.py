"""What the decode loop sees: the model's callbacks and a drafter, as typed Protocols.

Shapes: B rows, L tokens fed per call, D model width, h heads, V vocabulary, T nodes of the
drafter's verify tree, P prompt slots.

The loop calls, per row and iteration: verify the T fed nodes in one `ModelFns.forward` (head 1
at every node gives the model's own next tokens), keep the longest accepted root path, then ask
the drafter for the next T nodes from heads 2..last_head at the last kept position.

A drafter may offer several candidate sizes (prefixes of its topology's node list, which are
trees themselves since parents precede children): each iteration the loop verifies only the
first `candidates[candidate(state)]` nodes, through lax.switch over the static sizes (one
program, no recompilation, no host round trip). Drafters with one size mix in SingleCandidate. Drafter
weights (a rescoring LM, n-gram tables) are passed in as `params` by the loop, never carried in
its state, so they are an argument of the jitted loop rather than part of the loop carry.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol, runtime_checkable

import flax.struct
import jax
import jax.numpy as jnp

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

  def heads(self, params: Any, hidden: jax.Array, start: int, stop: int,
            following: Optional[jax.Array] = None) -> jax.Array:
    """hidden [B, n, D] -> logits [B, n, stop - start, V] float32 of heads start..stop-1
    (0-based: 0 is head 1). following [B, n, >= stop - 1] int: the tokens drafted after each
    position (following[..., j] at t+1+j), read by heads that condition on what was drafted
    before them (head i reads its first i); None: such heads read their own argmax chain."""


@dataclasses.dataclass(frozen=True)
class LastHeads:
  """The heads at each row's last kept position, computed on demand and each at most once per
  call site: `range(start, stop)` gives logits [B, stop - start, V] of heads start..stop-1
  (0-based: 0 is head 1, which the loop has already used for verification).

  hidden: [B, 1, D] the final hidden state there; logits: [B, h, V] when the loop computed every
  head anyway (recording the analyses), else None; active: [B] bool rows still decoding. Built
  by the loop; `from_logits` wraps given logits (tests, timing a drafter alone).

  `given(start, stop, tokens)` gives heads that read the tokens drafted before them (heads.py)
  those tokens; it needs `hidden`.
  """
  fns: Optional[ModelFns]
  params: Any
  hidden: Optional[jax.Array]
  logits: Optional[jax.Array]
  active: jax.Array

  @classmethod
  def from_logits(cls, logits: jax.Array, active: Optional[jax.Array] = None) -> "LastHeads":
    active = jnp.ones(logits.shape[:1], bool) if active is None else active
    return cls(fns=None, params=None, hidden=None, logits=logits, active=active)

  def range(self, start: int, stop: int) -> jax.Array:
    if self.logits is not None:
      return self.logits[:, start:stop]
    if stop <= start:
      return jnp.zeros((self.hidden.shape[0], 0, 0), jnp.float32)
    return self.fns.heads(self.params, self.hidden, start, stop)[:, 0]

  def given(self, start: int, stop: int, tokens: jax.Array) -> jax.Array:
    """Heads start..stop-1 at the last kept position, each reading tokens [B, n, m] (n paths
    drafted after it: tokens[:, c, j] at t+1+j, m >= stop - 1) -> logits [B, n, stop - start, V]."""
    if self.hidden is None:
      raise ValueError("LastHeads.given needs the hidden state (LastHeads built by the loop)")
    hidden = jnp.broadcast_to(self.hidden, (tokens.shape[0], tokens.shape[1],
                                            self.hidden.shape[-1]))
    return self.fns.heads(self.params, hidden, start, stop, tokens)


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
    """propose may read heads 2..last_head (1-based) at the last kept position; 1 reads none,
    so plain decoding computes no head beyond the next-token head verification needs anyway."""

  def start(self, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
            cache_len: int) -> Any:
    """Per-row state (a pytree; () when stateless) after the prompts [B, P] (lengths [B]).
    cache_len: slots the decode uses per row, for a drafter with a KV cache of its own."""

  def propose(self, params: Any, state: Any, heads: LastHeads,
              next_token: jax.Array) -> tuple[jax.Array, Any]:
    """heads: the heads 2..last_head at the last kept position, computed when the drafter asks
    for them (LastHeads.range); next_token [B] (the model's own) -> (nodes [B, T] int32 with
    nodes[:, 0] == next_token, state)."""

  def commit(self, params: Any, state: Any, tokens: jax.Array, num_kept: jax.Array) -> Any:
    """tokens [B, D' + 1]: each row's accepted root path then the model's next token (D' + 1 is
    the verified candidate's longest path); tokens[:, :num_kept + 1] were appended to the row
    (num_kept [B], 0 for finished rows)."""

  @property
  def candidates(self) -> tuple[int, ...]:
    """Static, increasing node counts the loop may verify (prefixes of the topology); the last
    is topology.size."""

  def candidate(self, state: Any) -> jax.Array:
    """[] int32 index into `candidates` of the nodes to verify next (chosen by propose)."""

  def stats(self, state: Any) -> dict[str, jax.Array]:
    """Named statistics of the drafter, summed over the batch, for the report ({} if none)."""


class SingleCandidate:
  """Mixin for drafters that always verify their whole topology and report no statistics."""

  @property
  def candidates(self) -> tuple[int, ...]:
    return (self.topology.size,)

  def candidate(self, state) -> jax.Array:
    del state
    return jnp.zeros((), jnp.int32)

  def stats(self, state) -> dict:
    del state
    return {}



@flax.struct.dataclass
class StretchCounts:
  """What a plain stretch did, for the drafter's counters ([] each): iterations run;
  verified_rows, the sum over them but the first (whose commit the drafter ran) of rows
  verified (still decoding before the call);
  drafted_steps, the iterations after which some row still decodes (each gave those rows a
  one-token draft); drafted_rows, the sum of those rows."""
  iterations: jax.Array
  verified_rows: jax.Array
  drafted_steps: jax.Array
  drafted_rows: jax.Array


@runtime_checkable
class PlainStretches(Protocol):
  """Optional drafter capability: runs of plain decoding without propose or commit.

  After propose, `stretch(state)` ([] int32) is how many further iterations the drafter has
  already decided to spend on plain decoding, reading no head. The loop runs them as an inner
  loop of one-token verify calls (each costs what an AR step costs: no lax.switch over
  candidate sizes, no drafter call) except that the drafter's commit runs on the first, then
  calls `after_stretch(state, counts)` (StretchCounts) so the drafter's counters read as if
  propose and commit had run at each of them.
  """

  def stretch(self, state: Any) -> jax.Array:
    ...

  def after_stretch(self, state: Any, counts: StretchCounts) -> Any:
    ...
