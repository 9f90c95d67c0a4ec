"""Acceptance rules: which root path of a verified tree to keep, and the token that follows.

`accept` is the loop's one entry point, for any topology (a chain is a tree of one path).

A block d[0..L-1] was fed to the model; d[0] is already the model's own token. `logits[:, j]` is
the model's next-token prediction after d[0..j]. Draft token d[j+1] is checked against it.

Greedy: keep d[j+1] while it equals argmax(logits[:, j]); the next token is the argmax at the
last kept position. Output equals greedy decoding.

Sampling (lossless for a deterministic draft, i.e. speculative sampling with a point-mass
proposal): keep d[j+1] with probability p_j(d[j+1]); at the first rejection draw the next token
from p_j with d[j+1] removed and renormalised; if all are kept, draw it from p_{L-1}. The
distribution of the output equals that of plain sampling from p (p: the processed distribution,
temperature, top-k and top-p applied once, sampling.processed_logits).

Trees (p-best chains, Medusa trees, auto's tree candidates) are verified by the recursive
rejection rule (multi-draft speculative sampling with deterministic drafts): at the current
node, try its children in node order (distinct tokens: a child repeating an earlier sibling's
token, or a node whose root path repeats another's, is the same draft and tried once); accept
child x with probability r(x) / sum(r) under the current residual r (first p at that node),
otherwise set r(x) = 0 and try the next child; when every child is rejected, the next token is
drawn from r. Each emitted token is then distributed as p: sampling x from r directly equals
"accept child 1 w.p. r(x1), else sample from r without x1", applied recursively.

Block verification (Sun et al., ICLR 2025, Algorithm 2) for chains, specialised to a
deterministic draft (point mass q): with w_i = prod_{j<=i} p_{j-1}(d[j]) (w_0 = 1) the
weights are h_i = (w_i - w_{i+1}) / (1 - w_{i+1}) for i < L-1 and h_{L-1} = w_{L-1}; with
eta_i ~ Bernoulli(h_i), tau = max{i: eta_i} (0 if none) draft tokens are kept and the next
token comes from p_tau without d[tau+1] (or p_{L-1} when tau = L-1). For a point-mass draft
the residual equals token-wise's and P(tau >= i) = w_i, so the accepted length has the same
distribution as the token-wise rule's: block verification never keeps fewer tokens in
expectation, and for deterministic drafts exactly as many (its gain is for sampled drafts).

Typical acceptance (Medusa, Cai et al. 2024), opt-in and lossy: node v passes when
p_parent(v's token) > min(epsilon, delta * exp(-H(p_parent))); the deepest node whose root path
all passes is kept (lowest index among ties) and the next token is drawn from p at it.
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
  if config.greedy:
    if topology.is_chain:
      return _chain_result(topology, nodes, *accept_chain(nodes, logits, config, rng))
    return accept_tree(nodes, logits, topology)
  if config.acceptance == sampling.TYPICAL_LOSSY:
    return accept_typical(nodes, logits, topology, config, rng)
  if topology.is_chain:
    block = config.acceptance == sampling.BLOCK and topology.size > 1   # ar: nothing to verify.
    rule = accept_block if block else accept_chain
    return _chain_result(topology, nodes, *rule(nodes, logits, config, rng))
  return accept_tree_sampled(nodes, logits, topology, config, rng)


def _chain_result(topology, nodes, num_kept, next_token):
  path = jnp.broadcast_to(jnp.arange(topology.size, dtype=jnp.int32), nodes.shape)
  return num_kept, next_token, path


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
  num_kept, best, path = _deepest_passing(match, topology)
  next_token = jnp.take_along_axis(greedy, best[:, None], axis=1)[:, 0]
  return num_kept, next_token, path


def _deepest_passing(match: jax.Array, topology) -> tuple[jax.Array, jax.Array, jax.Array]:
  """match [B, T] bool (root True) -> (num_kept [B], best [B], path [B, D + 1]): the deepest
  node whose whole root path matches, the lowest index among equally deep ones."""
  on_path = jnp.asarray(topology.ancestor_mask)                                  # [T, T]
  kept = jnp.all(match[:, None, :] | ~on_path[None], axis=-1)                    # [B, T]
  depth = jnp.asarray(topology.depth)
  best = jnp.argmax(jnp.where(kept, depth[None, :], -1), axis=1)                 # [B]
  path = jnp.asarray(topology.path_table)[best]                                  # [B, D + 1]
  return depth[best] + 1, best, path


def _sample_from(rng: jax.Array, weights: jax.Array) -> jax.Array:
  """[B, V] non-negative weights -> [B] int32 a draw proportional to them."""
  return jax.random.categorical(
      rng, jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 1e-38)), sampling.NEG_INF),
      axis=-1).astype(jnp.int32)


def accept_block(draft: jax.Array, logits: jax.Array, config: sampling.SamplingConfig,
                 rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Block verification of a chain (module docstring; Sun et al. 2025), lossless.

  Args: as accept_chain (config: sampling, temperature > 0).
  Returns:
    (num_kept [B] in [1, L], next_token [B]).
  """
  b, l, _ = logits.shape
  rng_eta, rng_next = jax.random.split(rng)
  probs = jax.nn.softmax(sampling.processed_logits(logits, config), axis=-1)      # [B, L, V]
  p_draft = jnp.take_along_axis(probs[:, :-1], draft[:, 1:, None], axis=-1)[..., 0]  # [B, L-1]
  w = jnp.concatenate([jnp.ones((b, 1)), jnp.cumprod(p_draft, axis=1)], axis=1)   # [B, L]
  denom = 1.0 - w[:, 1:]
  h = jnp.where(denom > 0, (w[:, :-1] - w[:, 1:]) / jnp.where(denom > 0, denom, 1.0), 0.0)
  h = jnp.concatenate([h[:, 1:], w[:, -1:]], axis=1)                             # h_1..h_{L-1}
  eta = jax.random.uniform(rng_eta, (b, l - 1)) < h
  tau = jnp.max(jnp.where(eta, jnp.arange(1, l)[None, :], 0), axis=1)           # [B]
  residual = jnp.take_along_axis(probs, tau[:, None, None], axis=1)[:, 0]        # [B, V]
  rejected = jnp.take_along_axis(draft, jnp.minimum(tau + 1, l - 1)[:, None], axis=1)[:, 0]
  remove = (tau < l - 1)[:, None] & (jnp.arange(probs.shape[-1])[None, :] == rejected[:, None])
  return tau + 1, _sample_from(rng_next, jnp.where(remove, 0.0, residual))


def remove_rejected(residual: jax.Array, token: jax.Array, rejected: jax.Array) -> jax.Array:
  """The residual [B, V] after rejecting child `token` [B] where `rejected` [B]: its mass set to
  0 (the recursive rule's step; the next child is tried against what remains)."""
  hit = rejected[:, None] & (jnp.arange(residual.shape[-1])[None, :] == token[:, None])
  return jnp.where(hit, 0.0, residual)


def accept_tree_sampled(nodes: jax.Array, logits: jax.Array, topology,
                        config: sampling.SamplingConfig, rng: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The recursive rejection rule for a tree of deterministic drafts (module docstring).

  Args:
    nodes: [B, T] int32 node tokens (node 0 decided); logits: [B, T, V] after each node;
    topology: a tree.Tree; config: sampling (temperature > 0); rng: PRNG key.
  Returns:
    (num_kept [B], next_token [B], path [B, D + 1]) as accept_tree.
  """
  b, t = nodes.shape
  rng_u, rng_next = jax.random.split(rng)
  probs = jax.nn.softmax(sampling.processed_logits(logits, config), axis=-1)      # [B, T, V]
  depth = np.asarray(topology.depth)
  path_tokens = nodes[:, jnp.asarray(topology.path_table)]                       # [B, T, D+1]
  # same[b, u, v]: u and v carry the same token sequence from the root (one draft).
  same = (jnp.asarray(depth[:, None] == depth[None, :])[None]
          & jnp.all(path_tokens[:, :, None] == path_tokens[:, None], axis=-1))   # [B, T, T]
  first = ~jnp.any(same & jnp.asarray(np.tri(t, k=-1, dtype=bool).T)[None], axis=1)  # [B, T]
  u = jax.random.uniform(rng_u, (b, t))
  rows = jnp.arange(b)
  current = jnp.zeros((b,), jnp.int32)
  alive = jnp.ones((b,), bool)
  residual = probs[:, 0]
  for d in range(1, topology.max_depth + 1):
    residual = jnp.where(alive[:, None], probs[rows, current], residual)
    accepted = jnp.zeros((b,), bool)
    for v in np.flatnonzero(depth == d):
      parent = topology.parents[v]
      child = alive & ~accepted & first[:, v] & same[rows, parent, current]
      token = nodes[:, v]
      take = child & (u[:, v] * jnp.sum(residual, axis=-1) < residual[rows, token])
      residual = remove_rejected(residual, token, child & ~take)
      current = jnp.where(take, v, current)
      accepted |= take
    alive &= accepted
  residual = jnp.where(alive[:, None], probs[rows, current], residual)
  path = jnp.asarray(topology.path_table)[current]
  return jnp.asarray(depth)[current] + 1, _sample_from(rng_next, residual), path


def accept_typical(nodes: jax.Array, logits: jax.Array, topology,
                   config: sampling.SamplingConfig, rng: jax.Array
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Medusa's typical acceptance (LOSSY; module docstring) on any tree, a chain included.

  Args: as accept_tree_sampled. Returns: (num_kept [B], next_token [B], path [B, D + 1]).
  """
  logp = jax.nn.log_softmax(sampling.processed_logits(logits, config), axis=-1)  # [B, T, V]
  probs = jnp.exp(logp)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * logp, 0.0), axis=-1)           # [B, T]
  threshold = jnp.minimum(config.typical_epsilon, config.typical_delta * jnp.exp(-entropy))
  parents = jnp.asarray(np.maximum(np.asarray(topology.parents), 0))
  p_node = jnp.take_along_axis(probs[:, parents], nodes[:, :, None], axis=-1)[..., 0]  # [B, T]
  match = (p_node > threshold[:, parents]).at[:, 0].set(True)
  num_kept, best, path = _deepest_passing(match, topology)
  at_best = jnp.take_along_axis(logp, best[:, None, None], axis=1)[:, 0]
  return num_kept, jax.random.categorical(rng, at_best, axis=-1).astype(jnp.int32), path
