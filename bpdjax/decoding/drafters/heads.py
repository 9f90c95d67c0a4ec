"""Drafts from the heads alone: plain decoding (ar), the heads' argmax chain (bpd, Stern et al.
2018) and the p best paths of their top-k lattice (pbest_0gram, Kim et al. 2024)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp

from bpdjax import model as model_lib
from bpdjax.decoding import lattice
from bpdjax.decoding import protocol
from bpdjax.decoding import registry
from bpdjax.decoding import tree as tree_lib


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


# ------------------------------------------------------------------------------------------ ar
@dataclasses.dataclass(frozen=True)
class NoDraft(protocol.SingleCandidate):
  """Autoregressive decoding on the same loop: verify only the model's own next token."""
  topology = tree_lib.chain(1)
  last_head = 1

  def start(self, params, prompts, prompt_lengths, cache_len):
    return ()

  def propose(self, params, state, heads, next_token):
    return next_token[:, None].astype(jnp.int32), state

  def commit(self, params, state, tokens, num_kept):
    return state

  def stretch(self, state):
    """The whole decode is one plain stretch (protocol.PlainStretches): the loop's leanest
    iteration, the same one auto's plain steps run, so ar is the baseline auto must beat."""
    return jnp.full((), 2 ** 30, jnp.int32)

  def after_stretch(self, state, counts):
    return state


@dataclasses.dataclass(frozen=True)
class NoOptions:
  def validate(self, model=None) -> None:
    pass


# ----------------------------------------------------------------------------------------- bpd
@dataclasses.dataclass(frozen=True)
class TopOneDrafter(protocol.SingleCandidate):
  """Blockwise parallel decoding: head i's argmax for position t+i, i = 2..draft_len."""
  draft_len: int

  @property
  def topology(self) -> tree_lib.Tree:
    return tree_lib.chain(self.draft_len)

  @property
  def last_head(self) -> int:
    return self.draft_len

  def start(self, params, prompts, prompt_lengths, cache_len):
    return ()

  def propose(self, params, state, heads, next_token):
    head_logits = heads.range(1, self.last_head)                               # [B, L-1, V]
    guesses = jnp.argmax(head_logits, axis=-1).astype(jnp.int32)                 # [B, L-1]
    return jnp.concatenate([next_token[:, None].astype(jnp.int32), guesses], axis=1), state

  def commit(self, params, state, tokens, num_kept):
    return state


@dataclasses.dataclass(frozen=True)
class BpdOptions:
  draft_len: int = 0          # Heads drafted from, head 1 included (0: all h).

  def validate(self, model=None) -> None:
    check_draft_len(self.draft_len, model)


# -------------------------------------------------------------------------------- pbest_0gram
@dataclasses.dataclass(frozen=True)
class PBestDrafter(protocol.SingleCandidate):
  """The p best paths through the heads' top-k lattice by head scores, verified together as p
  chains sharing the model's own next token ("p-best 0-gram" in Kim et al. 2024)."""
  draft_len: int
  k: int
  p: int

  def __post_init__(self):
    lattice.check_num_drafts(self.p, self.k, self.draft_len)

  @property
  def topology(self) -> tree_lib.Tree:
    return tree_lib.chains(self.p, self.draft_len)

  @property
  def last_head(self) -> int:
    return self.draft_len

  def start(self, params, prompts, prompt_lengths, cache_len):
    return ()

  def propose(self, params, state, heads, next_token):
    head_logits = heads.range(1, self.last_head)                               # [B, L-1, V]
    ids, logp = lattice.head_lattice(head_logits, self.k)
    ranks, _ = lattice.pbest_paths(logp, self.p)                                 # [B, p, L-1]
    tokens = jnp.take_along_axis(ids[:, None], ranks[..., None], axis=3)[..., 0]  # [B, p, L-1]
    b = tokens.shape[0]
    return jnp.concatenate([next_token[:, None].astype(jnp.int32), tokens.reshape(b, -1)],
                           axis=1), state

  def commit(self, params, state, tokens, num_kept):
    return state


@dataclasses.dataclass(frozen=True)
class PBestOptions:
  k: int = 16                 # Candidates per head.
  p: int = 16                 # Drafts verified per call.

  def validate(self, model=None) -> None:
    check_k(self.k, model)
    if self.p < 1:
      raise ValueError(f"p must be >= 1, got {self.p}")
    if model is not None:
      lattice.check_num_drafts(self.p, self.k, model.num_heads_bpd)


registry.register(registry.Method(
    name="ar", summary="plain autoregressive decoding (one token per call; the reference)",
    options=NoOptions, build=lambda o, m, r: (NoDraft(), None), exact_sampling=True,
    role=registry.REFERENCE))
registry.register(registry.Method(
    name="bpd", summary="blockwise parallel decoding: the heads' argmax chain (Stern et al. 2018)",
    options=BpdOptions,
    build=lambda o, m, r: (TopOneDrafter(check_draft_len(o.draft_len, m)), None),
    exact_sampling=True, role=registry.VANILLA))
registry.register(registry.Method(
    name="pbest_0gram",
    summary="the p best paths of the heads' top-k lattice, verified together (k, p)",
    options=PBestOptions,
    build=lambda o, m, r: (PBestDrafter(m.num_heads_bpd, o.k, o.p), None)))
