"""Shared test helpers (tests import this module, never each other)."""
import functools
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from bpdjax import cache as cache_lib
from bpdjax import model as model_lib
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import loop
from bpdjax.decoding import model_fns
from bpdjax.decoding import recording
from bpdjax.decoding import sampling
from bpdjax.decoding.policies import fixed

# KenLM n-gram LMs of the `lms` fixture (conftest.py): ids 0..NGRAM_CORPUS_V-1 of a Markov-chain
# corpus, read for a model vocabulary of NGRAM_VOCAB (the other ids are <unk> to the LM).
NGRAM_VOCAB = 16
NGRAM_CORPUS_V = 12
# lmplz -S for the tests' tiny corpora: the default (20% of RAM) spends ~3 s allocating per LM.
LMPLZ_MEMORY = "64M"


def xla_flags(num_devices: int) -> str:
  """XLA_FLAGS for a subprocess on `num_devices` simulated CPU devices, keeping the suite's
  own flags (tests/conftest.py)."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}"


def random_model(vocab_size=64, h=4, seed=0, scale=0.3, head_type="ffn", markov_rank=0):
  """(model, config, params) of a small random Transformer whose heads disagree."""
  cfg = model_lib.TransformerConfig(
      vocab_size=vocab_size, num_layers=2, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
      mlp_dim=64, max_len=128, num_heads_bpd=h, head_hidden_dim=32, head_type=head_type,
      markov_rank=markov_rank)
  model = model_lib.Transformer(cfg)
  params = _random_params(model, jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 1), scale)
  return model, cfg, params


@functools.partial(jax.jit, static_argnums=0)
def _random_params(model, init_key, noise_key, scale):
  """model.init, then every leaf perturbed: heads start as copies of the next-token head, and
  disagree after it as trained heads do. Jitted: run eagerly, init and the per-leaf noise
  compile one XLA program per operation and shape (about 5 s of a test module's start)."""
  tok = jnp.zeros((1, 4), jnp.int32)
  params = nn.meta.unbox(model.init(init_key, tok, tok)["params"])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(noise_key, len(leaves))
  return jax.tree.unflatten(
      tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@functools.partial(jax.jit, static_argnums=0)
def full_forward(model, params, tokens):
  """Logits [B, L, h, V] of every head at every position of tokens [B, L] (jitted: run eagerly,
  a forward compiles one XLA program per operation and shape)."""
  return model.apply({"params": params}, tokens, jnp.arange(tokens.shape[1])[None])[0]


def naive_greedy(model, params, prompt, n, eos_id):
  """Plain greedy decoding by full re-computation: no cache, no drafts. The sequence sits in a
  fixed-size buffer (causal attention makes the padding after it irrelevant)."""
  seq, out = list(prompt), []
  for _ in range(n):
    buffer = np.zeros((1, 64), np.int32)
    buffer[0, :len(seq)] = seq
    token = int(jnp.argmax(full_forward(model, params, jnp.asarray(buffer))[0, len(seq) - 1, 0]))
    out.append(token)
    seq.append(token)
    if token == eos_id:
      break
  return out


def _decode_with_new_cache(params, prompts, lengths, rng, drafter_params, *, fns, settings,
                           cache_len, model_config):
  cache = cache_lib.init_for_model(model_config, prompts.shape[0], cache_len)
  return loop.run(fns, params, prompts, lengths, cache, drafter_params, settings, rng)


_jit_decode = jax.jit(_decode_with_new_cache,
                      static_argnames=("fns", "settings", "cache_len", "model_config"))


def decode(model, params, prompts, lengths, drafter, max_new, eos_id=None,
           config=sampling.SamplingConfig(), rng=None, record_topk=0, drafter_params=None,
           fns=None, cache_len=None, policy=fixed.FIXED, fresh_jit=False):
  """The decode loop, jitted, on a batch (numpy in, host DecodeResult out); fns defaults to the
  model's own callbacks, cache_len to what the decode needs; fresh_jit traces anew (a test that
  patches a rule must not reuse a compiled program). record_topk > 0 records each
  iteration's kept length and draft, and each head's top-k at every output slot (the driver's
  recording.py), as records.kept / drafts / topk / entropy."""
  prompts = np.asarray(prompts)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  settings = loop.Settings(drafter, max_new, eos_id, config, record_steps=record_topk > 0,
                           policy=policy)
  kwargs = dict(fns=fns or model_fns.TransformerFns(model), settings=settings,
                cache_len=cache_len or prompts.shape[1] + max_new + loop.block_size(drafter),
                model_config=model.config)
  fn = (jax.jit(functools.partial(_decode_with_new_cache, **kwargs)) if fresh_jit else
        functools.partial(_jit_decode, **kwargs))
  out = jax.device_get(fn(params, jnp.asarray(prompts, jnp.int32),
                          jnp.asarray(lengths, jnp.int32), rng, drafter_params))
  if record_topk:
    gen = generator_lib.Generator(model, params, eos_id)
    topk, entropy = recording.head_records(gen, prompts.astype(np.int32), np.asarray(lengths),
                                           out.tokens, out.lengths, record_topk)
    out = out.replace(records=types.SimpleNamespace(kept=out.records.kept,
                                                    drafts=out.records.drafts, topk=topk,
                                                    entropy=entropy))
  return out


def eos_inside_blocks(model, params, prompts, lengths, max_new, limit):
  """Plain greedy references for an exactness test whose EOS and length limit fall inside
  blocks: (naive [rows of max_new tokens], eos: a token row 0 makes first at a position
  3..limit-2 that another row lacks within the limit, naive_eos [rows decoded with that EOS
  and `limit` tokens]); row 0 then ends at the EOS and the others at the limit."""
  naive = [naive_greedy(model, params, prompts[b, :lengths[b]], max_new, None)
           for b in range(len(lengths))]
  at = next(i for i in range(3, limit - 1) if naive[0][i] not in naive[0][:i]
            and any(naive[0][i] not in row[:limit] for row in naive[1:]))
  eos = int(naive[0][at])
  naive_eos = [naive_greedy(model, params, prompts[b, :lengths[b]], limit, eos)
               for b in range(len(lengths))]
  assert len(naive_eos[0]) == at + 1 < limit == max(len(r) for r in naive_eos)
  return naive, eos, naive_eos


def rows(result):
  return [list(result.tokens[b, :result.lengths[b]]) for b in range(result.tokens.shape[0])]


def uneven_prompts(vocab=64):
  """(prompts [5, 9] right-padded, lengths [5]) of uneven lengths 9, 3, 1, 6, 9."""
  rng = np.random.RandomState(0)
  lengths = np.array([9, 3, 1, 6, 9])
  prompts = rng.randint(3, vocab, (5, 9)) * (np.arange(9)[None] < lengths[:, None])
  return prompts, lengths


def decode_settings(options=None, **values):
  """eval.settings.DecodeSettings from configs/decode.py's defaults with `values` over them
  (options: {method: {knob: value}})."""
  from bpdjax.eval import settings as settings_lib  # pylint: disable=g-import-not-at-top
  from bpdjax.configs import decode as decode_config  # pylint: disable=g-import-not-at-top
  config = decode_config.get_config()
  config.update(values)
  for method, knobs in (options or {}).items():
    config.options[method].update(knobs)
  return settings_lib.DecodeSettings.from_config(config)


def last_heads(logits):
  """protocol.LastHeads of given logits [B, L-1, V] of heads 2..L (head 1, unused by drafters,
  as zeros in front)."""
  from bpdjax.decoding import protocol  # pylint: disable=g-import-not-at-top
  logits = jnp.asarray(logits)
  return protocol.LastHeads.from_logits(jnp.concatenate([jnp.zeros_like(logits[:, :1]), logits],
                                                        axis=1))


def jit_propose(drafter):
  """jax.jit of drafter.propose taking logits [B, L-1, V] of heads 2..L instead of LastHeads."""
  return jax.jit(lambda params, state, logits, next_token: drafter.propose(
      params, state, last_heads(logits), next_token))


# ------------------------------------------------ distributional exactness (chi-square)
def joint_counts(tokens, vocab):
  """[n, 2] token pairs -> counts of each (t1, t2) cell, [vocab * vocab]."""
  idx = tokens[:, 0] * vocab + tokens[:, 1]
  return np.bincount(idx, minlength=vocab * vocab)


def exact_joint(model, params, prompt, vocab, config):
  """Exact p(t1, t2 | prompt) under the sampling distribution, by enumeration."""
  seqs = jnp.array([list(prompt) + [a] for a in range(vocab)])
  logits = full_forward(model, params, seqs)
  p2 = jax.nn.softmax(sampling.processed_logits(logits[:, -1, 0], config), -1)   # [V, V]
  p1 = jax.nn.softmax(sampling.processed_logits(logits[0, -2, 0], config), -1)   # [V]
  return np.asarray(p1[:, None] * p2).reshape(-1)


def chi2_pvalue(counts, probs):
  probs, counts = np.asarray(probs, np.float64), np.asarray(counts, np.float64)
  keep = probs * counts.sum() >= 5          # Pool cells with small expectation.
  obs = np.append(counts[keep], counts[~keep].sum())
  exp = np.append(probs[keep], probs[~keep].sum())
  obs, exp = obs[exp > 0], exp[exp > 0]
  exp = exp / exp.sum() * obs.sum()
  return stats.chisquare(obs, exp).pvalue


def sample_first_two(model, params, prompt, drafter, config, n, decode_fn=None,
                     drafter_params=None, policy=fixed.FIXED, fresh_jit=False):
  """[n, 2] the first two sampled tokens of n decodes of `prompt` (one batch of n rows)."""
  prompts = np.tile(np.asarray(prompt)[None], (n, 1))
  lengths = np.full((n,), len(prompt))
  if decode_fn is None:
    return decode(model, params, prompts, lengths, drafter, 3, config=config,
                  rng=jax.random.PRNGKey(42), drafter_params=drafter_params,
                  policy=policy, fresh_jit=fresh_jit).tokens[:, :2]
  return np.asarray(decode_fn(prompts, lengths).tokens[:, :2])


@functools.partial(jax.jit, static_argnums=(0, 3))
def _next_token_probs(model, params, seqs, config):
  """[B, V] the sampling distribution of the token after each of seqs [B, L]."""
  logits = full_forward(model, params, seqs)
  return jax.nn.softmax(sampling.processed_logits(logits[:, -1, 0], config), -1)


def exact_first_tokens(model, params, prompt, vocab, config, num):
  """Exact p(t1..t_num | prompt) under the sampling distribution, by enumeration: [vocab**num]
  (cell index t1 * vocab**(num-1) + ... + t_num)."""
  probs = np.ones((1,))
  for n in range(num):
    prefixes = np.array(list(np.ndindex(*(vocab,) * n)), np.int32).reshape(vocab ** n, n)
    seqs = jnp.asarray(np.concatenate([np.tile(np.asarray(prompt)[None], (len(prefixes), 1)),
                                       prefixes], axis=1), jnp.int32)
    step = np.asarray(_next_token_probs(model, params, seqs, config))
    probs = (probs[:, None] * step).reshape(-1)
  return probs


def first_token_counts(tokens, vocab):
  """[n, num] token tuples -> counts per cell [vocab**num] (exact_first_tokens' order)."""
  idx = np.zeros(tokens.shape[0], np.int64)
  for j in range(tokens.shape[1]):
    idx = idx * vocab + tokens[:, j]
  return np.bincount(idx, minlength=vocab ** tokens.shape[1])


def sample_first_tokens(model, params, prompt, drafter, config, n, num, drafter_params=None,
                        fresh_jit=False, policy=fixed.FIXED):
  """[n, num] the first `num` sampled tokens of n decodes of `prompt` (one batch of n rows).
  fresh_jit: trace anew (a test that patches a rule must not reuse a compiled program)."""
  prompts = jnp.asarray(np.tile(np.asarray(prompt)[None], (n, 1)), jnp.int32)
  lengths = jnp.full((n,), len(prompt), jnp.int32)
  kwargs = dict(fns=model_fns.TransformerFns(model),
                settings=loop.Settings(drafter, num + 1, None, config, policy=policy),
                cache_len=len(prompt) + num + 1 + loop.block_size(drafter),
                model_config=model.config)
  fn = (jax.jit(functools.partial(_decode_with_new_cache, **kwargs)) if fresh_jit else
        functools.partial(_jit_decode, **kwargs))
  out = fn(params, prompts, lengths, jax.random.PRNGKey(42), drafter_params)
  return np.asarray(out.tokens[:, :num])


def assert_exact_in_distribution(model, params, prompt, vocab, drafter, config, num,
                                 n=20000, drafter_params=None, policy=fixed.FIXED):
  """Chi-square of the first `num` sampled tokens against the enumerated distribution (p-value
  > 1e-3), and no sample in a cell of probability 0. Returns the p-value."""
  probs = exact_first_tokens(model, params, prompt, vocab, config, num)
  got = sample_first_tokens(model, params, prompt, drafter, config, n, num, drafter_params,
                            policy=policy)
  counts = first_token_counts(got, vocab)
  assert counts[probs == 0].sum() == 0, "sampled a token the distribution excludes"
  pvalue = chi2_pvalue(counts, probs)
  assert pvalue > 1e-3, (drafter, config, pvalue)
  return pvalue
