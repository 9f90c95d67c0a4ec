"""Hugging Face Llama checkpoints -> bpdjax: config.json, *.safetensors, tokenizer.json.

Weights are read with the `safetensors` package into numpy float32 (F32/F16/BF16/F64). The
imported LM head becomes head 1 (see importers/heads.py for the fresh heads beyond it).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Optional

import jax
import ml_collections
import numpy as np
import safetensors

from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax.data import tokenizers
from bpdjax.importers import heads as heads_lib

Params = heads_lib.Params
_LLAMA_ARCHITECTURES = ("LlamaForCausalLM",)


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


def _read_json(path: str, what: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} not found: {path}")
  with open(path) as f:
    return json.load(f)


def import_llama(folder: str, num_heads_bpd: int = 1, head_type: str = "ffn",
                 head_hidden_dim: Optional[int] = None, seed: int = 0, dtype: str = "float32"
                 ) -> tuple[model_lib.TransformerConfig, Params, tokenizers.HFTokenizer]:
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
  tokenizer = tokenizers.hf_tokenizer(folder, hf_config)
  if tokenizer.vocab_size != cfg.vocab_size:
    raise ValueError(f"Tokenizer vocabulary size {tokenizer.vocab_size} ({tokenizer_path}) "
                     f"differs from the embedding's {cfg.vocab_size} rows (config.json "
                     f"vocab_size)")
  base = params_from_hf(load_safetensors(folder), cfg)
  return cfg, heads_lib.with_fresh_heads(cfg, base, seed), tokenizer
