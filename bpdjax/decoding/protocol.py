"""What the decode loop sees: the model's callbacks, a drafter and a step policy, as typed
Protocols.

Shapes: B rows, L tokens fed per call, D model width, h heads, V vocabulary, T nodes of the
drafter's verify tree, P prompt slots, C candidate sizes.

Two seams below the driver:
- a `Drafter` says WHAT to propose: the nodes of its static tree (a chain is a tree of one
  path) from the heads at the last kept position, and which prefixes of its node list make
  sense to verify (`candidates`; every prefix is a tree, since parents precede children);
- a `StepPolicy` says HOW MUCH of it to verify each step: the whole tree (`policies.fixed`), or
  a size chosen per step from calibrated head confidence and a cost table (`policies.auto`), and
  when to run plain stretches (one-token calls without proposing).

The loop calls, per row and iteration: verify the chosen prefix of the draft in one
`ModelFns.forward` (head 1 at every node gives the model's own next tokens), keep the longest
accepted root path, commit it to the drafter and the policy, then let the policy obtain the
next draft (normally by calling the drafter's propose). It asks neither isinstance nor getattr.
Drafter weights (a rescoring LM, n-gram tables) are passed in as `params`, never carried in
loop state, so they are an argument of the jitted loop rather than part of its carry.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol

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
            following: Optional[jax.Array] = None, markov_candidates: int = 0) -> jax.Array:
    """hidden [B, n, D] -> logits [B, n, stop - start, V] float32 of heads start..stop-1
    (0-based: 0 is head 1). following [B, n, >= stop - 1] int: the tokens drafted after each
    position (following[..., j] at t+1+j), read by heads that condition on what was drafted
    before them (head i reads its first i); None: such heads read their own argmax chain.
    markov_candidates > 0: a Markov correction scores only each head's that many best tokens
    (the rest -inf)."""


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

  def given(self, start: int, stop: int, tokens: jax.Array,
            markov_candidates: int = 0) -> jax.Array:
    """Heads start..stop-1 at the last kept position, each reading tokens [B, n, m] (n paths
    drafted after it: tokens[:, c, j] at t+1+j, m >= stop - 1) -> logits [B, n, stop - start, V].
    markov_candidates: as ModelFns.heads."""
    if self.hidden is None:
      raise ValueError("LastHeads.given needs the hidden state (LastHeads built by the loop)")
    hidden = jnp.broadcast_to(self.hidden, (tokens.shape[0], tokens.shape[1],
                                            self.hidden.shape[-1]))
    return self.fns.heads(self.params, hidden, start, stop, tokens, markov_candidates)


class Drafter(Protocol):
  """Turns the heads at the last kept position into the next nodes to verify.

  Implementations are frozen dataclasses (hashable: static under jit) whose methods are pure;
  drafters/base.py gives the defaults of a stateless drafter.
  """

  @property
  def topology(self) -> tree_lib.Tree:
    """The static tree of nodes verified per call (node 0 = the model's own next token). A
    chain of n tokens is `tree.chain(n)`; plain decoding is `tree.chain(1)`."""

  @property
  def last_head(self) -> int:
    """propose may read heads 2..last_head (1-based) at the last kept position; 1 reads none,
    so plain decoding computes no head beyond the next-token head verification needs anyway."""

  @property
  def candidates(self) -> tuple[int, ...]:
    """Static, increasing node counts a policy may verify (prefixes of the topology that are
    worth verifying alone); the first is 1 (plain decoding), the last topology.size."""

  def start(self, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
            cache_len: int) -> Any:
    """Per-row state (a pytree; () when stateless) after the prompts [B, P] (lengths [B]).
    cache_len: slots the decode uses per row, for a drafter with a KV cache of its own."""

  def propose(self, params: Any, state: Any, heads: LastHeads,
              next_token: jax.Array) -> tuple[jax.Array, Any]:
    """heads: the heads 2..last_head at the last kept position, computed when the drafter asks
    for them (LastHeads.range); next_token [B] (the model's own) -> (nodes [B, T] int32 with
    nodes[:, 0] == next_token, state). A policy may skip propose on plain steps: the state must
    stay valid through commits that no propose preceded."""

  def commit(self, params: Any, state: Any, tokens: jax.Array, num_kept: jax.Array) -> Any:
    """tokens [B, D' + 1]: each row's accepted root path then the model's next token (D' + 1 is
    the verified candidate's longest path); tokens[:, :num_kept + 1] were appended to the row
    (num_kept [B], 0 for finished rows). Called after every verify call."""

  def confidence(self, state: Any, logp: jax.Array, computed: jax.Array,
                 nodes: jax.Array) -> jax.Array:
    """[B, T] float32 in [0, 1] per node of the proposal `nodes` (state: after it), root 1, 0
    where nothing is known: what a cost-aware policy calibrates acceptance on. logp
    [B, last_head - 1, V]: log-probabilities of heads 2..last_head, the first `computed` ([])
    computed. Heads drafters: the node's token's probability under its depth's head."""

  def stats(self, state: Any) -> dict[str, jax.Array]:
    """Named statistics of the drafter, summed over the batch, for the report ({} if none)."""


@flax.struct.dataclass
class StretchCounts:
  """What a plain stretch did, for the policy's counters ([] each): iterations run;
  verified_rows, the sum over them but the first (whose commit the policy ran) of rows
  verified (still decoding before the call);
  drafted_steps, the iterations after which some row still decodes (each gave those rows a
  one-token draft); drafted_rows, the sum of those rows."""
  iterations: jax.Array
  verified_rows: jax.Array
  drafted_steps: jax.Array
  drafted_rows: jax.Array


class StepPolicy(Protocol):
  """How much of a drafter's proposal the loop verifies each step, and when it runs plain
  stretches. Frozen dataclasses (static under jit) with pure methods; a policy gets the drafter
  as an argument and never imports the loop or the cost measurement.
  """

  def sizes(self, drafter: Drafter) -> tuple[int, ...]:
    """Static node counts the policy may choose among (the loop compiles one verification per
    size, selected by lax.switch when there are several)."""

  def start(self, drafter: Drafter, batch: int) -> Any:
    """The policy's state (a pytree) before the first proposal."""

  def propose(self, state: Any, drafter: Drafter, drafter_params: Any, drafter_state: Any,
              heads: LastHeads, next_token: jax.Array) -> tuple[jax.Array, Any, Any]:
    """The next draft: (nodes [B, T], drafter state, policy state); usually the drafter's
    propose, after which the policy picks the size to verify."""

  def choice(self, state: Any) -> jax.Array:
    """[] int32 index into `sizes(drafter)` of the nodes to verify next."""

  def force(self, state: Any, index: int) -> Any:
    """The state with every later step verifying sizes[index] (to time the policy's own steps
    per size: decoding/timing.py)."""

  def commit(self, state: Any, drafter: Drafter, tokens: jax.Array,
             num_kept: jax.Array) -> Any:
    """After a verify call that followed a proposal (as Drafter.commit)."""

  def stretches(self, drafter: Drafter) -> bool:
    """Static: whether `stretch` can ever be > 0 (the loop compiles the inner loop only then)."""

  def stretch(self, state: Any, drafter: Drafter) -> jax.Array:
    """[] int32 further plain iterations decided after this proposal: the loop runs them as an
    inner loop of one-token verify calls (no lax.switch over sizes, no proposal), committing
    each to the drafter and the first to the policy, then calls `after_stretch`."""

  def after_stretch(self, state: Any, counts: StretchCounts) -> Any:
    """The state after a stretch (its counters as if the steps had run one by one)."""

  def stats(self, state: Any) -> dict[str, jax.Array]:
    """Named statistics of the policy, summed over the batch ({} if none)."""
