"""Hugging Face safetensors weights -> bpdjax base parameters (no heads).

Tensors are read with the `safetensors` package into numpy float32 (F32/F16/BF16/F64) and
mapped from transformers' names and [out, in] layouts onto the tree `Transformer.init` gives.
Every tensor the model needs must be there with its shape, and every tensor of the checkpoint
must be used: a missing, misshapen or left-over tensor is a ValueError naming it.
"""
from __future__ import annotations

import glob
import os

import jax
import numpy as np
import safetensors

from bpdjax import model as model_lib

Params = dict


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


# A multimodal Gemma 3 checkpoint: its language model's tensors under either naming
# (transformers < 5 and the Hub: language_model.model.*; transformers 5 in memory:
# model.language_model.*), and the vision side, which a text model does not use.
_LANGUAGE_MODEL_PREFIXES = (("language_model.model.", "model."),
                            ("model.language_model.", "model."),
                            ("language_model.lm_head.", "lm_head."))
_VISION_PREFIXES = ("vision_tower.", "model.vision_tower.", "multi_modal_projector.",
                    "model.multi_modal_projector.")


def language_model_tensors(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A multimodal Gemma 3's tensors renamed as Gemma3ForCausalLM's, vision tower left out."""
  out = {}
  for name, w in state.items():
    if name.startswith(_VISION_PREFIXES):
      continue
    for old, new in _LANGUAGE_MODEL_PREFIXES:
      if name.startswith(old):
        name = new + name[len(old):]
        break
    out[name] = w
  return out


class _Reader:
  """Takes tensors by name and shape, remembering which were taken."""

  def __init__(self, state: dict[str, np.ndarray]):
    self.state = state
    self.taken: set[str] = set()

  def __call__(self, name: str, shape) -> np.ndarray:
    if name not in self.state:
      raise ValueError(f"Tensor {name} is missing from the checkpoint (expected shape "
                       f"{tuple(shape)})")
    w = self.state[name]
    if tuple(w.shape) != tuple(shape):
      raise ValueError(f"Tensor {name} has shape {tuple(w.shape)}, expected {tuple(shape)}")
    self.taken.add(name)
    return w

  def left_over(self, tied_lm_head: bool) -> list[str]:
    ignored = {"lm_head.weight"} if tied_lm_head else set()
    return sorted(n for n in self.state if n not in self.taken and n not in ignored
                  and not n.endswith("rotary_emb.inv_freq"))


def params_from_hf(state: dict[str, np.ndarray], cfg: model_lib.TransformerConfig,
                   norm_offset: float = 0.0) -> Params:
  """transformers' tensor names / [out, in] layouts -> bpdjax base parameters (no heads).

  Args:
    state: tensor name -> float32 array.
    cfg: the model (its family fields say which tensors there are).
    norm_offset: added to every RMSNorm weight (1 for Gemma, whose norms scale by 1 + w).
  Raises:
    ValueError naming a missing tensor, a tensor of the wrong shape, or tensors left over.
  """
  d, h, k, hd, f, v = (cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim,
                       cfg.vocab_size)
  take = _Reader(state)
  norm = lambda name, size=d: {"scale": take(name, (size,)) + np.float32(norm_offset)}
  p: Params = {"embedding": {"embedding": take("model.embed_tokens.weight", (v, d))}}
  for i in range(cfg.num_layers):
    pre = f"model.layers.{i}."
    attn = f"{pre}self_attn."
    attention = {
        "query": take(attn + "q_proj.weight", (h * hd, d)).T.reshape(d, h, hd),
        "key": take(attn + "k_proj.weight", (k * hd, d)).T.reshape(d, k, hd),
        "value": take(attn + "v_proj.weight", (k * hd, d)).T.reshape(d, k, hd),
        "out": take(attn + "o_proj.weight", (d, h * hd)).T.reshape(h, hd, d),
    }
    if cfg.qkv_bias:
      for name, proj, n in (("query", "q", h), ("key", "k", k), ("value", "v", k)):
        attention[f"{name}_bias"] = take(f"{attn}{proj}_proj.bias", (n * hd,)).reshape(n, hd)
    if cfg.qk_norm:
      attention["query_norm"] = norm(attn + "q_norm.weight", hd)
      attention["key_norm"] = norm(attn + "k_norm.weight", hd)
    layer = {
        "attention": attention,
        "attention_norm": norm(pre + "input_layernorm.weight"),
        "mlp": {
            "gate": {"kernel": take(pre + "mlp.gate_proj.weight", (f, d)).T},
            "up": {"kernel": take(pre + "mlp.up_proj.weight", (f, d)).T},
            "down": {"kernel": take(pre + "mlp.down_proj.weight", (d, f)).T},
        },
    }
    if cfg.post_norms:   # Gemma: post_attention_layernorm normalises the attention's output.
      layer["post_attention_norm"] = norm(pre + "post_attention_layernorm.weight")
      layer["mlp_norm"] = norm(pre + "pre_feedforward_layernorm.weight")
      layer["post_mlp_norm"] = norm(pre + "post_feedforward_layernorm.weight")
    else:
      layer["mlp_norm"] = norm(pre + "post_attention_layernorm.weight")
    p[f"layer_{i}"] = layer
  p["final_norm"] = norm("model.norm.weight")
  if not cfg.tie_embeddings:
    p["lm_head"] = {"kernel": take("lm_head.weight", (v, d)).T}
  left = take.left_over(cfg.tie_embeddings)
  if left:
    raise ValueError(f"The checkpoint has tensors this config does not use: {left[:8]}"
                     f"{' ...' if len(left) > 8 else ''} ({len(left)}; does config.json "
                     "describe these weights?)")
  return jax.tree.map(lambda x: np.ascontiguousarray(x, np.float32), p)
