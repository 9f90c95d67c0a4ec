"""Static draft topologies: a chain, p chains sharing their first token, or any token tree.

Node 0 is the model's own next token (the root). A tree of T nodes is verified in one model call:
node v sits at position committed_length + depth(v) and attends to the committed prefix and to
its own ancestors (the tree attention mask). Shapes below are numpy, built once per topology.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tree:
  """parents[v] is v's parent node (parents[0] = -1); parents[v] < v for every v > 0.

  primary: the nodes of the chain reported as "the draft" in analyses (root first).
  """
  parents: tuple[int, ...]
  primary: tuple[int, ...]

  def __post_init__(self):
    if not self.parents or self.parents[0] != -1:
      raise ValueError("Tree node 0 must be the root (parent -1)")
    for v, p in enumerate(self.parents[1:], start=1):
      if not 0 <= p < v:
        raise ValueError(f"Tree node {v} has parent {p}; parents must precede their children")

  @property
  def size(self) -> int:
    return len(self.parents)

  @functools.cached_property
  def depth(self) -> np.ndarray:
    """[T] int32 depth of each node (root 0)."""
    d = np.zeros(self.size, np.int32)
    for v in range(1, self.size):
      d[v] = d[self.parents[v]] + 1
    return d

  @property
  def max_depth(self) -> int:
    return int(self.depth.max())

  @property
  def path_len(self) -> int:
    """Tokens of the longest root path: the most a call can keep (the draft length)."""
    return self.max_depth + 1

  def prefix(self, size: int) -> "Tree":
    """The tree of the first `size` nodes (a tree, since parents precede children); primary:
    the primary nodes among them (a root path, for the same reason)."""
    return _prefix(self, size)

  @property
  def is_chain(self) -> bool:
    """One root path (node v's parent is v - 1): verified with the causal mask, no gather."""
    return all(p == v - 1 for v, p in enumerate(self.parents))

  @functools.cached_property
  def ancestor_mask(self) -> np.ndarray:
    """[T, T] bool: mask[v, u] when u is v or an ancestor of v (what v attends to)."""
    m = np.eye(self.size, dtype=bool)
    for v in range(1, self.size):
      m[v] |= m[self.parents[v]]
    return m

  @functools.cached_property
  def path_table(self) -> np.ndarray:
    """[T, D + 1] int32: row v lists v's ancestors root first, then v, then v repeated."""
    table = np.zeros((self.size, self.max_depth + 1), np.int32)
    for v in range(self.size):
      chain, u = [], v
      while u >= 0:
        chain.append(u)
        u = self.parents[u]
      chain = chain[::-1]
      table[v] = chain + [v] * (self.max_depth + 1 - len(chain))
    return table


@functools.lru_cache(maxsize=None)
def _prefix(tree: Tree, size: int) -> Tree:
  if not 1 <= size <= tree.size:
    raise ValueError(f"A prefix of a {tree.size}-node tree has 1..{tree.size} nodes, not {size}")
  if size == tree.size:
    return tree
  return Tree(parents=tree.parents[:size], primary=tuple(v for v in tree.primary if v < size))


@functools.lru_cache(maxsize=None)
def chain(length: int) -> Tree:
  """One chain of `length` >= 1 tokens (a block draft; length 1 is plain decoding)."""
  if length < 1:
    raise ValueError(f"A chain needs at least one token, got length {length}")
  return Tree(parents=tuple(range(-1, length - 1)), primary=tuple(range(length)))


def chains(num_chains: int, length: int) -> Tree:
  """p chains of `length` tokens sharing the root: node 1 + c*(length-1) + j is chain c's
  token j+1. Chain 0 is the primary draft."""
  if length < 2:
    return chain(1)
  parents = [-1]
  for c in range(num_chains):
    start = 1 + c * (length - 1)
    parents += [0] + [start + j for j in range(length - 2)]
  return Tree(parents=tuple(parents), primary=tuple([0] + list(range(1, length))))

