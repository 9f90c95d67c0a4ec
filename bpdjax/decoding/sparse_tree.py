"""Medusa's sparse token trees (Cai et al. 2024): shape chosen once by expected acceptance.

A sparse tree is a static token tree (tree.py) whose root is the model's own next token (head 1)
and whose node at depth d >= 1 stands for "the rank-r candidate of head d+1's top-k". Its shape
is chosen before decoding by Medusa's greedy rule: starting from the root, repeatedly add the
child (of a node already in the tree) with the largest expected acceptance, the product of the
heads' rank accuracies along its path, until the tree has `size` nodes.
"""
from __future__ import annotations

import dataclasses
import functools
import heapq
from typing import Optional

import numpy as np

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


cached_tree = functools.lru_cache(maxsize=64)(build_sparse_tree)    # (tuples, int) keys.


def tree_for(num_heads: int, k: int, size: int, accuracy=None) -> SparseTree:
  """The sparse tree of `size` nodes over heads 2..num_heads of top-k: shaped by `accuracy`
  ([h-1][k] nested tuples) or by default_accuracy; built once per setting."""
  if accuracy is None:
    accuracy = tuple(map(tuple, default_accuracy(num_heads, k).tolist()))
  return cached_tree(accuracy, size)


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


def chain_then_tree(length: int, k: int, tree_nodes: int) -> tuple:
  """(tree, ranks): the chain of `length` nodes first, then (tree_nodes > length) the nodes of
  Medusa's sparse tree of that size over heads 2..length not on its all-rank-0 chain, in their
  order (parents precede children); ranks[v] is node v's rank in its head's top-k."""
  if tree_nodes <= length:
    return tree_lib.chain(length), (0,) * length
  sparse = build_sparse_tree(default_accuracy(length, k), tree_nodes)
  on_chain = sorted(sparse.tree.primary, key=lambda v: sparse.tree.depth[v])
  new_index = {old: i for i, old in enumerate(on_chain)}     # Primary node at depth d -> d.
  parents, ranks = [-1] + list(range(length - 1)), [0] * length
  for old in range(sparse.size):
    if old not in new_index:
      new_index[old] = len(parents)
      parents.append(new_index[sparse.tree.parents[old]])
      ranks.append(sparse.ranks[old])
  return tree_lib.Tree(parents=tuple(parents), primary=tuple(range(length))), tuple(ranks)
