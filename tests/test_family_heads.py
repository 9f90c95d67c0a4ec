"""Heads on each imported family's frozen base (tests/fixtures/families): self-distillation data
from the fixture, a few train_heads_only steps, the base's sha256 unchanged, the trained heads
loaded onto a fresh import, and every drafting method decoding exactly what plain greedy
decoding does (batch of 3 uneven prompts, sequences past the sliding window).

Tiny settings throughout (12 sampled sequences of 24 tokens, batches of 4, 3 steps); still
~40 s of CPU per family (distillation, training and 4 decoding programs compile), so marked slow.
"""
import json
import os

import jax
import numpy as np
import pytest

from bpdjax import api
from bpdjax import distill
from bpdjax import params as params_lib
from bpdjax import text
from bpdjax import workdir as workdir_lib
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.importers import hf
from bpdjax.train import loop as train_loop
from bpdjax.configs import tinystories_heads

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "families")
FAMILIES = ["mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"]
STEPS = 3
NEW_TOKENS = 40
# Each method with knobs small enough for h = 3 (auto: given costs, no timing; a tree of 8).
METHODS = {"bpd": {}, "medusa": {"k": 4, "tree_size": 16},
           "auto": {"costs": "1,1,1,1", "tree_nodes": "8", "k": 3}}


def _leaves(params):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(params))}


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, tmp_path_factory):
  """(family, folder, reference.json, distill manifest, workdir, training result)."""
  folder = os.path.join(FIXTURES, request.param)
  with open(os.path.join(folder, "reference.json")) as f:
    meta = json.load(f)
  tokens = str(tmp_path_factory.mktemp(f"distill_{request.param}"))
  # Openings (the two short prompts): Qwen's tokenizer has no BOS to start from.
  manifest = distill.distill(tokens, num_sequences=12, seq_len=24, hf_model=folder,
                             temperature=1.0, seed=0, batch_size=12, eval_fraction=0.25,
                             openings=[meta["greedy"][0]["prompt"], meta["greedy"][2]["prompt"]],
                             log=lambda *a: None)
  config = tinystories_heads.get_config()
  config.init.hf_model = folder
  config.data.token_dir = tokens
  config.data.seq_len = 24
  config.data.shuffle_buffer = 8
  config.model.num_heads_bpd = 3
  config.model.head_hidden_dim = 64
  config.update(batch_size=4, num_train_steps=STEPS, schedule_steps=100, warmup_steps=1,
                learning_rate=1e-2, log_every_steps=1, eval_every_steps=1000,
                num_eval_batches=1, checkpoint_every_steps=1000)
  config.lock()           # As train.py's --config gives it: the import may add no new key.
  workdir = str(tmp_path_factory.mktemp(f"heads_{request.param}"))
  result = train_loop.train_and_evaluate(config, workdir)
  return request.param, folder, meta, manifest, workdir, result


def test_base_is_frozen_and_heads_train(trained):
  name, folder, _, manifest, workdir, result = trained
  with open(os.path.join(workdir, workdir_lib.BASE_CHECKSUM_FILE)) as f:
    sums = json.load(f)
  imported = manifest["base_checksum"]
  assert sums["imported"] == sums["start"] == sums["end"] == imported
  assert params_lib.params_checksum(result["params"], exclude_prefix="head_") == imported
  _, fresh, _ = hf.import_hf(folder, num_heads_bpd=3, head_hidden_dim=64)
  before, after = _leaves(fresh), _leaves(result["params"])
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert changed and all(k.startswith(("['head_2']", "['head_3']")) for k in changed), changed
  print(f"{name}: base sha256 {imported[:16]}... unchanged after {STEPS} steps; "
        f"{len(changed)} head tensors trained")


def test_every_method_equals_greedy(trained):
  """ar on the trained workdir loaded onto a fresh import equals transformers' greedy tokens;
  bpd, medusa and auto equal ar."""
  name, folder, meta, _, workdir, result = trained
  loaded = api.load_heads_onto(folder, workdir)
  reference = _leaves(result["params"])
  for k, v in _leaves(loaded.params).items():
    np.testing.assert_array_equal(v, reference[k], err_msg=k)
  cfg = loaded.model.config
  prompts = [np.asarray(g["prompt_ids"], np.int32) for g in meta["greedy"]]
  gen = generator_lib.Generator(loaded.model, loaded.params, eos_id=None)
  ar, _ = gen.generate(prompts, max_new_tokens=NEW_TOKENS, batch_size=len(prompts))
  ar = [o.tokens.tolist() for o in ar]
  assert ar == [g["new_ids"][:NEW_TOKENS] for g in meta["greedy"]], name
  calls = {}
  for method, knobs in METHODS.items():
    built = methods.build(method, cfg, **knobs)
    out, _ = gen.generate(prompts, built, max_new_tokens=NEW_TOKENS,
                          batch_size=len(prompts))
    assert [o.tokens.tolist() for o in out] == ar, (name, method)
    calls[method] = sum(o.calls for o in out)
  # The text API: the family's tokenizer (BOS or none) in, stopping at its EOS.
  g = meta["greedy"][1]
  out = text.generate(loaded, g["prompt"], method="bpd", max_new_tokens=16)
  expected = g["new_ids"][:16]
  if meta["eos_id"] in expected:
    expected = expected[:expected.index(meta["eos_id"]) + 1]
  assert list(out.tokens) == expected, name
  print(f"{name}: bpd, medusa, auto equal ar ({len(prompts)} x {NEW_TOKENS} tokens); serial "
        f"calls {calls} (ar: {len(prompts) * NEW_TOKENS})")
