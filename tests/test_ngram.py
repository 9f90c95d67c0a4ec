"""Global n-gram rescoring: KenLM estimation, ARPA queries, WFST (pynini) and exact DP (JAX)."""
import math
import os

import jax
import numpy as np
import pytest

from bpdjax.decoding.drafters import heads
from bpdjax.decoding.drafters import ngram
from bpdjax.ngram import arpa, dp, estimate, fst
from bpdjax.ngram import tables as ngram_tables
from bpdjax.ngram.reference import brute_force
from tests import helpers

# The `lms` fixture (conftest.py): KenLM models over ids 0..CORPUS_V-1, read for VOCAB ids.
VOCAB = helpers.NGRAM_VOCAB
CORPUS_V = helpers.NGRAM_CORPUS_V


def random_lattice(rng, h, k, dup=False, lo=0, hi=VOCAB):
  ids = np.stack([rng.choice(np.arange(lo, hi), size=k, replace=dup) for _ in range(h)])
  if dup:
    ids[:, -1] = ids[:, 0]  # guarantee a duplicate at every position
  logp = np.log(rng.dirichlet(np.ones(k), size=h)).astype(np.float32)
  return ids.astype(np.int32), logp


def run_dp(model, ids, logp, history, alpha, p, tables=None):
  return dp.best_paths(tables or ngram_tables.build_tables(model), ids, logp, history, alpha, p)


# ---------------------------------------------------------------- estimation and ARPA queries
def test_arpa_logprob_matches_kenlm(lms):
  kenlm = pytest.importorskip("kenlm", reason="python kenlm module not installed")
  rng = np.random.default_rng(1)
  for order, (path, model) in lms.items():
    km = kenlm.Model(path)
    assert km.order == order == model.order
    for _ in range(200):
      hist = [int(x) for x in rng.integers(0, VOCAB, size=int(rng.integers(0, order + 1)))]
      tok = int(rng.integers(0, VOCAB))
      s, s2 = kenlm.State(), kenlm.State()
      km.NullContextWrite(s)
      for t in hist:
        km.BaseScore(s, str(t), s2)
        s, s2 = s2, s
      expect = km.BaseScore(s, str(tok), s2) * math.log(10)
      assert model.logprob(hist, tok) == pytest.approx(expect, abs=1e-4), (order, hist, tok)


def test_arpa_hand_backoff(lms):
  _, model = lms[3]
  (a, b, c), (lp, _) = next((g, v) for g, v in model.ngrams[3].items() if min(g) >= 0)
  assert model.logprob([7, a, b], c) == pytest.approx(lp * math.log(10))
  # An unseen trigram context backs off with bo(context).
  for (x, y), (_, bo) in model.ngrams[2].items():
    for z in range(CORPUS_V):
      if x >= 0 and y >= 0 and (x, y, z) not in model.ngrams[3]:
        assert model.logprob([x, y], z) == pytest.approx(bo * math.log(10) + model.logprob([y], z))
        return


def test_arpa_vocabulary_checks(lms, tmp_path):
  path, _ = lms[2]
  with pytest.raises(ValueError, match="out of range"):
    arpa.parse_arpa(path, 8)
  lines = open(path).read().replace("\t5\t", "\tfoo\t", 1).replace("\t5 ", "\tfoo ", 1)
  bad = tmp_path / "bad.arpa"
  bad.write_text(lines)
  with pytest.raises(ValueError, match="'foo' is not an integer token id"):
    arpa.parse_arpa(str(bad), VOCAB)
  with pytest.raises(ValueError, match="another"):
    arpa.parse_arpa(path, 60000)


# ---------------------------------------------------------------- WFST
def test_wfst_scores_equal_arpa_sentence_scores(lms):
  """alpha = 1, head scores 0: single-path lattices score as the ARPA (unless epsilon beats it)."""
  rng = np.random.default_rng(2)
  cheaper = {}
  for order in (2, 3, 4):
    _, model = lms[order]
    r = fst.WfstRescorer(model, 1.0)
    cheaper[order] = 0
    for _ in range(100):
      toks = rng.integers(0, VOCAB, size=5)
      hist = [int(x) for x in rng.integers(0, VOCAB, size=int(rng.integers(0, order)))]
      (got, score), = r.best_paths(toks[:, None], np.zeros((5, 1)), hist, 1)
      exact = model.score_sequence(hist, toks)
      assert got == tuple(toks.tolist())
      assert score >= exact - 1e-4  # min over routes: never worse than the exact route
      if order == 2:  # interpolated KN bigram: the explicit arc always beats bo + unigram
        assert score == pytest.approx(exact, abs=1e-4)
      cheaper[order] += score > exact + 1e-4
  print(f"\nepsilon route beat the exact ARPA score on {cheaper} of 100 single paths per order")


def _check_topp(ref, got, p, exact_scores=True):
  """got [(tokens, score)] equals the first p of ref (score, ranks, tokens) up to exact ties."""
  assert len(got) == min(p, len(ref))
  for i, (toks, sc) in enumerate(got):
    assert sc == pytest.approx(ref[i][0], abs=1e-4), (i, toks, sc, ref[i])
    if exact_scores:
      # tokens equal, or an exact tie with the reference path at that place
      assert toks == ref[i][2] or abs(ref[i][0] - dict((t, s) for s, _, t in ref)[toks]) < 1e-5


@pytest.mark.parametrize("h,k,dup", [(4, 3, False), (3, 4, True)])
def test_dp_and_wfst_equal_brute_force(lms, h, k, dup):
  rng = np.random.default_rng(3 + h)
  eps_lattices = 0
  n = 0
  for order in (2, 3, 4):
    _, model = lms[order]
    tables = ngram_tables.build_tables(model)
    for alpha in (1.0, 0.6, 0.25):
      r = fst.WfstRescorer(model, alpha)
      for trial in range(3):
        ids, logp = random_lattice(rng, h, k, dup=dup)
        hist = [int(x) for x in rng.integers(0, VOCAB, size=trial)]
        ref = brute_force(model, ids, logp, hist, alpha)
        p = min(8, k ** h)
        paths, scores = run_dp(model, ids, logp, hist, alpha, p, tables)
        got = [(tuple(x.tolist()), float(s)) for x, s in zip(paths, scores) if s > -np.inf]
        # DP: exact, tokens included (random float scores: no ties)
        assert [g[0] for g in got] == [x[2] for x in ref[:p]]
        _check_topp(ref, got, p)
        wf = r.best_paths(ids, logp, hist, p)
        if order == 2:  # no epsilon shortcut can beat the exact bigram score here
          assert [g[0] for g in wf] == [x[2] for x in ref[:p]]
          _check_topp(ref, wf, p)
        else:
          n += 1
          if [g[0] for g in wf] != [x[2] for x in ref[:p]] or any(
              abs(a[1] - b[0]) > 1e-4 for a, b in zip(wf, ref)):
            eps_lattices += 1
  print(f"\nWFST top-{p} differed from exact on {eps_lattices}/{n} 3/4-gram lattices "
        f"(h={h}, k={k})")


def test_alpha_zero_is_head_only_ranking(lms):
  """alpha = 0 (p-best 0-gram): ranking by head scores only, ties by the slot sequence."""
  _, model = lms[4]
  h, k = 4, 3
  ids = np.array([[1, 2, 3], [4, 4, 5], [6, 7, 8], [9, 10, 11]], np.int32)
  # dyadic log-probs: sums are exact, so ties are real ties in every implementation
  logp = np.array([[-0.5, -0.5, -1.0], [-0.25, -0.5, -0.25], [-1.0, -1.0, -0.5],
                   [-0.5, -0.25, -0.25]], np.float32)
  ref = brute_force(model, ids, logp, [3, 4, 5], 0.0)
  p = 12
  paths, scores = run_dp(model, ids, logp, [3, 4, 5], 0.0, p)
  assert [tuple(x.tolist()) for x in paths] == [x[2] for x in ref[:p]]
  np.testing.assert_allclose(scores, [x[0] for x in ref[:p]], atol=1e-6)
  wf = fst.WfstRescorer(model, 0.0).best_paths(ids, logp, [3, 4, 5], p)
  np.testing.assert_allclose([s for _, s in wf], [x[0] for x in ref[:p]], atol=1e-5)
  # WFST: same scores; which of the paths tied at the p-th place is kept is OpenFST's choice
  last = ref[p - 1][0]
  assert [t for t, s in wf if s > last + 1e-6] == [x[2] for x in ref[:p] if x[0] > last + 1e-6]


def test_distinct_paths_with_duplicates_and_padding(lms):
  _, model = lms[3]
  ids = np.array([[5, 5], [1, 1], [2, 3]], np.int32)
  logp = np.log(np.full((3, 2), 0.5, np.float32))
  paths, scores = run_dp(model, ids, logp, [1], 0.5, 4)
  assert np.isfinite(scores[:2]).all() and np.isneginf(scores[2:]).all()
  assert (paths[2:] == -1).all()
  assert {tuple(x) for x in paths[:2].tolist()} == {(5, 1, 2), (5, 1, 3)}
  wf = fst.WfstRescorer(model, 0.5).best_paths(ids, logp, [1], 4)
  assert [t for t, _ in wf] == [tuple(x) for x in paths[:2].tolist()]


def test_batched_jit_and_first_position_single(lms):
  _, model = lms[4]
  tables = ngram_tables.build_tables(model)
  rng = np.random.default_rng(5)
  b, h, k, p = 3, 4, 3, 5
  ids = rng.integers(0, VOCAB, size=(b, h, k)).astype(np.int32)
  logp = np.log(rng.dirichlet(np.ones(k), size=(b, h))).astype(np.float32)
  hist = np.array([[-1, -1, -1], [-1, 2, 3], [4, 5, 6]], np.int32)
  paths, scores = jax.jit(dp.pbest_dp, static_argnames=("p", "ks"))(
      tables, ids, logp, hist, 0.7, p=p, ks=(1, k, k, k))
  for i in range(b):
    lp = logp[i].copy()
    lp[0, 1:] = -np.inf
    ref = brute_force(model, ids[i], lp, [int(x) for x in hist[i] if x >= 0], 0.7)
    assert [tuple(x) for x in np.asarray(paths[i]).tolist()] == [x[2] for x in ref[:p]]
    np.testing.assert_allclose(scores[i], [x[0] for x in ref[:p]], atol=1e-4)


def test_bad_inputs(lms):
  _, model = lms[3]
  tables = ngram_tables.build_tables(model)
  ids = np.zeros((1, 2, 2), np.int32)
  logp = np.zeros((1, 2, 2), np.float32)
  hist = np.zeros((1, 2), np.int32)
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match="alpha"):
      fst.WfstRescorer(model, bad)
    with pytest.raises(ValueError, match="alpha"):
      dp.pbest_dp(tables, ids, logp, hist, bad, 1)
  with pytest.raises(ValueError, match="p=5"):
    dp.pbest_dp(tables, ids, logp, hist, 0.5, 5)
  with pytest.raises(ValueError, match="p=5"):
    fst.WfstRescorer(model, 0.5).best_paths(ids[0], logp[0], [1], 5)
  with pytest.raises(ValueError, match="vocab_size"):
    fst.WfstRescorer(model, 0.5, vocab_size=VOCAB + 1)
  assert os.path.exists(estimate.BUILD_SCRIPT)


@pytest.mark.parametrize("order", [2, 4])
def test_ngram_drafters_in_the_decode_loop_are_exact(lms, order):
  """n-gram BPD (p = 1) and p-best n-gram drafts keep the output identical to plain greedy
  decoding; with alpha = 0 the n-gram drafter proposes exactly the p-best 0-gram drafts."""
  model, _, params = helpers.random_model(vocab_size=VOCAB, h=4, seed=2, scale=0.2)
  tables = ngram_tables.build_tables(lms[order][1])
  rng = np.random.RandomState(1)
  lengths = np.array([5, 2, 1, 4])
  prompts = rng.randint(0, CORPUS_V, (4, 5)) * (np.arange(5)[None] < lengths[:, None])

  def run(drafter, drafter_params=None):
    return helpers.decode(model, params, prompts, lengths, drafter, 16, record_topk=1,
                          drafter_params=drafter_params)

  ar = run(heads.NoDraft())
  expected = [list(ar.tokens[b, :ar.lengths[b]]) for b in range(4)]
  for p, alpha in ((1, 0.7), (5, 0.5), (5, 0.0)):
    out = run(ngram.NgramPBestDrafter(4, k=3, p=p, alpha=alpha, order=order), tables)
    assert [list(out.tokens[b, :out.lengths[b]]) for b in range(4)] == expected, (p, alpha)
    if alpha == 0.0:
      zero = run(heads.PBestDrafter(4, k=3, p=5))
      np.testing.assert_array_equal(out.records.drafts, zero.records.drafts)
  with pytest.raises(ValueError, match="alpha"):   # Checks live in the options.
    ngram.NgramOptions(alpha=-0.1).validate()
