"""The decode loop: exact greedy equality with plain decoding, and lossless sampling."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpdjax import cache as cache_lib
from bpdjax.decoding import lattice
from bpdjax.decoding import loop
from bpdjax.decoding import model_fns
from bpdjax.decoding import sampling
from bpdjax.decoding import verify
from bpdjax.decoding.drafters import heads
from bpdjax.decoding.drafters import local
from bpdjax.eval import analysis
from tests import helpers


def _decode(model, cfg, params, prompts, lengths, drafter, max_new, eos_id=None, **kw):
  return helpers.decode(model, params, prompts, lengths, drafter, max_new, eos_id, **kw)


_rows = helpers.rows
_naive_greedy = helpers.naive_greedy
_random_model = helpers.random_model


@pytest.fixture(scope="module")
def random_model():
  return helpers.random_model()


@pytest.fixture(scope="module")
def uneven_prompts():
  return helpers.uneven_prompts()


@pytest.mark.parametrize("eos_id,max_new", [(None, 23), (7, 23), (None, 1)])
def test_bpd_and_ar_equal_naive_greedy(random_model, uneven_prompts, eos_id, max_new):
  model, cfg, params = random_model
  prompts, lengths = uneven_prompts
  expected = [_naive_greedy(model, params, prompts[b, :lengths[b]], max_new, eos_id)
              for b in range(len(lengths))]
  for drafter in (heads.NoDraft(), heads.TopOneDrafter(4), heads.TopOneDrafter(2),
                  heads.PBestDrafter(4, k=3, p=5)):
    result = _decode(model, cfg, params, prompts, lengths, drafter, max_new, eos_id)
    assert _rows(result) == expected, drafter
    assert np.all(result.calls <= result.lengths)


def test_eos_inside_a_block_and_length_mid_block(uneven_prompts):
  """A model whose heads draft perfectly: blocks of 4 get accepted whole, so EOS and the length
  limit fall inside blocks. Output must still stop exactly where plain decoding stops."""
  model, cfg, params = _random_model(scale=0.0)  # Untrained heads: every head equals head 1...
  prompts, lengths = uneven_prompts
  # ... so the draft repeats the next token h times; choose EOS among the produced tokens.
  ar = _decode(model, cfg, params, prompts, lengths, heads.NoDraft(), 21)
  eos_id = int(ar.tokens[0, 5])
  expected = [_naive_greedy(model, params, prompts[b, :lengths[b]], 21, eos_id)
              for b in range(len(lengths))]
  for max_new in (21, 6):
    bpd = _decode(model, cfg, params, prompts, lengths, heads.TopOneDrafter(4), max_new,
                  eos_id, record_topk=2)
    assert _rows(bpd) == [e[:max_new] for e in expected]
  assert np.any(bpd.records.kept > 1), "test needs multi-token blocks"


def test_batch_rows_independent(random_model, uneven_prompts):
  model, cfg, params = random_model
  prompts, lengths = uneven_prompts
  batched = _rows(_decode(model, cfg, params, prompts, lengths, heads.TopOneDrafter(4), 17))
  for b in range(len(lengths)):
    single = _decode(model, cfg, params, prompts[b:b + 1, :lengths[b]], lengths[b:b + 1],
                     heads.TopOneDrafter(4), 17)
    assert _rows(single)[0] == batched[b]


def test_ar_block_efficiency_is_one_and_oracle_k1_matches_bpd(random_model, uneven_prompts):
  model, cfg, params = random_model
  prompts, lengths = uneven_prompts
  ar = _decode(model, cfg, params, prompts, lengths, heads.NoDraft(), 20)
  assert analysis.block_efficiency(ar.lengths, ar.calls) == 1.0
  bpd = _decode(model, cfg, params, prompts, lengths, heads.TopOneDrafter(4), 20,
                record_topk=4)
  be = analysis.block_efficiency(bpd.lengths, bpd.calls)
  oracle = [analysis.oracle_block_efficiency(bpd.records.topk, bpd.tokens, bpd.lengths, k, 4)
            for k in (1, 2, 4)]
  assert oracle[0] == pytest.approx(be)
  assert oracle[0] <= oracle[1] <= oracle[2]
  hist = analysis.kept_histogram(bpd.records.kept, 4)
  assert sum(hist) == int(np.sum(bpd.calls - 1))
  # Each verify call yields its kept count; the last call of a row may overshoot the limit.
  assert sum((i + 1) * n for i, n in enumerate(hist)) >= int(np.sum(bpd.lengths)) - len(lengths)


def test_lossless_sampling_chi_square():
  """BPD sampling draws (t1, t2) from exactly the model's distribution; a broken acceptance
  rule (resampling from the full distribution after a rejection) is detected by the same test."""
  vocab = 8
  model, cfg, params = _random_model(vocab_size=vocab, h=3, seed=3, scale=0.1)
  config = sampling.SamplingConfig(temperature=1.0)
  prompt = [1, 5, 2]
  probs = helpers.exact_joint(model, params, prompt, vocab, config)
  n = 20000
  ar = helpers.sample_first_two(model, params, prompt, heads.NoDraft(), config, n)
  bpd_drafter = heads.TopOneDrafter(3)
  bpd = helpers.sample_first_two(model, params, prompt, bpd_drafter, config, n)
  p_ar = helpers.chi2_pvalue(helpers.joint_counts(ar, vocab), probs)
  p_bpd = helpers.chi2_pvalue(helpers.joint_counts(bpd, vocab), probs)
  assert p_ar > 1e-3 and p_bpd > 1e-3, (p_ar, p_bpd)

  true_accept = verify.accept_chain

  def broken_accept(draft, logits, config, rng):
    # Wrong: after a rejection, draws from the full distribution (the rejected token can come
    # back), which over-weights draft tokens.
    num_kept, _ = true_accept(draft, logits, config, rng)
    logp = jax.nn.log_softmax(sampling.processed_logits(logits, config), -1)
    last = jnp.take_along_axis(logp, (num_kept - 1)[:, None, None], axis=1)[:, 0]
    return num_kept, jax.random.categorical(jax.random.fold_in(rng, 1), last).astype(jnp.int32)

  def broken_decode(prompts, lengths):
    verify.accept_chain = broken_accept
    try:
      return jax.jit(lambda p, l: loop.decode(
          model_fns.TransformerFns(model), params, p, l,
          cache_lib.init_for_model(cfg, p.shape[0], p.shape[1] + 6), bpd_drafter,
          max_new_tokens=3, eos_id=None, sampling_config=config,
          rng=jax.random.PRNGKey(42)))(jnp.asarray(prompts), jnp.asarray(lengths))
    finally:
      verify.accept_chain = true_accept

  broken = helpers.sample_first_two(model, params, prompt, bpd_drafter, config, n, broken_decode)
  assert helpers.chi2_pvalue(helpers.joint_counts(broken, vocab), probs) < 1e-6


def test_top_k_top_p_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  top2 = jax.nn.softmax(sampling.processed_logits(logits, sampling.SamplingConfig(1.0, top_k=2)))
  np.testing.assert_allclose(top2[0], [0.625, 0.375, 0, 0], atol=1e-6)
  nucleus = jax.nn.softmax(sampling.processed_logits(logits, sampling.SamplingConfig(1.0, top_p=0.8)))
  np.testing.assert_allclose(nucleus[0], [0.625, 0.375, 0, 0], atol=1e-6)
  nucleus = jax.nn.softmax(sampling.processed_logits(logits, sampling.SamplingConfig(1.0, top_p=0.81)))
  np.testing.assert_allclose(nucleus[0], [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], atol=1e-6)


def test_pbest_paths_equal_brute_force():
  rng = np.random.RandomState(0)
  logp = rng.randn(2, 3, 4).astype(np.float32)   # Continuous scores: no ties.
  ranks, scores = jax.device_get(lattice.pbest_paths(jnp.asarray(logp), 7))
  for b in range(2):
    paths = sorted(itertools.product(range(4), repeat=3),
                   key=lambda r: (-sum(logp[b, i, j] for i, j in enumerate(r)), r))[:7]
    assert [tuple(r) for r in ranks[b]] == paths
    np.testing.assert_allclose(scores[b], [sum(logp[b, i, j] for i, j in enumerate(r))
                                           for r in paths], rtol=1e-6)
  with pytest.raises(ValueError, match="exceeds"):
    lattice.pbest_paths(jnp.asarray(logp), 65)


def test_pbest_drafts_accept_at_least_bpd(random_model, uneven_prompts):
  """The p chains include BPD's top-1 chain, so from the same position (the first call after
  prefill) they keep at least as many tokens; outputs are identical."""
  model, cfg, params = random_model
  prompts, lengths = uneven_prompts
  bpd = _decode(model, cfg, params, prompts, lengths, heads.TopOneDrafter(4), 20,
                record_topk=1)
  pbest = _decode(model, cfg, params, prompts, lengths, heads.PBestDrafter(4, k=4, p=8), 20,
                  record_topk=1)
  assert _rows(pbest) == _rows(bpd)
  assert np.all(pbest.records.kept[0] >= bpd.records.kept[0])


def test_local_rescoring_alpha_zero_is_bpd_and_output_is_exact(random_model, uneven_prompts):
  """alpha 0 reproduces BPD's drafts and calls; at every alpha > 0 the output stays identical
  to greedy and the rescorer changes some draft (else the check would be vacuous)."""
  model, cfg, params = random_model
  prompts, lengths = uneven_prompts
  rescorer, _, rparams = helpers.random_model(h=1, seed=7)
  max_new = 20

  def run(alpha):
    drafter = local.LocalRescoreDrafter(draft_len=4, k=4, alpha=alpha,
                                        rescorer=model_fns.TransformerFns(rescorer))
    return _decode(model, cfg, params, prompts, lengths, drafter, max_new, record_topk=2,
                   drafter_params=rparams)

  bpd = _decode(model, cfg, params, prompts, lengths, heads.TopOneDrafter(4), max_new,
                record_topk=2)
  zero = run(0.0)
  np.testing.assert_array_equal(zero.records.drafts, bpd.records.drafts)
  assert _rows(zero) == _rows(bpd) and np.array_equal(zero.calls, bpd.calls)
  for alpha in (0.5, 1.0):
    refined = run(alpha)
    assert _rows(refined) == _rows(bpd), alpha
    assert np.any(refined.records.drafts != bpd.records.drafts), (
        f"alpha={alpha}: the rescorer never changed a draft, the check is vacuous")
  with pytest.raises(ValueError, match="alpha"):
    local.LocalOptions(alpha=1.5).validate()
