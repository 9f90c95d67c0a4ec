"""What every drafter shares: the defaults of protocol.Drafter for a stateless drafter, the
candidate sizes of its usual topologies, and the knob groups its options are made of.

Options are frozen dataclasses built from knob groups (`Lattice`: k; `PBest`: k, p;
`Rescoring`: alpha; `DraftLength`: draft_len), each declared once with its default and its
check; `validate(model)` runs every group's check (model: the TransformerConfig, or None for the
checks that need no model). Checks live in the options only: drafters trust their fields.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import model as model_lib
from bpdjax.decoding import lattice
from bpdjax.decoding import tree as tree_lib


def whole_or_plain(topology: tree_lib.Tree) -> tuple[int, ...]:
  """Candidates of a drafter with no useful smaller prefix: plain decoding or the whole tree."""
  return (1,) if topology.size == 1 else (1, topology.size)


def chain_prefixes(length: int) -> tuple[int, ...]:
  """Every prefix of a chain of `length` nodes: 1, 2, ..., length."""
  return tuple(range(1, length + 1))


def chains_prefixes(p: int, length: int) -> tuple[int, ...]:
  """p chains of `length` sharing the root (tree.chains): plain, then 1, 2, ... whole chains."""
  return (1,) + tuple(1 + j * (length - 1) for j in range(1, p + 1)) if length > 1 else (1,)


class Stateless:
  """Defaults of protocol.Drafter: no state, no statistics, heads up to the tree's longest
  path, and plain-or-whole candidates. Subclasses are frozen dataclasses with a `topology`."""

  @property
  def last_head(self) -> int:
    return self.topology.path_len

  @property
  def candidates(self) -> tuple[int, ...]:
    return whole_or_plain(self.topology)

  def start(self, params, prompts, prompt_lengths, cache_len):
    del params, prompts, prompt_lengths, cache_len
    return ()

  def confidence(self, state, logp: jax.Array, computed: jax.Array,
                 nodes: jax.Array) -> jax.Array:
    """What `auto` calibrates acceptance on (policies/auto.py): [B, T] float32 in [0, 1] per
    node of the last proposal, root 1, 0 where nothing is known. By default the probability of
    the node's token under the head of its depth: logp [B, h - 1, V] log-probabilities of heads
    2..h, of which the first `computed` ([] int32) were computed; nodes [B, T]."""
    del state
    topology = self.topology
    depth = np.maximum(np.asarray(topology.depth) - 1, 0)
    node_logp = jnp.take_along_axis(logp[:, depth], nodes[:, :, None], axis=2)[..., 0]
    known = (jnp.asarray(depth)[None, :] < computed) & (jnp.asarray(topology.depth) > 0)
    return jnp.where(known, jnp.exp(node_logp), 0.0).at[:, 0].set(1.0)

  def commit(self, params, state, tokens, num_kept):
    del params, tokens, num_kept
    return state

  def stats(self, state) -> dict:
    del state
    return {}


# ------------------------------------------------------------------------------ knob groups
def check_draft_len(draft_len: int, model: Optional[model_lib.TransformerConfig]) -> int:
  """draft_len 0 means all h heads; returns the effective length (when the model is known)."""
  if draft_len < 0:
    raise ValueError(f"draft_len must be >= 0 (0: all heads), got {draft_len}")
  if model is None:
    return draft_len
  if draft_len > model.num_heads_bpd:
    raise ValueError(f"draft_len={draft_len} exceeds the model's {model.num_heads_bpd} heads")
  return draft_len or model.num_heads_bpd


def check_k(k: int, model: Optional[model_lib.TransformerConfig]) -> None:
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if model is not None and k > model.vocab_size:
    raise ValueError(f"k={k} exceeds the vocabulary size {model.vocab_size}")


def check_alpha(alpha: float) -> None:
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def check_lattice_heads(model: Optional[model_lib.TransformerConfig], what: str) -> None:
  if model is not None and model.num_heads_bpd < 2:
    raise ValueError(f"{what} drafts from heads 2..h; the model has h = {model.num_heads_bpd} "
                     "(plain decoding: method ar)")


@dataclasses.dataclass(frozen=True)
class Options:
  """The root of every method's options: no knob, no check."""

  def validate(self, model: Optional[model_lib.TransformerConfig] = None) -> None:
    del model


@dataclasses.dataclass(frozen=True)
class DraftLength(Options):
  draft_len: int = 0          # Heads drafted from, head 1 included (0: all h).

  def validate(self, model=None) -> None:
    super().validate(model)
    check_draft_len(self.draft_len, model)


@dataclasses.dataclass(frozen=True)
class Lattice(Options):
  k: int = 16                 # Candidates per head.

  def validate(self, model=None) -> None:
    super().validate(model)
    check_k(self.k, model)


@dataclasses.dataclass(frozen=True)
class PBest(Lattice):
  p: int = 16                 # Drafts verified per call.

  def validate(self, model=None) -> None:
    super().validate(model)
    if self.p < 1:
      raise ValueError(f"p must be >= 1, got {self.p}")
    if model is not None:
      lattice.check_num_drafts(self.p, self.k, model.num_heads_bpd)


@dataclasses.dataclass(frozen=True)
class Rescoring(Options):
  alpha: float = 0.5          # Rescorer weight in [0, 1].

  def validate(self, model=None) -> None:
    super().validate(model)
    check_alpha(self.alpha)
