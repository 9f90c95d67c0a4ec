"""Device tables of an ARPA n-gram model for the exact DP (dp.py): hashed CSR buckets of packed
n-gram keys, and the batched back-off lookup over them."""
from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.ngram import arpa as arpa_lib

_MAX_BUCKET = 8
_UNK_MISSING_LOG10 = -100.0  # KenLM's convention when an ARPA lacks <unk>


@dataclasses.dataclass(frozen=True)
class NgramTables:
  """Device tables of an ARPA model (a pytree: arrays are leaves, the rest is static).

  uni_logp/uni_bo: [vocab_size + 1] float32 natural-log unigram prob / backoff by word id.
  tok2word: [vocab_size] int32, token id -> word id (itself, or vocab_size = <unk>).
  offsets[m-2]: [M_m + 1] int32 CSR bucket offsets of order m; keys[m-2]: [N_m, C_m] int32 packed
  digits; logp[m-2]/bo[m-2]: [N_m] float32 natural logs.
  """
  uni_logp: jax.Array
  uni_bo: jax.Array
  tok2word: jax.Array
  offsets: Tuple[jax.Array, ...]
  keys: Tuple[jax.Array, ...]
  logp: Tuple[jax.Array, ...]
  bo: Tuple[jax.Array, ...]
  order: int = dataclasses.field(metadata=dict(static=True), default=1)
  vocab_size: int = dataclasses.field(metadata=dict(static=True), default=0)
  digits_per_col: int = dataclasses.field(metadata=dict(static=True), default=1)
  max_bucket: Tuple[int, ...] = dataclasses.field(metadata=dict(static=True), default=())


jax.tree_util.register_dataclass(
    NgramTables,
    data_fields=["uni_logp", "uni_bo", "tok2word", "offsets", "keys", "logp", "bo"],
    meta_fields=["order", "vocab_size", "digits_per_col", "max_bucket"])


def _mix_np(h, x):
  h = (h ^ x.astype(np.uint32)) * np.uint32(0x85EBCA6B)
  return h ^ (h >> np.uint32(13))


def _final_np(h):
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> np.uint32(16))


def _hash_np(cols: np.ndarray, seed: int) -> np.ndarray:
  h = np.full(cols.shape[0], seed, np.uint32)
  for c in range(cols.shape[1]):
    h = _mix_np(h, cols[:, c])
  return _final_np(h)


def _hash_jnp(cols, seed: int):
  h = jnp.full(cols[0].shape, seed, jnp.uint32)
  for x in cols:
    h = (h ^ x.astype(jnp.uint32)) * jnp.uint32(0x85EBCA6B)
    h = h ^ jax.lax.shift_right_logical(h, jnp.uint32(13))
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ jax.lax.shift_right_logical(h, jnp.uint32(16))


_SEED = 0x2545F491


def _pack_np(words: np.ndarray, base: int, dpc: int) -> np.ndarray:
  """[N, m] word ids -> [N, ceil(m / dpc)] int32 mixed-radix columns."""
  cols = []
  for c0 in range(0, words.shape[1], dpc):
    v = np.zeros(words.shape[0], np.int64)
    for j in range(c0, min(c0 + dpc, words.shape[1])):
      v = v * base + words[:, j]
    cols.append(v)
  return np.stack(cols, 1).astype(np.int32)


def build_tables(model: arpa_lib.ArpaModel) -> NgramTables:
  """Device tables of a parsed ARPA (see `NgramTables`); exact, collision-free keys."""
  v = model.vocab_size
  base = v + 1
  dpc = 1
  while base ** (dpc + 1) <= 2**31 - 1:
    dpc += 1
  to_word = lambda w: v if w == arpa_lib.UNK else w  # noqa: E731
  ln10 = arpa_lib.LN10
  uni_logp = np.full(base, np.nan, np.float64)
  uni_bo = np.zeros(base, np.float64)
  for (w,), (lp, bo) in model.ngrams[1].items():
    if w >= 0 or w == arpa_lib.UNK:
      uni_logp[to_word(w)], uni_bo[to_word(w)] = lp * ln10, bo * ln10
  if np.isnan(uni_logp[v]):
    uni_logp[v] = _UNK_MISSING_LOG10 * ln10
  uni_logp = np.where(np.isnan(uni_logp), uni_logp[v], uni_logp)  # non-words read as <unk>
  tok2word = np.full(v, v, np.int32)
  words = np.array(sorted(model.words), np.int64)
  tok2word[words] = words
  offsets, keys, logps, bos, max_bucket = [], [], [], [], []
  for m in range(2, model.order + 1):
    rows = [(tuple(to_word(w) for w in g), lp, bo) for g, (lp, bo) in model.ngrams[m].items()
            if all(w >= 0 or w == arpa_lib.UNK for w in g)]
    n = len(rows)
    wmat = np.array([r[0] for r in rows], np.int64).reshape(n, m)
    cols = _pack_np(wmat, base, dpc)
    nb = 1
    while nb < 2 * max(n, 1):
      nb *= 2
    while True:
      bucket = (_hash_np(cols, _SEED) & np.uint32(nb - 1)).astype(np.int64)
      counts = np.bincount(bucket, minlength=nb)
      if counts.max(initial=0) <= _MAX_BUCKET or nb > 64 * max(n, 1):
        break
      nb *= 2
    perm = np.argsort(bucket, kind="stable")
    off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    lp = np.array([r[1] for r in rows], np.float64) * ln10
    bo = np.array([r[2] for r in rows], np.float64) * ln10
    if n == 0:  # one dummy row that no bucket points at
      cols, lp, bo, perm = np.full((1, cols.shape[1]), -1, np.int32), np.zeros(1), np.zeros(1), [0]
    offsets.append(jnp.asarray(off))
    keys.append(jnp.asarray(cols[perm]))
    logps.append(jnp.asarray(lp[perm], jnp.float32))
    bos.append(jnp.asarray(bo[perm], jnp.float32))
    max_bucket.append(max(1, int(counts.max(initial=0))))
  return NgramTables(
      uni_logp=jnp.asarray(uni_logp, jnp.float32), uni_bo=jnp.asarray(uni_bo, jnp.float32),
      tok2word=jnp.asarray(tok2word), offsets=tuple(offsets), keys=tuple(keys),
      logp=tuple(logps), bo=tuple(bos), order=model.order, vocab_size=v, digits_per_col=dpc,
      max_bucket=tuple(max_bucket))


def lookup(tables: NgramTables, words: Sequence[jax.Array]):
  """Finds the m-gram `words` (broadcastable int32 word-id arrays); returns (found, logp, bo)."""
  m = len(words)
  if m == 1:
    w = words[0]
    return jnp.ones(w.shape, bool), tables.uni_logp[w], tables.uni_bo[w]
  base, dpc = tables.vocab_size + 1, tables.digits_per_col
  shape = jnp.broadcast_shapes(*[w.shape for w in words])
  cols = []
  for c0 in range(0, m, dpc):
    col = None
    for j in range(c0, min(c0 + dpc, m)):
      col = words[j] if col is None else col * base + words[j]
    cols.append(jnp.broadcast_to(col, shape))
  off, keys = tables.offsets[m - 2], tables.keys[m - 2]
  nb = off.shape[0] - 1
  bucket = (_hash_jnp(cols, _SEED) & jnp.uint32(nb - 1)).astype(jnp.int32)
  start, end = off[bucket], off[bucket + 1]
  found = jnp.zeros(shape, bool)
  idx = jnp.zeros(shape, jnp.int32)
  last = keys.shape[0] - 1
  for s in range(tables.max_bucket[m - 2]):
    j = jnp.minimum(start + s, last)
    row = keys[j]  # [..., C]
    match = start + s < end
    for c, col in enumerate(cols):
      match &= row[..., c] == col
    idx = jnp.where(match, j, idx)
    found |= match
  return found, tables.logp[m - 2][idx], tables.bo[m - 2][idx]
