"""Acceptance rules: which root path of a verified tree to keep, and the token that follows.

`accept` is the loop's one entry point, for any topology (a chain is a tree of one path).

A block d[0..L-1] was fed to the model; d[0] is already the model's own token. `logits[:, j]` is
the model's next-token prediction after d[0..j]. Draft token d[j+1] is checked against it.

Greedy: keep d[j+1] while it equals argmax(logits[:, j]); the next token is the argmax at the
last kept position. Output equals greedy decoding.

Sampling (lossless for a deterministic draft, i.e. speculative sampling with a point-mass
proposal): keep d[j+1] with probability p_j(d[j+1]); at the first rejection draw the next token
from p_j with d[j+1] removed and renormalised; if all are kept, draw it from p_{L-1}. The
distribution of the output equals that of plain sampling from p.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import sampling
from bpdjax.decoding import tree as tree_lib


def _leading_true(matches: jax.Array) -> jax.Array:
  """[B, n] bool -> [B] number of leading True entries."""
  return jnp.sum(jnp.cumprod(matches.astype(jnp.int32), axis=1), axis=1)


def accept(topology: tree_lib.Tree, nodes: jax.Array, logits: jax.Array,
           config: sampling.SamplingConfig, rng: jax.Array
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The acceptance rule of a verified tree.

  Args:
    topology: the static tree (tree.Tree) the nodes were fed as.
    nodes: [B, T] int32 node tokens (node 0 already decided).
    logits: [B, T, V] the model's next-token logits (head 1) after each node.
    config: greedy when temperature == 0, else the sampling distribution.
    rng: PRNG key (unused when greedy).
  Returns:
    (num_kept [B] in [1, D + 1], next_token [B], path [B, D + 1] node indices of the kept root
    path, root first, padded by repeating its last node).
  """
  if topology.is_chain:
    num_kept, next_token = accept_chain(nodes, logits, config, rng)
    path = jnp.broadcast_to(jnp.arange(topology.size, dtype=jnp.int32), nodes.shape)
    return num_kept, next_token, path
  if not config.greedy:
    raise ValueError("Tree drafts are verified greedily only; use temperature 0")
  return accept_tree(nodes, logits, topology)


def accept_chain(draft: jax.Array, logits: jax.Array, config: sampling.SamplingConfig,
                 rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Applies the acceptance rule to a chain.

  Args:
    draft: [B, L] int32 tokens fed to the model (draft[:, 0] already decided).
    logits: [B, L, V] next-token logits of the model (head 1) at the fed positions.
    config: greedy when temperature == 0, else the sampling distribution.
    rng: PRNG key (unused when greedy).
  Returns:
    (num_kept [B] in [1, L]: d[0..num_kept-1] are kept, next_token [B]: the model's token after
    them).
  """
  b, l, _ = logits.shape
  if config.greedy:
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)                      # [B, L]
    num_kept = 1 + _leading_true(draft[:, 1:] == greedy[:, :-1])
    next_token = jnp.take_along_axis(greedy, (num_kept - 1)[:, None], axis=1)[:, 0]
    return num_kept, next_token

  rng_accept, rng_next = jax.random.split(rng)
  logp = jax.nn.log_softmax(sampling.processed_logits(logits, config), axis=-1)  # [B, L, V]
  p_draft = jnp.exp(jnp.take_along_axis(logp[:, :-1], draft[:, 1:, None], axis=-1)[..., 0])
  u = jax.random.uniform(rng_accept, (b, l - 1))
  num_kept = 1 + _leading_true(u < p_draft)
  last = num_kept - 1                                                            # [B]
  logp_last = jnp.take_along_axis(logp, last[:, None, None], axis=1)[:, 0]      # [B, V]
  rejected = num_kept < l
  rejected_token = jnp.take_along_axis(draft, jnp.minimum(num_kept, l - 1)[:, None], axis=1)[:, 0]
  # After a rejection the rejected token is removed from the distribution (residual p - q with
  # q a point mass, renormalised); otherwise the full distribution is used.
  remove = rejected[:, None] & (jnp.arange(logp.shape[-1])[None, :] == rejected_token[:, None])
  next_logits = jnp.where(remove, sampling.NEG_INF, logp_last)
  next_token = jax.random.categorical(rng_next, next_logits, axis=-1).astype(jnp.int32)
  return num_kept, next_token


def accept_tree(nodes: jax.Array, logits: jax.Array, topology) -> tuple[jax.Array, ...]:
  """Greedy acceptance for a token tree (p chains, or a Medusa-style tree) verified in one call.

  Node v is kept when every node on its root path matches the model's greedy token after its
  parent. The deepest kept node wins; among equally deep ones, the lowest node index (for
  `tree.chains`, the better-ranked draft).

  Args:
    nodes: [B, T] int32 tokens of the tree's nodes (node 0 decided).
    logits: [B, T, V] the model's next-token logits after each node.
    topology: a tree.Tree.
  Returns:
    (num_kept [B], next_token [B], path [B, D + 1] node indices of the kept path, root first
    and padded by repeating its last node).
  """
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)                        # [B, T]
  parents = jnp.asarray(np.maximum(np.asarray(topology.parents), 0))
  match = (nodes == greedy[:, parents]).at[:, 0].set(True)
  on_path = jnp.asarray(topology.ancestor_mask)                                  # [T, T]
  kept = jnp.all(match[:, None, :] | ~on_path[None], axis=-1)                    # [B, T]
  depth = jnp.asarray(topology.depth)
  best = jnp.argmax(jnp.where(kept, depth[None, :], -1), axis=1)                 # [B]
  path = jnp.asarray(topology.path_table)[best]                                  # [B, D + 1]
  next_token = jnp.take_along_axis(greedy, best[:, None], axis=1)[:, 0]
  return depth[best] + 1, next_token, path
