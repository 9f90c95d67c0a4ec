"""The decode loop: exact greedy equality with plain decoding, and lossless sampling."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bpdjax import cache as cache_lib
from bpdjax import model as model_lib
from bpdjax.decoding import analysis
from bpdjax.decoding import drafters
from bpdjax.decoding import loop
from bpdjax.decoding import sampling
from bpdjax.decoding import verify


def _random_model(vocab_size=64, h=4, seed=0, scale=0.3):
  cfg = model_lib.TransformerConfig(
      vocab_size=vocab_size, num_layers=2, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
      mlp_dim=64, max_len=128, num_heads_bpd=h, head_hidden_dim=32)
  model = model_lib.Transformer(cfg)
  tok = jnp.zeros((1, 4), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), tok, tok)["params"])
  # Heads start as copies of the next-token head; perturb so they disagree as trained heads do.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  params = jax.tree.unflatten(
      tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return model, cfg, params


@functools.partial(jax.jit, static_argnums=0)
def _full_forward(model, params, tokens):
  return model.apply({"params": params}, tokens, jnp.arange(tokens.shape[1])[None])[0]


def _naive_greedy(model, params, prompt, n, eos_id):
  """Plain greedy decoding by full re-computation: no cache, no drafts. The sequence sits in a
  fixed-size buffer (causal attention makes the padding after it irrelevant)."""
  seq, out = list(prompt), []
  for _ in range(n):
    buffer = np.zeros((1, 64), np.int32)
    buffer[0, :len(seq)] = seq
    token = int(jnp.argmax(_full_forward(model, params, jnp.asarray(buffer))[0, len(seq) - 1, 0]))
    out.append(token)
    seq.append(token)
    if token == eos_id:
      break
  return out


def _decode(model, cfg, params, prompts, lengths, drafter, max_new, eos_id=None,
            config=sampling.SamplingConfig(), rng=jax.random.PRNGKey(0), record_topk=0):
  return jax.device_get(loop.jit_decode(
      loop.model_fns(model), params, jnp.asarray(prompts, jnp.int32),
      jnp.asarray(lengths, jnp.int32), rng, drafter=drafter, max_new_tokens=max_new,
      eos_id=eos_id, sampling_config=config, record_topk=record_topk,
      cache_len=prompts.shape[1] + max_new + loop.block_size(drafter),
      cache_init=functools.partial(cache_lib.init_for_model, cfg)))


def _rows(result):
  return [list(result.tokens[b, :result.lengths[b]]) for b in range(result.tokens.shape[0])]


@pytest.fixture(scope="module")
def random_model():
  return _random_model()


@pytest.fixture(scope="module")
def uneven_prompts():
  rng = np.random.RandomState(0)
  lengths = np.array([9, 3, 1, 6, 9])
  prompts = rng.randint(3, 64, (5, 9)) * (np.arange(9)[None] < lengths[:, None])
  return prompts, lengths


@pytest.mark.parametrize("eos_id,max_new", [(None, 23), (7, 23), (None, 1)])
def test_bpd_and_ar_equal_naive_greedy(random_model, uneven_prompts, eos_id, max_new):
  model, cfg, params = random_model
  prompts, lengths = uneven_prompts
  expected = [_naive_greedy(model, params, prompts[b, :lengths[b]], max_new, eos_id)
              for b in range(len(lengths))]
  for drafter in (drafters.NoDraft(), drafters.TopOneDrafter(4), drafters.TopOneDrafter(2),
                  drafters.PBestDrafter(4, k=3, p=5)):
    result = _decode(model, cfg, params, prompts, lengths, drafter, max_new, eos_id)
    assert _rows(result) == expected, drafter
    assert np.all(result.calls <= result.lengths)


def test_eos_inside_a_block_and_length_mid_block(uneven_prompts):
  """A model whose heads draft perfectly: blocks of 4 get accepted whole, so EOS and the length
  limit fall inside blocks. Output must still stop exactly where plain decoding stops."""
  model, cfg, params = _random_model(scale=0.0)  # Untrained heads: every head equals head 1...
  prompts, lengths = uneven_prompts
  # ... so the draft repeats the next token h times; choose EOS among the produced tokens.
  ar = _decode(model, cfg, params, prompts, lengths, drafters.NoDraft(), 21)
  eos_id = int(ar.tokens[0, 5])
  expected = [_naive_greedy(model, params, prompts[b, :lengths[b]], 21, eos_id)
              for b in range(len(lengths))]
  for max_new in (21, 6):
    bpd = _decode(model, cfg, params, prompts, lengths, drafters.TopOneDrafter(4), max_new,
                  eos_id, record_topk=2)
    assert _rows(bpd) == [e[:max_new] for e in expected]
  assert np.any(bpd.records.kept > 1), "test needs multi-token blocks"


def test_batch_rows_independent(random_model, uneven_prompts):
  model, cfg, params = random_model
  prompts, lengths = uneven_prompts
  batched = _rows(_decode(model, cfg, params, prompts, lengths, drafters.TopOneDrafter(4), 17))
  for b in range(len(lengths)):
    single = _decode(model, cfg, params, prompts[b:b + 1, :lengths[b]], lengths[b:b + 1],
                     drafters.TopOneDrafter(4), 17)
    assert _rows(single)[0] == batched[b]


def test_ar_block_efficiency_is_one_and_oracle_k1_matches_bpd(random_model, uneven_prompts):
  model, cfg, params = random_model
  prompts, lengths = uneven_prompts
  ar = _decode(model, cfg, params, prompts, lengths, drafters.NoDraft(), 20)
  assert analysis.block_efficiency(ar.lengths, ar.calls) == 1.0
  bpd = _decode(model, cfg, params, prompts, lengths, drafters.TopOneDrafter(4), 20,
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


def _joint_counts(tokens, vocab):
  idx = tokens[:, 0] * vocab + tokens[:, 1]
  return np.bincount(idx, minlength=vocab * vocab)


def _exact_joint(model, params, prompt, vocab, config):
  """Exact p(t1, t2 | prompt) under the sampling distribution, by enumeration."""
  seqs = jnp.array([list(prompt) + [a] for a in range(vocab)])
  logits, _ = model.apply({"params": params}, seqs, jnp.broadcast_to(jnp.arange(seqs.shape[1]),
                                                                     seqs.shape))
  p2 = jax.nn.softmax(sampling.processed_logits(logits[:, -1, 0], config), -1)   # [V, V]
  p1 = jax.nn.softmax(sampling.processed_logits(logits[0, -2, 0], config), -1)   # [V]
  return np.asarray(p1[:, None] * p2).reshape(-1)


def _chi2_pvalue(counts, probs):
  probs, counts = np.asarray(probs, np.float64), np.asarray(counts, np.float64)
  keep = probs * counts.sum() >= 5          # Pool cells with small expectation.
  obs = np.append(counts[keep], counts[~keep].sum())
  exp = np.append(probs[keep], probs[~keep].sum())
  obs, exp = obs[exp > 0], exp[exp > 0]
  exp = exp / exp.sum() * obs.sum()
  return stats.chisquare(obs, exp).pvalue


def _sample_first_two(model, cfg, params, prompt, drafter, config, n, decode_fn=None):
  prompts = np.tile(np.asarray(prompt)[None], (n, 1))
  lengths = np.full((n,), len(prompt))
  if decode_fn is None:
    return _decode(model, cfg, params, prompts, lengths, drafter, 3, config=config,
                   rng=jax.random.PRNGKey(42)).tokens[:, :2]
  return np.asarray(decode_fn(prompts, lengths).tokens[:, :2])


def test_lossless_sampling_chi_square():
  """BPD sampling draws (t1, t2) from exactly the model's distribution; a broken acceptance
  rule (resampling from the full distribution after a rejection) is detected by the same test."""
  vocab = 8
  model, cfg, params = _random_model(vocab_size=vocab, h=3, seed=3, scale=0.1)
  config = sampling.SamplingConfig(temperature=1.0)
  prompt = [1, 5, 2]
  probs = _exact_joint(model, params, prompt, vocab, config)
  n = 20000
  ar = _sample_first_two(model, cfg, params, prompt, drafters.NoDraft(), config, n)
  bpd_drafter = drafters.TopOneDrafter(3)
  bpd = _sample_first_two(model, cfg, params, prompt, bpd_drafter, config, n)
  p_ar = _chi2_pvalue(_joint_counts(ar, vocab), probs)
  p_bpd = _chi2_pvalue(_joint_counts(bpd, vocab), probs)
  assert p_ar > 1e-3 and p_bpd > 1e-3, (p_ar, p_bpd)

  true_accept = verify.accept

  def broken_accept(draft, logits, config, rng):
    # Wrong: after a rejection, draws from the full distribution (the rejected token can come
    # back), which over-weights draft tokens.
    num_kept, _ = true_accept(draft, logits, config, rng)
    logp = jax.nn.log_softmax(sampling.processed_logits(logits, config), -1)
    last = jnp.take_along_axis(logp, (num_kept - 1)[:, None, None], axis=1)[:, 0]
    return num_kept, jax.random.categorical(jax.random.fold_in(rng, 1), last).astype(jnp.int32)

  def broken_decode(prompts, lengths):
    verify.accept = broken_accept
    try:
      return jax.jit(lambda p, l: loop.decode(
          loop.model_fns(model), params, p, l,
          cache_lib.init_for_model(cfg, p.shape[0], p.shape[1] + 6), bpd_drafter,
          max_new_tokens=3, eos_id=None, sampling_config=config,
          rng=jax.random.PRNGKey(42)))(jnp.asarray(prompts), jnp.asarray(lengths))
    finally:
      verify.accept = true_accept

  broken = _sample_first_two(model, cfg, params, prompt, bpd_drafter, config, n, broken_decode)
  assert _chi2_pvalue(_joint_counts(broken, vocab), probs) < 1e-6


def test_top_k_top_p_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  top2 = jax.nn.softmax(sampling.processed_logits(logits, sampling.SamplingConfig(1.0, top_k=2)))
  np.testing.assert_allclose(top2[0], [0.625, 0.375, 0, 0], atol=1e-6)
  nucleus = jax.nn.softmax(sampling.processed_logits(logits, sampling.SamplingConfig(1.0, top_p=0.8)))
  np.testing.assert_allclose(nucleus[0], [0.625, 0.375, 0, 0], atol=1e-6)
  nucleus = jax.nn.softmax(sampling.processed_logits(logits, sampling.SamplingConfig(1.0, top_p=0.81)))
  np.testing.assert_allclose(nucleus[0], [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], atol=1e-6)


def test_pbest_paths_equal_brute_force():
  import itertools  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  logp = rng.randn(2, 3, 4).astype(np.float32)   # Continuous scores: no ties.
  ranks, scores = jax.device_get(drafters.pbest_paths(jnp.asarray(logp), 7))
  for b in range(2):
    paths = sorted(itertools.product(range(4), repeat=3),
                   key=lambda r: (-sum(logp[b, i, j] for i, j in enumerate(r)), r))[:7]
    assert [tuple(r) for r in ranks[b]] == paths
    np.testing.assert_allclose(scores[b], [sum(logp[b, i, j] for i, j in enumerate(r))
                                           for r in paths], rtol=1e-6)
  with pytest.raises(ValueError, match="exceeds"):
    drafters.pbest_paths(jnp.asarray(logp), 65)


def test_pbest_drafts_accept_at_least_bpd(random_model, uneven_prompts):
  """The p chains include BPD's top-1 chain, so from the same position (the first call after
  prefill) they keep at least as many tokens; outputs are identical."""
  model, cfg, params = random_model
  prompts, lengths = uneven_prompts
  bpd = _decode(model, cfg, params, prompts, lengths, drafters.TopOneDrafter(4), 20,
                record_topk=1)
  pbest = _decode(model, cfg, params, prompts, lengths, drafters.PBestDrafter(4, k=4, p=8), 20,
                  record_topk=1)
  assert _rows(pbest) == _rows(bpd)
  assert np.all(pbest.records.kept[0] >= bpd.records.kept[0])


def test_local_rescoring_alpha_zero_is_bpd_and_output_is_exact(random_model, uneven_prompts):
  from bpdjax.decoding import rescoring  # pylint: disable=g-import-not-at-top
  model, cfg, params = random_model
  prompts, lengths = uneven_prompts
  rescorer, rcfg, rparams = _random_model(h=1, seed=7)
  max_new = 20
  cache_len = prompts.shape[1] + max_new + 4

  def local(alpha):
    drafter = rescoring.LocalRescoreDrafter(
        draft_len=4, k=4, alpha=alpha, rescorer=loop.model_fns(rescorer),
        cache_init=functools.partial(cache_lib.init_for_model, rcfg), cache_len=cache_len)
    return jax.device_get(loop.jit_decode(
        loop.model_fns(model), params, jnp.asarray(prompts), jnp.asarray(lengths),
        jax.random.PRNGKey(0), rparams, drafter=drafter, max_new_tokens=max_new, eos_id=None,
        sampling_config=sampling.SamplingConfig(), record_topk=2, cache_len=cache_len,
        cache_init=functools.partial(cache_lib.init_for_model, cfg)))

  bpd = _decode(model, cfg, params, prompts, lengths, drafters.TopOneDrafter(4), max_new,
                record_topk=2)
  zero = local(0.0)
  np.testing.assert_array_equal(zero.records.drafts, bpd.records.drafts)
  assert _rows(zero) == _rows(bpd) and np.array_equal(zero.calls, bpd.calls)
  for alpha in (0.5, 1.0):
    refined = local(alpha)
    assert _rows(refined) == _rows(bpd)
    changed = np.any(refined.records.drafts != bpd.records.drafts)
  assert changed, "the rescorer never changed a draft: the test is vacuous"
  with pytest.raises(ValueError, match="alpha"):
    rescoring.LocalRescoreDrafter(4, 4, 1.5, None, None, 10)
