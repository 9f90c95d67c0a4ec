"""Medusa sparse-tree drafts (Cai et al. 2024), alone (`medusa`) or with local neural rescoring
(`medusa_local`).

The tree (sparse_tree.py) is verified in one model call under the tree attention mask, and the
loop keeps the longest path the model agrees with (verify.accept), so greedy output equals
plain decoding.

Medusa + local rescoring (Kim et al. 2024, rebuttal): each head's top-k is first reranked by
(1 - alpha) * log p_head + alpha * log p_rescorer along the rescored primary chain (Algorithm 2,
local.LocalRescoreDrafter.rerank); the tree's rank-r node at depth d then takes the rank-r
token of head d+1's reranked list. alpha = 0 gives exactly the plain Medusa tree.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import lattice
from bpdjax.decoding import registry
from bpdjax.decoding import resources as resources_lib
from bpdjax.decoding import sparse_tree
from bpdjax.decoding import tree as tree_lib
from bpdjax.decoding.drafters import base
from bpdjax.decoding.drafters import local


def _tree_tokens(sparse: sparse_tree.SparseTree, ids: jax.Array,
                 next_token: jax.Array) -> jax.Array:
  """ids [B, L-1, k] candidates of heads 2..L, next_token [B] -> node tokens [B, T] int32."""
  depth = np.asarray(sparse.tree.depth)[1:]
  ranks = np.asarray(sparse.ranks)[1:]
  nodes = ids[:, depth - 1, ranks]                                              # [B, T-1]
  return jnp.concatenate([next_token[:, None].astype(jnp.int32), nodes], axis=1)


@dataclasses.dataclass(frozen=True)
class MedusaTreeDrafter(base.Stateless):
  """Medusa sparse-tree drafting with the heads' own top-k.

  num_heads: h, heads available (the tree uses heads 2..draft_len); k: candidates per head;
  tree_size: nodes verified per call, root included; accuracy: optional calibrated [h-1][k]
  accuracies as nested tuples (default: sparse_tree.default_accuracy). The longest path a call
  can keep is the tree's depth + 1, at most h; propose reads heads 2..that depth + 1. The
  nodes are in the order the greedy construction added them, so each prefix is the best tree
  of its size: the candidates are the prefixes of 1, 2, 4, ... nodes and the whole tree.
  """
  num_heads: int
  k: int
  tree_size: int
  accuracy: Optional[tuple[tuple[float, ...], ...]] = None

  def __post_init__(self):
    if self.accuracy is not None and np.shape(self.accuracy) != (self.num_heads - 1, self.k):
      raise ValueError(f"accuracy must have shape [{self.num_heads - 1}, {self.k}], got "
                       f"{np.shape(self.accuracy)}")

  @property
  def sparse(self) -> sparse_tree.SparseTree:
    return sparse_tree.tree_for(self.num_heads, self.k, self.tree_size, self.accuracy)

  @property
  def topology(self) -> tree_lib.Tree:
    return self.sparse.tree

  @property
  def draft_len(self) -> int:
    return self.topology.path_len

  @property
  def candidates(self) -> tuple[int, ...]:
    powers = [2 ** i for i in range(self.tree_size.bit_length()) if 2 ** i < self.tree_size]
    return tuple(powers) + (self.tree_size,)

  def propose(self, params, state, heads, next_token):
    """heads 2..L at the last kept position, next_token [B] -> (tree tokens [B, T], state)."""
    head_logits = heads.range(1, self.last_head)                               # [B, L-1, V]
    ids, _ = lattice.head_lattice(head_logits, self.k)
    return _tree_tokens(self.sparse, ids, next_token), state


@flax.struct.dataclass
class MedusaLocalState:
  """rescorer: the rescoring LM's state; fed: [B, L] int32 the primary chain the last proposal
  fed to the rescorer (fed[:, j] sits at rescorer slot committed + 1 + j, j < L-1)."""
  rescorer: local.RescorerState
  fed: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class MedusaLocalDrafter(MedusaTreeDrafter):
  """Medusa + local rescoring: the tree of MedusaTreeDrafter over the heads' top-k reranked by
  local.LocalRescoreDrafter.rerank (fields alpha and rescorer as there; the rescorer's params
  are the drafter params).

  The rescorer is fed the primary chain. When the loop accepts another path, the accepted tokens
  that the rescorer cache must hold differ from the fed ones; commit then re-feeds the accepted
  path (one extra rescorer call, only in iterations where some row needs it).
  """
  alpha: float = 0.5
  rescorer: Any = None

  @property
  def local(self) -> local.LocalRescoreDrafter:
    return local.LocalRescoreDrafter(self.draft_len, self.k, self.alpha, self.rescorer)

  def start(self, params, prompts, prompt_lengths, cache_len):
    rescorer_state = self.local.start(params, prompts, prompt_lengths, cache_len)
    fed = jnp.zeros((prompts.shape[0], self.draft_len), jnp.int32)
    return MedusaLocalState(rescorer=rescorer_state, fed=fed)

  def propose(self, params, state: MedusaLocalState, heads, next_token):
    head_logits = heads.range(1, self.last_head)                               # [B, L-1, V]
    ranked, rescorer_state = self.local.rerank(params, state.rescorer, head_logits, next_token)
    fed = jnp.concatenate([next_token[:, None].astype(jnp.int32), ranked[:, :, 0]], axis=1)
    return (_tree_tokens(self.sparse, ranked, next_token),
            MedusaLocalState(rescorer=rescorer_state, fed=fed))

  def _refeed(self, params, rs: local.RescorerState, tokens: jax.Array, rows: jax.Array):
    """Writes tokens [B, n] at rescorer slots committed + 1.. in the rows [B] that need it."""
    _, written = self.local.step(params, rs, tokens, 1)
    written = written.cache

    def pick(new, old):
      return jnp.where(rows[:, None, None, None], new, old)

    return rs.replace(cache=rs.cache.replace(k=tuple(map(pick, written.k, rs.cache.k)),
                                             v=tuple(map(pick, written.v, rs.cache.v))))

  def commit(self, params, state: MedusaLocalState, tokens, num_kept):
    """tokens [B, L+1]: the accepted path then the model's token. The rescorer cache must hold
    tokens[:, :num_kept-1] after `last`; rows whose accepted path left the fed chain there are
    re-fed before the ordinary commit."""
    rs = state.rescorer
    n = self.draft_len - 1
    if n >= 2:                     # Shorter trees never commit a fed token but the root.
      j = jnp.arange(n)[None, :]
      wrong = (tokens[:, :n] != state.fed[:, :n]) & (j >= 1) & (j <= num_kept[:, None] - 2)
      rows = jnp.any(wrong, axis=1)
      rs = jax.lax.cond(jnp.any(rows), lambda r: self._refeed(params, r, tokens[:, :n], rows),
                        lambda r: r, rs)
    return state.replace(rescorer=self.local.commit(params, rs, tokens, num_kept))


@dataclasses.dataclass(frozen=True)
class MedusaOptions(base.Lattice):
  tree_size: int = 64         # Nodes verified per call, root included (as Medusa's trees).

  def validate(self, model=None) -> None:
    super().validate(model)
    if self.tree_size < 1:
      raise ValueError(f"tree_size must be >= 1, got {self.tree_size}")
    if model is not None:   # The tree's capacity for this h and k.
      sparse_tree.build_sparse_tree(
          sparse_tree.default_accuracy(model.num_heads_bpd, self.k), self.tree_size)


@dataclasses.dataclass(frozen=True)
class MedusaLocalOptions(MedusaOptions, base.Rescoring):
  pass


def _build_local(options: MedusaLocalOptions, model, resources):
  rescorer = resources.need(resources_lib.RESCORER, "medusa_local")
  drafter = MedusaLocalDrafter(model.num_heads_bpd, options.k, options.tree_size,
                               alpha=options.alpha, rescorer=rescorer.fns)
  return drafter, rescorer.params


registry.register(registry.Method(
    name="medusa", summary="a Medusa sparse tree over the heads' top-k, verified in one call "
    "(k, tree_size)", options=MedusaOptions,
    build=lambda o, m, r: (MedusaTreeDrafter(m.num_heads_bpd, o.k, o.tree_size), None)))
registry.register(registry.Method(
    name="medusa_local", summary="the Medusa tree over the lattice reranked by local rescoring "
    "(k, tree_size, alpha; --rescorer_workdir)", options=MedusaLocalOptions,
    build=_build_local, resources=(resources_lib.RESCORER,)))
