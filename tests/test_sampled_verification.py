"""Sampling through every drafting method is exact in distribution: chi-square of the first
tokens against the enumerated distribution of a small-vocabulary model, for chains (bpd with
the token-wise and the block rule, local, ngram) and trees (pbest_0gram, medusa, auto's tree
candidate, pbest_ngram), at temperature 1 and at 0.7 with top-p 0.9; a broken recursive rule
and Medusa's (lossy) typical acceptance are caught by the same test; bad settings are errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpdjax.decoding import methods
from bpdjax.decoding import model_fns
from bpdjax.decoding import sampling
from bpdjax.decoding import verify
from bpdjax.decoding.drafters import heads
from bpdjax.decoding.drafters import local
from bpdjax.decoding.drafters import medusa
from bpdjax.decoding.drafters import ngram
from bpdjax.ngram import tables as ngram_tables
from tests import helpers

VOCAB = 8
PROMPT = [1, 5, 2]
CONFIGS = (sampling.SamplingConfig(temperature=1.0),
           sampling.SamplingConfig(temperature=0.7, top_p=0.9))


@pytest.fixture(scope="module")
def small_model():
  """h = 3 heads close to head 1 (scale 0.1): drafts get accepted and rejected."""
  return helpers.random_model(vocab_size=VOCAB, h=3, seed=3, scale=0.1)


def _drafters(cfg):
  rescorer, _, rparams = helpers.random_model(vocab_size=VOCAB, h=1, seed=7)
  return {
      "bpd_block": (heads.TopOneDrafter(3), None, "block"),
      "pbest_0gram": (heads.PBestDrafter(3, k=3, p=4), None, "tokenwise"),
      "medusa": (medusa.MedusaTreeDrafter(3, k=3, tree_size=10), None, "tokenwise"),
      "local": (local.LocalRescoreDrafter(draft_len=3, k=3, alpha=0.5,
                                          rescorer=model_fns.TransformerFns(rescorer)),
                rparams, "tokenwise"),
      # Chains cost 9, the 8-node tree 1: auto verifies its tree candidate every step.
      "auto_tree": (methods.build("auto", cfg, costs="9,9,9,1", tree_nodes="8", k=3).drafter,
                    None, "tokenwise"),
  }


@pytest.mark.parametrize("name", ["bpd_block", "pbest_0gram", "medusa",
                                  "local", "auto_tree"])
def test_first_three_tokens_exact(small_model, name):
  model, cfg, params = small_model
  drafter, drafter_params, rule = _drafters(cfg)[name]
  for config in CONFIGS:
    config = sampling.SamplingConfig(config.temperature, config.top_k, config.top_p, rule)
    helpers.assert_exact_in_distribution(model, params, PROMPT, VOCAB, drafter, config, 3,
                                         drafter_params=drafter_params)


def test_ngram_methods_exact(lms):
  """ngram (a rescored chain) and pbest_ngram (a tree of rescored chains): first two tokens."""
  vocab = helpers.NGRAM_VOCAB
  model, _, params = helpers.random_model(vocab_size=vocab, h=3, seed=2, scale=0.1)
  tables = ngram_tables.build_tables(lms[3][1])
  for p in (1, 4):
    drafter = ngram.NgramPBestDrafter(3, k=3, p=p, alpha=0.5, order=3)
    for config in CONFIGS:
      helpers.assert_exact_in_distribution(model, params, PROMPT, vocab, drafter, config, 2,
                                           drafter_params=tables)


def test_tree_drafts_are_accepted(small_model):
  """The chi-square tests are not vacuous: with sampling the trees keep draft tokens, beyond
  the first child (the recursive rule does try later children)."""
  model, _, params = small_model
  drafter = heads.PBestDrafter(3, k=3, p=4)
  out = helpers.decode(model, params, np.tile(np.asarray(PROMPT)[None], (64, 1)),
                       np.full((64,), 3), drafter, 12, config=CONFIGS[0], record_topk=1)
  assert np.sum(out.calls) < np.sum(out.lengths)
  primary = out.records.drafts[:, :, 1]                                           # [I, B]
  kept = out.records.kept
  seq = out.tokens
  # Some call kept a first token other than the primary draft's: a later child was accepted.
  accepted_other = False
  for i in range(kept.shape[0]):
    for b in range(seq.shape[0]):
      if kept[i, b] >= 2:
        pos = 1 + int(np.sum(kept[:i, b]))
        accepted_other |= bool(seq[b, pos] != primary[i, b]) if pos < seq.shape[1] else False
  assert accepted_other


def test_broken_recursive_rule_is_caught(small_model, monkeypatch):
  """Not removing a rejected child from the residual over-weights the drafted tokens; the same
  chi-square test rejects it."""
  model, _, params = small_model
  drafter = heads.PBestDrafter(3, k=3, p=4)
  config = CONFIGS[0]
  monkeypatch.setattr(verify, "remove_rejected", lambda residual, token, rejected: residual)
  probs = helpers.exact_first_tokens(model, params, PROMPT, VOCAB, config, 2)
  got = helpers.sample_first_tokens(model, params, PROMPT, drafter, config, 20000, 2,
                                    fresh_jit=True)
  assert helpers.chi2_pvalue(helpers.first_token_counts(got, VOCAB), probs) < 1e-6


def test_block_rule_accepts_as_many_as_tokenwise():
  """For a deterministic draft block verification's accepted length has the token-wise
  rule's distribution (P(keep >= i) = product of the first i draft probabilities)."""
  rng = np.random.default_rng(0)
  b, l, v = 40000, 4, 5
  logits = jnp.asarray(np.broadcast_to(rng.normal(size=(1, l, v)) * 1.5, (b, l, v)))
  draft = jnp.asarray(np.broadcast_to(rng.integers(0, v, (1, l)), (b, l)), jnp.int32)
  config = sampling.SamplingConfig(temperature=1.0)
  probs = np.asarray(jax.nn.softmax(logits[0], -1))
  w = np.cumprod([probs[j, int(draft[0, j + 1])] for j in range(l - 1)])
  for rule in (verify.accept_chain, verify.accept_block):
    kept, _ = rule(draft, logits, config, jax.random.PRNGKey(1))
    tail = [float(np.mean(np.asarray(kept) >= i + 1)) for i in range(1, l)]
    np.testing.assert_allclose(tail, w, atol=0.01)


def test_typical_acceptance_is_lossy_and_caught(small_model):
  """Medusa's typical acceptance (opt-in) accepts drafts the model would rarely sample: the
  chi-square test tells its output from the model's distribution."""
  model, _, params = small_model
  config = sampling.SamplingConfig(temperature=1.0, acceptance="typical_lossy")
  assert not config.lossless and CONFIGS[0].lossless
  probs = helpers.exact_first_tokens(model, params, PROMPT, VOCAB, config, 2)
  got = helpers.sample_first_tokens(model, params, PROMPT, heads.TopOneDrafter(3), config,
                                    20000, 2)
  assert helpers.chi2_pvalue(helpers.first_token_counts(got, VOCAB), probs) < 1e-6


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=1.0, top_p=0.0), "top_p"), (dict(temperature=1.0, top_p=1.5), "top_p"),
    (dict(temperature=1.0, top_k=-1), "top_k"), (dict(temperature=1.0, top_k=VOCAB + 1), "top_k"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=0.0, acceptance="typical_lossy"), "typical_lossy.*temperature > 0"),
    (dict(temperature=1.0, acceptance="blockwise"), "acceptance must be one of")])
def test_bad_sampling_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sampling.SamplingConfig(**kwargs).validate(VOCAB)


def test_report_distribution_check_tells_lossy_from_lossless(small_model):
  """decode.py's distribution check (eval/distribution.py) on 600 samples of 6 tokens: the
  lossless rules' mean log q is within 3.5 standard errors of ar's (paired; -2.5 here, -1.7 at
  4,000 samples: noise) and their second-token histograms are as near the model's exact
  distribution as ar's; Medusa's typical acceptance, which keeps the heads' likeliest token,
  is far from it."""
  from bpdjax.eval import distribution  # pylint: disable=g-import-not-at-top
  model, _, params = small_model
  n, num = 600, 6
  prompts = [np.asarray(PROMPT, np.int32)] * n
  stats = {}
  for name, drafter, rule in (("ar", heads.NoDraft(), "tokenwise"),
                              ("bpd", heads.TopOneDrafter(3), "tokenwise"),
                              ("bpd_block", heads.TopOneDrafter(3), "block"),
                              ("typical", heads.TopOneDrafter(3), "typical_lossy")):
    config = sampling.SamplingConfig(temperature=1.0, acceptance=rule)
    out = helpers.sample_first_tokens(model, params, PROMPT, drafter, config, n, num)
    stats[name] = distribution.score(model, params, prompts, list(out), config)
  summary = {k: distribution.summarize(v, None if k == "ar" else stats["ar"])
             for k, v in stats.items()}
  for lossless in ("bpd", "bpd_block"):
    assert abs(summary[lossless]["logprob_z_vs_ar"]) < 3.5, summary
    assert summary[lossless]["second_token_tv"] < 2 * summary["ar"]["second_token_tv"] + 0.02
  assert summary["typical"]["second_token_tv"] > 5 * summary["ar"]["second_token_tv"], summary
  assert "logprob_z_vs_ar" not in summary["ar"]
  with pytest.raises(ValueError, match="temperature > 0"):
    distribution.score(model, params, prompts[:1], [out[0]], sampling.SamplingConfig())
