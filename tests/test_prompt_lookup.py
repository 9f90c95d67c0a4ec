"""Prompt lookup (the n-gram-from-context drafter): the on-device lookup equals transformers'
rule, its chain and its merge with the heads' tree decode exactly (greedy equal to plain
decoding, batch 1 and uneven batches, EOS and the length limit mid-block; sampling exact in
distribution), and bad settings are errors before anything is compiled."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from bpdjax.decoding import methods
from bpdjax.decoding import sampling
from bpdjax.decoding.drafters import prompt_lookup
from tests import helpers

MAX_NEW = 24


def reference_lookup(seq, max_ngram, min_ngram, num_tokens):
  """transformers' PLD (candidate_generator.PromptLookupCandidateGenerator): longest n-gram
  first, earliest match first, a match needs a non-empty continuation. Returns (draft, the
  matched n-gram's length or 0, the draft's tokens found)."""
  for g in range(max_ngram, min_ngram - 1, -1):
    if g > len(seq):
      continue
    suffix = seq[-g:]
    for p in range(len(seq) - g):
      if seq[p:p + g] == suffix:
        cont = seq[p + g:p + g + num_tokens]
        return cont + [0] * (num_tokens - len(cont)), g, len(cont)
  return [0] * num_tokens, 0, 0


@pytest.mark.parametrize("max_ngram,min_ngram", [(2, 1), (3, 1), (3, 2), (1, 1)])
def test_lookup_matches_reference(max_ngram, min_ngram):
  rng = np.random.RandomState(max_ngram * 10 + min_ngram)
  rows, lengths = [], []
  for _ in range(64):
    n = int(rng.randint(1, 30))
    rows.append(list(rng.randint(1, 5, n)))       # Small alphabet: many matches.
    lengths.append(n)
  buffer = np.zeros((64, 40), np.int32)
  for b, row in enumerate(rows):
    buffer[b, :len(row)] = row
  got = prompt_lookup.lookup(jnp.asarray(buffer), jnp.asarray(lengths), max_ngram, min_ngram, 5)
  want = list(zip(*[reference_lookup(row, max_ngram, min_ngram, 5) for row in rows]))
  for got_part, want_part in zip(got, want):   # The drafts, matched lengths, tokens found.
    np.testing.assert_array_equal(np.asarray(got_part), want_part)
  assert 0 < np.mean(np.asarray(got[1]) == max_ngram) < 1


def test_history_follows_the_decode():
  """propose puts the model's token after the committed tokens; commit keeps the accepted path."""
  drafter = prompt_lookup.PromptLookupDrafter(num_tokens=3, max_ngram=2)
  state = drafter.start(None, jnp.asarray([[4, 5, 6, 4, 0]]), jnp.asarray([4]), 12)
  nodes, state = drafter.propose(None, state, None, jnp.asarray([5]))
  np.testing.assert_array_equal(nodes, [[5, 6, 4, 5]])           # "4 5" matched at 0.
  state = drafter.commit(None, state, jnp.asarray([[5, 6, 9, 0]]), jnp.asarray([2]))
  assert int(state.lengths[0]) == 6
  np.testing.assert_array_equal(state.tokens[0, :6], [4, 5, 6, 4, 5, 6])


def _repetitive_model():
  """A small random model whose greedy output loops (so lookups are accepted)."""
  return helpers.random_model(vocab_size=16, h=4, seed=5, scale=0.3)


DRAFTERS = {
    "prompt_lookup": dict(num_tokens=5),
    "prompt_lookup_3gram": dict(num_tokens=3, max_ngram=3),
    "prompt_lookup_tree": dict(num_tokens=4, k=3, tree_size=10),
}


def _build(name, cfg):
  method = "prompt_lookup" if name == "prompt_lookup_3gram" else name
  return methods.build(method, cfg, **DRAFTERS[name]).drafter


@pytest.mark.parametrize("name", sorted(DRAFTERS))
def test_greedy_equals_plain_decoding(name):
  model, cfg, params = _repetitive_model()
  drafter = _build(name, cfg)
  prompts, lengths = helpers.uneven_prompts(vocab=16)
  limit = 13
  naive, eos, naive_eos = helpers.eos_inside_blocks(model, params, prompts, lengths, MAX_NEW,
                                                    limit)
  one = helpers.decode(model, params, prompts[:1, :lengths[0]], lengths[:1], drafter, MAX_NEW)
  assert helpers.rows(one) == naive[:1]
  assert one.calls[0] < one.lengths[0]                  # Lookups were accepted.
  out = helpers.decode(model, params, prompts, lengths, drafter, limit, eos_id=eos)
  assert helpers.rows(out) == naive_eos


def _auto_over_lookup(cfg, costs, num_tokens=5):
  options = methods.make_options("prompt_lookup", num_tokens=num_tokens)
  return methods.build("auto", cfg, drafter="prompt_lookup", costs=costs,
                       method_options={"prompt_lookup": options})


def test_auto_picks_lookup_per_step():
  """auto over prompt lookup: greedy equals plain decoding (batch 1; uneven, EOS and the length
  limit inside blocks); it calibrates on the match's n-gram length and draft position, and
  verifies lookups of several lengths and plain steps as the lookups go."""
  model, cfg, params = _repetitive_model()
  built = _auto_over_lookup(cfg, "1,1.1,1.2,1.3,1.4,1.5")
  assert built.drafter.candidates == (1, 2, 3, 4, 5, 6)
  prompts, lengths = helpers.uneven_prompts(vocab=16)
  limit = 13
  naive, eos, naive_eos = helpers.eos_inside_blocks(model, params, prompts, lengths, MAX_NEW,
                                                    limit)
  one = helpers.decode(model, params, prompts[:1, :lengths[0]], lengths[:1], built.drafter,
                       MAX_NEW, policy=built.policy)
  assert helpers.rows(one) == naive[:1]
  chosen = np.asarray(one.stats["chosen"])
  assert np.count_nonzero(chosen[1:]) >= 2 and chosen[0] > 0, chosen
  assert one.calls[0] < one.lengths[0]
  out = helpers.decode(model, params, prompts, lengths, built.drafter, limit, eos_id=eos,
                       policy=built.policy)
  assert helpers.rows(out) == naive_eos


def test_lookup_confidence():
  """What auto calibrates on: the matched n-gram's length over max_ngram for the tokens found,
  0 past them and for a row without a match (whose every candidate then expects 1 token)."""
  drafter = prompt_lookup.PromptLookupDrafter(num_tokens=4, max_ngram=2)
  state = drafter.start(None, jnp.asarray([[4, 5, 6, 4, 0], [1, 2, 3, 7, 0], [3, 4, 9, 0, 0]]),
                        jnp.asarray([4, 4, 3]), 12)
  nodes, state = drafter.propose(None, state, None, jnp.asarray([5, 8, 3]))
  confidence = drafter.confidence(state, None, None, nodes)
  np.testing.assert_array_equal(nodes[0], [5, 6, 4, 5, 0])       # "4 5" matched: 3 found.
  np.testing.assert_array_equal(nodes[2], [3, 4, 9, 3, 0])       # "3" matched: 3 found.
  np.testing.assert_allclose(confidence, [[1, 1, 1, 1, 0], [1, 0, 0, 0, 0],
                                          [1, 0.5, 0.5, 0.5, 0]])


VOCAB = 8
PROMPT = [1, 5, 2, 1, 5]
CONFIGS = (sampling.SamplingConfig(temperature=1.0),
           sampling.SamplingConfig(temperature=0.7, top_p=0.9))


@pytest.mark.parametrize("name", ["prompt_lookup", "prompt_lookup_tree", "auto"])
def test_sampling_exact_in_distribution(name):
  model, cfg, params = helpers.random_model(vocab_size=VOCAB, h=3, seed=3, scale=0.1)
  if name == "auto":        # Flat costs: it verifies the longest lookup it expects to pay.
    built = _auto_over_lookup(cfg, "1,1,1,1", num_tokens=3)
  else:
    values = dict(num_tokens=3)
    if name == "prompt_lookup_tree":
      values.update(k=3, tree_size=8)
    built = methods.build(name, cfg, **values)
  for config in CONFIGS:
    helpers.assert_exact_in_distribution(model, params, PROMPT, VOCAB, built.drafter, config, 3,
                                         policy=built.policy)


@pytest.mark.parametrize("method,values,model_fields,match", [
    ("prompt_lookup", dict(num_tokens=0), {}, "num_tokens must be >= 1"),
    ("prompt_lookup", dict(max_ngram=1, min_ngram=2), {}, "min_ngram <= max_ngram"),
    ("prompt_lookup", dict(min_ngram=0), {}, "min_ngram <= max_ngram"),
    ("prompt_lookup_tree", dict(k=2, tree_size=16), {}, "tree_size=16 is too large"),
    ("prompt_lookup_tree", {}, dict(num_heads_bpd=1), "merges heads 2..h"),
    # auto needs a draft, and its calibrated chain must be one kind: merged with the heads'
    # tree the primary chain is the lookup's, not the heads' that auto calibrates there.
    ("auto", dict(drafter="bpd", costs="1", method_options={
        "bpd": methods.make_options("bpd", draft_len=1)}), {}, "this drafter drafts nothing"),
    ("auto", dict(drafter="prompt_lookup", costs="1,1"), {}, "2 costs given for 11 candidate"),
    ("auto", dict(drafter="prompt_lookup_tree", costs="1,1"), {}, "must read every head"),
])
def test_bad_settings(method, values, model_fields, match):
  _, cfg, _ = helpers.random_model(h=4)
  cfg = dataclasses.replace(cfg, **model_fields)
  with pytest.raises(ValueError, match=match):
    methods.build(method, cfg, **values)
