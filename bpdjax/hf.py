"""Imports pretrained Llama-family checkpoints into bpdjax.

  from bpdjax import hf
  cfg, params, tok = hf.import_llama("/path/TinyStories-656K", num_heads_bpd=4)
  model = model_lib.Transformer(cfg)
  gen = generate.Generator(model, params, eos_id=tok.eos_id)
  out, _ = gen.generate([tok.encode("Once upon a time")], method="bpd", max_new_tokens=64)
  print(tok.decode(out[0].tokens))

Two formats:
  * Hugging Face Llama (`import_llama`): config.json, *.safetensors (F32/F16/BF16; read with the
    `safetensors` package into numpy float32) and tokenizer.json (the `tokenizers` library).
  * llama2.c (`import_llama2c`): the legacy .bin checkpoint (7 int32 header, float32 weights)
    and its tokenizer .bin (score, length, bytes per piece).

The imported LM head becomes head 1 and is exact: for head_type "ffn" head 1's FFN output layer
is zero (the FFN is the identity), for "medusa" head 1 is the plain LM head. Further heads are
fresh: "ffn" heads start as copies of head 1 (zero output layer), "medusa" heads have a zero
ResBlock and a copy of the LM head as their vocabulary projection (as Medusa initialises them).
`merge_heads` puts trained heads on top of imported base parameters.

Training from an import (config.init; see configs/tinystories_heads.py): `import_for_config`
gives the run's config and initial parameters, `copy_tokenizer` / `load_tokenizer` keep the
model's tokenizer in the workdir, `bpdjax.api.load_heads_onto` puts trained heads on a fresh
import.

All parameters are returned as host numpy float32 arrays, in the tree `Transformer.init` gives.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import struct
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax import partitioning
from bpdjax.pretrained_tokenizers import HFTokenizer, Llama2cTokenizer  # pylint: disable=unused-import

Params = dict[str, Any]

_LLAMA_ARCHITECTURES = ("LlamaForCausalLM",)


# ---------------------------------------------------------------------------------------------
# Config.


def _bad(field: str, value, why: str):
  return ValueError(f"Unsupported config.json: {field}={value!r} ({why})")


def config_from_hf(hf: dict, num_heads_bpd: int = 1, head_type: str = "ffn",
                   head_hidden_dim: Optional[int] = None,
                   dtype: str = "float32") -> model_lib.TransformerConfig:
  """A Hugging Face Llama config.json (as a dict) -> TransformerConfig.

  Raises:
    ValueError naming the field of anything bpdjax's Transformer does not compute the same way.
  """
  model_type = hf.get("model_type")
  if model_type != "llama":
    raise _bad("model_type", model_type, "only 'llama' is supported")
  archs = hf.get("architectures")
  if archs is not None and (not archs or any(a not in _LLAMA_ARCHITECTURES for a in archs)):
    raise _bad("architectures", archs, f"only {list(_LLAMA_ARCHITECTURES)} is supported")
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise _bad("hidden_act", act, "only 'silu' (SwiGLU) is supported")
  if hf.get("rope_scaling") is not None:
    raise _bad("rope_scaling", hf["rope_scaling"], "RoPE scaling is not supported")
  rope_theta = hf.get("rope_theta", 10000.0)
  rope_params = hf.get("rope_parameters")        # transformers >= 5 writes this instead.
  if rope_params is not None:
    if rope_params.get("rope_type", "default") != "default":
      raise _bad("rope_parameters.rope_type", rope_params.get("rope_type"),
                 "only default RoPE is supported")
    rope_theta = rope_params.get("rope_theta", rope_theta)
  for field in ("attention_bias", "mlp_bias"):
    if hf.get(field, False):
      raise _bad(field, hf[field], "biases are not supported")
  if hf.get("quantization_config") is not None:
    raise _bad("quantization_config", hf["quantization_config"], "quantized weights")
  for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"):
    if not isinstance(hf.get(field), int) or hf[field] < 1:
      raise ValueError(f"config.json: {field} must be a positive integer, got "
                       f"{hf.get(field)!r}")
  heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim")
  if head_dim is None:
    if hf["hidden_size"] % heads:
      raise _bad("hidden_size", hf["hidden_size"],
                 f"not divisible by num_attention_heads={heads} and no head_dim given")
    head_dim = hf["hidden_size"] // heads
  m = ml_collections.ConfigDict(dict(
      vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"], emb_dim=hf["hidden_size"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
      mlp_dim=hf["intermediate_size"], max_len=hf.get("max_position_embeddings", 2048),
      num_heads_bpd=num_heads_bpd, mlp_activation="swiglu", rope_theta=float(rope_theta),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      # LlamaConfig's default is untied.
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)), head_type=head_type,
      head_hidden_dim=head_hidden_dim or hf["intermediate_size"], dtype=dtype))
  return configuration.validate_model(m)


# ---------------------------------------------------------------------------------------------
# Weights.


def _to_float32(name: str, dtype: str, shape, data) -> np.ndarray:
  if dtype == "BF16":
    raw = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
    arr = raw.view(np.float32)
  elif dtype in ("F32", "F16", "F64"):
    arr = np.frombuffer(data, dtype={"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype])
    arr = arr.astype(np.float32)
  else:
    raise ValueError(f"Tensor {name} has dtype {dtype}; only F32, F16, BF16 and F64 are supported")
  return arr.reshape(shape)


def load_safetensors(folder: str) -> dict[str, np.ndarray]:
  """Every tensor of every *.safetensors file in `folder`, as numpy float32."""
  import safetensors  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"No *.safetensors weights file (e.g. model.safetensors) in {folder}")
  tensors: dict[str, np.ndarray] = {}
  for path in files:
    with open(path, "rb") as f:
      for name, t in safetensors.deserialize(f.read()):
        tensors[name] = _to_float32(name, t["dtype"], t["shape"], t["data"])
  return tensors


def _take(state: dict, name: str, shape) -> np.ndarray:
  if name not in state:
    raise ValueError(f"Tensor {name} is missing from the checkpoint (expected shape "
                     f"{tuple(shape)})")
  w = state[name]
  if tuple(w.shape) != tuple(shape):
    raise ValueError(f"Tensor {name} has shape {tuple(w.shape)}, expected {tuple(shape)}")
  return w


def params_from_hf(state: dict[str, np.ndarray], cfg: model_lib.TransformerConfig) -> Params:
  """Hugging Face Llama tensor names / [out, in] layouts -> bpdjax base parameters (no heads)."""
  d, h, k, hd, f, v = (cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim,
                       cfg.vocab_size)
  p: Params = {"embedding": {"embedding": _take(state, "model.embed_tokens.weight", (v, d))}}
  for i in range(cfg.num_layers):
    pre = f"model.layers.{i}."
    t = lambda name, shape, pre=pre: _take(state, pre + name, shape)
    p[f"layer_{i}"] = {
        "attention": {
            "query": t("self_attn.q_proj.weight", (h * hd, d)).T.reshape(d, h, hd),
            "key": t("self_attn.k_proj.weight", (k * hd, d)).T.reshape(d, k, hd),
            "value": t("self_attn.v_proj.weight", (k * hd, d)).T.reshape(d, k, hd),
            "out": t("self_attn.o_proj.weight", (d, h * hd)).T.reshape(h, hd, d),
        },
        "attention_norm": {"scale": t("input_layernorm.weight", (d,))},
        "mlp": {
            "gate": {"kernel": t("mlp.gate_proj.weight", (f, d)).T},
            "up": {"kernel": t("mlp.up_proj.weight", (f, d)).T},
            "down": {"kernel": t("mlp.down_proj.weight", (d, f)).T},
        },
        "mlp_norm": {"scale": t("post_attention_layernorm.weight", (d,))},
    }
  p["final_norm"] = {"scale": _take(state, "model.norm.weight", (d,))}
  if not cfg.tie_embeddings:
    p["lm_head"] = {"kernel": _take(state, "lm_head.weight", (v, d)).T}
  return jax.tree.map(lambda x: np.ascontiguousarray(x, np.float32), p)


def _lm_head_kernel(base: Params, cfg: model_lib.TransformerConfig) -> np.ndarray:
  """[D, V] vocabulary projection of the base LM."""
  if cfg.tie_embeddings:
    return np.ascontiguousarray(np.asarray(base["embedding"]["embedding"]).T)
  return np.asarray(base["lm_head"]["kernel"])


def init_heads(cfg: model_lib.TransformerConfig, base: Params, seed: int = 0) -> Params:
  """Fresh heads {head_i: ...} for cfg; all of them start equal to the base LM's next-token head
  (FFN heads: zero output layer; Medusa heads: zero ResBlock, vocab projection = LM head)."""
  x = jnp.zeros((1, 1, cfg.emb_dim), cfg.jnp_dtype)
  heads: Params = {}
  if cfg.head_type == "ffn":
    for i in range(cfg.num_heads_bpd):
      p = model_lib.FfnHead(cfg).init(jax.random.PRNGKey(seed + i), x)["params"]
      heads[f"head_{i + 1}"] = p
  else:
    lm_head = _lm_head_kernel(base, cfg)
    for i in range(1, cfg.num_heads_bpd):
      p = dict(model_lib.MedusaHead(cfg).init(jax.random.PRNGKey(seed + i), x)["params"])
      p = partitioning.strip_boxes(p)
      p["vocab"] = {"kernel": lm_head.copy()}
      heads[f"head_{i + 1}"] = p
  heads = partitioning.strip_boxes(heads)
  return jax.tree.map(lambda a: np.asarray(a, np.float32), heads)


def check_params(cfg: model_lib.TransformerConfig, params: Params) -> None:
  """Raises ValueError unless params has exactly the tree and shapes Transformer(cfg) expects."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  expected = partitioning.strip_boxes(jax.eval_shape(
      lambda: model_lib.Transformer(cfg).init(jax.random.PRNGKey(0), tokens, tokens))["params"])
  want = {jax.tree_util.keystr(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  got = {jax.tree_util.keystr(k): tuple(np.shape(v))
         for k, v in jax.tree_util.tree_leaves_with_path(params)}
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise ValueError(f"Parameters do not match the model: missing {missing}, unexpected {extra}")
  for name, shape in want.items():
    if got[name] != shape:
      raise ValueError(f"Parameter {name} has shape {got[name]}, expected {shape}")


def merge_heads(base_params: Params, head_params: Params) -> Params:
  """base_params with every head_* entry replaced by those of head_params (e.g. heads trained
  on top of an imported model; any other entries of head_params are ignored). Use a config
  whose num_heads_bpd / head_type / head_hidden_dim match the heads; `check_params` verifies."""
  heads = {k: v for k, v in head_params.items() if k.startswith("head_")}
  if not heads:
    raise ValueError(f"head_params has no head_* entries (keys: {sorted(head_params)})")
  d = np.shape(base_params["embedding"]["embedding"])[1]
  for name, p in heads.items():
    for layer in ("hidden", "resblock"):
      if layer in p and np.shape(p[layer]["kernel"])[0] != d:
        raise ValueError(f"{name}/{layer}/kernel has shape {np.shape(p[layer]['kernel'])}; the "
                         f"base model's width is {d}")
  merged = {k: v for k, v in base_params.items() if not k.startswith("head_")}
  merged.update(heads)
  return merged


def _finish(cfg, base: Params, seed: int) -> Params:
  params = dict(base)
  params.update(init_heads(cfg, base, seed))
  check_params(cfg, params)
  return params


# ---------------------------------------------------------------------------------------------
# Entry points.


def _read_json(path: str, what: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} not found: {path}")
  with open(path) as f:
    return json.load(f)


def import_llama(folder: str, num_heads_bpd: int = 1, head_type: str = "ffn",
                 head_hidden_dim: Optional[int] = None, seed: int = 0, dtype: str = "float32"
                 ) -> tuple[model_lib.TransformerConfig, Params, HFTokenizer]:
  """Imports a Hugging Face Llama folder (config.json, *.safetensors, tokenizer.json).

  Args:
    folder: the model folder.
    num_heads_bpd: h, the number of block heads (head 1 is the imported LM head).
    head_type: "ffn" or "medusa".
    head_hidden_dim: hidden width of FFN heads (default: the model's intermediate_size).
    seed: initialisation seed of the fresh head weights (FFN hidden layers).
    dtype: the model's compute dtype (parameters are float32 either way).
  Returns:
    (TransformerConfig, params (numpy float32 tree), HFTokenizer).
  Raises:
    FileNotFoundError naming a missing file; ValueError naming an unsupported config field, a
    tensor of the wrong shape, or a tokenizer whose size differs from the embedding's rows.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"Model folder not found: {folder}")
  hf_config = _read_json(os.path.join(folder, "config.json"), "config.json")
  tokenizer_path = os.path.join(folder, "tokenizer.json")
  if not os.path.isfile(tokenizer_path):
    raise FileNotFoundError(f"tokenizer.json not found: {tokenizer_path}")
  cfg = config_from_hf(hf_config, num_heads_bpd, head_type, head_hidden_dim, dtype)
  tokenizer = _hf_tokenizer(folder, tokenizer_path, hf_config)
  if tokenizer.vocab_size != cfg.vocab_size:
    raise ValueError(f"Tokenizer vocabulary size {tokenizer.vocab_size} ({tokenizer_path}) "
                     f"differs from the embedding's {cfg.vocab_size} rows (config.json "
                     f"vocab_size)")
  base = params_from_hf(load_safetensors(folder), cfg)
  return cfg, _finish(cfg, base, seed), tokenizer


def _hf_tokenizer(folder: str, tokenizer_path: str, hf_config: dict) -> HFTokenizer:
  optional = {}
  for name in ("tokenizer_config.json", "generation_config.json"):   # Both optional.
    path = os.path.join(folder, name)
    optional[name] = _read_json(path, name) if os.path.isfile(path) else {}
  tok_config, gen_config = optional["tokenizer_config.json"], optional["generation_config.json"]
  import tokenizers  # pylint: disable=g-import-not-at-top
  raw = tokenizers.Tokenizer.from_file(tokenizer_path)

  def special_id(name: str) -> Optional[int]:
    token = tok_config.get(f"{name}_token")
    if isinstance(token, dict):
      token = token.get("content")
    if isinstance(token, str) and raw.token_to_id(token) is not None:
      return raw.token_to_id(token)
    value = gen_config.get(f"{name}_token_id", hf_config.get(f"{name}_token_id"))
    if isinstance(value, list):
      value = value[0] if value else None
    return value

  return HFTokenizer(tokenizer_path, bos_id=special_id("bos"), eos_id=special_id("eos"),
                     add_bos=bool(tok_config.get("add_bos_token", False)))


def _read_llama2c(bin_path: str):
  if not os.path.isfile(bin_path):
    raise FileNotFoundError(f"llama2.c checkpoint not found: {bin_path}")
  with open(bin_path, "rb") as f:
    data = f.read()
  if len(data) < 28:
    raise ValueError(f"{bin_path} is too short for a llama2.c header ({len(data)} bytes)")
  dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack_from("<7i", data, 0)
  header = dict(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads,
                n_kv_heads=n_kv_heads, vocab_size=vocab, seq_len=seq_len)
  if dim == 0x616B3432:  # "ak42": the version-1+ export format.
    raise ValueError(f"{bin_path} is a versioned llama2.c export (magic 'ak42'); only the legacy "
                     f"(version 0) format is supported")
  for key, value in header.items():
    if key != "vocab_size" and value < 1:
      raise ValueError(f"{bin_path}: header field {key}={value} must be positive")
  if dim % n_heads or n_heads % n_kv_heads:
    raise ValueError(f"{bin_path}: header dim={dim}, n_heads={n_heads}, n_kv_heads={n_kv_heads} "
                     f"are inconsistent")
  return header, np.frombuffer(data, dtype="<f4", offset=28)


def llama2c_tensors(bin_path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """The header and the weights of a legacy llama2.c checkpoint, in run.c's layouts ([out, in]
  matrices, Meta's interleaved rotary convention), one array per name and layer-stacked."""
  header, flat = _read_llama2c(bin_path)
  d, f, n = header["dim"], header["hidden_dim"], header["n_layers"]
  hs = d // header["n_heads"]
  kv = header["n_kv_heads"] * hs
  v = abs(header["vocab_size"])
  shapes = [("token_embedding", (v, d)), ("rms_att", (n, d)), ("wq", (n, d, d)),
            ("wk", (n, kv, d)), ("wv", (n, kv, d)), ("wo", (n, d, d)), ("rms_ffn", (n, d)),
            ("w1", (n, f, d)), ("w2", (n, d, f)), ("w3", (n, f, d)), ("rms_final", (d,)),
            ("freq_cis_real", (header["seq_len"], hs // 2)),
            ("freq_cis_imag", (header["seq_len"], hs // 2))]
  if header["vocab_size"] < 0:
    shapes.append(("wcls", (v, d)))
  out, offset = {}, 0
  for name, shape in shapes:
    size = int(np.prod(shape))
    if offset + size > flat.size:
      raise ValueError(f"{bin_path} is truncated: tensor {name} {shape} needs {size} floats at "
                       f"offset {offset}, the file has {flat.size}")
    out[name] = flat[offset:offset + size].reshape(shape).astype(np.float32)
    offset += size
  if offset != flat.size:
    raise ValueError(f"{bin_path} has {flat.size - offset} float32 values after the last "
                     f"tensor; header {header} does not describe this file")
  if "wcls" not in out:
    out["wcls"] = out["token_embedding"]
  return header, out


def meta_to_hf_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Permutes the rows of a [n_heads * head_dim, in] q/k projection from Meta's interleaved
  rotary pairs to Hugging Face's half-split ones (convert_llama_weights_to_hf.py's permute)."""
  rows, cols = w.shape
  return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def import_llama2c(bin_path: str, tokenizer_path: str, num_heads_bpd: int = 1,
                   head_type: str = "ffn", head_hidden_dim: Optional[int] = None, seed: int = 0,
                   dtype: str = "float32"
                   ) -> tuple[model_lib.TransformerConfig, Params, Llama2cTokenizer]:
  """Imports a legacy llama2.c checkpoint (e.g. stories260K.bin) and its tokenizer .bin.

  run.c's model: RMSNorm eps 1e-5, rotary theta 10000, SwiGLU FFN w2(silu(w1 x) * w3 x).
  """
  header, w = llama2c_tensors(bin_path)
  tokenizer = Llama2cTokenizer(tokenizer_path, abs(header["vocab_size"]))
  d, nh, nkv = header["dim"], header["n_heads"], header["n_kv_heads"]
  hs = d // nh
  m = ml_collections.ConfigDict(dict(
      vocab_size=abs(header["vocab_size"]), num_layers=header["n_layers"], emb_dim=d,
      num_heads=nh, num_kv_heads=nkv, head_dim=hs, mlp_dim=header["hidden_dim"],
      max_len=header["seq_len"], num_heads_bpd=num_heads_bpd, mlp_activation="swiglu",
      rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=header["vocab_size"] > 0,
      head_type=head_type, head_hidden_dim=head_hidden_dim or header["hidden_dim"], dtype=dtype))
  cfg = configuration.validate_model(m)
  state = {"model.embed_tokens.weight": w["token_embedding"], "model.norm.weight": w["rms_final"],
           "lm_head.weight": w["wcls"]}
  for i in range(cfg.num_layers):
    pre = f"model.layers.{i}."
    state.update({
        pre + "self_attn.q_proj.weight": meta_to_hf_rotary(w["wq"][i], nh),
        pre + "self_attn.k_proj.weight": meta_to_hf_rotary(w["wk"][i], nkv),
        pre + "self_attn.v_proj.weight": w["wv"][i],
        pre + "self_attn.o_proj.weight": w["wo"][i],
        pre + "input_layernorm.weight": w["rms_att"][i],
        pre + "post_attention_layernorm.weight": w["rms_ffn"][i],
        pre + "mlp.gate_proj.weight": w["w1"][i],
        pre + "mlp.up_proj.weight": w["w3"][i],
        pre + "mlp.down_proj.weight": w["w2"][i],
    })
  base = params_from_hf(state, cfg)
  return cfg, _finish(cfg, base, seed), tokenizer


# ---------------------------------------------------------------------------------------------
# Training from an import (config.init) and the tokenizer a workdir keeps.

# Files of a Hugging Face folder that define its tokenizer (config.json: fallback BOS/EOS ids).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                      "special_tokens_map.json", "config.json")


def load_tokenizer(path: str):
  """The tokenizer at `path`: a folder with tokenizer.json (HFTokenizer) or a llama2.c
  tokenizer .bin (Llama2cTokenizer). Both have encode(text) -> ids (BOS first), decode(ids),
  bos_id, eos_id and vocab_size."""
  if os.path.isdir(path):
    tokenizer_path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tokenizer_path):
      raise FileNotFoundError(f"tokenizer.json not found: {tokenizer_path}")
    config_path = os.path.join(path, "config.json")
    hf_config = _read_json(config_path, "config.json") if os.path.isfile(config_path) else {}
    return _hf_tokenizer(path, tokenizer_path, hf_config)
  if os.path.isfile(path):
    return Llama2cTokenizer(path)
  raise FileNotFoundError(f"Tokenizer not found: {path} (a Hugging Face folder with "
                          f"tokenizer.json, or a llama2.c tokenizer .bin)")


def import_for_config(config: ml_collections.ConfigDict):
  """Imports the pretrained model named by config.init (hf_model, or llama2c_bin +
  llama2c_tokenizer) with the config's num_heads_bpd / head_type / head_hidden_dim / dtype
  and fresh heads seeded by config.seed.

  Returns:
    (a copy of config whose model section is the import's, params (numpy float32 tree, fresh
    heads included), tokenizer).
  Raises:
    ValueError if config.init names nothing; FileNotFoundError / ValueError from the import.
  """
  source = configuration.init_source(config)
  m = config.model
  kwargs = dict(num_heads_bpd=m.num_heads_bpd, head_type=m.head_type,
                head_hidden_dim=m.head_hidden_dim, seed=config.seed, dtype=m.dtype)
  if source == "hf":
    cfg, params, tokenizer = import_llama(config.init.hf_model, **kwargs)
  elif source == "llama2c":
    if not (config.init.llama2c_bin and config.init.llama2c_tokenizer):
      raise ValueError("init.llama2c_bin and init.llama2c_tokenizer must be given together")
    cfg, params, tokenizer = import_llama2c(config.init.llama2c_bin,
                                            config.init.llama2c_tokenizer, **kwargs)
  else:
    raise ValueError("config.init names no pretrained model (init.hf_model or init.llama2c_bin)")
  config = config.copy_and_resolve_references()
  for field in dataclasses.fields(cfg):
    config.model[field.name] = getattr(cfg, field.name)
  return config, params, tokenizer


def copy_tokenizer(config: ml_collections.ConfigDict, dst: str) -> str:
  """Copies the tokenizer of config.init's model to `dst` (a folder for Hugging Face models, a
  file for llama2.c) atomically; returns dst. `load_tokenizer(dst)` reads it back."""
  source = configuration.init_source(config)
  if source == "hf":
    return copy_tokenizer_files("hf", config.init.hf_model, dst)
  if source == "llama2c":
    return copy_tokenizer_files("llama2c", config.init.llama2c_tokenizer, dst)
  raise ValueError("config.init names no pretrained model (init.hf_model or init.llama2c_bin)")


def copy_tokenizer_files(model_format: str, source: str, dst: str) -> str:
  """Atomically copies a tokenizer to `dst`: the tokenizer files of Hugging Face folder
  `source` (model_format "hf"), or llama2.c tokenizer file `source` ("llama2c")."""
  tmp = f"{dst}.tmp{os.getpid()}"
  if model_format == "hf":
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in HF_TOKENIZER_FILES:
      if os.path.isfile(os.path.join(source, name)):
        shutil.copy(os.path.join(source, name), os.path.join(tmp, name))
    if not os.path.isfile(os.path.join(tmp, "tokenizer.json")):
      raise FileNotFoundError(f"tokenizer.json not found: {os.path.join(source, 'tokenizer.json')}")
    shutil.rmtree(dst, ignore_errors=True)
  elif model_format == "llama2c":
    shutil.copy(source, tmp)
  else:
    raise ValueError(f"Unknown tokenizer format {model_format!r} (expected 'hf' or 'llama2c')")
  os.replace(tmp, dst)
  return dst
