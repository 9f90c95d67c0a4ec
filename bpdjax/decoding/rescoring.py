"""Draft refinement: local neural rescoring (Kim et al. 2024, Algorithm 2) and global n-gram
rescoring, on device (exact DP) or on the host (OpenFST, through a callback).

Left to right over heads 2..L, pick among head i's top-k the token v that maximises
  (1 - alpha) * log p_head_i(v) + alpha * log p_rescorer(v | context, draft so far),
where the rescorer is a small causal LM (any bpdjax checkpoint with the model's vocabulary).
Head 1's token is the model's own and never changes; alpha = 0 gives plain BPD's draft.

The rescorer keeps its own KV cache inside the jitted decode loop. Its committed length covers
the context except the last accepted token, which each proposal feeds again together with the
model's next token (two tokens in, one call), so a fully accepted block needs no extra call.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import cache as cache_lib
from bpdjax.decoding import drafters
from bpdjax.decoding import tree as tree_lib


@flax.struct.dataclass
class RescorerState:
  """params: rescorer weights; cache: its KV cache (lengths = context tokens fed, minus one);
  last: [B] int32 the last accepted token, not yet committed in the rescorer cache."""
  params: Any
  cache: cache_lib.KVCache
  last: jax.Array


@dataclasses.dataclass(frozen=True)
class LocalRescoreDrafter:
  """draft_len: L heads used; k: candidates per head; alpha in [0, 1]; rescorer: the LM's
  loop.ModelFns; cache_len: slots of the rescorer cache (prompt + new tokens + L)."""
  draft_len: int
  k: int
  alpha: float
  rescorer: Any
  cache_init: Any
  cache_len: int
  uses_heads: bool = True

  def __post_init__(self):
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

  def start(self, drafter_params, prompts, prompt_lengths):
    b, p = prompts.shape
    cache = self.cache_init(b, self.cache_len)
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    _, cache = self.rescorer.forward(drafter_params, prompts, positions, cache)
    last = jnp.take_along_axis(prompts, jnp.maximum(prompt_lengths - 1, 0)[:, None], axis=1)[:, 0]
    cache = cache_lib.set_lengths(cache, jnp.maximum(prompt_lengths - 1, 0))
    return RescorerState(params=drafter_params, cache=cache, last=last)

  def _step(self, state: RescorerState, tokens: jax.Array, offset: int):
    """Feeds tokens [B, n] at slots lengths + offset.. ; returns log-probs after the last one."""
    cache = state.cache
    shifted = cache_lib.set_lengths(cache, cache.lengths + offset)
    positions = shifted.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    hidden, shifted = self.rescorer.forward(state.params, tokens, positions, shifted)
    logits = self.rescorer.logits(state.params, hidden[:, -1:], 0, 1)[:, 0, 0]    # [B, V]
    return jax.nn.log_softmax(logits, axis=-1), state.replace(
        cache=cache_lib.set_lengths(shifted, cache.lengths))

  def rerank(self, state: RescorerState, head_logits, next_token):
    """Algorithm 2 with the full order kept: head i+2's top-k reranked by the interpolated
    score given next_token and the best candidates chosen before it.

    Returns (ids [B, L-1, k] int32, best first; ids[:, :, 0] is the refined draft, state).
    Equal scores keep the heads' order (lax.top_k prefers the lower index), so alpha = 0
    returns the heads' top-k unchanged.
    """
    cand_ids, cand_logp = drafters.head_lattice(head_logits, self.draft_len, self.k)
    # Always fed (even for L = 1): commit counts `last` and next_token as written.
    rescorer_logp, state = self._step(state, jnp.stack([state.last, next_token], axis=1), 0)
    ranked = [cand_ids[:, :0]]
    for i in range(self.draft_len - 1):
      if i > 0:
        rescorer_logp, state = self._step(state, ranked[-1][:, 0, :1], i + 1)
      score = ((1.0 - self.alpha) * cand_logp[:, i]
               + self.alpha * jnp.take_along_axis(rescorer_logp, cand_ids[:, i], axis=1))
      order = jax.lax.top_k(score, self.k)[1]
      ranked.append(jnp.take_along_axis(cand_ids[:, i], order, axis=1)[:, None])
    return jnp.concatenate(ranked, axis=1).astype(jnp.int32), state

  def propose(self, state: RescorerState, head_logits, next_token):
    ranked, state = self.rerank(state, head_logits, next_token)
    draft = jnp.concatenate([next_token[:, None].astype(jnp.int32), ranked[:, :, 0]], axis=1)
    return draft, state

  def commit(self, state: RescorerState, tokens, num_kept):
    """Kept tokens tokens[:, :num_kept] were fed by the last proposal (after `last`)."""
    last = jnp.take_along_axis(tokens, jnp.maximum(num_kept - 1, 0)[:, None], axis=1)[:, 0]
    return state.replace(cache=cache_lib.commit(state.cache, num_kept),
                         last=jnp.where(num_kept > 0, last, state.last))


@flax.struct.dataclass
class NgramState:
  """tables: the n-gram LM's device tables (ngram.dp.NgramTables); history: [B, n-1] int32 the
  last decided tokens before the lattice, most recent last, -1 where the context is shorter."""
  tables: Any
  history: jax.Array


def start_history(prompts: jax.Array, prompt_lengths: jax.Array, order: int) -> jax.Array:
  """[B, n-1] int32: each prompt's last n-1 tokens, most recent last, -1 where it is shorter."""
  n = order - 1
  idx = prompt_lengths[:, None] - n + jnp.arange(n)[None, :]                    # [B, n-1]
  history = jnp.take_along_axis(prompts, jnp.maximum(idx, 0), axis=1)
  return jnp.where(idx >= 0, history, -1).astype(jnp.int32)


def commit_history(history: jax.Array, tokens: jax.Array, num_kept: jax.Array) -> jax.Array:
  """history [B, n-1] followed by the kept tokens tokens[:, :num_kept], cut to the last n-1.

  The model's next token tokens[:, num_kept] stays out: it is the first position (the root) of
  the next lattice, and joins the history with the next commit.
  """
  n = history.shape[1]
  joined = jnp.concatenate([history, tokens.astype(history.dtype)], axis=1)
  idx = num_kept[:, None] + jnp.arange(n)[None, :]
  return jnp.take_along_axis(joined, idx, axis=1)


@dataclasses.dataclass(frozen=True)
class NgramPBestDrafter:
  """Global n-gram rescoring on device (Kim et al. 2024): the p best paths of the heads' top-k
  lattice under (1 - alpha) * head log-prob + alpha * n-gram log-prob, by the exact dynamic
  program of ngram/dp.py, verified together as p chains sharing the model's next token.
  p = 1 is "n-gram BPD"; alpha = 0 is "p-best 0-gram"."""
  draft_len: int
  k: int
  p: int
  alpha: float
  order: int
  uses_heads: bool = True

  def __post_init__(self):
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
    drafters.check_num_drafts(self.p, self.k, self.draft_len)

  @property
  def tree(self):
    return tree_lib.chains(self.p, self.draft_len)

  def start(self, drafter_params, prompts, prompt_lengths):
    return NgramState(tables=drafter_params,
                      history=start_history(prompts, prompt_lengths, self.order))

  def propose(self, state: NgramState, head_logits, next_token):
    from bpdjax.ngram import dp  # pylint: disable=g-import-not-at-top
    cand_ids, cand_logp = drafters.head_lattice(head_logits, self.draft_len, self.k)
    b = next_token.shape[0]
    first_ids = jnp.zeros((b, 1, self.k), jnp.int32).at[:, 0, 0].set(next_token)
    first_logp = jnp.full((b, 1, self.k), -jnp.inf).at[:, 0, 0].set(0.0)
    paths, _ = dp.pbest_dp(state.tables, jnp.concatenate([first_ids, cand_ids], axis=1),
                           jnp.concatenate([first_logp, cand_logp], axis=1), state.history,
                           self.alpha, self.p, ks=(1,) + (self.k,) * (self.draft_len - 1))
    paths = jnp.maximum(paths[:, :, 1:], 0)                                     # [B, p, L-1]
    return jnp.concatenate([next_token[:, None], paths.reshape(b, -1)], axis=1), state

  def commit(self, state: NgramState, tokens, num_kept):
    """The kept tokens tokens[:, :num_kept] join the history."""
    return state.replace(history=commit_history(state.history, tokens, num_kept))


NGRAM_BACKENDS = ("dp", "wfst")
_WFST_LOCK = threading.Lock()  # A WfstRescorer moves its LM's start state per call.


def check_ngram_backend(backend: str) -> str:
  if backend not in NGRAM_BACKENDS:
    raise ValueError(f"Unknown n-gram backend {backend!r}; known: {list(NGRAM_BACKENDS)} (dp: "
                     "exact dynamic program on device; wfst: OpenFST/pynini on the host)")
  return backend


def load_ngram_lm(arpa_path: str, vocab_size: int, backend: str = "dp", alpha: float = 0.5,
                  vocab_digest: Optional[str] = None):
  """The n-gram LM of an ARPA over token ids, as the backend's drafter wants it: device tables
  (ngram.dp.NgramTables) for "dp", a host rescorer (ngram.fst.WfstRescorer, alpha baked into
  its weights) for "wfst". vocab_digest (data.vocab.vocab_digest of the model's workdir) is
  checked against the vocabulary recorded beside the ARPA by ngram.estimate, where there is one."""
  from bpdjax.ngram import arpa  # pylint: disable=g-import-not-at-top
  from bpdjax.ngram import estimate  # pylint: disable=g-import-not-at-top
  check_ngram_backend(backend)
  if vocab_digest is not None:
    estimate.check_arpa_vocabulary(arpa_path, vocab_digest)
  model = arpa.parse_arpa(arpa_path, vocab_size)
  if backend == "dp":
    from bpdjax.ngram import dp  # pylint: disable=g-import-not-at-top
    return dp.build_tables(model)
  from bpdjax.ngram import fst  # pylint: disable=g-import-not-at-top
  return fst.WfstRescorer(model, alpha)


@dataclasses.dataclass(frozen=True)
class WfstPBestDrafter:
  """Global n-gram rescoring with OpenFST on the host: NgramPBestDrafter's drafts (same lattice,
  score, dedupe and tie rule, same tree of p chains sharing the model's next token), computed by
  ngram.fst.WfstRescorer.best_paths through jax.pure_callback, one lattice per row.

  rescorer: an ngram.fst.WfstRescorer; its alpha and order are the drafter's. It is a static
  (hashable, compared by identity) field, so the jitted loop calls back into this very object.
  The drafts equal the exact DP's wherever pynini's epsilon back-off approximation does not
  change the p best paths (always for 2-gram LMs estimated by lmplz; see ngram/fst.py).

  Batching: the callback loops over the rows of [B, ...] inputs (and over any leading vmap axes:
  vmap_method="broadcast_all" hands it every input with the same leading axes). The result is
  deterministic: OpenFST's shortest paths re-sorted by (score desc, candidate slots asc). Under a
  Mesh the callback runs on one host device (XLA gathers the batch to it).
  """
  draft_len: int
  k: int
  p: int
  rescorer: Any
  uses_heads: bool = True

  def __post_init__(self):
    if not all(hasattr(self.rescorer, a) for a in ("best_paths", "alpha", "order", "vocab_size")):
      raise TypeError(f"rescorer must be an ngram.fst.WfstRescorer, got "
                      f"{type(self.rescorer).__name__}")
    if self.draft_len < 2:
      raise ValueError(f"draft_len must be >= 2 for lattice drafts, got {self.draft_len}")
    drafters.check_num_drafts(self.p, self.k, self.draft_len)

  @property
  def alpha(self) -> float:
    return self.rescorer.alpha

  @property
  def order(self) -> int:
    return self.rescorer.order

  @property
  def tree(self):
    return tree_lib.chains(self.p, self.draft_len)

  def start(self, drafter_params, prompts, prompt_lengths):
    del drafter_params  # The LM lives on the host, in self.rescorer.
    return NgramState(tables=None, history=start_history(prompts, prompt_lengths, self.order))

  def _host_pbest(self, cand_ids, cand_logp, history, next_token):
    """numpy [..., L-1, k] ids / log-probs, [..., n-1] history, [...] root -> [..., p, L-1]."""
    lead = np.shape(next_token)
    n = self.draft_len - 1
    ids = np.asarray(cand_ids).reshape((-1, n, self.k))
    logp = np.asarray(cand_logp, np.float64).reshape((-1, n, self.k))
    hist = np.asarray(history).reshape((ids.shape[0], -1))
    root = np.asarray(next_token).reshape(-1)
    out = np.zeros((ids.shape[0], self.p, n), np.int32)  # Missing paths: token 0, as in dp.
    with _WFST_LOCK:
      for r in range(ids.shape[0]):
        paths = self.rescorer.best_paths([root[r:r + 1]] + list(ids[r]),
                                         [np.zeros(1)] + list(logp[r]), hist[r].tolist(), self.p)
        for j, (tokens, _) in enumerate(paths):
          out[r, j] = tokens[1:]
    return out.reshape(lead + (self.p, n))

  def propose(self, state: NgramState, head_logits, next_token):
    if head_logits.shape[1] < self.draft_len:
      raise ValueError(f"draft_len {self.draft_len} exceeds the model's {head_logits.shape[1]} "
                       "heads")
    if head_logits.shape[-1] != self.rescorer.vocab_size:
      raise ValueError(f"The n-gram LM was read for vocab_size={self.rescorer.vocab_size}, the "
                       f"model has {head_logits.shape[-1]}")
    cand_ids, cand_logp = drafters.head_lattice(head_logits, self.draft_len, self.k)
    b = next_token.shape[0]
    shape = jax.ShapeDtypeStruct(next_token.shape + (self.p, self.draft_len - 1), jnp.int32)
    paths = jax.pure_callback(self._host_pbest, shape, cand_ids, cand_logp, state.history,
                              next_token.astype(jnp.int32), vmap_method="broadcast_all")
    return jnp.concatenate([next_token[:, None], paths.reshape(b, -1)], axis=1), state

  def commit(self, state: NgramState, tokens, num_kept):
    """The kept tokens tokens[:, :num_kept] join the history."""
    return state.replace(history=commit_history(state.history, tokens, num_kept))
