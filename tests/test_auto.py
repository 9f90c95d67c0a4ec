"""Cost-aware drafting (the auto step policy, and the entropy-threshold ablation auto_entropy):
exact output, lossless sampling, adaptation to the cost table over chains and over any
drafter's candidates (Medusa trees), the cost tables and their cache, bad input."""
import json
import logging

import jax
import numpy as np
import pytest

from bpdjax import cache as cache_lib
from bpdjax.decoding import cost
from bpdjax.decoding import generator
from bpdjax.decoding import loop
from bpdjax.decoding import methods
from bpdjax.decoding import model_fns
from bpdjax.decoding import sampling
from bpdjax.decoding import timing
from bpdjax.decoding import verify
from tests import helpers

MAX_NEW = 21


@pytest.fixture(scope="module")
def trained(trained_tiny_workdir):
  """The tiny trained model (h = 4; its heads are right often enough to draft)."""
  import bpdjax  # pylint: disable=g-import-not-at-top
  loaded = bpdjax.load(trained_tiny_workdir)
  rng = np.random.RandomState(3)
  rows = [rng.randint(3, 500, n) for n in (9, 3, 1, 6, 12, 4)]
  return loaded, rows


def _run(loaded, rows, built, batch_size, eos_id=None, max_new=MAX_NEW, **kw):
  gen = generator.Generator(loaded.model, loaded.params, eos_id=eos_id)
  out, timings = gen.generate(rows, built, max_new_tokens=max_new, batch_size=batch_size, **kw)
  return [g.tokens.tolist() for g in out], sum(g.calls for g in out), timings


def _be(tokens, calls):
  return sum(len(t) for t in tokens) / calls


@pytest.mark.parametrize("batch_size", [1, 3])
def test_auto_equals_ar_greedy(trained, batch_size):
  """Exact for every cost table: flat (drafts most), cheap drafts, and drafts that never pay;
  with trees; EOS and the length limit fall mid-block."""
  loaded, rows = trained
  cfg = loaded.model.config
  ar, _, _ = _run(loaded, rows, methods.build("ar", cfg), batch_size)
  # EOS: the token that first appears latest in a row of ar's output; one run per cost table
  # then ends that row at EOS mid-output and the rows without it at the length limit.
  first, eos = max((t.index(x), x) for t in ar for x in set(t[:-1]))
  ar_eos, _, _ = _run(loaded, rows, methods.build("ar", cfg), batch_size, eos_id=eos)
  assert first >= 2 and any(len(t) == first + 1 for t in ar_eos), (eos, ar)
  assert any(len(t) == MAX_NEW for t in ar_eos), (eos, ar)
  for knobs in (dict(costs="1,1,1,1"), dict(costs="1,1.05,1.1,1.15"), dict(costs="1,2,3,4"),
                dict(costs="1,1,1,1,1,1", tree_nodes="8,12", k=3)):
    built = methods.build("auto", cfg, **knobs)
    got_eos, _, timings = _run(loaded, rows, built, batch_size, eos_id=eos)
    assert got_eos == ar_eos, knobs
    # With flat costs auto drafts (steps chose a candidate beyond plain decoding), so the
    # equality above covers its verification, not only its plain stretches.
    if knobs["costs"].startswith("1,1,1"):
      assert sum(int(np.sum(t.stats["chosen"][1:])) for t in timings) > 0, knobs
  built = methods.build("auto_entropy", cfg, threshold=4.0)
  assert _run(loaded, rows, built, batch_size)[0] == ar


def test_auto_adapts_to_the_cost_table(trained):
  """Every verify size costing one step: auto drafts the longest chain, BE within 2% of the
  best fixed method's; every extra draft token costing a full step: it drafts almost nothing
  (BE < 1.05); in between, it drafts sometimes."""
  loaded, rows = trained
  cfg = loaded.model.config
  fixed = {}
  for length in (2, 3, 4):
    tokens, calls, _ = _run(loaded, rows, methods.build("bpd", cfg, draft_len=length), 1)
    fixed[length] = _be(tokens, calls)
  assert max(fixed.values()) > 1.1, f"the heads must draft something: {fixed}"
  flat, calls, _ = _run(loaded, rows, methods.build("auto", cfg, costs="1,1,1,1"), 1)
  assert _be(flat, calls) >= 0.98 * max(fixed.values()), (_be(flat, calls), fixed)
  linear, calls, timings = _run(loaded, rows, methods.build("auto", cfg, costs="1,2,3,4"), 1)
  assert _be(linear, calls) < 1.05
  assert sum(t.stats["chosen"][0] for t in timings) == calls - len(rows)


@pytest.mark.parametrize("costs", ["1,2,3,4", "1,1.3,1.6,1.9"])
def test_plain_stretches_run_inside_one_step(trained, costs):
  """Plain steps between two looks run as one inner loop (StepPolicy.stretch): fewer outer
  steps, and the same tokens, model calls and drafter counters as one call per step; with a
  cost table where drafting never pays, the first step decodes to the end."""
  loaded, rows = trained
  cfg = loaded.model.config
  built = methods.build("auto", cfg, costs=costs)
  fns = model_fns.TransformerFns(loaded.model)
  prompt = jax.numpy.asarray(np.asarray(rows[4], np.int32)[None])
  lengths = jax.numpy.asarray([len(rows[4])], np.int32)
  cache_len = prompt.shape[1] + MAX_NEW + loop.block_size(built.drafter)
  runs = {}
  for stretches in (True, False):
    settings = loop.Settings(built.drafter, MAX_NEW, None, plain_stretches=stretches,
                             policy=built.policy)
    begin = jax.jit(lambda p, x, n, s=settings: loop.start(
        fns, p, x, n, cache_lib.init_for_model(cfg, 1, cache_len), None, s))
    step = jax.jit(lambda p, st, s=settings: loop.step(fns, p, st, None, s))
    state, outer = begin(loaded.params, prompt, lengths), 0
    while bool(loop.running(state, settings)):
      state, outer = step(loaded.params, state), outer + 1
    runs[stretches] = outer, loop.finish(state, settings)
  (outer, got), (steps, ref) = runs[True], runs[False]
  ar, _, _ = _run(loaded, [rows[4]], methods.build("ar", cfg), 1)
  assert got.tokens[0, :int(got.lengths[0])].tolist() == ar[0]
  np.testing.assert_array_equal(got.tokens, ref.tokens)
  assert int(got.calls[0]) == int(ref.calls[0]) and int(got.iterations) == int(ref.iterations)
  for name, value in ref.stats.items():
    np.testing.assert_array_equal(got.stats[name], value, err_msg=name)
  assert steps == int(ref.iterations) and outer < steps
  if costs == "1,2,3,4":
    assert outer == 1 and int(got.stats["head_looks"]) == 0


def test_calibration_tracks_realized_tokens(trained, trained_tiny_workdir):
  """Predicted tokens per call track the realized ones. This 30-step model is a hard case: its
  heads put < 10% on tokens that are nearly always right (it loops), so the calibration must
  learn a 10x under-confidence from the prior a = p; the benchmark checks 10% on a real model
  (benchmarks/decode_speed.py, TinyStories)."""
  from bpdjax import workdir  # pylint: disable=g-import-not-at-top
  from bpdjax.data import eval_tasks  # pylint: disable=g-import-not-at-top
  loaded, _ = trained
  examples = eval_tasks.load_prompts("lambada", loaded.config.data_dir,
                                     workdir.vocab_path(trained_tiny_workdir), 6,
                                     max_prompt_tokens=60)
  rows = [e["prompt_tokens"] for e in examples]
  built = methods.build("auto", loaded.model.config, costs="1,1.02,1.04,1.06")
  _, _, timings = _run(loaded, rows, built, 1, max_new=64)
  predicted = sum(float(t.stats["predicted_tokens"]) for t in timings)
  realized = sum(float(t.stats["realized_tokens"]) for t in timings)
  assert predicted == pytest.approx(realized, rel=0.3), (predicted, realized)


def test_lossless_sampling_chi_square():
  """auto samples (t1, t2) from exactly the model's distribution at temperature 1 and at 0.7
  with top-p 0.9; the broken chain rule (resample from the full distribution after a
  rejection) is caught by the same test."""
  vocab = 8
  model, cfg, params = helpers.random_model(vocab_size=vocab, h=3, seed=3, scale=0.1)
  built = methods.build("auto", cfg, costs="1,1,1")
  drafter = built.drafter
  prompt = [1, 5, 2]
  n = 20000
  for config in (sampling.SamplingConfig(temperature=1.0),
                 sampling.SamplingConfig(temperature=0.7, top_p=0.9)):
    probs = helpers.exact_joint(model, params, prompt, vocab, config)
    got = helpers.sample_first_two(model, params, prompt, drafter, config, n,
                                   policy=built.policy)
    assert helpers.chi2_pvalue(helpers.joint_counts(got, vocab), probs) > 1e-3, config
  true_accept = verify.accept_chain

  def broken_accept(draft, logits, config, rng):
    num_kept, _ = true_accept(draft, logits, config, rng)
    logp = jax.nn.log_softmax(sampling.processed_logits(logits, config), -1)
    last = np.take_along_axis(logp, (num_kept - 1)[:, None, None], axis=1)[:, 0]
    return num_kept, jax.random.categorical(jax.random.fold_in(rng, 1), last).astype(np.int32)

  config = sampling.SamplingConfig(temperature=1.0)
  verify.accept_chain = broken_accept
  try:
    broken = helpers.sample_first_two(model, params, prompt, drafter, config, n,
                                      policy=built.policy, fresh_jit=True)
  finally:
    verify.accept_chain = true_accept
  probs = helpers.exact_joint(model, params, prompt, vocab, config)
  assert helpers.chi2_pvalue(helpers.joint_counts(broken, vocab), probs) < 1e-6


def _timed(model, params, h):
  gen = generator.Generator(model, params, eos_id=None)
  drafter = methods.build("auto", model.config, costs=",".join(["1"] * h)).drafter
  probe = methods.registry.build_policy("auto", methods.make_options("auto"), drafter,
                                        timing.flat_table(drafter.candidates))
  return gen, drafter, probe


def test_measured_cost_table_and_its_cache(tmp_path):
  model, cfg, params = helpers.random_model(h=3)
  gen, drafter, probe = _timed(model, params, 3)
  path = str(tmp_path / "costs.json")
  kw = dict(repeats=2, min_seconds=0.001, cache_path=path)
  table = timing.cost_table(gen, drafter, None, probe, 2, 8, 8, **kw)
  assert table.source == "measured" and table.sizes == (1, 2, 3) and table.relative[0] == 1.0
  assert all(s > 0 for s in table.seconds)
  assert timing.cost_table(gen, drafter, None, probe, 2, 8, 8, cache_path=path) is table
  cost._MEMORY.clear()   # pylint: disable=protected-access  (a new process: read the file)
  again = timing.cost_table(gen, drafter, None, probe, 2, 8, 8, cache_path=path)
  assert again.seconds == table.seconds
  # Another batch size or model shape: never reused, measured anew and added to the file.
  timing.cost_table(gen, drafter, None, probe, 3, 8, 8, **kw)
  other, _, other_params = helpers.random_model(h=3, vocab_size=32)
  other_gen, other_drafter, other_probe = _timed(other, other_params, 3)
  timing.cost_table(other_gen, other_drafter, None, other_probe, 2, 8, 8, **kw)
  keys = [dict(e["key"]) for e in json.loads(open(path).read())]
  assert len(keys) == 3 and len({(k["batch"], k["model"]) for k in keys}) == 3
  table = cost.analytic(cfg, drafter.topology, (1, 2, 3), batch=1, cache_len=32,
                        peak_flops=1e9, peak_bytes=1e9)
  assert table.source == "analytic" and list(table.seconds) == sorted(table.seconds)


def test_cost_table_compiles_each_program_once():
  """Timing a forced size reuses the drafting program: with parameters committed to a device
  (as loaded checkpoints are) a forced leaf made outside jit was uncommitted, and the drafting
  program compiled a second time (4 s of the README decode's 28 s)."""
  model, _, params = helpers.random_model(h=3)
  gen, drafter, probe = _timed(model, jax.device_put(params, jax.devices()[0]), 3)
  cost._MEMORY.clear()   # pylint: disable=protected-access  (measure: not an earlier test's table)
  timing.cost_table(gen, drafter, None, probe, 2, 8, 8, repeats=1, min_seconds=0.001)
  # pylint: disable=protected-access
  steppers = {type(key[1].drafter).__name__: fns for key, fns in gen._compiled.items()
              if key[0] == "stepper"}
  assert len(steppers) == 2
  for name, (start, _, steps) in steppers.items():
    assert (start._cache_size(), steps._cache_size()) == (1, 1), name


DAMAGES = ("truncated", "not_json", "wrong_shape", "nan", "zero_costs")


def test_a_damaged_cost_cache_is_measured_again(trained, tmp_path, caplog):
  """A cost cache is a cache: a damaged file or entry (each of DAMAGES in turn) is measured
  again with a warning naming the file (and rewritten), never trusted and never a crash; the
  output equals ar's. One driver for all, so its timing programs compile once."""
  loaded, rows = trained
  path = tmp_path / "costs.json"
  gen = generator.Generator(loaded.model, loaded.params, eos_id=None)
  kw = dict(batch_size=1, prompt_width=32, max_new_tokens=MAX_NEW, cost_cache=str(path))
  cost._MEMORY.clear()   # pylint: disable=protected-access  (measure, and write the file)
  gen.build("auto", **kw)
  good = json.loads(path.read_text())
  for damage in DAMAGES:
    if damage == "truncated":
      path.write_text(json.dumps(good)[:40])
    elif damage == "not_json":
      path.write_bytes(b"\xff\x00 not json")
    elif damage == "wrong_shape":
      path.write_text(json.dumps({"key": "value"}))
    else:
      bad = [dict(good[0], seconds=([float("nan")] if damage == "nan" else [0.0]) +
                  good[0]["seconds"][1:])] + good[1:]
      path.write_text(json.dumps(bad))
    cost._MEMORY.clear()   # pylint: disable=protected-access
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      built = gen.build("auto", **kw)
    assert str(path) in caplog.text and "measuring anew" in caplog.text, damage
    assert all(np.isfinite(built.policy.costs)) and min(built.policy.costs) > 0, damage
    stored = json.loads(path.read_text())
    assert isinstance(stored, list) and all(np.isfinite(e["seconds"]).all() for e in stored)
  ar, _, _ = _run(loaded, rows, methods.build("ar", loaded.model.config), 1)
  assert _run(loaded, rows, built, 1)[0] == ar


def test_auto_built_by_the_driver(trained):
  """The driver measures auto's cost table at the batch and width in use (the policy's own
  steps per size) and builds the policy with it."""
  loaded, rows = trained
  gen = generator.Generator(loaded.model, loaded.params, eos_id=None)
  built = gen.build("auto", batch_size=1, prompt_width=32, max_new_tokens=MAX_NEW)
  assert len(gen.cost_tables) == 1 and gen.cost_tables[0].sizes == (1, 2, 3, 4)
  assert built.policy.costs == gen.cost_tables[0].seconds
  ar, _, _ = _run(loaded, rows, methods.build("ar", loaded.model.config), 1)
  assert _run(loaded, rows, built, 1)[0] == ar


def test_auto_over_a_medusa_tree(trained):
  """auto drives another method's drafter over its candidate sizes (prefixes of the Medusa
  tree): with every size costing one step it verifies the whole tree (BE within 2% of medusa's),
  with one step per node it stays plain; its output equals ar's either way."""
  loaded, rows = trained
  cfg = loaded.model.config
  medusa = {"medusa": methods.make_options("medusa", k=4, tree_size=16)}
  ar, _, _ = _run(loaded, rows, methods.build("ar", cfg), 1)
  tree, calls, _ = _run(loaded, rows, methods.build("medusa", cfg, options=medusa["medusa"]), 1)
  assert tree == ar
  sizes = methods.build("medusa", cfg, options=medusa["medusa"]).drafter.candidates
  assert sizes == (1, 2, 4, 8, 16)
  flat = methods.build("auto", cfg, method_options=medusa, drafter="medusa",
                       costs=",".join("1" for _ in sizes))
  got, flat_calls, timings = _run(loaded, rows, flat, 1)
  assert got == ar
  assert _be(got, flat_calls) >= 0.98 * _be(tree, calls), (_be(got, flat_calls), _be(tree, calls))
  per_node = methods.build("auto", cfg, method_options=medusa, drafter="medusa",
                           costs=",".join(str(s) for s in sizes))
  got, plain_calls, timings = _run(loaded, rows, per_node, 1)
  assert got == ar and _be(got, plain_calls) == 1.0
  assert sum(int(t.stats["chosen"][0]) for t in timings) == plain_calls - len(rows)


def test_bad_input():
  _, cfg, _ = helpers.random_model(h=3)
  _, one_head, _ = helpers.random_model(h=1)
  with pytest.raises(ValueError, match="h = 1"):
    methods.build("auto", one_head, costs="1")
  with pytest.raises(ValueError, match="threshold .* must be >= 0"):
    methods.build("auto_entropy", cfg, threshold=-0.5)
  with pytest.raises(ValueError, match="3 candidate sizes"):
    methods.build("auto", cfg, costs="1,1")
  with pytest.raises(ValueError, match="positive"):
    methods.build("auto", cfg, costs="1,0,1")
  with pytest.raises(ValueError, match="comma-separated numbers"):
    methods.build("auto", cfg, costs="fast")
  with pytest.raises(ValueError, match="exceed the chain length"):
    methods.build("auto", cfg, costs="1,1,1,1", tree_nodes="2")
  with pytest.raises(ValueError, match="needs a measured cost table"):
    methods.build("auto", cfg)
  with pytest.raises(ValueError, match="cannot drive the drafter of 'ar'"):
    methods.build("auto", cfg, drafter="ar", costs="1")
  with pytest.raises(ValueError, match="Unknown decoding method 'nope'"):
    methods.build("auto", cfg, drafter="nope", costs="1")
  with pytest.raises(ValueError, match="its own chain"):
    methods.build("auto", cfg, drafter="medusa", tree_nodes="8", costs="1")
