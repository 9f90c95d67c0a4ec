"""Calibrated head confidence: expected tokens of a draft, learned online from the loop's own
accept / reject outcomes (the `auto` drafter's model of the heads).

a(head, p) = P(a node drafted by `head` at probability p is accepted | its parent was), from
counts of accepted / tried nodes per (head, probability bin) over a prior: the bin's centre
scaled by the head's pooled ratio of accepted to expected (hits / sum of p over its tries), so
a head's over- or under-confidence is learned from its first few outcomes. At temperature > 0
a point-mass draft x is accepted with probability p(x), so the same counts learn the sampling
rule's acceptance. Shapes: B rows, H = L - 1 drafting heads (2..L), T tree nodes, C candidates.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import tree as tree_lib

BINS = 10             # Probability bins.
PRIOR = 2.0           # Pseudo-counts of the prior a = p (bin centre).


def acceptance(hits: jax.Array, tries: jax.Array, head: jax.Array, prob: jax.Array) -> jax.Array:
  """hits, tries [H, BINS]; head (0-based among heads 2..L) and prob of the same shape ->
  calibrated acceptance of that shape."""
  centres = (jnp.arange(BINS, dtype=jnp.float32) + 0.5) / BINS
  ratio = (jnp.sum(hits, axis=1) + PRIOR) / (jnp.sum(tries * centres, axis=1) + PRIOR)   # [H]
  bins = jnp.clip((prob * BINS).astype(jnp.int32), 0, BINS - 1)
  prior = jnp.clip(centres[bins] * ratio[head], 0.0, 1.0)
  return (hits[head, bins] + PRIOR * prior) / (tries[head, bins] + PRIOR)


def expected(hits: jax.Array, tries: jax.Array, topology: tree_lib.Tree,
             sizes: tuple[int, ...], probs: jax.Array) -> jax.Array:
  """probs [B, T] node probabilities (root 1, 0 where not drafted) -> [B, C] expected tokens of
  each candidate (the first sizes[c] nodes): 1 + the sum over its non-root nodes v of the
  product of a(u) along v's root path (Medusa's expected acceptance, calibrated)."""
  depth = jnp.asarray(np.maximum(topology.depth - 1, 0))
  a = acceptance(hits, tries, jnp.broadcast_to(depth, probs.shape), probs)
  a = jnp.where(jnp.asarray(topology.depth)[None] == 0, 1.0, a * (probs > 0))
  log_a = jnp.log(jnp.maximum(a, 1e-30))
  reach = jnp.exp(log_a @ jnp.asarray(topology.ancestor_mask, jnp.float32).T)    # [B, T]
  inside = np.arange(topology.size)[None, :] < np.asarray(sizes)[:, None]        # [C, T]
  inside[:, 0] = False
  return 1.0 + reach @ jnp.asarray(inside, jnp.float32).T


def judge(hits: jax.Array, tries: jax.Array, chain: jax.Array, probs: jax.Array,
          tokens: jax.Array, num_kept: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Counts the chain nodes whose true token is now known. chain [B, L] the drafted chain
  (node 0 the root), probs [B, T] its nodes' probabilities (the chain's first), tokens
  [B, D' + 1] what the call appended (tokens[:, :num_kept + 1], num_kept [B]). Chain node d
  (head d + 1) was reached when the chain's tokens 1..d-1 equal the appended ones, and is judged
  when d <= num_kept -- including the node just past what was verified (head 2's token against
  the model's next token after a plain step), so head 2 is judged at every step that looked at
  the heads. Returns the updated (hits, tries)."""
  length = chain.shape[1]
  n = length - 1
  width = min(tokens.shape[1], length)
  same = (tokens[:, 1:width] == chain[:, 1:width]).astype(jnp.int32)             # [B, w-1]
  match = jnp.pad(same, ((0, 0), (0, n - (width - 1))))                           # [B, H]
  reached = jnp.cumprod(jnp.pad(match[:, :-1], ((0, 0), (1, 0)), constant_values=1), axis=1)
  d = jnp.arange(1, length)[None, :]
  prob = probs[:, 1:length]                                                        # [B, H]
  tried = (d <= num_kept[:, None]) & (reached > 0) & (prob > 0)
  accepted = tried & (match > 0)
  bins = jnp.clip((prob * BINS).astype(jnp.int32), 0, BINS - 1)
  heads = jnp.broadcast_to(jnp.arange(n), bins.shape)
  return (hits.at[heads, bins].add(accepted.astype(jnp.float32)),
          tries.at[heads, bins].add(tried.astype(jnp.float32)))
