"""Medusa sparse trees: construction, exact greedy output, and Medusa + local rescoring."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import loop
from bpdjax.decoding import methods
from bpdjax.decoding import model_fns
from bpdjax.decoding import resources
from bpdjax.decoding import sparse_tree
from bpdjax.decoding.drafters import medusa
from tests import helpers

MAX_NEW = 20
CACHE_LEN = 9 + MAX_NEW + 40       # Prompt width + new tokens + the largest tree below.
_naive_greedy, _rows = helpers.naive_greedy, helpers.rows


def _brute_force_greedy(acc, size):
  """Medusa's rule by exhaustive search: repeatedly add, among all children of tree nodes, the
  one of largest path product (ties: shallower, then lexicographically smaller ranks)."""
  value = {(): 1.0}
  order = [()]
  while len(order) < size:
    frontier = [path + (r,) for path in order if len(path) < acc.shape[0]
                for r in range(acc.shape[1]) if path + (r,) not in value]
    keys = [(-value[p[:-1]] * acc[len(p) - 1, p[-1]], len(p), p) for p in frontier]
    best = min(keys)[2]
    value[best] = -min(keys)[0]
    order.append(best)
  return order


def _paths(sparse):
  out = []
  for v in range(sparse.size):
    out.append(() if v == 0 else out[sparse.tree.parents[v]] + (sparse.ranks[v],))
  return out


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_tree_structure_and_greedy_order(seed):
  rng = np.random.RandomState(seed)
  acc = -np.sort(-rng.uniform(0, 1, (3, 3)), axis=1)            # [L-1 = 3, k = 3], no ties.
  if seed == 1:
    acc = sparse_tree.default_accuracy(4, 3)                         # Exact ties (0.6 / 2 ...).
  capacity = 1 + 3 + 9 + 27
  for size in (1, 2, 5, 13, 27, capacity):
    sparse = sparse_tree.build_sparse_tree(acc, size)
    tree = sparse.tree
    assert tree.size == size == len(sparse.ranks)
    assert all(0 <= p < v for v, p in enumerate(tree.parents) if v > 0)
    assert tree.max_depth <= 3 and sparse.ranks[0] == 0
    paths = _paths(sparse)
    assert paths == _brute_force_greedy(acc, size)
    assert len(set(paths)) == size                                # Siblings differ in rank.
    assert [paths[v] for v in tree.primary] == [(0,) * d for d in range(tree.max_depth + 1)]
  assert sparse_tree.build_sparse_tree(acc, capacity).tree.max_depth == 3


def test_default_tree_shape():
  sparse = sparse_tree.build_sparse_tree(sparse_tree.default_accuracy(9, 16), 64)
  assert np.bincount(sparse.tree.depth).tolist() == [1, 16, 33, 13, 1]
  drafter = medusa.MedusaTreeDrafter(9, 16, 64)
  assert drafter.draft_len == 5 and loop.block_size(drafter) == 64
  single = medusa.MedusaTreeDrafter(4, 3, 1)                     # Size 1: plain decoding.
  assert single.draft_len == 1 and single.last_head == 1
  draft, _ = single.propose(None, (), helpers.last_heads(jnp.zeros((2, 0, 8))),
                            jnp.array([5, 6]))
  np.testing.assert_array_equal(draft, [[5], [6]])


def test_accuracy_from_records():
  tokens = np.array([[5, 6, 7, 8]])
  topk = np.zeros((1, 4, 3, 2), np.int32)
  topk[0, :, 1, 0] = [6, 0, 8, 0]       # Head 2, rank 0: right at slots 0 and 2 of 3.
  topk[0, :, 1, 1] = [0, 7, 0, 0]       # Rank 1: right at slot 1.
  topk[0, :, 2, 1] = [7, 8, 0, 0]       # Head 3, rank 1: right at both slots.
  acc = sparse_tree.accuracy_from_records(topk, tokens, np.array([4]))
  np.testing.assert_allclose(acc, [[2 / 3, 1 / 3], [0.0, 0.0]])    # Running min over ranks.


def test_bad_inputs(setup):
  acc = sparse_tree.default_accuracy(4, 3)
  with pytest.raises(ValueError, match="size must be >= 1"):
    sparse_tree.build_sparse_tree(acc, 0)
  with pytest.raises(ValueError, match="exceeds the 40 nodes"):
    sparse_tree.build_sparse_tree(acc, 41)
  with pytest.raises(ValueError, match="non-increasing"):
    sparse_tree.build_sparse_tree([[0.1, 0.5]], 2)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    sparse_tree.build_sparse_tree([[1.5]], 2)
  with pytest.raises(ValueError, match="tree_size must be >= 1"):
    medusa.MedusaOptions(tree_size=0).validate()
  with pytest.raises(ValueError, match="shape"):
    medusa.MedusaTreeDrafter(4, 3, 5, accuracy=((0.5,),))
  with pytest.raises(ValueError, match="alpha"):
    medusa.MedusaLocalOptions(alpha=2.0).validate()
  cfg = setup[1]
  for knobs, match in ((dict(tree_size=0), "tree_size"), (dict(k=100), "vocabulary")):
    with pytest.raises(ValueError, match=match):
      methods.build("medusa", cfg, **knobs)
  built = methods.build("medusa", cfg)
  assert isinstance(built.drafter, medusa.MedusaTreeDrafter)
  assert built.drafter.topology.size == 64
  with pytest.raises(ValueError, match="needs a rescoring LM .*rescorer_workdir"):
    methods.build("medusa_local", cfg, resources.Resources())


@pytest.fixture(scope="module")
def setup():
  model, cfg, params = helpers.random_model()
  rescorer, rcfg, rparams = helpers.random_model(h=1, seed=7)
  prompts, lengths = helpers.uneven_prompts()
  return model, cfg, params, rescorer, rcfg, rparams, prompts, lengths


def _local(setup, alpha, tree_size=12, k=3):
  return medusa.MedusaLocalDrafter(4, k, tree_size, alpha=alpha,
                                   rescorer=model_fns.TransformerFns(setup[3]))


def _run(setup, drafter, eos_id, drafter_params=None, fns=None):
  model, _, params, _, _, _, prompts, lengths = setup
  return helpers.decode(model, params, prompts, lengths, drafter, MAX_NEW, eos_id,
                        record_topk=2, drafter_params=drafter_params, fns=fns,
                        cache_len=CACHE_LEN)


def _off_primary(result):
  """(iterations that kept a non-primary path, of which the path left the primary chain before
  its last kept token, which makes a rescorer re-feed)."""
  rec = result.records
  off = early = 0
  for b in range(result.tokens.shape[0]):
    num_tokens = 1
    for i in range(rec.kept.shape[0]):
      n = int(rec.kept[i, b])
      if n == 0:
        break
      path = result.tokens[b, num_tokens - 1:num_tokens - 1 + n]
      wrong = np.nonzero(path[1:] != rec.drafts[i, b, 1:len(path)])[0] + 1
      off += wrong.size > 0 and num_tokens - 1 + n <= result.lengths[b]
      early += wrong.size > 0 and wrong[0] <= n - 2 and num_tokens - 1 + n <= result.lengths[b]
      num_tokens += n
  return off, early


def test_medusa_equals_naive_greedy(setup):
  model, _, params, _, _, rparams, prompts, lengths = setup
  eos_id = 7
  expected = [_naive_greedy(model, params, prompts[b, :lengths[b]], MAX_NEW, eos_id)
              for b in range(len(lengths))]
  assert any(row[-1] == eos_id and len(row) < MAX_NEW for row in expected)
  tree = _run(setup, medusa.MedusaTreeDrafter(4, 3, 12), eos_id)
  assert _rows(tree) == expected
  assert np.all(tree.calls <= tree.lengths)
  assert _off_primary(tree)[0] > 0, "no non-primary path was accepted: the test is vacuous"
  zero = _run(setup, _local(setup, 0.0), eos_id, rparams)
  assert _rows(zero) == expected
  # Same drafts (the primary chain is recorded), same kept counts, same calls.
  np.testing.assert_array_equal(zero.records.drafts, tree.records.drafts)
  np.testing.assert_array_equal(zero.records.kept, tree.records.kept)
  np.testing.assert_array_equal(zero.calls, tree.calls)
  one = _run(setup, _local(setup, 1.0), eos_id, rparams)
  assert _rows(one) == expected
  assert np.any(one.records.drafts != tree.records.drafts), "the rescorer changed no draft"
  # alpha = 0.5 through the Generator ("medusa_local"), which pads prompts to 32 tokens.
  built = methods.build("medusa_local", model.config,
                        resources.Resources(rescorer=resources.Rescorer(setup[3], rparams)),
                        k=3, tree_size=12, alpha=0.5)
  gen = generator_lib.Generator(model, params, eos_id=eos_id)
  out, _ = gen.generate([prompts[b, :lengths[b]] for b in range(len(lengths))], built.drafter,
                        built.params, MAX_NEW, batch_size=len(lengths))
  assert [g.tokens.tolist() for g in out] == expected
  assert sum(g.calls for g in out) < sum(len(g.tokens) for g in out)


@dataclasses.dataclass(frozen=True)
class _SwappedFns:
  """protocol.ModelFns with another heads callback."""
  base: model_fns.TransformerFns
  swapped_heads: object

  @property
  def num_heads(self):
    return self.base.num_heads

  def forward(self, *args):
    return self.base.forward(*args)

  def heads(self, *args):
    return self.swapped_heads(*args)


def test_forced_non_primary_paths(setup):
  """Heads whose top-2 are swapped on a model that repeats itself: the model's token is rank 1
  of every head, so the loop keeps paths off the (rescored) chain; with rescoring the rescorer
  is re-fed. Output stays exact."""
  rparams, prompts, lengths = setup[5], setup[6], setup[7]
  model, cfg, params = helpers.random_model(scale=0.0)   # Every head equals head 1.
  base = model_fns.TransformerFns(model)

  def heads(p, hidden, start, stop):
    logits = base.heads(p, hidden, start, stop)                     # [B, n, heads, V]
    values, ids = jax.lax.top_k(logits, 2)
    vocab = logits.shape[-1]
    swap = ((values[..., 1:] - values[..., :1]) * jax.nn.one_hot(ids[..., 0], vocab)
            + (values[..., :1] - values[..., 1:]) * jax.nn.one_hot(ids[..., 1], vocab))
    later = (jnp.arange(start, stop) >= 1)[None, None, :, None]
    return jnp.where(later, logits + swap, logits)

  fns = _SwappedFns(base, heads)
  swapped = (model, cfg, params) + tuple(setup[3:])
  expected = [_naive_greedy(model, params, prompts[b, :lengths[b]], MAX_NEW, None)
              for b in range(len(lengths))]
  result = _run(swapped, _local(setup, 1.0), None, rparams, fns=fns)
  assert _rows(result) == expected
  off, early = _off_primary(result)
  assert early > 0 and np.sum(result.records.kept >= 3) > 0, (off, early)


def test_medusa_local_alpha_zero_proposes_medusa_tree(setup):
  rparams = setup[5]
  logits = jax.random.normal(jax.random.PRNGKey(3), (5, 3, 64))       # Heads 2..4.
  next_token = jnp.arange(5, dtype=jnp.int32)
  prompts, lengths = jnp.asarray(setup[6], jnp.int32), jnp.asarray(setup[7], jnp.int32)
  plain, _ = helpers.jit_propose(medusa.MedusaTreeDrafter(4, 3, 12))(None, (), logits, next_token)
  local = _local(setup, 0.0)
  rescored, _ = jax.jit(lambda p, *a: local.propose(p, local.start(p, *a[:2], CACHE_LEN),
                                                    helpers.last_heads(a[2]), a[3]))(
      rparams, prompts, lengths, logits, next_token)
  np.testing.assert_array_equal(rescored, plain)


def test_rescorer_cache_after_accepting_a_non_primary_path(setup):
  """After proposing a tree and committing a path off the rescored chain, the rescorer's state
  equals one started fresh on the prompt plus the accepted tokens."""
  rparams, prompts, lengths = setup[5], setup[6][:2], setup[7][:2]
  drafter = _local(setup, 1.0, tree_size=30)
  start = jax.jit(lambda p, x, n: drafter.start(p, x, n, CACHE_LEN))
  propose, commit = helpers.jit_propose(drafter), jax.jit(drafter.commit)
  local_commit = jax.jit(drafter.local.commit)
  paths = _paths(drafter.sparse)
  node = max(range(drafter.sparse.size), key=lambda v: (len(paths[v]), paths[v][:2] != (0, 0)))
  assert len(paths[node]) == 3 and paths[node][:2] != (0, 0), paths[node]
  logits = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 64))
  state = start(rparams, jnp.asarray(prompts), jnp.asarray(lengths))
  nodes, state = propose(rparams, state, logits, jnp.array([11, 12], jnp.int32))
  path_table = drafter.topology.path_table
  row0 = np.asarray(nodes[0])[path_table[node]]                  # Off the chain, all kept.
  row1 = np.asarray(nodes[1])[path_table[drafter.topology.primary[-1]]]   # The chain, 2 kept.
  tokens = jnp.asarray(np.stack([np.append(row0, 40), np.append(row1, 41)]), jnp.int32)
  num_kept = jnp.array([4, 2], jnp.int32)
  committed = commit(rparams, state, tokens, num_kept)
  naive = state.replace(rescorer=local_commit(rparams, state.rescorer, tokens, num_kept))

  ref_prompts = np.zeros((2, 14), np.int32)
  for b, n in enumerate((4, 2)):
    ref_prompts[b, :lengths[b] + n] = np.append(prompts[b, :lengths[b]], tokens[b, :n])
  ref = start(rparams, jnp.asarray(ref_prompts), jnp.asarray(lengths + np.array([4, 2])))
  np.testing.assert_array_equal(committed.rescorer.cache.lengths, ref.rescorer.cache.lengths)
  np.testing.assert_array_equal(committed.rescorer.last, ref.rescorer.last)
  for b in range(2):
    n = int(ref.rescorer.cache.lengths[b])
    for ours, theirs, bad in zip(committed.rescorer.cache.k, ref.rescorer.cache.k,
                                 naive.rescorer.cache.k):
      np.testing.assert_allclose(ours[b, :n], theirs[b, :n], atol=1e-5)
      if b == 0:     # Without the re-feed the cache holds the rescored chain's tokens.
        assert not np.allclose(bad[b, :n], theirs[b, :n], atol=1e-5)
  logits2 = jax.random.normal(jax.random.PRNGKey(6), (2, 3, 64))
  next2 = jnp.array([21, 22], jnp.int32)
  np.testing.assert_array_equal(propose(rparams, committed, logits2, next2)[0],
                                propose(rparams, ref, logits2, next2)[0])
