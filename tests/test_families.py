"""The imported families (Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text, and the language model
of a multimodal Gemma 3) against transformers:
tiny random models in tests/fixtures/families/<family>/ with transformers' logits and greedy
continuations (written by tools/make_family_fixtures.py; no torch needed here).

Each fixture's sliding window (8 positions) is shorter than its sequences (20-token logit rows,
prompts of 2 to 28 tokens with 64 new tokens), so the window matters; controls show that each
family feature the fixture switches on changes the logits.
"""
import dataclasses
import json
import os
import re
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy

from bpdjax import cache as cache_lib
from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.importers import hf
from bpdjax.importers import hf_config
from bpdjax.importers import hf_weights
from tests import helpers

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "families")
FAMILIES = ["mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3"]
TEXT_FAMILIES = FAMILIES[:-1]    # gemma3: a multimodal checkpoint's language model.
# What each fixture's config.json must give (the importer's reading of the family).
EXPECTED = {
    "mistral": dict(sliding_window=8, sliding_window_layers=(0, 1), tie_embeddings=False),
    "qwen2": dict(qkv_bias=True, sliding_window=8, sliding_window_layers=(1,),
                  tie_embeddings=True, rope_theta=1e6),
    "qwen3": dict(qk_norm=True, sliding_window=8, sliding_window_layers=(1,),
                  tie_embeddings=False),
    "gemma2": dict(mlp_activation="geglu", post_norms=True, embed_scale=8.0,
                   query_pre_attn_scalar=32.0, attn_logit_softcap=5.0, final_logit_softcap=10.0,
                   sliding_window=8, sliding_window_layers=(0,), tie_embeddings=True),
    "gemma3_text": dict(mlp_activation="geglu", post_norms=True, qk_norm=True, embed_scale=8.0,
                        query_pre_attn_scalar=24.0, sliding_window=8, sliding_window_layers=(0,),
                        rope_theta=1e6, rope_factor=2.0, local_rope_theta=1e4),
    "gemma3": dict(mlp_activation="geglu", post_norms=True, qk_norm=True, embed_scale=8.0,
                   query_pre_attn_scalar=24.0, sliding_window=8, sliding_window_layers=(0,),
                   rope_theta=1e6, rope_factor=1.0, local_rope_theta=1e4, tie_embeddings=True),
}
# Features whose removal must change the logits (a control that the fixture exercises them).
CONTROLS = {
    "sliding_window_layers": (), "attn_logit_softcap": 0.0, "final_logit_softcap": 0.0,
    "query_pre_attn_scalar": 0.0, "embed_scale": 1.0, "rope_factor": 1.0, "local_rope_theta": 0.0,
}


def logits_of(cfg, params, tokens):
  """Head-1 logits [B, L, V] of a plain forward pass over tokens [B, L] (jitted)."""
  tokens = jnp.asarray(tokens, jnp.int32)
  return np.asarray(helpers.full_forward(model_lib.Transformer(cfg), params, tokens)[:, :, 0])


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
  """(name, folder, reference.json, reference.npz)."""
  folder = os.path.join(FIXTURES, request.param)
  with open(os.path.join(folder, "reference.json")) as f:
    meta = json.load(f)
  return request.param, folder, meta, dict(np.load(os.path.join(folder, "reference.npz")))


@pytest.fixture(scope="module")
def imported(family):
  """The fixture imported with h = 1: (cfg, params, tokenizer)."""
  return hf.import_hf(family[1])


def test_config_reads_the_family(family, imported):
  name, _, meta, _ = family
  cfg, _, tok = imported
  for field, value in EXPECTED[name].items():
    assert getattr(cfg, field) == value, (name, field)
  assert (cfg.vocab_size, cfg.num_layers, cfg.emb_dim, cfg.num_kv_heads) == (320, 2, 64, 2)
  assert (tok.bos_id, tok.eos_id) == (meta["bos_id"], meta["eos_id"])
  assert tok.vocab_size == meta["tokenizer_size"]     # Qwen2's: 300 ids for 320 rows.
  for g in meta["greedy"]:
    assert tok.encode(g["prompt"]) == g["prompt_ids"], (name, g["prompt"])


def test_logits_match_transformers(family, imported):
  name, _, _, ref = family
  cfg, params, _ = imported
  logits = logits_of(cfg, params, ref["tokens"])
  diff = np.abs(logits - ref["logits"]).max()
  print(f"{name}: max |logit diff| vs transformers over {ref['tokens'].size} positions "
        f"{diff:.3g} (logit scale {np.abs(ref['logits']).max():.3g})")
  assert diff < 1e-4
  for field, off in CONTROLS.items():
    if getattr(cfg, field) != off:
      changed = logits_of(dataclasses.replace(cfg, **{field: off}), params, ref["tokens"])
      assert np.abs(changed - ref["logits"]).max() > 1e-3, (name, field)


def test_greedy_matches_transformers(family, imported):
  """64 greedy tokens from 3 uneven prompts in one batch equal transformers' generate()."""
  name, _, meta, _ = family
  cfg, params, _ = imported
  prompts = [np.asarray(g["prompt_ids"], np.int32) for g in meta["greedy"]]
  gen = generator_lib.Generator(model_lib.Transformer(cfg), params, eos_id=None)
  out, _ = gen.generate(prompts, max_new_tokens=meta["new_tokens"], batch_size=len(prompts))
  for g, o in zip(meta["greedy"], out):
    assert o.tokens.tolist() == g["new_ids"], (name, g["prompt"])
  print(f"{name}: {len(out)} x {meta['new_tokens']} greedy tokens equal transformers' "
        f"(prompt lengths {[len(p) for p in prompts]}, window {cfg.sliding_window})")


def _tree_logits(cfg, params, prefix, nodes, parents):
  """Head-1 logits [N, V] of a tree of N nodes (token, parent index; node 0 the root, a child
  of the prefix's last token) verified in one call after `prefix` sits in the cache."""
  model = model_lib.Transformer(cfg)
  p = len(prefix)
  depth, mask = [], np.zeros((len(nodes), len(nodes)), bool)
  for i, parent in enumerate(parents):
    depth.append(0 if parent < 0 else depth[parent] + 1)
    mask[i] = mask[parent] if parent >= 0 else False
    mask[i, i] = True
  cache = cache_lib.init_for_model(cfg, 1, p + len(nodes))
  tokens = jnp.asarray([prefix], jnp.int32)
  _, cache = model.apply({"params": params}, tokens, jnp.arange(p)[None], cache=cache,
                         method=model.hidden_states)
  cache = cache_lib.set_lengths(cache, jnp.asarray([p]))
  logits, _ = model.apply({"params": params}, jnp.asarray([nodes], jnp.int32),
                          p + jnp.asarray([depth]), cache=cache,
                          block_mask=jnp.asarray(mask[None]))
  return np.asarray(logits[0, :, 0]), depth


def test_tree_sees_the_window_of_its_own_path(family, imported):
  """A tree verified after a 14-token prefix (window 8: the window cuts through the prefix, at
  a different place for each depth): every node's logits equal those of a plain forward pass
  over prefix + the node's path, though its cache slot (up to 12 past the prefix) is not its
  position (at most 4 past). Without the window they differ: the window is what is tested."""
  name, _, _, ref = family
  cfg, params, _ = imported
  prefix = [int(t) for t in ref["tokens"][0, :14]]
  nodes = [5, 17, 40, 9, 33, 71, 2, 101, 15, 64, 7, 88, 120]
  parents = [-1, 0, 0, 0, 1, 1, 2, 4, 4, 5, 6, 7, 3]
  tree, depth = _tree_logits(cfg, params, prefix, nodes, parents)
  windowless = dataclasses.replace(cfg, sliding_window_layers=())
  for i in range(len(nodes)):
    path, j = [], i
    while j >= 0:
      path.insert(0, nodes[j])
      j = parents[j]
    plain = logits_of(cfg, params, [prefix + path])[0, -1]
    np.testing.assert_allclose(tree[i], plain, atol=1e-4, err_msg=f"{name} node {i}")
    assert np.abs(logits_of(windowless, params, [prefix + path])[0, -1] - plain).max() > 1e-3
  assert max(depth) == 4


@pytest.mark.parametrize("name", ["mistral", "gemma3_text"])
def test_medusa_tree_under_the_window_equals_greedy(name):
  """Medusa trees of 16 nodes verified past a window of 8 (Mistral: every layer; Gemma 3: one of
  two): the accepted tokens are transformers' greedy tokens. Its fresh heads are copies of the
  LM head, so deeper nodes are guesses, often rejected."""
  folder = os.path.join(FIXTURES, name)
  with open(os.path.join(folder, "reference.json")) as f:
    meta = json.load(f)
  cfg, params, _ = hf.import_hf(folder, num_heads_bpd=3, head_type="medusa")
  prompts = [np.asarray(g["prompt_ids"], np.int32) for g in meta["greedy"]]
  gen = generator_lib.Generator(model_lib.Transformer(cfg), params, eos_id=None)
  built = methods.build("medusa", cfg, k=4, tree_size=16)
  out, _ = gen.generate(prompts, built.drafter, built.params, max_new_tokens=meta["new_tokens"],
                        batch_size=len(prompts))
  assert [o.tokens.tolist() for o in out] == [g["new_ids"] for g in meta["greedy"]]
  calls = sum(o.calls for o in out)
  print(f"{name}: medusa (16-node trees) = greedy, {calls} calls for "
        f"{len(out) * meta['new_tokens']} tokens")


# --- old-style config.json and bad input ------------------------------------------------------


def _config_json(name):
  with open(os.path.join(FIXTURES, name, "config.json")) as f:
    return json.load(f)


def _old_style(name):
  """The fixture's config.json as transformers < 5 wrote it (no rope_parameters/layer_types)."""
  c = _config_json(name)
  params, types = c.pop("rope_parameters"), c.pop("layer_types", None)
  if name == "gemma3_text":
    c.update(rope_theta=params["full_attention"]["rope_theta"],
             rope_local_base_freq=params["sliding_attention"]["rope_theta"],
             rope_scaling={"rope_type": "linear", "factor": params["full_attention"]["factor"]},
             sliding_window_pattern=types.index("full_attention") + 1)
  else:
    c["rope_theta"] = params["rope_theta"]
  return c


@pytest.mark.parametrize("name", TEXT_FAMILIES)
def test_old_style_config_reads_the_same(name):
  assert (hf_config.config_from_hf(_old_style(name))
          == hf_config.config_from_hf(_config_json(name)))


with open(os.path.join(FIXTURES, "published_configs.json")) as _f:
  PUBLISHED = json.load(_f)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_read_as_transformers_reads_them(name):
  """config.json files shaped like published checkpoints' (Mistral-7B-v0.1, Qwen2.5-0.5B,
  Qwen3-0.6B, gemma-2-2b, gemma-3-1b, multimodal gemma-3-4b: old-style keys, sparse
  text_config): window, its layers, RoPE per layer type, heads, tying, scaling and caps as
  transformers reads them (published_configs.json, tools/make_family_fixtures.py)."""
  want = PUBLISHED[name]["transformers"]
  cfg = hf_config.config_from_hf(PUBLISHED[name]["config"])
  assert cfg.sliding_window == (want["sliding_window"] or 0)
  assert list(cfg.sliding_window_layers) == want["sliding_layers"]
  full, local = want["rope"]["full_attention"], want["rope"]["sliding_attention"]
  assert (cfg.rope_theta, cfg.rope_factor) == (full[0], full[2])
  if cfg.sliding_window_layers:
    assert ((cfg.local_rope_theta, 1.0) if cfg.local_rope_theta
            else (cfg.rope_theta, cfg.rope_factor)) == (local[0], local[2])
  assert (cfg.num_kv_heads, cfg.head_dim, cfg.tie_embeddings, cfg.vocab_size) == (
      want["num_kv_heads"], want["head_dim"], want["tie"], want["vocab_size"])
  assert cfg.query_pre_attn_scalar == (want["query_pre_attn_scalar"] or 0)
  assert [cfg.attn_logit_softcap, cfg.final_logit_softcap] == [c or 0 for c in want["softcaps"]]


def _copy(tmp_path, name, config_changes=None, drop=None, reshape=None):
  """The fixture folder copied, with config.json keys changed and a tensor dropped/truncated."""
  folder = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), folder)
  if config_changes:
    c = _config_json(name)
    c.update(config_changes)
    (folder / "config.json").write_text(json.dumps(c))
  if drop or reshape:
    state = hf_weights.load_safetensors(str(folder))
    if drop:
      del state[drop]
    if reshape:
      state[reshape] = state[reshape][..., :-1]
    safetensors.numpy.save_file(state, str(folder / "model.safetensors"))
  return str(folder)


@pytest.mark.parametrize("name,changes,match", [
    ("qwen2", {"model_type": "phi3"}, "model_type='phi3'"),
    ("qwen2", {"architectures": ["Qwen2ForSequenceClassification"]}, "architectures"),
    ("gemma3", {"text_config": None}, "text_config=None"),
    ("gemma3", {"architectures": ["Gemma3ForCausalLM"]}, "architectures"),
    ("mistral", {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
     "rope_scaling.rope_type='dynamic'"),
    ("qwen3", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}},
     "rope_parameters.rope_type='yarn'"),
    ("gemma3_text", {"rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}},
     "rope_parameters.sliding_attention"),
    ("qwen2", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ("qwen3", {"num_experts": 8, "num_experts_per_tok": 2}, "num_experts=8"),
    ("mistral", {"num_local_experts": 8}, "num_local_experts=8"),
    ("gemma2", {"hidden_activation": "gelu"}, "hidden_activation='gelu'"),
    ("qwen3", {"attention_bias": True}, "attention_bias=True"),
    ("gemma2", {"layer_types": ["sliding_attention"]}, "layer_types"),
    ("mistral", {"sliding_window": 0}, "sliding_window=0"),
], ids=["model_type", "architectures", "multimodal_text_config", "multimodal_arch",
        "rope_scaling", "rope_parameters",
        "local_rope_scaling", "partial_rope", "moe_qwen", "moe_mixtral", "activation",
        "attention_bias", "layer_types", "window"])
def test_unsupported_config(tmp_path, name, changes, match):
  with pytest.raises(ValueError, match=re.escape(match)):
    hf.import_hf(_copy(tmp_path, name, changes))


@pytest.mark.parametrize("name,kwargs,match", [
    ("qwen3", {"drop": "model.layers.1.self_attn.q_norm.weight"},
     "Tensor model.layers.1.self_attn.q_norm.weight is missing"),
    ("gemma2", {"drop": "model.layers.0.post_feedforward_layernorm.weight"},
     "Tensor model.layers.0.post_feedforward_layernorm.weight is missing"),
    ("qwen2", {"reshape": "model.layers.0.self_attn.k_proj.bias"},
     "Tensor model.layers.0.self_attn.k_proj.bias has shape (31,), expected (32,)"),
    ("mistral", {"drop": "lm_head.weight"}, "Tensor lm_head.weight is missing"),
    # A Qwen3 checkpoint read as Llama: its q/k norms would go unused (a different model).
    ("qwen3", {"config_changes": {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}},
     "tensors this config does not use: ['model.layers.0.self_attn.k_norm.weight'"),
], ids=["missing_qk_norm", "missing_post_norm", "shape", "missing_lm_head", "left_over"])
def test_bad_checkpoint(tmp_path, name, kwargs, match):
  with pytest.raises(ValueError, match=re.escape(match)):
    hf.import_hf(_copy(tmp_path, name, **kwargs))


@pytest.mark.parametrize("changes,match", [
    (dict(sliding_window_layers=(0, 2)), "model.sliding_window_layers must be distinct"),
    (dict(sliding_window_layers=(1,), sliding_window=0), "needs model.sliding_window >= 1"),
    (dict(attn_logit_softcap=-1.0), "model.attn_logit_softcap must be >= 0"),
    (dict(rope_factor=0.0), "model.rope_factor must be > 0"),
    (dict(mlp_activation="relu"), "model.mlp_activation must be one of"),
])
def test_bad_model_config(changes, match):
  m = ml_collections.ConfigDict(dataclasses.asdict(hf_config.config_from_hf(
      _config_json("qwen2"))))
  m.update(changes)
  with pytest.raises(ValueError, match=re.escape(match)):
    configuration.validate_model(m)
