"""A slow exact reference for lattice rescoring: every path enumerated and scored (tests and
benchmarks check ngram/dp.py and ngram/fst.py against it; k^h paths, small lattices only)."""
from __future__ import annotations

import itertools

import numpy as np


def brute_force(model, ids, logp, history, alpha):
  """model: ngram.arpa.ArpaModel; ids, logp: [h, k] lattice; history: decided tokens before it.

  All distinct token paths, exact scores, sorted by (score desc, slot sequence asc).

  Duplicate tokens at a position: the slot with the higher head logp is kept (equal: lower slot).
  """
  h, k = ids.shape
  slots = []
  for i in range(h):
    kept = {}
    for r in range(k):
      t, lp = int(ids[i][r]), float(logp[i][r])
      if np.isfinite(lp) and (t not in kept or lp > logp[i][kept[t]]):
        kept[t] = r
    slots.append(sorted(kept.values()))
  out = []
  for ranks in itertools.product(*slots):
    toks = tuple(int(ids[i][r]) for i, r in enumerate(ranks))
    lm = model.score_sequence(history, toks) if alpha > 0 else 0.0
    sc = sum((1 - alpha) * float(logp[i][r]) for i, r in enumerate(ranks)) + alpha * lm
    out.append((sc, ranks, toks))
  return sorted(out, key=lambda x: (-x[0], x[1]))
