"""Host-side global n-gram rescoring of a draft lattice with OpenFST (pynini).

The n-gram LM becomes a weighted acceptor over the tropical semiring (costs = -log weights):
* states are the ARPA's n-gram histories (every listed m-gram of order m < n, plus the empty
  history); n-grams containing <s> or </s> are left out (rescoring never starts a sentence);
* an arc for each listed n-gram `ctx w`, from state(ctx) to state(ctx w) (order < n) or to the
  longest listed suffix of `ctx[1:] w` (order n), with cost -alpha * ln P(w | ctx);
* an epsilon back-off arc from each history to its longest listed proper suffix, with cost
  -alpha * ln bo(history);
* every state is final with cost 0.

Labels: token id t has label t + 1, because label 0 is epsilon in OpenFST; a token that is not a
word of the ARPA is read by the LM as <unk>, whose label is vocab_size + 1.

Epsilon approximation: pynini has no failure (phi) arcs, so a path may also take the back-off
arc when the explicit n-gram exists; the WFST cost of a token sequence is then the MIN over all
routes, which can beat (score higher than) the exact ARPA score. `best_paths` therefore returns
scores >= the exact back-off score, and its ranking can differ from the exact one (dp.py is exact);
tests/test_ngram.py measures how often. With interpolated Kneser-Ney (lmplz) the explicit arc
always beats "back-off + lower order" into the same state, so a cheaper route can only come from
landing in a shorter history that suits the next tokens better: 2-gram WFST scores are exact.
(Positive log10 back-offs would also let a path end with free epsilon moves; lmplz writes none.)

The lattice (a "sausage": h positions, k_i candidates each) becomes a linear-chain transducer with
input label token+1 and output label the LM's label for the token, cost -(1 - alpha) * logp_head.
Composition uses the LM arc-sorted on input labels; the composition starts at the LM state of the
decoded history (the longest listed suffix of its last n-1 tokens: exact, since unlisted histories
back off with weight 1).

Scores are natural-log scores, higher is better:
  score(path) = sum_i (1 - alpha) * logp_head_i(v_i) + alpha * ln P_ngram(v_i | history, v_<i).
Duplicate token ids at one position are one path (the slot with the higher head log-prob is
kept; equal -> lower slot). Ties in score are ordered by the lexicographically smaller sequence
of candidate slots (ranks), as in dp.py; which of several tied paths at the p-th place is
returned is up to OpenFST.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
try:  # pynini (OpenFst) is large; a machine without it decodes every method but the WFST one.
  import pynini
except ModuleNotFoundError as e:
  if e.name != "pynini":
    raise
  pynini = None

from bpdjax.ngram import arpa as arpa_lib

Path = Tuple[Tuple[int, ...], float]


def check_alpha(alpha: float) -> float:
  alpha = float(alpha)
  if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  return alpha


def dedupe_position(ids: np.ndarray, logp: np.ndarray) -> Dict[int, Tuple[int, float]]:
  """Per-position dedupe: token -> (kept slot, logp). Keeps the higher logp, then the lower slot.

  Slots with logp = -inf (or NaN) are absent.
  """
  kept: Dict[int, Tuple[int, float]] = {}
  for slot, (t, lp) in enumerate(zip(ids.tolist(), logp.tolist())):
    if not lp > -math.inf:  # -inf or NaN
      continue
    old = kept.get(t)
    if old is None or lp > old[1]:
      kept[t] = (slot, lp)
  return kept


class WfstRescorer:
  """Global n-gram rescoring of lattices with pynini (host side, one lattice per call).

  Args:
    arpa: an ARPA path or a parsed `arpa.ArpaModel`.
    alpha: interpolation weight in [0, 1] (0 = head scores only, the "p-best 0-gram" control).
    vocab_size: model vocabulary size (required when `arpa` is a path).
  """

  def __init__(self, arpa: Union[str, arpa_lib.ArpaModel], alpha: float,
               vocab_size: Optional[int] = None):
    if pynini is None:
      raise ValueError("WFST rescoring needs pynini, which is not installed here (pip install "
                       "pynini); the on-device n-gram backend needs no pynini.")
    self.alpha = check_alpha(alpha)
    self.model = arpa_lib.as_model(arpa, vocab_size)
    self.vocab_size = self.model.vocab_size
    self.order = self.model.order
    self.unk_label = self.vocab_size + 1
    self._build_lm()

  # ------------------------------------------------------------------ LM acceptor
  def _label(self, word: int) -> int:
    return self.unk_label if word == arpa_lib.UNK else word + 1

  def _build_lm(self) -> None:
    m = self.model
    a = self.alpha
    ln10 = arpa_lib.LN10
    special = (arpa_lib.BOS, arpa_lib.EOS)
    states: Dict[Tuple[int, ...], int] = {(): 0}
    for order in range(1, self.order):
      for g in m.ngrams[order]:
        if not any(w in special for w in g):
          states[g] = len(states)
    self._states = states
    lm = pynini.Fst()
    lm.reserve_states(len(states))
    for _ in range(len(states)):
      lm.add_state()
    lm.set_start(0)
    one = pynini.Weight.one("tropical")
    for s in range(len(states)):
      lm.set_final(s, one)

    def suffix_state(g: Tuple[int, ...]) -> int:
      for i in range(len(g) + 1):
        s = states.get(g[i:])
        if s is not None:
          return s
      return 0

    for order in range(1, self.order + 1):
      for g, (lp10, _) in m.ngrams[order].items():
        if any(w in special for w in g):
          continue
        ctx = g[:-1]
        src = states.get(ctx)
        if src is None:  # unreachable: queries back off before reaching this n-gram
          continue
        dst = states[g] if order < self.order else suffix_state(g[1:])
        lab = self._label(g[-1])
        lm.add_arc(src, pynini.Arc(lab, lab, -a * lp10 * ln10, dst))
    for g, s in states.items():
      if not g:
        continue
      bo10 = m.ngrams[len(g)][g][1]
      lm.add_arc(s, pynini.Arc(0, 0, -a * bo10 * ln10, suffix_state(g[1:])))
    lm.arcsort("ilabel")
    self.lm = lm

  def start_state(self, history: Sequence[int]) -> int:
    """LM state of a decoded history: the longest listed suffix of its last n-1 tokens."""
    hist = [int(t) for t in history if int(t) >= 0][-(self.order - 1):] if self.order > 1 else []
    ctx = tuple(self.model.word_id(t) for t in hist)
    for i in range(len(ctx) + 1):
      s = self._states.get(ctx[i:])
      if s is not None:
        return s
    return 0

  # ------------------------------------------------------------------ lattices
  def lattice_fst(self, cand_ids, cand_logp) -> Tuple[pynini.Fst, List[Dict[int, int]]]:
    """Linear-chain transducer of a lattice; also per position token -> kept slot (rank)."""
    a1 = 1.0 - self.alpha
    f = pynini.Fst()
    h = len(cand_ids)
    f.reserve_states(h + 1)
    f.add_states(h + 1)
    f.set_start(0)
    f.set_final(h, pynini.Weight.one("tropical"))
    ranks = []
    words = self.model.words
    unk = self.unk_label
    for i in range(h):
      ids = np.asarray(cand_ids[i]).reshape(-1)
      lps = np.asarray(cand_logp[i], dtype=np.float64).reshape(-1)
      if ids.shape != lps.shape:
        raise ValueError(f"position {i}: {ids.shape[0]} ids but {lps.shape[0]} log-probs")
      kept = dedupe_position(ids, lps)
      if not kept:
        raise ValueError(f"position {i} has no candidate with a finite log-prob")
      ranks.append({t: s for t, (s, _) in kept.items()})
      for t, (_, lp) in kept.items():
        if not 0 <= t < self.vocab_size:
          raise ValueError(f"candidate token {t} at position {i} is outside [0, {self.vocab_size})")
        f.add_arc(i, pynini.Arc(t + 1, t + 1 if t in words else unk, -a1 * lp, i + 1))
    return f, ranks

  def best_paths(self, cand_ids, cand_logp, history: Sequence[int], p: int) -> List[Path]:
    """The p best distinct token sequences through a lattice, best first.

    Args:
      cand_ids: [h, k] int token ids (or a list of h 1-D arrays: k_i may differ per position).
      cand_logp: [h, k] float head log-probs (natural log) of the same shape; -inf = no slot.
      history: the last tokens already decoded (most recent last; only the last n-1 matter;
        entries < 0 are ignored as padding).
      p: number of paths, 1 <= p <= prod_i k_i.

    Returns:
      A list of (tokens, score) with len <= p (shorter only when duplicate or -inf slots leave
      fewer than p distinct paths), score as in the module docstring (higher is better; the
      WFST's min-over-routes score, see "epsilon approximation").
    """
    h = len(cand_ids)
    if h == 0:
      raise ValueError("empty lattice")
    total = 1
    for i in range(h):
      total *= int(np.asarray(cand_ids[i]).size)
    if not 1 <= p <= total:
      raise ValueError(f"p={p} must be in [1, {total}] (number of paths in the lattice)")
    lat, ranks = self.lattice_fst(cand_ids, cand_logp)
    self.lm.set_start(self.start_state(history))
    composed = pynini.compose(lat, self.lm)
    composed.project("input")
    want = min(p, math.prod(len(r) for r in ranks))  # distinct token paths after dedupe
    out = _best_distinct_routes(composed, want)
    if out is None:
      # Epsilon removal + determinization (tropical: min over routes) leaves one path per token
      # sequence; n-shortest then gives the p best distinct sequences. (This is about 2x faster
      # than shortestpath(unique=True) on corpus-like lattices.)
      composed.rmepsilon()
      out = _chains(pynini.shortestpath(pynini.determinize(composed), nshortest=want))[:want]
    keyed = [(-cost, tuple(ranks[i][t] for i, t in enumerate(toks)), toks) for toks, cost in out]
    keyed.sort(key=lambda x: (-x[0], x[1]))
    return [(toks, float(score)) for score, _, toks in keyed]


def _best_distinct_routes(composed: pynini.Fst, want: int,
                          max_routes_per_path: int = 64) -> Optional[List[Path]]:
  """The `want` best distinct token sequences from the n best ROUTES of the composition, or None.

  A sequence's WFST cost is its cheapest route (explicit n-gram or epsilon back-off arcs), so
  among the n cheapest routes the first occurrence of each sequence carries its cost, and once
  they hold `want` distinct sequences no missing sequence can be cheaper than the want-th
  (its cheapest route would be among them). n grows 4x from 4 * want (1 for want = 1: the best
  route is the best sequence); None when `max_routes_per_path * want` routes still hold fewer,
  and the caller merges the routes by determinization instead. On dense lattices of a trained
  model this skips rmepsilon + determinize, 80-90% of the time (see tests/test_wfst_drafter.py
  for the equality with the determinized result).
  """
  n = 1 if want == 1 else 4 * want
  while n <= max_routes_per_path * want:
    best: Dict[Tuple[int, ...], float] = {}
    routes = _chains(pynini.shortestpath(composed, nshortest=n))
    for toks, cost in routes:
      best.setdefault(toks, cost)
    if len(best) >= want:
      return sorted(best.items(), key=lambda kv: kv[1])[:want]
    if len(routes) < n:  # Every route enumerated: fewer distinct sequences exist.
      return sorted(best.items(), key=lambda kv: kv[1])
    n *= 4
  return None


def _chains(sp: pynini.Fst) -> List[Tuple[Tuple[int, ...], float]]:
  """Reads the paths of a shortestpath() result (one chain per arc of the start state)."""
  start = sp.start()
  if start < 0:
    return []
  out = []
  for arc0 in sp.arcs(start):
    toks = [arc0.ilabel - 1] if arc0.ilabel else []
    cost = float(arc0.weight)
    s = arc0.nextstate
    while True:
      arcs = list(sp.arcs(s))
      if not arcs:
        cost += float(sp.final(s))
        break
      cost += float(arcs[0].weight)
      if arcs[0].ilabel:
        toks.append(arcs[0].ilabel - 1)
      s = arcs[0].nextstate
    out.append((tuple(toks), cost))
  return sorted(out, key=lambda kv: kv[1])
