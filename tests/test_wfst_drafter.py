"""The WFST (OpenFST/pynini) n-gram drafter: a host callback in the jitted decode loop.

It must keep decoding exact (output identical to plain greedy decoding) and propose the same
drafts as the exact on-device DP drafter wherever pynini's epsilon back-off approximation does
not change the p best paths (see ngram/fst.py).
"""
import jax
import numpy as np
import pytest

from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import lattice
from bpdjax.decoding import methods
from bpdjax.decoding import resources
from bpdjax.decoding.drafters import heads
from bpdjax.decoding.drafters import ngram
from bpdjax.ngram import fst
from bpdjax.ngram import tables as ngram_tables
from tests import helpers

# The `lms` fixture (conftest.py): KenLM models over ids 0..CORPUS_V-1, read for VOCAB ids.
VOCAB = helpers.NGRAM_VOCAB
CORPUS_V = helpers.NGRAM_CORPUS_V
H = 4


@pytest.fixture(scope="module")
def model():
  return helpers.random_model(vocab_size=VOCAB, h=H, seed=2, scale=0.2)


@pytest.fixture(scope="module")
def prompts():
  rng = np.random.RandomState(1)
  lengths = np.array([5, 2, 1, 4])
  return rng.randint(0, CORPUS_V, (4, 5)) * (np.arange(5)[None] < lengths[:, None]), lengths


def _run(model, prompts, drafter, drafter_params=None, max_new=16):
  tokens, lengths = prompts
  return helpers.decode(model[0], model[2], tokens, lengths, drafter, max_new, record_topk=1,
                        drafter_params=drafter_params)


_rows = helpers.rows


@pytest.mark.parametrize("order", [2, 4])
def test_wfst_decoding_is_exact_and_2gram_drafts_equal_dp(lms, model, prompts, order):
  """Output identical to plain greedy decoding for n-gram BPD (p = 1) and p-best n-gram BPD.
  With a 2-gram LM (no epsilon shortcut can beat the exact score, see fst.py) every draft of
  the whole decode equals the exact DP drafter's."""
  expected = _rows(_run(model, prompts, heads.NoDraft()))
  bpd = _run(model, prompts, heads.TopOneDrafter(H))
  lm = lms[order][1]
  tables = ngram_tables.build_tables(lm) if order == 2 else None
  changed = False
  for p, alpha in ((1, 0.7), (5, 0.5)):
    wfst = _run(model, prompts, ngram.WfstPBestDrafter(H, k=3, p=p,
                                                           rescorer=fst.WfstRescorer(lm, alpha)))
    assert _rows(wfst) == expected, (p, alpha)
    if order == 2:  # (the DP drafter's own exactness is tests/test_ngram.py's)
      exact = _run(model, prompts, ngram.NgramPBestDrafter(H, k=3, p=p, alpha=alpha,
                                                           order=order), tables)
      np.testing.assert_array_equal(wfst.records.drafts, exact.records.drafts)
      np.testing.assert_array_equal(wfst.records.kept, exact.records.kept)
    changed |= bool(np.any(wfst.records.drafts != bpd.records.drafts))
  assert changed, "the n-gram LM never changed a draft: the test is vacuous"


def _random_inputs(seed, b=32, order=4):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 2.0, size=(b, H - 1, VOCAB)).astype(np.float32)     # Heads 2..H.
  next_token = rng.integers(0, VOCAB, size=b).astype(np.int32)
  hist = rng.integers(0, VOCAB, size=(b, order - 1)).astype(np.int32)
  pad = rng.integers(0, order, size=b)  # 0 .. n-1 missing history tokens (start of a text)
  hist[np.arange(order - 1)[None, :] < pad[:, None]] = -1
  return logits, next_token, hist


@pytest.mark.parametrize("order,p", [(2, 5), (3, 5), (4, 5), (4, 1)])
def test_wfst_proposals_equal_dp_where_epsilon_is_harmless(lms, order, p):
  """Per lattice, the WFST's score of each path is >= its exact score (min over routes). When
  the p paths it returns all score exactly, no other path can beat them exactly either, so the
  exact DP must return the same p drafts. 2-gram: that holds for every lattice."""
  lm = lms[order][1]
  k, alpha = 3, 0.6
  rescorer = fst.WfstRescorer(lm, alpha)
  wfst = ngram.WfstPBestDrafter(H, k=k, p=p, rescorer=rescorer)
  exact = ngram.NgramPBestDrafter(H, k=k, p=p, alpha=alpha, order=order)
  logits, next_token, hist = _random_inputs(order, order=order)
  state = ngram.NgramState(history=hist)
  got, _ = helpers.jit_propose(wfst)(None, state, logits, next_token)
  want, _ = helpers.jit_propose(exact)(ngram_tables.build_tables(lm), state, logits, next_token)
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape == (32, 1 + p * (H - 1))
  np.testing.assert_array_equal(got[:, 0], next_token)
  ids, logp = jax.device_get(lattice.head_lattice(logits, k))
  harmless = same = 0
  for r in range(got.shape[0]):
    history = [int(t) for t in np.asarray(hist[r]) if t >= 0]
    paths = rescorer.best_paths([np.asarray(next_token[r:r + 1])] + list(ids[r]),
                                [np.zeros(1)] + list(logp[r]), history, p)
    exact_scores = []
    for tokens, _ in paths:
      slots = [list(ids[r, i]).index(t) for i, t in enumerate(tokens[1:])]
      exact_scores.append(sum((1 - alpha) * logp[r, i, s] for i, s in enumerate(slots))
                          + alpha * lm.score_sequence(history, tokens))
    row_same = np.array_equal(got[r], want[r])
    same += row_same
    if all(abs(score - e) < 1e-4 for (_, score), e in zip(paths, exact_scores)):
      harmless += 1
      assert row_same, (order, r, got[r], want[r])
  print(f"\norder {order}, p={p}: WFST drafts == DP drafts on {same}/32 lattices; the epsilon "
        f"approximation was provably harmless on {harmless}/32")
  if order == 2:
    assert harmless == same == 32
  assert harmless >= 16  # the comparison is not vacuous


def test_wfst_propose_under_vmap(lms):
  """vmap over an extra leading axis (vmap_method='broadcast_all') equals the unbatched calls,
  also when only some inputs carry the mapped axis."""
  lm = lms[3][1]
  drafter = ngram.WfstPBestDrafter(H, k=3, p=4, rescorer=fst.WfstRescorer(lm, 0.5))
  logits, next_token, hist = _random_inputs(7, b=8, order=3)
  logits2 = logits.reshape(2, 4, H - 1, VOCAB)
  propose = lambda lg, nt, hs: drafter.propose(  # noqa: E731
      None, ngram.NgramState(history=hs), helpers.last_heads(lg), nt)[0]
  batched = jax.jit(jax.vmap(propose))(logits2, next_token.reshape(2, 4), hist.reshape(2, 4, 2))
  single = np.concatenate([np.asarray(propose(logits2[i], next_token.reshape(2, 4)[i],
                                              hist.reshape(2, 4, 2)[i])) for i in range(2)])
  np.testing.assert_array_equal(np.asarray(batched).reshape(8, -1), single)
  shared_hist = jax.vmap(propose, in_axes=(0, 0, None))(logits2, next_token.reshape(2, 4),
                                                         hist[:4])
  np.testing.assert_array_equal(np.asarray(shared_hist[0]), single[:4])


def test_generator_backends_and_bad_inputs(lms, model, prompts):
  mdl, cfg, params = model
  path = lms[3][0]
  rows = [np.asarray(t[:n]) for t, n in zip(*prompts)]
  res = resources.Resources(ngram_lm=resources.load_ngram_lm(path, VOCAB))
  gen = generator_lib.Generator(mdl, params, eos_id=None)
  outs = {}
  for backend in ("dp", "wfst"):
    built = {name: methods.build(name, cfg, res, k=3, alpha=0.5, backend=backend,
                                 **({"p": 4} if name == "pbest_ngram" else {}))
             for name in ("ngram", "pbest_ngram")}
    kind = ngram.WfstPBestDrafter if backend == "wfst" else ngram.NgramPBestDrafter
    assert isinstance(built["pbest_ngram"].drafter, kind)
    assert built["pbest_ngram"].drafter.p == 4 and built["ngram"].drafter.p == 1
    for name, b in built.items():
      outs[backend, name] = [g.tokens.tolist() for g in
                             gen.generate(rows, b.drafter, b.params, 10, batch_size=2)[0]]
  expected = [g.tokens.tolist() for g in gen.generate(rows, max_new_tokens=10, batch_size=2)[0]]
  assert all(v == expected for v in outs.values())
  assert res.ngram_lm.wfst(0.5) is res.ngram_lm.wfst(0.5)           # Built once per alpha.

  with pytest.raises(ValueError, match="Unknown n-gram backend 'fst'"):
    methods.build("ngram", cfg, res, backend="fst")
  with pytest.raises(ValueError, match="read for vocab_size=32"):
    methods.build("ngram", cfg, resources.Resources(ngram_lm=resources.load_ngram_lm(path, 32)))
  with pytest.raises(ValueError, match="needs an n-gram LM"):
    methods.build("ngram", cfg, resources.Resources())
  wfst_lm = res.ngram_lm.wfst(0.5)
  with pytest.raises(ValueError, match="p=28 exceeds"):   # Checks live in the options.
    methods.build("pbest_ngram", cfg, res, k=3, p=28, backend="wfst")
  with pytest.raises(TypeError, match="WfstRescorer, got NgramTables"):
    ngram.WfstPBestDrafter(H, k=3, p=2, rescorer=res.ngram_lm.tables())
  too_long = ngram.WfstPBestDrafter(H + 1, k=3, p=2, rescorer=wfst_lm)
  with pytest.raises(ValueError, match="reads heads 2..5; the model has 4"):
    _run(model, prompts, too_long)
  logits, next_token, hist = _random_inputs(0, b=2, order=3)
  other = ngram.WfstPBestDrafter(H, k=3, p=2, rescorer=fst.WfstRescorer(path, 0.5, 32))
  with pytest.raises(ValueError, match="vocab_size=32, the model has 16"):
    other.propose(None, ngram.NgramState(hist), helpers.last_heads(logits), next_token)


@pytest.mark.parametrize("order", [3, 4])
def test_route_enumeration_equals_determinized_p_best(lms, order):
  """fst.best_paths reads the p best distinct sequences off the n best routes; the reference
  merges the routes by rmepsilon + determinize first (the slower, obviously right way)."""
  import pynini  # pylint: disable=g-import-not-at-top
  lm = lms[order][1]
  rng = np.random.default_rng(order)
  checked = 0
  for alpha in (0.3, 0.8):
    rescorer = fst.WfstRescorer(lm, alpha)
    for trial in range(12):
      k = 4
      ids = [np.array([int(rng.integers(CORPUS_V))])] + [
          rng.choice(VOCAB, size=k, replace=False) for _ in range(4)]
      logp = [np.zeros(1)] + [np.log(rng.dirichlet(np.ones(k))) for _ in range(4)]
      hist = [int(x) for x in rng.integers(0, CORPUS_V, size=trial % order)]
      for p in (1, 3, 10):
        got = rescorer.best_paths(ids, logp, hist, p)
        lat, ranks = rescorer.lattice_fst(ids, logp)
        rescorer.lm.set_start(rescorer.start_state(hist))
        composed = pynini.compose(lat, rescorer.lm)
        composed.project("input")
        assert fst._best_distinct_routes(composed, p, max_routes_per_path=0) is None
        composed.rmepsilon()
        ref = fst._chains(pynini.shortestpath(pynini.determinize(composed), nshortest=p))
        np.testing.assert_allclose([s for _, s in got], [-c for _, c in ref], atol=1e-4)
        # Tokens equal up to exact ties in score (random float scores: none expected).
        assert [t for t, _ in got] == [t for t, _ in sorted(
            ref, key=lambda tc: (tc[1], tuple(ranks[i][x] for i, x in enumerate(tc[0]))))]
        checked += 1
  assert checked == 2 * 12 * 3
