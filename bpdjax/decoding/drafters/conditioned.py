"""Drafts from heads that read the tokens drafted before them: sequential heads (Hydra, Ankner
et al. 2024; model.head_type "sequential") and the Markov correction (DSpark 2026;
model.markov_rank > 0), both in bpdjax/heads.py.

Chain (`sequential`, `markov`): head 2 reads the model's own next token, head 3 that and head
2's argmax, and so on: one small head call per drafted token, each on its predecessors' draft.
Tree (`sequential_tree`, `markov_tree`): a Medusa sparse tree (sparse_tree.py, chosen once by
expected acceptance) whose rank-r child of a node is the rank-r token of the next head given
that node's own root path; one head call per depth over the depth's parents.

The drafts are deterministic given the context, so the existing tree verification keeps greedy
output identical to plain decoding and sampling exact in distribution (verify.py).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import heads as heads_lib
from bpdjax import model as model_lib
from bpdjax.decoding import protocol
from bpdjax.decoding import registry
from bpdjax.decoding import sparse_tree
from bpdjax.decoding import tree as tree_lib
from bpdjax.decoding.drafters import base


@dataclasses.dataclass(frozen=True)
class ConditionedChainDrafter(base.Stateless):
  """Head i's argmax given the chain drafted before it, i = 2..draft_len. markov_candidates > 0:
  a Markov correction scores only each head's that many best tokens (0: the whole vocabulary)."""
  draft_len: int
  markov_candidates: int = 0

  @property
  def topology(self) -> tree_lib.Tree:
    return tree_lib.chain(self.draft_len)

  @property
  def last_head(self) -> int:
    return self.draft_len

  def propose(self, params, state, heads, next_token):
    chain = next_token[:, None].astype(jnp.int32)                                # [B, 1]
    for i in range(1, self.draft_len):
      logits = heads.given(i, i + 1, chain[:, None, :],
                           self.markov_candidates)[:, 0, 0]                      # [B, V]
      chain = jnp.concatenate([chain, jnp.argmax(logits, -1)[:, None].astype(jnp.int32)], 1)
    return chain, state

@dataclasses.dataclass(frozen=True)
class ConditionedTreeDrafter(base.Stateless):
  """A sparse tree over heads 2..h where each node's children are the top-k of the next head
  given that node's root path. num_heads: h; k: candidates per head; tree_size: nodes per call,
  root included; accuracy: optional [h-1][k] accuracies shaping the tree (nested tuples;
  default sparse_tree.default_accuracy); markov_candidates: as ConditionedChainDrafter's."""
  num_heads: int
  k: int
  tree_size: int
  accuracy: Optional[tuple[tuple[float, ...], ...]] = None
  markov_candidates: int = 0

  def __post_init__(self):
    self.sparse  # pylint: disable=pointless-statement  (validates the tree settings)

  @property
  def sparse(self) -> sparse_tree.SparseTree:
    return sparse_tree.tree_for(self.num_heads, self.k, self.tree_size, self.accuracy)

  @property
  def topology(self) -> tree_lib.Tree:
    return self.sparse.tree

  def propose(self, params, state, heads, next_token):
    topology = self.topology
    depth = np.asarray(topology.depth)
    parents = np.asarray(topology.parents)
    ranks = np.asarray(self.sparse.ranks)
    table = topology.path_table                                                  # [T, D + 1]
    b = next_token.shape[0]
    nodes = jnp.zeros((b, topology.size), jnp.int32).at[:, 0].set(next_token.astype(jnp.int32))
    for d in range(1, topology.max_depth + 1):
      children = np.flatnonzero(depth == d)
      sources = np.unique(parents[children])                                     # [n] static
      paths = nodes[:, table[sources, :d]]                                       # [B, n, d]
      logits = heads.given(d, d + 1, paths, self.markov_candidates)[:, :, 0]     # [B, n, V]
      _, ids = jax.lax.top_k(logits, int(ranks[children].max()) + 1)             # [B, n, r]
      picked = ids[:, np.searchsorted(sources, parents[children]), ranks[children]]
      nodes = nodes.at[:, children].set(picked.astype(jnp.int32))
    return nodes, state

# ----------------------------------------------------------------------------- options
def check_heads(method: str, kind: str, model: Optional[model_lib.TransformerConfig]) -> None:
  """kind "sequential": the model's heads must be sequential; "markov": markov_rank > 0."""
  if model is None:
    return
  if kind == "sequential" and model.head_type not in heads_lib.CONDITIONED_HEAD_TYPES:
    raise ValueError(f"Method {method!r} drafts with sequential heads (model.head_type="
                     f"'sequential'); this model's heads are head_type={model.head_type!r}")
  if kind == "markov" and model.markov_rank <= 0:
    raise ValueError(f"Method {method!r} drafts with a Markov correction (model.markov_rank > "
                     f"0); this model has markov_rank={model.markov_rank}")
  if model.num_heads_bpd < 2:
    raise ValueError(f"Method {method!r} drafts from heads 2..h; the model has h = "
                     f"{model.num_heads_bpd}")


def check_tree(k: int, tree_size: int, model: Optional[model_lib.TransformerConfig]) -> None:
  base.check_k(k, model)
  if tree_size < 1:
    raise ValueError(f"tree_size must be >= 1, got {tree_size}")
  if model is not None:
    try:
      sparse_tree.build_sparse_tree(
          sparse_tree.default_accuracy(model.num_heads_bpd, k), tree_size)
    except ValueError as e:
      raise ValueError(f"tree_size={tree_size} is too large for h = {model.num_heads_bpd} "
                       f"heads of top-k={k}: {e}") from e


def check_markov_candidates(markov_candidates: int, least: int,
                            model: Optional[model_lib.TransformerConfig]) -> None:
  """0 (the whole vocabulary) or least..V tokens per head scored by a Markov correction."""
  if markov_candidates == 0:
    return
  if markov_candidates < least:
    raise ValueError(f"markov_candidates must be 0 (the whole vocabulary) or >= {least} (the "
                     f"ranks the draft reads), got {markov_candidates}")
  if model is not None and model.markov_rank <= 0:
    raise ValueError(f"markov_candidates={markov_candidates} limits a Markov correction; this "
                     f"model has markov_rank={model.markov_rank}")
  if model is not None and markov_candidates > model.vocab_size:
    raise ValueError(f"markov_candidates={markov_candidates} exceeds the vocabulary "
                     f"({model.vocab_size})")


def _chain_options(kind: str):
  @dataclasses.dataclass(frozen=True)
  class ChainOptions:
    draft_len: int = 0        # Heads drafted from, head 1 included (0: all h).
    markov_candidates: int = 0  # > 0: a Markov correction scores each head's that many best.

    def validate(self, model=None) -> None:
      check_heads(kind, kind, model)
      base.check_draft_len(self.draft_len, model)
      check_markov_candidates(self.markov_candidates, 1, model)

  ChainOptions.__name__ = ChainOptions.__qualname__ = f"{kind.capitalize()}ChainOptions"
  return ChainOptions


def _tree_options(kind: str):
  @dataclasses.dataclass(frozen=True)
  class TreeOptions:
    k: int = 16               # Candidates per head.
    tree_size: int = 64       # Nodes verified per call, root included.
    markov_candidates: int = 0  # > 0 (>= k): a Markov correction scores each head's that many best.

    def validate(self, model=None) -> None:
      check_heads(f"{kind}_tree", kind, model)
      check_tree(self.k, self.tree_size, model)
      check_markov_candidates(self.markov_candidates, self.k, model)

  TreeOptions.__name__ = TreeOptions.__qualname__ = f"{kind.capitalize()}TreeOptions"
  return TreeOptions


SequentialChainOptions = _chain_options("sequential")
SequentialTreeOptions = _tree_options("sequential")
MarkovChainOptions = _chain_options("markov")
MarkovTreeOptions = _tree_options("markov")

for _kind, _chain, _tree in (("sequential", SequentialChainOptions, SequentialTreeOptions),
                             ("markov", MarkovChainOptions, MarkovTreeOptions)):
  _what = ("sequential heads (Hydra)" if _kind == "sequential" else
           "heads with a Markov correction")
  registry.register(registry.Method(
      name=_kind, summary=f"the argmax chain of {_what}, each head reading the tokens drafted "
      "before it (draft_len, markov_candidates)", options=_chain,
      build=lambda o, m, r: (ConditionedChainDrafter(
          base.check_draft_len(o.draft_len, m), o.markov_candidates), None)))
  registry.register(registry.Method(
      name=f"{_kind}_tree", summary=f"a sparse tree of {_what}, each node's children from the "
      "next head given the node's path (k, tree_size, markov_candidates)", options=_tree,
      build=lambda o, m, r: (ConditionedTreeDrafter(
          m.num_heads_bpd, o.k, o.tree_size,
          markov_candidates=o.markov_candidates), None)))
