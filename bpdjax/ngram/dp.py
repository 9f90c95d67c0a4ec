"""On-device exact global n-gram rescoring of draft lattices in JAX (jittable, batched).

Same path score, dedupe and tie rule as fst.py, but with exact back-off (no epsilon routes):
  score(path) = sum_i (1 - alpha) * logp_head_i(v_i) + alpha * ln P_ngram(v_i | history, v_<i).

Tables (`build_tables`): the ARPA's n-grams over token ids (n-grams with <s>/</s> dropped; a
token that is not an ARPA word is <unk>, id vocab_size in the tables). Unigrams are dense arrays
indexed by word id. Order m >= 2: collision-free keys -- the m word ids as mixed-radix digits in
base vocab_size + 1, packed into as few int32 columns as fit (2 columns for a 4-gram at a 32k
vocabulary) -- stored in a bucketed hash table (CSR: `offsets[M + 1]`, rows sorted by bucket; a
lookup hashes the key columns and compares every row of its bucket, at most `max_bucket` rows,
so a hash collision only costs a compare, never a wrong answer). JAX's default 32-bit mode is
enough: no int64 anywhere.

Algorithm (exact p-best over distinct token sequences):
1. Per position t, W_t = (1 - alpha) * head + alpha * ln P(token_t | last n-1 tokens) for every
   combination of the candidates at positions max(0, t-n+1)..t (k^n entries at most); the
   history fills the context of the first n-1 positions.
2. Backward Viterbi over the exact state space (last n-1 candidate slots):
   Q_t[ctx, c] = W_t[ctx, c] + V_{t+1}[ctx[1:], c], V_t = max_c Q_t, regret = V_t - Q_t >= 0.
3. Lazy p-best by deviations (Eppstein / Huang-Chiang style): the best path follows argmax
   everywhere; a path P that deviated last at position t_P spawns (a) for every t > t_P the path
   that takes the next-best slot at t and then the argmax completion, and (b) the path that takes
   at t_P the slot after P's in the order (Q desc, slot asc). Each path is spawned exactly once,
   by a path at least as good, so p pops of a small heap (1 + p(h+1) entries) give the p best.
   The order key is the total regret (score = V_0 - regret), ties broken by the lexicographically
   smaller sequence of candidate slots (ranks) -- the rule fst.py and the tests follow.

Cost: step 1 dominates (at h=9, k=16, 4-gram: five k^4 = 65536-query 4-gram lookups per lattice,
each ~6 bucket probes into a table of ~1M rows: memory-bound); steps 2-3 are ~10% on CPU. On
the shared 2-core CPU this measured ~29 ms per lattice (benchmarks/lattice_rescoring.py); it is
meant for accelerators, where the k^n work is parallel.

Duplicate token ids at one position are one path: the slot with the higher head log-prob is
kept (equal: the lower slot), the others are masked like slots with logp = -inf. Rows beyond the
number of distinct paths come back with paths = -1 and scores = -inf.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.ngram import tables as tables_lib

def _dedupe_mask(cand_ids, cand_logp, ks):
  """[B, h, k] bool: slot is kept (finite, < ks[t], best slot of its token at its position)."""
  b, h, k = cand_ids.shape
  slot = jnp.arange(k)
  ok = jnp.isfinite(cand_logp) & (slot[None, None, :] < jnp.asarray(ks)[None, :, None])
  lp = jnp.where(ok, cand_logp, -jnp.inf)
  same = cand_ids[..., :, None] == cand_ids[..., None, :]  # [B, h, j, j']
  better = (lp[..., None, :] > lp[..., :, None]) | (
      (lp[..., None, :] == lp[..., :, None]) & (slot[None, :] < slot[:, None]))
  beaten = jnp.any(same & better & ok[..., None, :], axis=-1)
  return ok & ~beaten


def _next_choice(q, cur):
  """Slot after `cur` in the order (q desc, slot asc) of rows q [..., k]; (slot, valid)."""
  k = q.shape[-1]
  slot = jnp.arange(k)
  qc = jnp.take_along_axis(q, cur[..., None], -1)
  after = (q < qc) | ((q == qc) & (slot > cur[..., None]))
  masked = jnp.where(after, q, -jnp.inf)
  nxt = jnp.argmax(masked, -1).astype(jnp.int32)
  return nxt, jnp.max(masked, -1) > -jnp.inf


def _clean_history(history, n: int):
  """[B, H] -> ([B, n-1] int32 tokens, [B, n-1] bool valid): tokens after the last negative."""
  b = history.shape[0]
  hist = jnp.asarray(history, jnp.int32).reshape(b, -1)[:, max(0, history.shape[1] - n + 1):]
  if hist.shape[1] < n - 1:
    hist = jnp.concatenate([jnp.full((b, n - 1 - hist.shape[1]), -1, jnp.int32), hist], 1)
  neg = (hist < 0).astype(jnp.int32)
  neg_at_or_after = jnp.flip(jnp.cumsum(jnp.flip(neg, 1), 1), 1)  # any negative at index >= q
  return hist, neg_at_or_after == 0


def pbest_dp(tables: tables_lib.NgramTables, cand_ids, cand_logp, history, alpha, p: int,
             ks: Optional[Sequence[int]] = None):
  """Exact p best distinct paths of a batch of lattices under the n-gram LM (jittable).

  Args:
    tables: `build_tables(model)`.
    cand_ids: [B, h, k] int32 candidate token ids (in [0, vocab_size)).
    cand_logp: [B, h, k] float32 head log-probs (natural log); -inf = no slot.
    history: [B, H] int32, the last decoded tokens, most recent last, right-aligned; entries < 0
      are padding: only the tokens after the last negative entry are used (and only the last n-1).
    alpha: weight of the LM in [0, 1] (python float: checked; traced: not checked).
    p: static number of paths, 1 <= p <= prod(ks).
    ks: static per-position number of slots used (default k everywhere; decoding passes
      (1, k, ..., k): position 0 holds the model's own token). Slots >= ks[t] are ignored.

  Returns:
    (paths [B, p, h] int32 token ids, scores [B, p] float32), best first; rows past the number of
    distinct paths are -1 / -inf.
  """
  b, h, k = cand_ids.shape
  n = tables.order
  ks = tuple(int(x) for x in ks) if ks is not None else (k,) * h
  if len(ks) != h or not all(1 <= x <= k for x in ks):
    raise ValueError(f"ks={ks} must have h={h} entries in [1, k={k}]")
  total = math.prod(ks)
  if not 1 <= p <= total:
    raise ValueError(f"p={p} must be in [1, {total}] (number of paths in the lattice)")
  if isinstance(alpha, (int, float)) and not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  v = tables.vocab_size
  cand_ids = jnp.asarray(cand_ids, jnp.int32)
  cand_logp = jnp.asarray(cand_logp, jnp.float32)
  keep = _dedupe_mask(cand_ids, cand_logp, ks)
  head = jnp.where(keep, (1.0 - alpha) * cand_logp, -jnp.inf)
  words = tables.tok2word[jnp.clip(cand_ids, 0, v - 1)]
  hist, hist_ok = _clean_history(history, n)
  hist_words = tables.tok2word[jnp.clip(hist, 0, v - 1)]
  nh = n - 1  # element e < nh: history slot e; element e >= nh: lattice position e - nh

  def layout(lo, hi, win_lo, win_hi):
    """Shape placing lattice positions [lo, hi] into a window of positions [win_lo, win_hi]."""
    return (b,) + tuple(ks[j] if lo <= j <= hi else 1 for j in range(win_lo, win_hi + 1))

  memo = {}

  def ngram(e0, e1):
    """(found, logp, bo) of the n-gram of elements e0..e1, axes = its lattice positions."""
    if (e0, e1) not in memo:
      lo, hi = max(e0 - nh, 0), e1 - nh
      args, valid = [], None
      for e in range(e0, e1 + 1):
        if e < nh:
          args.append(hist_words[:, e].reshape(layout(lo, hi, lo, hi)[:1] + (1,) * (hi - lo + 1)))
          valid = hist_ok[:, e] if valid is None else valid
        else:
          j = e - nh
          shp = [b] + [1] * (hi - lo + 1)
          shp[1 + j - lo] = ks[j]
          args.append(words[:, j, :ks[j]].reshape(shp))
      found, lp, bo = tables_lib.lookup(tables, args)
      if valid is not None:
        found &= valid.reshape((b,) + (1,) * (found.ndim - 1))
      memo[(e0, e1)] = (found, lp, jnp.where(found, bo, 0.0))
    return memo[(e0, e1)]

  def place(x, lo, hi, win_lo, win_hi):
    return x.reshape(layout(lo, hi, win_lo, win_hi))

  ws, qs, vs, bests, ctx_pos = [], [None] * h, [None] * h, [None] * h, []
  for t in range(h):
    e = nh + t
    win_lo = max(0, t - n + 1)
    ctx_pos.append(list(range(win_lo, t)))
    # Suffix sums of context backoffs: bsum[j] = sum_{j' >= j} bo(context of length j').
    bsum = [None] * (n + 1)
    acc = jnp.zeros((b,) + (1,) * (t - win_lo + 1), jnp.float32)
    for j in range(nh, 0, -1):
      lo = max(e - j - nh, 0)
      _, _, bo = ngram(e - j, e - 1)
      acc = acc + place(bo, lo, t - 1, win_lo, t) if e - 1 >= nh else acc + bo.reshape(acc.shape)
      bsum[j] = acc
    _, lp1, _ = ngram(e, e)
    logp = place(lp1, t, t, win_lo, t) + (bsum[1] if nh >= 1 else 0.0)
    for m in range(2, n + 1):
      found, lp, _ = ngram(e - m + 1, e)
      lo = max(e - m + 1 - nh, 0)
      tail = bsum[m] if m <= nh else 0.0
      logp = jnp.where(place(found, lo, t, win_lo, t), place(lp, lo, t, win_lo, t) + tail, logp)
    w = alpha * logp + place(head[:, t, :ks[t]], t, t, win_lo, t)
    ws.append(w)
  vnext = None
  for t in range(h - 1, -1, -1):
    win_lo = max(0, t - n + 1)
    q = ws[t] if vnext is None else ws[t] + place(vnext, max(0, t - n + 2), t, win_lo, t)
    vnext = jnp.max(q, -1)
    ctx = math.prod(ks[j] for j in ctx_pos[t])
    qs[t] = q.reshape(b, ctx, ks[t])
    vs[t] = vnext.reshape(b, ctx)
    bests[t] = jnp.argmax(q, -1).reshape(b, ctx).astype(jnp.int32)
  wf = [w.reshape(b, -1, ks[t]) for t, w in enumerate(ws)]

  def ctx_index(path, t):
    """Flat context index of position t for slot paths [B, X, h] -> [B, X]."""
    idx = jnp.zeros(path.shape[:-1], jnp.int32)
    for j in ctx_pos[t]:
      idx = idx * ks[j] + path[..., j]
    return idx

  def complete(path, dev, alt):
    """Keeps path[..., :dev], puts alt at dev, then follows argmax. path [B, X, h]."""
    for u in range(h):
      g = jnp.take_along_axis(bests[u], ctx_index(path, u), 1)
      new = jnp.where(u < dev, path[..., u], jnp.where(u == dev, alt, g))
      path = path.at[..., u].set(new)
    return path

  hcap = 1 + p * (h + 1)
  root = complete(jnp.zeros((b, 1, h), jnp.int32), jnp.full((b, 1), -1, jnp.int32),
                  jnp.zeros((b, 1), jnp.int32))
  paths0 = jnp.zeros((b, hcap, h), jnp.int32).at[:, :1].set(root)
  rsb0 = jnp.zeros((b, hcap), jnp.float32)
  rl0 = jnp.zeros((b, hcap), jnp.float32)
  dev0 = jnp.full((b, hcap), -1, jnp.int32)
  alive0 = jnp.zeros((b, hcap), bool).at[:, 0].set(vs[0][:, 0] > -jnp.inf)
  out0 = jnp.full((b, p, h), -1, jnp.int32)
  bidx = jnp.arange(b)

  def body(i, carry):
    paths, rsb, rl, dev, alive, out = carry
    key = jnp.where(alive, rsb + rl, jnp.inf)
    cand = alive & (key == jnp.min(key, 1, keepdims=True))
    for u in range(h):  # lexicographically smallest slot sequence among ties
      col = paths[..., u]
      cand &= col == jnp.min(jnp.where(cand, col, k), 1, keepdims=True)
    sel = jnp.argmax(cand, 1)
    has = jnp.any(alive, 1)
    e_path, e_dev = paths[bidx, sel], dev[bidx, sel]
    e_rs, e_rsb = rsb[bidx, sel] + rl[bidx, sel], rsb[bidx, sel]
    out = out.at[:, i].set(jnp.where(has[:, None], e_path, -1))
    alive = alive.at[bidx, sel].set(False)
    nxt, ok, reg = [], [], []
    for t in range(h):
      c = ctx_index(e_path[:, None], t)  # [B, 1]
      qrow = qs[t][bidx, c[:, 0]]  # [B, k_t]
      vt = jnp.take_along_axis(vs[t], c, 1)[:, 0]
      nx, okt = _next_choice(qrow, e_path[:, t])
      nxt.append(nx)
      ok.append(okt)
      reg.append(vt - jnp.take_along_axis(qrow, nx[:, None], 1)[:, 0])
    nxt, ok, reg = jnp.stack(nxt, 1), jnp.stack(ok, 1), jnp.stack(reg, 1)  # [B, h]
    tpos = jnp.arange(h)[None]
    dsafe = jnp.maximum(e_dev, 0)[:, None]
    c_alt = jnp.concatenate([nxt, jnp.take_along_axis(nxt, dsafe, 1)], 1)  # [B, h+1]
    c_dev = jnp.concatenate([jnp.broadcast_to(tpos, (b, h)), jnp.maximum(e_dev, 0)[:, None]], 1)
    c_ok = jnp.concatenate([ok & (tpos > e_dev[:, None]),
                            jnp.take_along_axis(ok, dsafe, 1) & (e_dev[:, None] >= 0)], 1)
    c_ok &= has[:, None]
    c_reg = jnp.concatenate([reg, jnp.take_along_axis(reg, dsafe, 1)], 1)
    c_rsb = jnp.concatenate([jnp.broadcast_to(e_rs[:, None], (b, h)), e_rsb[:, None]], 1)
    c_path = complete(jnp.broadcast_to(e_path[:, None], (b, h + 1, h)), c_dev, c_alt)
    at = 1 + i * (h + 1)
    paths = jax.lax.dynamic_update_slice_in_dim(paths, c_path, at, 1)
    rsb = jax.lax.dynamic_update_slice_in_dim(rsb, c_rsb, at, 1)
    rl = jax.lax.dynamic_update_slice_in_dim(rl, jnp.where(c_ok, c_reg, 0.0), at, 1)
    dev = jax.lax.dynamic_update_slice_in_dim(dev, c_dev, at, 1)
    alive = jax.lax.dynamic_update_slice_in_dim(alive, c_ok, at, 1)
    return paths, rsb, rl, dev, alive, out

  out = jax.lax.fori_loop(0, p, body, (paths0, rsb0, rl0, dev0, alive0, out0))[-1]
  valid = out[..., 0] >= 0
  slots = jnp.maximum(out, 0)
  score = jnp.zeros((b, p), jnp.float32)
  for t in range(h):
    score = score + wf[t][bidx[:, None], ctx_index(slots, t), slots[..., t]]
  tokens = jnp.take_along_axis(cand_ids, jnp.swapaxes(slots, 1, 2), 2)  # [B, h, p]
  tokens = jnp.where(valid[:, None, :], tokens, -1)
  return jnp.swapaxes(tokens, 1, 2), jnp.where(valid, score, -jnp.inf)


_jit_pbest_dp = jax.jit(pbest_dp, static_argnames=("p", "ks"))


def best_paths(tables: tables_lib.NgramTables, ids, logp, history: Sequence[int], alpha: float,
               p: int):
  """pbest_dp of one lattice (ids, logp [n, k] numpy) after the decided tokens `history` (a
  list, most recent last): (paths [p, n], scores [p]) as numpy."""
  order = tables.order
  hist = np.full((1, max(order - 1, 0)), -1, np.int32)
  if order > 1 and history:
    tail = list(history)[-(order - 1):]
    hist[0, -len(tail):] = tail
  paths, scores = _jit_pbest_dp(tables, jnp.asarray(ids)[None], jnp.asarray(logp)[None],
                                jnp.asarray(hist), alpha, p=p)
  return np.asarray(paths[0]), np.asarray(scores[0])
