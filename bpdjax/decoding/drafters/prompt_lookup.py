"""Prompt lookup: the training-free n-gram-from-context drafter (prompt lookup decoding,
Saxena 2023, in transformers as prompt_lookup_num_tokens; vLLM's and sglang's n-gram drafter).

`prompt_lookup`: the last g tokens of the prompt plus the output so far (the model's own next
token included), g = max_ngram down to min_ngram, are looked up earlier in that same sequence;
the first occurrence with a continuation gives the draft, the num_tokens tokens after it (as
transformers' PLD: longest n-gram first, earliest match first). No match, or a continuation
that runs past the known tokens, leaves filler tokens that verification rejects. On device, in
the jitted loop: the sequence is the drafter's own state, a [B, S] buffer appended to by commit.

`prompt_lookup_tree`: that chain and the heads' sparse tree verified together (one root): the
Medusa tree (medusa.py) for heads that read no drafted token, the conditioned tree
(conditioned.py) for sequential / Markov heads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp

from bpdjax import heads as heads_lib
from bpdjax.decoding import protocol
from bpdjax.decoding import registry
from bpdjax.decoding import tree as tree_lib
from bpdjax.decoding.drafters import base
from bpdjax.decoding.drafters import conditioned
from bpdjax.decoding.drafters import medusa


@flax.struct.dataclass
class History:
  """tokens: [B, S] int32 each row's prompt then its committed output, then the model's next
  token at slot `lengths` (written by propose); lengths: [B] int32 committed tokens; matched,
  known: [B] int32 the last lookup's n-gram length (0: no match) and continuation tokens found
  (what auto calibrates on)."""
  tokens: jax.Array
  lengths: jax.Array
  matched: jax.Array
  known: jax.Array


def lookup(tokens: jax.Array, n: jax.Array, max_ngram: int, min_ngram: int,
           num_tokens: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The continuation of the longest match of the last tokens.

  Args:
    tokens: [B, S] int32 sequences; tokens[b, :n[b]] are known.
    n: [B] int32 known tokens per row.
  Returns:
    (draft, matched, known): draft [B, num_tokens] int32: for the largest g in
    [min_ngram, max_ngram] such that the last g known tokens occur earlier at some p
    (p + g < n), the tokens after the first such p (0 past the known tokens), all 0 when no g
    matches; matched [B] int32 that g (0: none); known [B] int32 the draft's tokens found.
  """
  b, s = tokens.shape
  pos = jnp.arange(s)[None, :]                                                   # [1, S]
  start = jnp.full((b,), -1, jnp.int32)
  matched = jnp.zeros((b,), jnp.int32)
  for g in range(max_ngram, min_ngram - 1, -1):
    matches = (pos + g < n[:, None]) & (n[:, None] >= g)
    for j in range(g):
      suffix = jnp.take_along_axis(tokens, jnp.clip(n - g + j, 0, s - 1)[:, None], 1)  # [B, 1]
      shifted = jnp.pad(tokens[:, j:], ((0, 0), (0, j)), constant_values=-1)
      matches &= shifted == suffix
    found = jnp.any(matches, axis=1)
    first = jnp.argmax(matches, axis=1).astype(jnp.int32) + g
    matched = jnp.where((start < 0) & found, g, matched)
    start = jnp.where((start < 0) & found, first, start)
  idx = start[:, None] + jnp.arange(num_tokens)[None, :]                         # [B, K]
  known = (start[:, None] >= 0) & (idx < n[:, None])
  draft = jnp.take_along_axis(tokens, jnp.clip(idx, 0, s - 1), axis=1)
  return (jnp.where(known, draft, 0).astype(jnp.int32), matched,
          jnp.sum(known, axis=1).astype(jnp.int32))


@dataclasses.dataclass(frozen=True)
class PromptLookupDrafter(base.Stateless):
  """The chain: the model's next token, then `num_tokens` tokens looked up in the context."""
  num_tokens: int
  max_ngram: int = 2
  min_ngram: int = 1

  def __post_init__(self):
    check(self.num_tokens, self.max_ngram, self.min_ngram)

  @property
  def topology(self) -> tree_lib.Tree:
    return tree_lib.chain(self.num_tokens + 1)

  @property
  def last_head(self) -> int:
    return 1

  @property
  def candidates(self) -> tuple[int, ...]:
    return base.chain_prefixes(self.num_tokens + 1)

  def start(self, params, prompts, prompt_lengths, cache_len):
    b, p = prompts.shape
    buffer = jnp.zeros((b, max(cache_len, p) + 1), jnp.int32).at[:, :p].set(prompts)
    zeros = jnp.zeros((b,), jnp.int32)
    return History(tokens=buffer, lengths=prompt_lengths.astype(jnp.int32), matched=zeros,
                   known=zeros)

  def propose(self, params, state: History, heads, next_token):
    b = next_token.shape[0]
    tokens = state.tokens.at[jnp.arange(b), state.lengths].set(
        next_token.astype(jnp.int32), mode="drop")
    draft, matched, known = lookup(tokens, state.lengths + 1, self.max_ngram, self.min_ngram,
                                   self.num_tokens)
    nodes = jnp.concatenate([next_token[:, None].astype(jnp.int32), draft], axis=1)
    return nodes, state.replace(tokens=tokens, matched=matched, known=known)

  def confidence(self, state: History, logp, computed, nodes):
    """Looked-up token j (1-based): matched / max_ngram while j <= known, else 0 (auto learns
    the acceptance per draft position and matched n-gram length)."""
    del logp, computed
    j = jnp.arange(nodes.shape[1])[None, :]
    score = (state.matched / self.max_ngram).astype(jnp.float32)[:, None]
    return jnp.where(j == 0, 1.0, jnp.where(j <= state.known[:, None], score, 0.0))

  def commit(self, params, state: History, tokens, num_kept):
    """Appends each row's accepted root path (num_kept tokens, the old next token first)."""
    b, n = tokens.shape
    j = jnp.arange(n)[None, :]
    idx = jnp.where(j < num_kept[:, None], state.lengths[:, None] + j, state.tokens.shape[1])
    buffer = state.tokens.at[jnp.arange(b)[:, None], idx].set(tokens.astype(jnp.int32),
                                                              mode="drop")
    return state.replace(tokens=buffer, lengths=state.lengths + num_kept)


@dataclasses.dataclass(frozen=True)
class MergedDrafter(base.Stateless):
  """The prompt-lookup chain (nodes 0..num_tokens) and a heads tree's other nodes (after it)
  under one root; primary: the prompt-lookup chain."""
  lookup: PromptLookupDrafter
  tree: Any               # A SingleCandidate drafter whose topology is a tree.

  @property
  def topology(self) -> tree_lib.Tree:
    k = self.lookup.num_tokens
    other = self.tree.topology.parents[1:]
    parents = self.lookup.topology.parents + tuple(0 if p == 0 else p + k for p in other)
    return tree_lib.Tree(parents=parents, primary=self.lookup.topology.primary)

  @property
  def last_head(self) -> int:
    return self.tree.last_head

  def start(self, params, prompts, prompt_lengths, cache_len):
    return (self.lookup.start(params, prompts, prompt_lengths, cache_len),
            self.tree.start(params, prompts, prompt_lengths, cache_len))

  def propose(self, params, state, heads, next_token):
    chain, lookup_state = self.lookup.propose(params, state[0], heads, next_token)
    nodes, tree_state = self.tree.propose(params, state[1], heads, next_token)
    return jnp.concatenate([chain, nodes[:, 1:]], axis=1), (lookup_state, tree_state)

  def commit(self, params, state, tokens, num_kept):
    return (self.lookup.commit(params, state[0], tokens, num_kept),
            self.tree.commit(params, state[1], tokens, num_kept))


# ----------------------------------------------------------------------------- options
def check(num_tokens: int, max_ngram: int, min_ngram: int) -> None:
  if num_tokens < 1:
    raise ValueError(f"num_tokens must be >= 1 (tokens looked up per call), got {num_tokens}")
  if min_ngram < 1 or max_ngram < min_ngram:
    raise ValueError(f"Need 1 <= min_ngram <= max_ngram, got min_ngram={min_ngram}, "
                     f"max_ngram={max_ngram}")


@dataclasses.dataclass(frozen=True)
class PromptLookupOptions:
  num_tokens: int = 10        # Tokens looked up per call (transformers' prompt_lookup_num_tokens).
  max_ngram: int = 2          # Longest n-gram matched (transformers' max_matching_ngram_size).
  min_ngram: int = 1          # Shortest n-gram matched.

  def validate(self, model=None) -> None:
    check(self.num_tokens, self.max_ngram, self.min_ngram)


@dataclasses.dataclass(frozen=True)
class PromptLookupTreeOptions(PromptLookupOptions):
  k: int = 16                 # Candidates per head in the heads' tree.
  tree_size: int = 64         # Nodes of the heads' tree, root included.

  def validate(self, model=None) -> None:
    super().validate(model)
    if model is not None and model.num_heads_bpd < 2:
      raise ValueError(f"prompt_lookup_tree merges heads 2..h; the model has h = "
                       f"{model.num_heads_bpd} (prompt_lookup alone needs no heads)")
    conditioned.check_tree(self.k, self.tree_size, model)


def heads_tree(model, k: int, tree_size: int):
  """The heads' sparse tree for `model`: conditioned when its heads read earlier drafts."""
  if heads_lib.reads_tokens(model):
    return conditioned.ConditionedTreeDrafter(model.num_heads_bpd, k, tree_size)
  return medusa.MedusaTreeDrafter(model.num_heads_bpd, k, tree_size)


def _lookup(options) -> PromptLookupDrafter:
  return PromptLookupDrafter(options.num_tokens, options.max_ngram, options.min_ngram)


registry.register(registry.Method(
    name="prompt_lookup", summary="prompt lookup (PLD / vLLM n-gram drafter): the continuation "
    "of the longest match of the last tokens in prompt + output (num_tokens, max_ngram, "
    "min_ngram)", options=PromptLookupOptions,
    build=lambda o, m, r: (_lookup(o), None)))
registry.register(registry.Method(
    name="prompt_lookup_tree", summary="the prompt-lookup chain and the heads' sparse tree, "
    "verified together (num_tokens, max_ngram, min_ngram, k, tree_size)",
    options=PromptLookupTreeOptions,
    build=lambda o, m, r: (MergedDrafter(_lookup(o), heads_tree(m, o.k, o.tree_size)), None)))
