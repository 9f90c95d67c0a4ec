"""Model and cache: cached decoding, roll back, block masks, packing, variants; head targets.

Tiny shapes and random parameters. The zero-initialised output layers of the heads are perturbed
(and the embedding scaled up) so that every head, and every wrong mask, changes the logits.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpdjax import cache as cache_lib
from bpdjax import losses
from bpdjax import model as model_lib
from bpdjax import partitioning

ATOL = 1e-5   # float32 cached vs uncached; logits are O(5) here, round-off O(1e-6).
BASE = dict(vocab_size=97, num_layers=2, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
            mlp_dim=64, max_len=48, num_heads_bpd=3, head_hidden_dim=48)
CACHE_LEN = 40      # Cache slots S (differs from every sequence length used).
VARIANTS = {  # Paired up to keep compilations few.
    "gqa": {},                                                    # 2 kv heads for 4 heads.
    "mha_gelu": dict(num_kv_heads=4, mlp_activation="gelu"),
    "mqa_untied": dict(num_kv_heads=1, tie_embeddings=False),
    "medusa": dict(head_type="medusa"),
}


def make_config(**overrides) -> model_lib.TransformerConfig:
  return model_lib.TransformerConfig(**{**BASE, **overrides})


def init_params(cfg, seed=0, perturb=True):
  return _init_params(cfg, perturb, jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 1000))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_params(cfg, perturb, init_key, key):
  """Jitted: run eagerly, init compiles one XLA program per operation and shape."""
  tokens = jnp.zeros((1, 4), jnp.int32)
  params = model_lib.Transformer(cfg).init(init_key, tokens, tokens)["params"]
  params = partitioning.strip_boxes(params)
  if not perturb:
    return params

  def perturb_leaf(path, x):
    nonlocal key
    name = jax.tree_util.keystr(path)
    if "embedding" in name:
      return x * 10.0  # std 0.2: logits of order 10, far above float32 round-off.
    if "head_" in name and ("output" in name or "resblock" in name):
      key, sub = jax.random.split(key)
      scale = 1.0 / np.sqrt(x.shape[0]) if x.ndim == 2 else 0.1
      return scale * jax.random.normal(sub, x.shape, x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(perturb_leaf, params)


@functools.partial(jax.jit, static_argnums=0)
def apply(cfg, params, tokens, positions, segment_ids=None, cache=None, block_mask=None):
  return model_lib.Transformer(cfg).apply({"params": params}, tokens, positions, segment_ids,
                                          cache, block_mask)


def chain_logits(cfg, params, tokens):
  """Uncached forward over [B, T] tokens at positions 0..T-1."""
  tokens = jnp.asarray(tokens, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return apply(cfg, params, tokens, positions)[0]


def padded_chain_logits(cfg, params, rows):
  """Uncached forward of up to 6 ragged token lists, right-padded to CACHE_LEN (causal: padding
  after a token cannot change its logits; one shape, so one compilation). Returns
  [6, CACHE_LEN, h, V]; row r is rows[r]."""
  tokens = np.zeros((6, CACHE_LEN), np.int32)
  for r, row in enumerate(rows):
    tokens[r, :len(row)] = row
  return chain_logits(cfg, params, tokens)


def cached_step(cfg, params, cache, tokens, positions=None, block_mask=None):
  tokens = jnp.asarray(tokens, jnp.int32)
  if positions is None:
    positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1])[None, :]
  return apply(cfg, params, tokens, positions, None, cache, block_mask)


def new_cache(cfg, batch):
  return cache_lib.init_for_model(cfg, batch, CACHE_LEN)


def random_tokens(rng, shape, cfg):
  return rng.randint(3, cfg.vocab_size, size=shape).astype(np.int32)


@pytest.fixture(scope="module")
def cfg():
  return make_config()


@pytest.fixture(scope="module")
def params(cfg):
  return init_params(cfg)


# ---------------------------------------------------------------- cached == uncached


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_equals_uncached(variant):
  cfg = make_config(**VARIANTS[variant])
  params = init_params(cfg)
  rng = np.random.RandomState(0)
  tokens = random_tokens(rng, (3, 14), cfg)
  full = chain_logits(cfg, params, tokens)
  cache = new_cache(cfg, 3)
  start = 0
  # Prefill, then steps of different lengths, each committed (fewer distinct lengths, so fewer
  # compilations, for the variants).
  lengths = (4, 1, 3, 2, 4) if variant == "gqa" else (4, 1, 4, 1, 4)
  for length in lengths:
    logits, cache = cached_step(cfg, params, cache, tokens[:, start:start + length])
    np.testing.assert_allclose(logits, full[:, start:start + length], atol=ATOL, rtol=0,
                               err_msg=f"{variant}: block at {start} of length {length}")
    np.testing.assert_array_equal(cache.lengths, start)  # A call does not commit.
    cache = cache_lib.commit(cache, jnp.full((3,), length, jnp.int32))
    start += length


def test_heads_differ(cfg, params):
  logits = chain_logits(cfg, params, random_tokens(np.random.RandomState(1), (2, 6), cfg))
  for i in range(1, cfg.num_heads_bpd):
    assert float(jnp.max(jnp.abs(logits[:, :, i] - logits[:, :, 0]))) > 0.1


def test_cached_per_row_commits(cfg, params):
  """Rows commit different numbers of tokens; each row matches its own uncached forward."""
  rng = np.random.RandomState(2)
  batch = 3
  cache = new_cache(cfg, batch)
  committed = [[] for _ in range(batch)]
  schedule = [(5, [5, 3, 1]), (4, [1, 4, 0]), (1, [1, 0, 1]), (3, [3, 2, 1]), (4, [0, 2, 4]),
              (2, [2, 2, 2])]
  for length, accept in schedule:
    block = random_tokens(rng, (batch, length), cfg)
    logits, cache = cached_step(cfg, params, cache, block)
    ref = padded_chain_logits(cfg, params, [committed[r] + list(block[r]) for r in range(batch)])
    for r in range(batch):
      n = len(committed[r])
      np.testing.assert_allclose(logits[r], ref[r, n:n + length], atol=ATOL, rtol=0,
                                 err_msg=f"row {r}, block {length}, committed {n}")
    cache = cache_lib.commit(cache, jnp.asarray(accept, jnp.int32))
    for r in range(batch):
      committed[r] += list(block[r, :accept[r]])
    np.testing.assert_array_equal(cache.lengths, [len(c) for c in committed])


def test_rollback(cfg, params):
  """Partly committed blocks and set_lengths roll backs equal never writing the rejected tokens."""
  rng = np.random.RandomState(3)
  prefix = random_tokens(rng, (2, 6), cfg)
  block = random_tokens(rng, (2, 4), cfg)
  new = random_tokens(rng, (2, 3), cfg)

  # Reference: a cache that only ever saw the accepted tokens.
  clean = new_cache(cfg, 2)
  _, clean = cached_step(cfg, params, clean, prefix)
  clean = cache_lib.commit(clean, jnp.array([6, 6]))
  _, clean = cached_step(cfg, params, clean, block[:, :2])
  clean = cache_lib.commit(clean, jnp.array([2, 2]))
  want, _ = cached_step(cfg, params, clean, new)

  # Commit 2 of 4 block tokens, then write new tokens over the rejected ones.
  cache = new_cache(cfg, 2)
  _, cache = cached_step(cfg, params, cache, prefix)
  cache = cache_lib.commit(cache, jnp.array([6, 6]))
  _, cache = cached_step(cfg, params, cache, block)
  got, _ = cached_step(cfg, params, cache_lib.commit(cache, jnp.array([2, 2])), new)
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)

  # Commit the whole block, then move back with set_lengths (per row).
  full = cache_lib.commit(cache, jnp.array([4, 4]))
  rolled = cache_lib.set_lengths(full, jnp.array([8, 5]))
  got, _ = cached_step(cfg, params, rolled, new)
  seqs = [list(prefix[0]) + list(block[0, :2]) + list(new[0]), list(prefix[1, :5]) + list(new[1])]
  ref = padded_chain_logits(cfg, params, seqs)
  np.testing.assert_allclose(got[0], ref[0, 8:11], atol=ATOL, rtol=0)
  np.testing.assert_allclose(got[1], ref[1, 5:8], atol=ATOL, rtol=0)
  np.testing.assert_allclose(got[0], want[0], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- block masks and trees


def test_explicit_causal_mask_equals_none(cfg, params):
  rng = np.random.RandomState(4)
  tokens = random_tokens(rng, (2, 10), cfg)
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((10, 10), bool)), (2, 10, 10))
  positions = jnp.broadcast_to(jnp.arange(10), (2, 10))
  np.testing.assert_allclose(apply(cfg, params, tokens, positions, block_mask=causal)[0],
                             chain_logits(cfg, params, tokens), atol=ATOL, rtol=0)
  # With a cache whose rows hold different committed lengths.
  cache = new_cache(cfg, 2)
  _, cache = cached_step(cfg, params, cache, tokens[:, :6])
  cache = cache_lib.commit(cache, jnp.array([6, 3]))
  block = random_tokens(rng, (2, 4), cfg)
  causal4 = jnp.broadcast_to(jnp.tril(jnp.ones((4, 4), bool)), (2, 4, 4))
  np.testing.assert_allclose(cached_step(cfg, params, cache, block, block_mask=causal4)[0],
                             cached_step(cfg, params, cache, block)[0], atol=ATOL, rtol=0)


# Tree block [root, a1, a2, b1, b2]: branches root-a1-a2 and root-b1-b2.
TREE_MASK = np.array([[1, 0, 0, 0, 0],
                      [1, 1, 0, 0, 0],
                      [1, 1, 1, 0, 0],
                      [1, 0, 0, 1, 0],
                      [1, 0, 0, 1, 1]], bool)
TREE_DEPTH = np.array([0, 1, 2, 1, 2])


def _tree_setup(cfg, params, rng):
  prefix = random_tokens(rng, (2, 6), cfg)
  cache = new_cache(cfg, 2)
  _, cache = cached_step(cfg, params, cache, prefix)
  cache = cache_lib.commit(cache, jnp.array([6, 4]))
  prefixes = [list(prefix[0]), list(prefix[1, :4])]
  tree = random_tokens(rng, (2, 5), cfg)
  positions = cache.lengths[:, None] + jnp.asarray(TREE_DEPTH)[None, :]
  mask = jnp.broadcast_to(jnp.asarray(TREE_MASK), (2, 5, 5))
  logits, cache = cached_step(cfg, params, cache, tree, positions=positions, block_mask=mask)
  return prefixes, tree, logits, cache


def test_tree_mask_equals_chains(cfg, params):
  prefixes, tree, logits, _ = _tree_setup(cfg, params, np.random.RandomState(5))
  branch_a = [p + list(t[[0, 1, 2]]) for p, t in zip(prefixes, tree)]
  branch_b = [p + list(t[[0, 3, 4]]) for p, t in zip(prefixes, tree)]
  ref = padded_chain_logits(cfg, params, branch_a + branch_b)
  for r in range(2):
    n = len(prefixes[r])
    np.testing.assert_allclose(logits[r, [0, 1, 2]], ref[r, n:n + 3], atol=ATOL, rtol=0)
    np.testing.assert_allclose(logits[r, [0, 3, 4]], ref[2 + r, n:n + 3], atol=ATOL, rtol=0)


def test_gather_block_compacts_tree_path(cfg, params):
  """Accept a non-prefix path of the tree (row 0: root-b1-b2; row 1: root-a1), then continue."""
  rng = np.random.RandomState(6)
  prefixes, tree, _, cache = _tree_setup(cfg, params, rng)
  cache = cache_lib.gather_block(cache, jnp.array([[0, 3, 4], [0, 1, 2]], jnp.int32))
  cache = cache_lib.commit(cache, jnp.array([3, 2]))
  np.testing.assert_array_equal(cache.lengths, [9, 6])
  nxt = random_tokens(rng, (2, 3), cfg)
  logits, _ = cached_step(cfg, params, cache, nxt)
  seqs = [prefixes[0] + list(tree[0, [0, 3, 4]]), prefixes[1] + list(tree[1, [0, 1]])]
  ref = padded_chain_logits(cfg, params, [s + list(t) for s, t in zip(seqs, nxt)])
  for r in range(2):
    n = len(seqs[r])
    np.testing.assert_allclose(logits[r], ref[r, n:n + 3], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- packing


def test_packed_segments_equal_separate_documents(cfg, params):
  rng = np.random.RandomState(7)
  length = 16
  layout = [[5, 7], [4, 4, 8]]  # Row 0: two documents and 4 padding slots; row 1: three.
  tokens = np.zeros((2, length), np.int32)
  segments = np.zeros((2, length), np.int32)
  positions = np.zeros((2, length), np.int32)
  docs = []
  for r, lens in enumerate(layout):
    start = 0
    for s, n in enumerate(lens):
      doc = list(random_tokens(rng, (n,), cfg))
      docs.append((r, start, doc))
      tokens[r, start:start + n] = doc
      segments[r, start:start + n] = s + 1
      positions[r, start:start + n] = np.arange(n)
      start += n
  packed, _ = apply(cfg, params, jnp.asarray(tokens), jnp.asarray(positions),
                    jnp.asarray(segments))
  ref = padded_chain_logits(cfg, params, [d for _, _, d in docs])
  for i, (r, start, doc) in enumerate(docs):
    np.testing.assert_allclose(packed[r, start:start + len(doc)], ref[i, :len(doc)],
                               atol=ATOL, rtol=0, err_msg=f"row {r}, document at {start}")


# ---------------------------------------------------------------- heads at initialisation


def test_ffn_heads_start_as_next_token_head(cfg):
  params = init_params(cfg, perturb=False)
  logits = chain_logits(cfg, params, random_tokens(np.random.RandomState(8), (2, 7), cfg))
  for i in range(1, cfg.num_heads_bpd):
    np.testing.assert_array_equal(logits[:, :, i], logits[:, :, 0])


def test_medusa_heads():
  """Head 1 of a Medusa model is the base LM head (the same as a zero-initialised "ffn" head 1 on
  the same base). Its ResBlocks start at zero, so head i > 1 starts as final_hidden @ its own,
  randomly initialised, vocabulary projection: not equal to head 1 nor to the other heads."""
  mcfg = make_config(head_type="medusa", num_heads_bpd=4)
  fcfg = make_config(head_type="ffn", num_heads_bpd=1)
  mparams = init_params(mcfg, perturb=False)
  fparams = init_params(fcfg, perturb=False)
  fparams = {k: (mparams[k] if k in mparams else v) for k, v in fparams.items()}
  assert set(fparams) - set(mparams) == {"head_1"}
  assert "head_1" not in mparams and "head_4" in mparams
  tokens = jnp.asarray(random_tokens(np.random.RandomState(9), (2, 7), mcfg))
  positions = jnp.broadcast_to(jnp.arange(7), (2, 7))
  (logits, _), state = model_lib.Transformer(mcfg).apply(
      {"params": mparams}, tokens, positions,
      capture_intermediates=lambda mdl, _: mdl.name == "final_norm")
  np.testing.assert_allclose(logits[:, :, 0], chain_logits(fcfg, fparams, tokens)[:, :, 0],
                             atol=1e-6, rtol=0)
  hidden = state["intermediates"]["final_norm"]["__call__"][0]
  for i in range(2, mcfg.num_heads_bpd + 1):
    want = hidden @ mparams[f"head_{i}"]["vocab"]["kernel"]
    np.testing.assert_allclose(logits[:, :, i - 1], want, atol=1e-5, rtol=1e-5)
    assert float(jnp.max(jnp.abs(logits[:, :, i - 1] - logits[:, :, 0]))) > 1e-3
  # Trained (non-zero) ResBlocks leave head 1 alone.
  perturbed = init_params(mcfg, perturb=True)
  pl = chain_logits(mcfg, perturbed, tokens)
  fparams_p = {k: (perturbed[k] if k in perturbed else v) for k, v in fparams.items()}
  np.testing.assert_allclose(pl[:, :, 0], chain_logits(fcfg, fparams_p, tokens)[:, :, 0],
                             atol=ATOL, rtol=0)


# ---------------------------------------------------------------- bfloat16


def test_bfloat16_close_to_float32(cfg, params):
  bcfg = make_config(dtype="bfloat16")
  rng = np.random.RandomState(10)
  tokens = random_tokens(rng, (2, 12), cfg)
  f32 = chain_logits(cfg, params, tokens)
  bf16 = chain_logits(bcfg, params, tokens)
  assert bf16.dtype == jnp.float32  # Logits come back in float32.
  scale = float(jnp.max(jnp.abs(f32)))
  assert float(jnp.max(jnp.abs(bf16 - f32))) < 0.05 * scale
  assert float(jnp.mean(jnp.argmax(bf16, -1) == jnp.argmax(f32, -1))) > 0.9
  # Cached bfloat16 decoding runs (bfloat16 cache) and stays close to the uncached forward.
  cache = new_cache(bcfg, 2)
  assert cache.k[0].dtype == jnp.bfloat16
  _, cache = cached_step(bcfg, params, cache, tokens[:, :8])
  cache = cache_lib.commit(cache, jnp.array([8, 8]))
  step, _ = cached_step(bcfg, params, cache, tokens[:, 8:12])
  assert float(jnp.max(jnp.abs(step - f32[:, 8:12]))) < 0.05 * scale


# ---------------------------------------------------------------- loss targets


def test_head_targets_hand_example():
  # Two packed documents [5 6 7] and [8 9], then one padding slot.
  targets = jnp.array([[5, 6, 7, 8, 9, 0]])
  weights = jnp.array([[1, 1, 1, 1, 1, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0]])
  t, w = losses.head_targets(targets, weights, segments, 3)
  assert t.shape == (1, 6, 3) and t.dtype == jnp.int32 and w.dtype == jnp.float32
  np.testing.assert_array_equal(t[0, :, 0], [5, 6, 7, 8, 9, 0])   # head 1: shift 0
  np.testing.assert_array_equal(t[0, :, 1], [6, 7, 8, 9, 0, 0])   # head 2: shift 1
  np.testing.assert_array_equal(t[0, :, 2], [7, 8, 9, 0, 0, 0])   # head 3: shift 2
  np.testing.assert_array_equal(w[0, :, 0], [1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(w[0, :, 1], [1, 1, 0, 1, 0, 0])   # 7->8 crosses documents.
  np.testing.assert_array_equal(w[0, :, 2], [1, 0, 0, 0, 0, 0])
  # Without segment ids only padding and the end of the row cut targets off.
  _, w = losses.head_targets(targets, weights, None, 3)
  np.testing.assert_array_equal(w[0, :, 1], [1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(w[0, :, 2], [1, 1, 1, 0, 0, 0])
