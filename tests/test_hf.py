"""bpdjax.hf: pretrained Llama import checked against transformers' outputs (tests/fixtures/hf,
written by tools/make_hf_golden.py) and stories260K against a numpy port of llama2.c's run.c.

Needs the shared models (data_dir/models/...); skips without them. No torch needed.
"""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from bpdjax import params as params_lib
from bpdjax.importers import heads as heads_lib
from bpdjax.importers import hf
from bpdjax.importers import llama2c
from bpdjax import model as model_lib
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.configs import default
from tests import helpers

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf")
MODELS = os.path.join(default.get_config().data_dir, "models")
TINYSTORIES = os.path.join(MODELS, "TinyStories-656K")
STORIES260K = os.path.join(MODELS, "stories260K")
# llama2.c doc/stories260K.md: greedy (temperature 0) output from BOS.
STORIES260K_DOC = ("Once upon a time, there was a little girl named Lily. She loved to play "
                   "outside in the park. One day, she saw a big, red ball. She wanted to play "
                   "with it, but it was too high")

needs_tinystories = pytest.mark.skipif(
    not os.path.isfile(os.path.join(TINYSTORIES, "model.safetensors")),
    reason=f"TinyStories-656K not found under {MODELS}")
needs_stories260k = pytest.mark.skipif(
    not os.path.isfile(os.path.join(STORIES260K, "stories260K.bin")),
    reason=f"stories260K not found under {MODELS}")


@pytest.fixture(scope="module")
def golden():
  with open(os.path.join(FIXTURES, "tinystories656k_greedy.json")) as f:
    return json.load(f)


def _logits(cfg, params, tokens):
  tokens = jnp.asarray(tokens, jnp.int32)
  logits = helpers.full_forward(model_lib.Transformer(cfg), params, tokens)     # [B, L, h, V]
  return np.asarray(logits)


@needs_tinystories
def test_import_config_and_tokenizer(golden):
  cfg, params, tok = hf.import_hf(TINYSTORIES)
  assert (cfg.vocab_size, cfg.num_layers, cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads,
          cfg.head_dim, cfg.mlp_dim, cfg.max_len) == (2048, 2, 128, 8, 4, 16, 384, 512)
  assert cfg.tie_embeddings and cfg.norm_eps == 1e-6 and cfg.num_heads_bpd == 1
  assert "lm_head" not in params
  np.testing.assert_array_equal(params["head_1"]["output"]["kernel"], 0.0)
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 2048)
  for g in golden["greedy"]:
    assert tok.encode(g["prompt"]) == g["prompt_ids"], g["prompt"]
    assert tok.decode(g["new_ids"]) == g["text"]


@needs_tinystories
def test_logits_match_transformers():
  ref = np.load(os.path.join(FIXTURES, "tinystories656k_logits.npz"))
  cfg, params, _ = hf.import_hf(TINYSTORIES, num_heads_bpd=2)
  logits = _logits(cfg, params, ref["tokens"])
  diff = np.abs(logits[:, :, 0] - ref["logits"]).max()
  print(f"max |logit diff| vs transformers: {diff:.3g} "
        f"(logit scale {np.abs(ref['logits']).max():.3g})")
  assert diff < 1e-4
  np.testing.assert_array_equal(logits[:, :, 1], logits[:, :, 0])   # Head 2 starts as head 1.
  # 206 positions: a fingerprint (argmax, max, logsumexp) of transformers' logits.
  long = _logits(cfg, params, ref["long_tokens"][None])[0, :, 0].astype(np.float64)
  lse = np.log(np.exp(long - long.max(-1, keepdims=True)).sum(-1)) + long.max(-1)
  print(f"long sequence: max |max diff| {np.abs(long.max(-1) - ref['long_max']).max():.3g}, "
        f"max |logsumexp diff| {np.abs(lse - ref['long_logsumexp']).max():.3g}")
  np.testing.assert_array_equal(long.argmax(-1), ref["long_argmax"])
  np.testing.assert_allclose(long.max(-1), ref["long_max"], atol=1e-4)
  np.testing.assert_allclose(lse, ref["long_logsumexp"], atol=1e-4)


@needs_tinystories
@pytest.mark.parametrize("method,h,head_type", [("ar", 1, "ffn"), ("bpd", 4, "ffn"),
                                                ("bpd", 3, "medusa"), ("medusa", 4, "medusa")])
def test_greedy_matches_transformers(golden, method, h, head_type):
  cfg, params, _ = hf.import_hf(TINYSTORIES, num_heads_bpd=h, head_type=head_type)
  gen = generator_lib.Generator(model_lib.Transformer(cfg), params, eos_id=None)
  prompts = [np.asarray(g["prompt_ids"], np.int32) for g in golden["greedy"]]
  n = golden["new_tokens"]
  built = methods.build(method, cfg)
  out, _ = gen.generate(prompts, built.drafter, built.params, max_new_tokens=n,
                        batch_size=len(prompts))
  for g, o in zip(golden["greedy"], out):
    assert o.tokens.tolist() == g["new_ids"], (g["prompt"], method)
  print(f"{method} h={h} {head_type}: all {len(out)} x {n} tokens equal transformers'; "
        f"calls {[o.calls for o in out]}")


def _model_copy(tmp_path, skip=None):
  dst = tmp_path / "model"
  dst.mkdir()
  for name in os.listdir(TINYSTORIES):
    if name != skip:
      shutil.copy(os.path.join(TINYSTORIES, name), dst / name)
  return dst


def _edit_json(path, **changes):
  with open(path) as f:
    data = json.load(f)
  data.update(changes)
  with open(path, "w") as f:
    json.dump(data, f)


@needs_tinystories
@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file(tmp_path, missing):
  folder = _model_copy(tmp_path, skip=missing)
  pattern = "safetensors" if missing == "model.safetensors" else missing
  with pytest.raises(FileNotFoundError, match=pattern):
    hf.import_hf(str(folder))


@needs_tinystories
@pytest.mark.parametrize("changes,field", [
    ({"model_type": "gpt2"}, "model_type='gpt2'"),
    ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type='dynamic'"),
    ({"attention_bias": True}, "attention_bias=True"),
    ({"mlp_bias": True}, "mlp_bias=True"),
    ({"intermediate_size": 256},
     r"model.layers.0.mlp.gate_proj.weight has shape \(384, 128\), expected \(256, 128\)"),
], ids=["model_type", "architectures", "hidden_act", "rope_scaling", "attention_bias", "mlp_bias",
        "shape"])
def test_unsupported_config(tmp_path, changes, field):
  folder = _model_copy(tmp_path)
  _edit_json(folder / "config.json", **changes)
  with pytest.raises(ValueError, match=field):
    hf.import_hf(str(folder))


@needs_tinystories
def test_tokenizer_vocab_mismatch(tmp_path):
  folder = _model_copy(tmp_path)
  with open(folder / "tokenizer.json") as f:
    data = json.load(f)
  data["added_tokens"].append({"id": 2048, "content": "<|extra|>", "single_word": False,
                               "lstrip": False, "rstrip": False, "normalized": False,
                               "special": True})
  with open(folder / "tokenizer.json", "w") as f:
    json.dump(data, f)
  with pytest.raises(ValueError, match="Tokenizer vocabulary size 2049.*2048"):
    hf.import_hf(str(folder))


@needs_tinystories
def test_merge_heads():
  cfg, base, _ = hf.import_hf(TINYSTORIES, num_heads_bpd=1)
  cfg3, fresh, _ = hf.import_hf(TINYSTORIES, num_heads_bpd=3)
  rng = np.random.default_rng(0)
  trained = {k: {layer: {n: rng.normal(size=np.shape(a)).astype(np.float32) * 0.01
                         for n, a in p.items()} for layer, p in v.items()}
             for k, v in fresh.items() if k.startswith("head_")}
  merged = heads_lib.merge_heads(base, trained)
  params_lib.check_params(cfg3, merged)
  assert merged["head_3"] is trained["head_3"]
  assert merged["layer_0"] is base["layer_0"]
  logits = _logits(cfg3, merged, [[1, 80, 147]])
  assert not np.allclose(logits[:, :, 0], logits[:, :, 1])
  with pytest.raises(ValueError, match="head_params has no head_"):
    heads_lib.merge_heads(base, {"layer_0": base["layer_0"]})
  bad = {"head_1": {"hidden": {"kernel": np.zeros((64, 8)), "bias": np.zeros(8)},
                    "output": {"kernel": np.zeros((8, 64)), "bias": np.zeros(64)}}}
  with pytest.raises(ValueError, match="head_1/hidden/kernel has shape"):
    heads_lib.merge_heads(base, bad)


# --- stories260K (llama2.c) -------------------------------------------------------------------


def _runc_reference_logits(bin_path, tokens):
  """Logits [L, V] of llama2.c run.c's forward() for a token sequence, in numpy, reading the
  checkpoint on its own and using run.c's interleaved rotary pairs on the unpermuted weights."""
  header = np.fromfile(bin_path, dtype="<i4", count=7)
  dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = (int(x) for x in header)
  w = np.fromfile(bin_path, dtype="<f4", offset=28).astype(np.float64)
  hs, kv_dim = dim // n_heads, dim // n_heads * n_kv
  pos = 0

  def take(*shape):
    nonlocal pos
    size = int(np.prod(shape))
    pos += size
    return w[pos - size:pos].reshape(shape)

  emb = take(abs(vocab), dim)
  rms_att, wq, wk = take(n_layers, dim), take(n_layers, dim, dim), take(n_layers, kv_dim, dim)
  wv, wo, rms_ffn = take(n_layers, kv_dim, dim), take(n_layers, dim, dim), take(n_layers, dim)
  w1, w2, w3 = take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
  rms_final = take(dim)
  take(seq_len, hs // 2), take(seq_len, hs // 2)
  wcls = emb if vocab > 0 else take(abs(vocab), dim)

  def rmsnorm(x, weight):
    return weight * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-5)

  def rope(x):                                      # [L, n*hs]; pairs (i, i+1), run.c style.
    length = x.shape[0]
    i = np.arange(0, x.shape[1], 2)
    freq = 1.0 / 10000.0 ** ((i % hs) / hs)
    ang = np.arange(length)[:, None] * freq[None]
    x0, x1 = x[:, 0::2], x[:, 1::2]
    out = np.empty_like(x)
    out[:, 0::2] = x0 * np.cos(ang) - x1 * np.sin(ang)
    out[:, 1::2] = x0 * np.sin(ang) + x1 * np.cos(ang)
    return out

  length = len(tokens)
  x = emb[np.asarray(tokens)]
  causal = np.tril(np.ones((length, length), bool))
  for l in range(n_layers):
    xb = rmsnorm(x, rms_att[l])
    q, k, v = rope(xb @ wq[l].T), rope(xb @ wk[l].T), xb @ wv[l].T
    att_out = np.zeros((length, dim))
    for h in range(n_heads):
      kh = h // (n_heads // n_kv)
      qh = q[:, h * hs:(h + 1) * hs]
      kk, vv = k[:, kh * hs:(kh + 1) * hs], v[:, kh * hs:(kh + 1) * hs]
      s = np.where(causal, qh @ kk.T / np.sqrt(hs), -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      att_out[:, h * hs:(h + 1) * hs] = (p / p.sum(-1, keepdims=True)) @ vv
    x = x + att_out @ wo[l].T
    xb = rmsnorm(x, rms_ffn[l])
    g = xb @ w1[l].T
    x = x + ((g / (1 + np.exp(-g))) * (xb @ w3[l].T)) @ w2[l].T
  return rmsnorm(x, rms_final) @ wcls.T


@needs_stories260k
def test_stories260k_matches_runc_reference_and_doc():
  bin_path = os.path.join(STORIES260K, "stories260K.bin")
  cfg, params, tok = llama2c.import_llama2c(bin_path, os.path.join(STORIES260K, "tok512.bin"),
                                            num_heads_bpd=2)
  assert (cfg.vocab_size, cfg.num_layers, cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads,
          cfg.mlp_dim, cfg.max_len, cfg.tie_embeddings) == (512, 5, 64, 8, 4, 172, 512, True)
  gen = generator_lib.Generator(model_lib.Transformer(cfg), params, eos_id=tok.eos_id)
  out, _ = gen.generate([np.asarray([tok.bos_id], np.int32)], max_new_tokens=60)
  text = tok.decode(out[0].tokens)
  print("stories260K greedy from BOS:", repr(text))
  assert text.startswith(STORIES260K_DOC)
  bpd, _ = gen.generate([np.asarray([tok.bos_id], np.int32)], methods.build("bpd", cfg).drafter,
                        max_new_tokens=60)
  np.testing.assert_array_equal(bpd[0].tokens, out[0].tokens)

  seq = [tok.bos_id] + out[0].tokens.tolist()
  ref = _runc_reference_logits(bin_path, seq)
  got = _logits(cfg, params, [seq])[0, :, 0]
  diff = np.abs(got - ref).max()
  print(f"stories260K: max |logit diff| vs numpy run.c port over {len(seq)} positions: {diff:.3g}")
  assert diff < 1e-4
  assert tok.decode(tok.encode(STORIES260K_DOC)) == STORIES260K_DOC
  assert tok.encode("") == [tok.bos_id]


@needs_stories260k
def test_stories260k_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.bin"):
    llama2c.import_llama2c(str(tmp_path / "nope.bin"), os.path.join(STORIES260K, "tok512.bin"))
  truncated = tmp_path / "short.bin"
  with open(os.path.join(STORIES260K, "stories260K.bin"), "rb") as f:
    truncated.write_bytes(f.read()[:50_000])
  with pytest.raises(ValueError, match="truncated"):
    llama2c.import_llama2c(str(truncated), os.path.join(STORIES260K, "tok512.bin"))
