"""Global n-gram rescoring of the heads' lattice (Kim et al. 2024): methods `ngram` (the best
path, "n-gram BPD") and `pbest_ngram` (the p best, verified together), under
(1 - alpha) * head log-prob + alpha * n-gram log-prob. Backend "dp" is the exact dynamic program
of ngram/dp.py on device; "wfst" is OpenFST (ngram/fst.py) on the host through a callback.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import lattice
from bpdjax.decoding import registry
from bpdjax.decoding import resources as resources_lib
from bpdjax.decoding import tree as tree_lib
from bpdjax.decoding.drafters import base
from bpdjax.ngram import dp

BACKENDS = ("dp", "wfst")
_WFST_LOCK = threading.Lock()  # A WfstRescorer moves its LM's start state per call.


@flax.struct.dataclass
class NgramState:
  """history: [B, n-1] int32 the last decided tokens before the lattice, most recent last, -1
  where the context is shorter."""
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
class NgramPBestDrafter(base.Stateless):
  """Global n-gram rescoring on device (Kim et al. 2024): the p best paths of the heads' top-k
  lattice under (1 - alpha) * head log-prob + alpha * n-gram log-prob, by the exact dynamic
  program of ngram/dp.py (its tables are the drafter params), verified together as p chains
  sharing the model's next token. p = 1 is "n-gram BPD"; alpha = 0 is "p-best 0-gram"."""
  draft_len: int
  k: int
  p: int
  alpha: float
  order: int

  @property
  def topology(self) -> tree_lib.Tree:
    return tree_lib.chains(self.p, self.draft_len)

  @property
  def candidates(self) -> tuple[int, ...]:
    return base.chains_prefixes(self.p, self.draft_len)

  def start(self, params, prompts, prompt_lengths, cache_len):
    return NgramState(history=start_history(prompts, prompt_lengths, self.order))

  def propose(self, params, state: NgramState, heads, next_token):
    head_logits = heads.range(1, self.last_head)                               # [B, L-1, V]
    cand_ids, cand_logp = lattice.head_lattice(head_logits, self.k)
    b = next_token.shape[0]
    first_ids = jnp.zeros((b, 1, self.k), jnp.int32).at[:, 0, 0].set(next_token)
    first_logp = jnp.full((b, 1, self.k), -jnp.inf).at[:, 0, 0].set(0.0)
    paths, _ = dp.pbest_dp(params, jnp.concatenate([first_ids, cand_ids], axis=1),
                           jnp.concatenate([first_logp, cand_logp], axis=1), state.history,
                           self.alpha, self.p, ks=(1,) + (self.k,) * (self.draft_len - 1))
    paths = jnp.maximum(paths[:, :, 1:], 0)                                     # [B, p, L-1]
    return jnp.concatenate([next_token[:, None], paths.reshape(b, -1)], axis=1), state

  def commit(self, params, state: NgramState, tokens, num_kept):
    """The kept tokens tokens[:, :num_kept] join the history."""
    return state.replace(history=commit_history(state.history, tokens, num_kept))


@dataclasses.dataclass(frozen=True)
class WfstPBestDrafter(base.Stateless):
  """Global n-gram rescoring with OpenFST on the host: NgramPBestDrafter's drafts (same lattice,
  score, dedupe and tie rule, same tree of p chains sharing the model's next token), computed by
  ngram.fst.WfstRescorer.best_paths through jax.pure_callback, one lattice per row (it takes
  no drafter params).

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

  def __post_init__(self):
    if not all(hasattr(self.rescorer, a) for a in ("best_paths", "alpha", "order", "vocab_size")):
      raise TypeError(f"rescorer must be an ngram.fst.WfstRescorer, got "
                      f"{type(self.rescorer).__name__}")

  @property
  def alpha(self) -> float:
    return self.rescorer.alpha

  @property
  def order(self) -> int:
    return self.rescorer.order

  @property
  def topology(self) -> tree_lib.Tree:
    return tree_lib.chains(self.p, self.draft_len)

  @property
  def candidates(self) -> tuple[int, ...]:
    return base.chains_prefixes(self.p, self.draft_len)

  def start(self, params, prompts, prompt_lengths, cache_len):
    return NgramState(history=start_history(prompts, prompt_lengths, self.order))

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

  def propose(self, params, state: NgramState, heads, next_token):
    head_logits = heads.range(1, self.last_head)                               # [B, L-1, V]
    if head_logits.shape[-1] != self.rescorer.vocab_size:
      raise ValueError(f"The n-gram LM was read for vocab_size={self.rescorer.vocab_size}, the "
                       f"model has {head_logits.shape[-1]}")
    cand_ids, cand_logp = lattice.head_lattice(head_logits, self.k)
    b = next_token.shape[0]
    shape = jax.ShapeDtypeStruct(next_token.shape + (self.p, self.draft_len - 1), jnp.int32)
    paths = jax.pure_callback(self._host_pbest, shape, cand_ids, cand_logp, state.history,
                              next_token.astype(jnp.int32), vmap_method="broadcast_all")
    return jnp.concatenate([next_token[:, None], paths.reshape(b, -1)], axis=1), state

  def commit(self, params, state: NgramState, tokens, num_kept):
    """The kept tokens tokens[:, :num_kept] join the history."""
    return state.replace(history=commit_history(state.history, tokens, num_kept))


def check_backend(backend: str) -> str:
  if backend not in BACKENDS:
    raise ValueError(f"Unknown n-gram backend {backend!r}; known: {list(BACKENDS)} (dp: "
                     "exact dynamic program on device; wfst: OpenFST/pynini on the host)")
  return backend


@dataclasses.dataclass(frozen=True)
class NgramOptions(base.Lattice, base.Rescoring):
  backend: str = "dp"         # "dp" (exact, on device) or "wfst" (OpenFST, on the host).

  def validate(self, model=None) -> None:
    super().validate(model)
    check_backend(self.backend)
    if model is not None and model.num_heads_bpd < 2:
      raise ValueError(f"n-gram rescoring needs h >= 2 heads, the model has "
                       f"{model.num_heads_bpd}")


@dataclasses.dataclass(frozen=True)
class PBestNgramOptions(NgramOptions, base.PBest):
  pass


def _build(options, model, resources, p: int, name: str):
  lm = resources.need(resources_lib.NGRAM_LM, name)
  h = model.num_heads_bpd
  if options.backend == "wfst":
    return WfstPBestDrafter(h, k=options.k, p=p, rescorer=lm.wfst(options.alpha)), None
  return (NgramPBestDrafter(h, k=options.k, p=p, alpha=options.alpha, order=lm.order),
          lm.tables())


registry.register(registry.Method(
    name="ngram", summary="global n-gram rescoring: the lattice's best path under the n-gram LM "
    "(k, alpha, backend; --ngram_arpa)", options=NgramOptions,
    build=lambda o, m, r: _build(o, m, r, 1, "ngram"), resources=(resources_lib.NGRAM_LM,)))
registry.register(registry.Method(
    name="pbest_ngram", summary="the p best paths under the n-gram LM, verified together "
    "(k, p, alpha, backend; --ngram_arpa)", options=PBestNgramOptions,
    build=lambda o, m, r: _build(o, m, r, o.p, "pbest_ngram"),
    resources=(resources_lib.NGRAM_LM,)))
