"""Medusa sparse-tree drafts (Cai et al. 2024), alone or with local neural rescoring.

A sparse tree is a static token tree (tree.py) whose root is the model's own next token (head 1)
and whose node at depth d >= 1 stands for "the rank-r candidate of head d+1's top-k". Its shape
is chosen once, before decoding, by Medusa's greedy rule: starting from the root, repeatedly add
the child (of a node already in the tree) with the largest expected acceptance, the product of
the heads' rank accuracies along its path, until the tree has `size` nodes. Every path of the tree
is verified in one model call under the tree attention mask, and the loop keeps the longest path
the model agrees with (loop.decode, verify.accept_tree), so greedy output equals plain decoding.

Medusa + local rescoring (Kim et al. 2024, rebuttal): each head's top-k is first reranked by
(1 - alpha) * log p_head + alpha * log p_rescorer along the rescored primary chain (Algorithm 2,
rescoring.LocalRescoreDrafter.rerank); the tree's rank-r node at depth d then takes the rank-r
token of head d+1's reranked list. alpha = 0 gives exactly the plain Medusa tree.
"""
from __future__ import annotations

import dataclasses
import functools
import heapq
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import drafters
from bpdjax.decoding import rescoring
from bpdjax.decoding import tree as tree_lib


@dataclasses.dataclass(frozen=True)
class SparseTree:
  """tree: the topology (node 0 the root, parents before children, tree.primary the all-rank-0
  chain); ranks: [T] the top-k rank each node stands for at its depth (root 0)."""
  tree: tree_lib.Tree
  ranks: tuple[int, ...]

  @property
  def size(self) -> int:
    return self.tree.size


def _validated_accuracy(accuracy) -> np.ndarray:
  acc = np.asarray(accuracy, np.float64)
  if acc.ndim != 2 or acc.shape[1] < 1:
    raise ValueError(f"accuracy must have shape [L-1, k] with k >= 1, got {acc.shape}")
  if not np.all(np.isfinite(acc)) or np.any(acc < 0) or np.any(acc > 1):
    raise ValueError("accuracy entries must be probabilities in [0, 1]")
  if np.any(np.diff(acc, axis=1) > 0):
    raise ValueError("accuracy must be non-increasing in rank (accuracy[d][r] >= accuracy[d][r+1])")
  return acc


def build_sparse_tree(accuracy, size: int) -> SparseTree:
  """Medusa's greedy sparse tree.

  Args:
    accuracy: [L-1, k] accuracy[d-1][r] = estimated probability that head d+1's rank-r token is
      the model's token (d = 1..L-1), non-increasing in r.
    size: nodes in the tree, root included (>= 1, at most 1 + k + ... + k^(L-1)).
  Returns:
    SparseTree whose nodes are in the order added, so parents precede children. A node's value
    is the product of accuracies along its path; the greedy step adds the frontier node of largest
    value, ties going to the shallower node, then to the lexicographically smaller rank path. As
    values never grow along a path, this equals taking the `size` best nodes of the full tree in
    that order, and the all-rank-0 chain (tree.primary) reaches the tree's maximum depth.
  """
  acc = _validated_accuracy(accuracy)
  depth_max, k = acc.shape
  if size < 1:
    raise ValueError(f"Tree size must be >= 1 (the root), got {size}")
  capacity = sum(k ** d for d in range(depth_max + 1))
  if size > capacity:
    raise ValueError(f"Tree size {size} exceeds the {capacity} nodes of a full tree with "
                     f"{depth_max} heads of top-{k}")
  parents, ranks, values, paths = [-1], [0], [1.0], [()]
  # Heap of (-value, depth, path, parent node, rank). Children of a node are added in rank order
  # (non-increasing accuracy), so the heap holds only each node's next unused child.
  heap = []

  def push(parent: int, rank: int):
    depth = len(paths[parent]) + 1
    if depth <= depth_max and rank < k:
      value = values[parent] * float(acc[depth - 1, rank])
      heapq.heappush(heap, (-value, depth, paths[parent] + (rank,), parent, rank))

  push(0, 0)
  while len(parents) < size:
    neg_value, _, path, parent, rank = heapq.heappop(heap)
    parents.append(parent)
    ranks.append(rank)
    values.append(-neg_value)
    paths.append(path)
    push(len(parents) - 1, 0)      # First child of the new node.
    push(parent, rank + 1)         # Next sibling.
  primary = [v for v, p in enumerate(paths) if all(r == 0 for r in p)]
  return SparseTree(tree=tree_lib.Tree(parents=tuple(parents), primary=tuple(primary)),
                    ranks=tuple(ranks))


_cached_tree = functools.lru_cache(maxsize=64)(build_sparse_tree)    # (tuples, int) keys.


def default_accuracy(num_heads: int, k: int) -> np.ndarray:
  """The prior used when no calibration is given: [h-1, k] with
    accuracy[d-1][r] = 0.6 * 0.8^(d-1) / (r + 1)     (head d+1, rank r).
  Geometric decay over heads (farther heads are less accurate, as measured for Medusa and BPD
  heads) times a Zipf 1/(r+1) decay over ranks (the tail of a head's top-k still holds the token
  now and then). Only ratios matter to the tree's shape: with k = 16 and 64 nodes it has 1, 16,
  34, 13 nodes at depths 0..3 for h = 4 and 1, 16, 33, 13, 1 for h = 9: wide near the root and
  about depth 4, like Medusa's published 64-node trees."""
  if num_heads < 1 or k < 1:
    raise ValueError(f"num_heads and k must be >= 1, got {num_heads}, {k}")
  d, r = np.arange(num_heads - 1)[:, None], np.arange(k)[None, :]
  return 0.6 * 0.8 ** d / (r + 1.0)


def accuracy_from_records(topk: np.ndarray, tokens: np.ndarray, lengths: np.ndarray,
                          k: Optional[int] = None) -> np.ndarray:
  """Calibrated accuracies from a recorded decode (loop.Records numpy views).

  Args:
    topk: [B, S, h, K] each head's top-K at output slot s (head i+1 predicts tokens[s + i]).
    tokens: [B, M] output tokens; lengths: [B].
    k: ranks to keep (default K).
  Returns:
    [h-1, k] share of slots where head d+1's rank-r token was the output token, made
    non-increasing in rank by a running minimum (as build_sparse_tree requires).
  """
  b, s, h, kk = topk.shape
  k = kk if k is None else k
  if k > kk:
    raise ValueError(f"k={k} exceeds the recorded top-{kk}")
  acc = np.zeros((h - 1, k))
  for d in range(1, h):
    hits, total = np.zeros(k), 0
    for row in range(b):
      n = int(lengths[row]) - d                  # Slots whose target tokens[s + d] exists.
      if n > 0:
        hits += np.sum(topk[row, :n, d, :k] == tokens[row, d:d + n, None], axis=0)
        total += n
    acc[d - 1] = hits / max(total, 1)
  return np.minimum.accumulate(acc, axis=1)


def _tree_tokens(sparse: SparseTree, ids: jax.Array, next_token: jax.Array) -> jax.Array:
  """ids [B, L-1, k] candidates of heads 2..L, next_token [B] -> node tokens [B, T] int32."""
  depth = np.asarray(sparse.tree.depth)[1:]
  ranks = np.asarray(sparse.ranks)[1:]
  nodes = ids[:, depth - 1, ranks]                                              # [B, T-1]
  return jnp.concatenate([next_token[:, None].astype(jnp.int32), nodes], axis=1)


def _check_logits(head_logits: jax.Array, draft_len: int, k: int) -> None:
  if head_logits.shape[1] < draft_len:
    raise ValueError(f"The tree needs {draft_len} heads; the model has {head_logits.shape[1]}")
  if k > head_logits.shape[-1]:
    raise ValueError(f"k={k} exceeds the vocabulary size {head_logits.shape[-1]}")


@dataclasses.dataclass(frozen=True)
class MedusaTreeDrafter:
  """Medusa sparse-tree drafting with the heads' own top-k.

  num_heads: h, heads available (the tree uses heads 2..draft_len); k: candidates per head;
  tree_size: nodes verified per call, root included; accuracy: optional calibrated [h-1][k]
  accuracies as nested tuples (default: default_accuracy). draft_len (the longest path a call
  can keep) is the tree's depth + 1, at most h.
  """
  num_heads: int
  k: int
  tree_size: int
  accuracy: Optional[tuple[tuple[float, ...], ...]] = None
  uses_heads: bool = True

  def __post_init__(self):
    if self.num_heads < 1 or self.k < 1:
      raise ValueError(f"num_heads and k must be >= 1, got {self.num_heads}, {self.k}")
    if self.accuracy is not None and np.shape(self.accuracy) != (self.num_heads - 1, self.k):
      raise ValueError(f"accuracy must have shape [{self.num_heads - 1}, {self.k}], got "
                       f"{np.shape(self.accuracy)}")
    self.sparse  # pylint: disable=pointless-statement  (validates the tree settings)

  @property
  def sparse(self) -> SparseTree:
    acc = self.accuracy
    if acc is None:
      acc = tuple(map(tuple, default_accuracy(self.num_heads, self.k).tolist()))
    return _cached_tree(acc, self.tree_size)

  @property
  def tree(self) -> tree_lib.Tree:
    return self.sparse.tree

  @property
  def draft_len(self) -> int:
    return self.tree.max_depth + 1

  def start(self, drafter_params, prompts, prompt_lengths):
    del drafter_params, prompts, prompt_lengths
    return ()

  def propose(self, state, head_logits, next_token):
    """head_logits [B, h, V], next_token [B] -> (tree tokens [B, T] int32, state)."""
    _check_logits(head_logits, self.draft_len, self.k)
    ids, _ = drafters.head_lattice(head_logits, self.draft_len, self.k)
    return _tree_tokens(self.sparse, ids, next_token), state

  def commit(self, state, tokens, num_kept):
    del tokens, num_kept
    return state


@flax.struct.dataclass
class MedusaLocalState:
  """rescorer: the rescoring LM's state; fed: [B, L] int32 the primary chain the last proposal
  fed to the rescorer (fed[:, j] sits at rescorer slot committed + 1 + j, j < L-1)."""
  rescorer: rescoring.RescorerState
  fed: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class MedusaLocalDrafter(MedusaTreeDrafter):
  """Medusa + local rescoring: the tree of MedusaTreeDrafter over the heads' top-k reranked by
  rescoring.LocalRescoreDrafter.rerank (fields alpha, rescorer, cache_init, cache_len as there).

  The rescorer is fed the primary chain. When the loop accepts another path, the accepted tokens
  that the rescorer cache must hold differ from the fed ones; commit then re-feeds the accepted
  path (one extra rescorer call, only in iterations where some row needs it).
  """
  alpha: float = 0.5
  rescorer: Any = None
  cache_init: Any = None
  cache_len: int = 0

  @property
  def local(self) -> rescoring.LocalRescoreDrafter:
    return rescoring.LocalRescoreDrafter(self.draft_len, self.k, self.alpha, self.rescorer,
                                         self.cache_init, self.cache_len)

  def __post_init__(self):
    super().__post_init__()
    self.local  # pylint: disable=pointless-statement  (validates alpha)

  def start(self, drafter_params, prompts, prompt_lengths):
    rescorer_state = self.local.start(drafter_params, prompts, prompt_lengths)
    fed = jnp.zeros((prompts.shape[0], self.draft_len), jnp.int32)
    return MedusaLocalState(rescorer=rescorer_state, fed=fed)

  def propose(self, state: MedusaLocalState, head_logits, next_token):
    _check_logits(head_logits, self.draft_len, self.k)
    ranked, rescorer_state = self.local.rerank(state.rescorer, head_logits, next_token)
    fed = jnp.concatenate([next_token[:, None].astype(jnp.int32), ranked[:, :, 0]], axis=1)
    return (_tree_tokens(self.sparse, ranked, next_token),
            MedusaLocalState(rescorer=rescorer_state, fed=fed))

  def _refeed(self, rs: rescoring.RescorerState, tokens: jax.Array, rows: jax.Array):
    """Writes tokens [B, n] at rescorer slots committed + 1.. in the rows [B] that need it."""
    _, written = self.local._step(rs, tokens, 1)  # pylint: disable=protected-access
    written = written.cache

    def pick(new, old):
      return jnp.where(rows[:, None, None, None], new, old)

    return rs.replace(cache=rs.cache.replace(k=tuple(map(pick, written.k, rs.cache.k)),
                                             v=tuple(map(pick, written.v, rs.cache.v))))

  def commit(self, state: MedusaLocalState, tokens, num_kept):
    """tokens [B, L+1]: the accepted path then the model's token. The rescorer cache must hold
    tokens[:, :num_kept-1] after `last`; rows whose accepted path left the fed chain there are
    re-fed before the ordinary commit."""
    rs = state.rescorer
    n = self.draft_len - 1
    if n >= 2:                     # Shorter trees never commit a fed token but the root.
      j = jnp.arange(n)[None, :]
      wrong = (tokens[:, :n] != state.fed[:, :n]) & (j >= 1) & (j <= num_kept[:, None] - 2)
      rows = jnp.any(wrong, axis=1)
      rs = jax.lax.cond(jnp.any(rows), lambda r: self._refeed(r, tokens[:, :n], rows),
                        lambda r: r, rs)
    return state.replace(rescorer=self.local.commit(rs, tokens, num_kept))
