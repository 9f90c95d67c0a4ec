"""Heads that read the tokens drafted before them (sequential heads, the Markov correction):
the heads condition as documented, their chains and trees decode exactly (greedy equal to plain
decoding for batch 1 and uneven batches, EOS and the length limit mid-block; sampling exact in
distribution, a broken rule caught), every existing method decodes exactly with them, and bad
settings are errors before anything is compiled."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpdjax import configuration
from bpdjax import heads as heads_lib
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.decoding import sampling
from bpdjax.decoding import timing
from bpdjax.decoding import verify
from tests import helpers
from bpdjax.configs import tiny

MAX_NEW = 20


def conditioned_model(head_type="sequential", markov_rank=0, vocab_size=64, h=4, seed=0,
                      scale=0.3):
  """(model, config, params): a small random Transformer whose heads read earlier drafts."""
  model, cfg, params = helpers.random_model(vocab_size=vocab_size, h=h, seed=seed, scale=scale,
                                            head_type=head_type, markov_rank=markov_rank)
  for name in params:   # A correction as small as trained ones are, so drafts get accepted.
    if name.endswith("_markov"):
      params[name] = dict(params[name], vocab_factors=0.1 * params[name]["vocab_factors"])
  return model, cfg, params


KINDS = {"sequential": dict(head_type="sequential", scale=0.1, seed=1),
         "markov": dict(markov_rank=4, scale=0.1)}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind_model(request):
  return request.param, conditioned_model(**KINDS[request.param])


def _hidden(model, params, tokens):
  return model.apply({"params": params}, tokens, jnp.arange(tokens.shape[1])[None],
                     method=model.hidden_states)[0]


def test_heads_read_the_tokens_before_them(kind_model):
  """Head i's logits change with the tokens before it, not with later ones; without tokens
  the heads read their own argmax chain; training's view reads the data's next tokens."""
  _, (model, cfg, params) = kind_model
  tokens = jnp.asarray([[3, 9, 27, 17, 41, 5]])
  x = _hidden(model, params, tokens)
  following = heads_lib.following_tokens(tokens, cfg.num_heads_bpd - 1)
  np.testing.assert_array_equal(following[0, 1], [27, 17, 41])
  np.testing.assert_array_equal(following[0, 4], [5, 0, 0])
  logits = model.apply({"params": params}, x, 0, 4, following, method=model.head_logits)
  changed = following.at[:, :, 1].add(1)               # The token before head 3.
  other = model.apply({"params": params}, x, 0, 4, changed, method=model.head_logits)
  np.testing.assert_array_equal(logits[:, :, :2], other[:, :, :2])
  if cfg.head_type == "sequential":
    assert not np.allclose(logits[:, :, 3], other[:, :, 3])    # Head 4 reads it too.
  assert not np.allclose(logits[:, :, 2], other[:, :, 2])
  full, _ = model.apply({"params": params}, tokens, jnp.arange(6)[None])
  np.testing.assert_allclose(full, logits, rtol=1e-5, atol=1e-5)
  chain = jnp.argmax(logits[:, :, 0], -1)[..., None]
  for i in range(1, 3):
    step = model.apply({"params": params}, x, i, i + 1, chain, method=model.head_logits)
    chain = jnp.concatenate([chain, jnp.argmax(step[:, :, 0], -1)[..., None]], -1)
  greedy = model.apply({"params": params}, x, 0, 4, chain, method=model.head_logits)
  default = model.apply({"params": params}, x, 1, 4, method=model.head_logits)
  np.testing.assert_allclose(default, greedy[:, :, 1:], rtol=1e-5, atol=1e-5)


def test_markov_candidates_score_the_best_tokens_only():
  """markov_candidates=k: each head's k best uncorrected tokens get the full correction's
  logits, every other token -inf; k = V is the full correction."""
  model, cfg, params = conditioned_model(markov_rank=4, scale=0.1)
  tokens = jnp.asarray([[3, 9, 27, 17, 41, 5]])
  x = _hidden(model, params, tokens)
  following = heads_lib.following_tokens(tokens, cfg.num_heads_bpd - 1)
  full = model.apply({"params": params}, x, 1, 4, following, method=model.head_logits)
  uncorrected_params = {n: (dict(p, vocab_factors=0 * p["vocab_factors"])
                            if n.endswith("_markov") else p) for n, p in params.items()}
  uncorrected = model.apply({"params": uncorrected_params}, x, 1, 4, following,
                            method=model.head_logits)
  every = model.apply({"params": params}, x, 1, 4, following, cfg.vocab_size,
                      method=model.head_logits)
  np.testing.assert_allclose(every, full, rtol=1e-5, atol=1e-5)
  k = 5
  some = model.apply({"params": params}, x, 1, 4, following, k, method=model.head_logits)
  best = np.argsort(-np.asarray(uncorrected), axis=-1)[..., :k]
  scored = np.isfinite(np.asarray(some))
  assert (scored.sum(-1) == k).all()
  np.testing.assert_array_equal(np.sort(np.nonzero(scored)[-1].reshape(best.shape), -1),
                                np.sort(best, -1))
  np.testing.assert_allclose(np.asarray(some)[scored], np.asarray(full)[scored], rtol=1e-5,
                             atol=1e-5)
  assert not np.allclose(full, uncorrected)         # The correction is there to score.


def _methods(kind, cfg):
  """The kind's chain and tree, and auto driving each (flat costs: it drafts); with sequential
  heads also every existing head method."""
  tree = dict(k=3, tree_size=12)
  out = {kind: methods.build(kind, cfg),
         f"{kind}_tree": methods.build(f"{kind}_tree", cfg, **tree)}
  for name in (kind, f"{kind}_tree"):
    flat = ",".join("1" * len(out[name].drafter.candidates))
    out[f"auto over {name}"] = methods.build(
        "auto", cfg, drafter=name, costs=flat, method_options={name: methods.make_options(
            name, **(tree if name.endswith("_tree") else {}))})
  if kind == "markov":      # The correction on each head's best tokens only.
    out["markov (markov_candidates=4)"] = methods.build("markov", cfg, markov_candidates=4)
    out["markov_tree (markov_candidates=4)"] = methods.build("markov_tree", cfg, **tree,
                                                             markov_candidates=4)
  if kind == "sequential":
    for name, values in (("bpd", {}), ("pbest_0gram", dict(k=3, p=4)),
                         ("medusa", dict(k=3, tree_size=12))):
      out[name] = methods.build(name, cfg, **values)
  return out


def test_greedy_equals_plain_decoding(kind_model):
  """Batch 1, and an uneven batch where EOS ends row 0 and the length limit (11, no multiple
  of the blocks) the others, inside blocks."""
  kind, (model, cfg, params) = kind_model
  prompts, lengths = helpers.uneven_prompts()
  limit = 11
  naive, eos, naive_eos = helpers.eos_inside_blocks(model, params, prompts, lengths, MAX_NEW,
                                                    limit)
  for name, built in _methods(kind, cfg).items():
    one = helpers.decode(model, params, prompts[:1, :lengths[0]], lengths[:1], built.drafter,
                         MAX_NEW, policy=built.policy)
    assert helpers.rows(one) == naive[:1], name
    if kind in name:
      assert one.calls[0] < MAX_NEW, name                       # Some drafts were kept.
    out = helpers.decode(model, params, prompts, lengths, built.drafter, limit, eos_id=eos,
                         policy=built.policy)
    assert helpers.rows(out) == naive_eos, name


def test_recorded_decode_is_exact(kind_model):
  """With the analyses recorded the drafters still read their own conditioned heads."""
  kind, (model, cfg, params) = kind_model
  prompts, lengths = helpers.uneven_prompts()
  naive = [helpers.naive_greedy(model, params, prompts[b, :lengths[b]], MAX_NEW, None)
           for b in range(len(lengths))]
  for name in (kind, f"{kind}_tree"):
    values = dict(k=3, tree_size=12) if name.endswith("_tree") else {}
    drafter = methods.build(name, cfg, **values).drafter
    out = helpers.decode(model, params, prompts, lengths, drafter, MAX_NEW, record_topk=2)
    assert helpers.rows(out) == naive, name


def test_drafting_time_on_a_real_prefill(kind_model):
  """decode.py's drafting-cost column times each drafter's propose on a real prefill
  (timing.propose_ms): heads that read the drafted tokens are called there, from the prefill's
  hidden state (given only head logits, propose failed: decode.py could not run these)."""
  kind, (model, cfg, params) = kind_model
  gen = generator_lib.Generator(model, params, eos_id=None)
  prompts, lengths = helpers.uneven_prompts()
  for name in (kind, f"{kind}_tree"):
    values = dict(k=3, tree_size=12) if name.endswith("_tree") else {}
    drafter = methods.build(name, cfg, **values).drafter
    assert timing.propose_ms(gen, drafter, None, np.asarray(prompts), np.asarray(lengths),
                             repetitions=2) > 0, name


VOCAB = 8
PROMPT = [1, 5, 2]
CONFIGS = (sampling.SamplingConfig(temperature=1.0),
           sampling.SamplingConfig(temperature=0.7, top_p=0.9))


@pytest.fixture(scope="module")
def small_model():
  return conditioned_model("sequential", markov_rank=2, vocab_size=VOCAB, h=3, seed=3,
                           scale=0.1)


@pytest.mark.parametrize("name,candidates", [("sequential", 0), ("sequential_tree", 0),
                                             ("markov_tree", 0), ("markov_tree", 4)])
def test_sampling_exact_in_distribution(small_model, name, candidates):
  model, cfg, params = small_model
  values = dict(k=3, tree_size=10) if name.endswith("_tree") else {}
  if candidates:
    values["markov_candidates"] = candidates
  drafter = methods.build(name, cfg, **values).drafter
  for config in CONFIGS:
    helpers.assert_exact_in_distribution(model, params, PROMPT, VOCAB, drafter, config, 3)


def test_broken_rule_is_caught(small_model, monkeypatch):
  """The same chi-square test rejects the recursive rule without residual removal."""
  model, cfg, params = small_model
  drafter = methods.build("sequential_tree", cfg, k=3, tree_size=10).drafter
  monkeypatch.setattr(verify, "remove_rejected", lambda residual, token, rejected: residual)
  probs = helpers.exact_first_tokens(model, params, PROMPT, VOCAB, CONFIGS[0], 2)
  got = helpers.sample_first_tokens(model, params, PROMPT, drafter, CONFIGS[0], 20000, 2,
                                    fresh_jit=True)
  assert helpers.chi2_pvalue(helpers.first_token_counts(got, VOCAB), probs) < 1e-6


@pytest.mark.parametrize("method,model_fields,values,match", [
    ("sequential", dict(), {}, r"'sequential'.*head_type='ffn'"),
    ("sequential_tree", dict(markov_rank=4), {}, r"'sequential_tree'.*head_type='ffn'"),
    ("markov", dict(head_type="sequential"), {}, r"'markov'.*markov_rank=0"),
    ("markov_tree", dict(), {}, r"'markov_tree'.*markov_rank=0"),
    ("sequential_tree", dict(head_type="sequential"), dict(k=2, tree_size=16),
     r"tree_size=16 is too large for h = 4 heads of top-k=2"),
    ("markov", dict(markov_rank=4), dict(draft_len=5), r"draft_len=5 exceeds"),
    ("markov", dict(markov_rank=4), dict(markov_candidates=-1),
     r"markov_candidates must be 0 \(the whole vocabulary\) or >= 1"),
    ("markov_tree", dict(markov_rank=4), dict(k=3, tree_size=12, markov_candidates=2),
     r"markov_candidates must be 0 .* or >= 3"),
    ("sequential", dict(head_type="sequential"), dict(markov_candidates=8),
     r"markov_candidates=8 limits a Markov correction; this model has markov_rank=0"),
    ("markov", dict(markov_rank=4), dict(markov_candidates=10 ** 6),
     r"markov_candidates=1000000 exceeds the vocabulary"),
])
def test_bad_settings_fail_before_compiling(method, model_fields, values, match):
  """Checked by registry.build on the model's config alone (no weights, nothing compiled)."""
  _, cfg, _ = helpers.random_model(h=4)
  cfg = dataclasses.replace(cfg, **model_fields)
  with pytest.raises(ValueError, match=match):
    methods.build(method, cfg, **values)


def test_bad_markov_rank_in_config():
  config = tiny.get_config()
  config.model.markov_rank = -1
  with pytest.raises(ValueError, match="markov_rank must be >= 0"):
    configuration.validate_model(config.model)
  config.model.markov_rank = 0
  config.model.head_type = "hydra"
  with pytest.raises(ValueError, match="head_type must be one of"):
    configuration.validate_model(config.model)
