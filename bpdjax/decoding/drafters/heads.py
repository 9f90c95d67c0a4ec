"""Drafts from the heads alone: plain decoding (ar), the heads' argmax chain (bpd, Stern et al.
2018), the p best paths of their top-k lattice (pbest_0gram, Kim et al. 2024), and the chain
followed by Medusa's extra tree nodes that `auto` drives by default (ChainTreeDrafter)."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import lattice
from bpdjax.decoding import registry
from bpdjax.decoding import sparse_tree
from bpdjax.decoding import tree as tree_lib
from bpdjax.decoding.drafters import base


# ------------------------------------------------------------------------------------------ ar
@dataclasses.dataclass(frozen=True)
class NoDraft(base.Stateless):
  """Autoregressive decoding on the same loop: verify only the model's own next token (the
  fixed policy then runs the whole decode as one plain stretch: policies/fixed.py)."""
  topology = tree_lib.chain(1)

  def propose(self, params, state, heads, next_token):
    return next_token[:, None].astype(jnp.int32), state


# ----------------------------------------------------------------------------------------- bpd
@dataclasses.dataclass(frozen=True)
class TopOneDrafter(base.Stateless):
  """Blockwise parallel decoding: head i's argmax for position t+i, i = 2..draft_len."""
  draft_len: int

  @property
  def topology(self) -> tree_lib.Tree:
    return tree_lib.chain(self.draft_len)

  @property
  def candidates(self) -> tuple[int, ...]:
    return base.chain_prefixes(self.draft_len)

  def propose(self, params, state, heads, next_token):
    head_logits = heads.range(1, self.last_head)                               # [B, L-1, V]
    guesses = jnp.argmax(head_logits, axis=-1).astype(jnp.int32)                 # [B, L-1]
    return jnp.concatenate([next_token[:, None].astype(jnp.int32), guesses], axis=1), state


# -------------------------------------------------------------------------------- pbest_0gram
@dataclasses.dataclass(frozen=True)
class PBestDrafter(base.Stateless):
  """The p best paths through the heads' top-k lattice by head scores, verified together as p
  chains sharing the model's own next token ("p-best 0-gram" in Kim et al. 2024)."""
  draft_len: int
  k: int
  p: int

  @property
  def topology(self) -> tree_lib.Tree:
    return tree_lib.chains(self.p, self.draft_len)

  @property
  def candidates(self) -> tuple[int, ...]:
    return base.chains_prefixes(self.p, self.draft_len)

  def propose(self, params, state, heads, next_token):
    head_logits = heads.range(1, self.last_head)                               # [B, L-1, V]
    ids, logp = lattice.head_lattice(head_logits, self.k)
    ranks, _ = lattice.pbest_paths(logp, self.p)                                 # [B, p, L-1]
    tokens = jnp.take_along_axis(ids[:, None], ranks[..., None], axis=3)[..., 0]  # [B, p, L-1]
    b = tokens.shape[0]
    return jnp.concatenate([next_token[:, None].astype(jnp.int32), tokens.reshape(b, -1)],
                           axis=1), state


# ------------------------------------------------------------------- chain, then tree nodes
@dataclasses.dataclass(frozen=True)
class ChainTreeDrafter(base.Stateless):
  """The heads' argmax chain of `length` nodes, then (tree_nodes > length) the nodes of
  Medusa's sparse tree of that size that are not on its chain (sparse_tree.chain_then_tree);
  candidates: every chain prefix, then each size of `tree_sizes`. k: top-k of the tree nodes."""
  length: int
  k: int = 1
  tree_sizes: tuple[int, ...] = ()

  @property
  def _shape(self) -> tuple:
    return sparse_tree.chain_then_tree(self.length, self.k, max(self.tree_sizes, default=0))

  @property
  def topology(self) -> tree_lib.Tree:
    return self._shape[0]

  @property
  def last_head(self) -> int:
    return self.length

  @property
  def candidates(self) -> tuple[int, ...]:
    return base.chain_prefixes(self.length) + tuple(sorted(set(self.tree_sizes)))

  def propose(self, params, state, heads, next_token):
    topology, ranks = self._shape
    if self.length < 2:
      return next_token[:, None].astype(jnp.int32), state
    ids, _ = lattice.head_lattice(heads.range(1, self.length), self.k)          # [B, L-1, k]
    depth = np.maximum(np.asarray(topology.depth) - 1, 0)
    nodes = ids[:, depth, np.asarray(ranks)]
    return nodes.at[:, 0].set(next_token.astype(jnp.int32)), state


registry.register(registry.Method(
    name="ar", summary="plain autoregressive decoding (one token per call; the reference)",
    options=base.Options, build=lambda o, m, r: (NoDraft(), None), role=registry.REFERENCE))
registry.register(registry.Method(
    name="bpd", summary="blockwise parallel decoding: the heads' argmax chain (Stern et al. 2018)",
    options=base.DraftLength,
    build=lambda o, m, r: (TopOneDrafter(base.check_draft_len(o.draft_len, m)), None),
    role=registry.VANILLA))
registry.register(registry.Method(
    name="pbest_0gram",
    summary="the p best paths of the heads' top-k lattice, verified together (k, p)",
    options=base.PBest,
    build=lambda o, m, r: (PBestDrafter(m.num_heads_bpd, o.k, o.p), None)))
