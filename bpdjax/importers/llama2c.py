"""llama2.c checkpoints -> bpdjax: the legacy .bin (7 int32 header, float32 weights) and its
tokenizer .bin (score, length, bytes per piece), laid out as Hugging Face Llama tensors first.
"""
from __future__ import annotations

import struct
from typing import Optional
import os

import ml_collections
import numpy as np

from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax.data import tokenizers
from bpdjax.importers import heads as heads_lib
from bpdjax.importers import hf_weights

Params = heads_lib.Params


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
                   ) -> tuple[model_lib.TransformerConfig, Params, tokenizers.Llama2cTokenizer]:
  """Imports a legacy llama2.c checkpoint (e.g. stories260K.bin) and its tokenizer .bin.

  run.c's model: RMSNorm eps 1e-5, rotary theta 10000, SwiGLU FFN w2(silu(w1 x) * w3 x).
  """
  header, w = llama2c_tensors(bin_path)
  tokenizer = tokenizers.Llama2cTokenizer(tokenizer_path, abs(header["vocab_size"]))
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
  base = hf_weights.params_from_hf(state, cfg)
  return cfg, heads_lib.with_fresh_heads(cfg, base, seed), tokenizer
