"""Hugging Face checkpoints -> bpdjax: config.json, *.safetensors, tokenizer.json.

  cfg, params, tokenizer = hf.import_hf("path/to/Qwen2.5-0.5B", num_heads_bpd=4)

The families (Llama, Mistral, Qwen2/2.5, Qwen3, Gemma 2, Gemma 3: text-only checkpoints, and the
language model of a multimodal Gemma 3) and what each computes
are in hf_config.py; the tensors' mapping in hf_weights.py; the tokenizer (tokenizer.json with
the BOS/EOS of tokenizer_config.json / generation_config.json) in data/tokenizers.py. The
imported LM head becomes head 1 (see importers/heads.py for the fresh heads beyond it).
"""
from __future__ import annotations

import json
import os
from typing import Optional

from bpdjax import model as model_lib
from bpdjax.data import tokenizers
from bpdjax.importers import heads as heads_lib
from bpdjax.importers import hf_config
from bpdjax.importers import hf_weights

Params = heads_lib.Params


def _read_json(path: str, what: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} not found: {path}")
  with open(path) as f:
    return json.load(f)


def import_hf(folder: str, num_heads_bpd: int = 1, head_type: str = "ffn",
              head_hidden_dim: Optional[int] = None, seed: int = 0, dtype: str = "float32"
              ) -> tuple[model_lib.TransformerConfig, Params, tokenizers.HFTokenizer]:
  """Imports a Hugging Face folder (config.json, *.safetensors, tokenizer.json) of a supported
  family (hf_config.FAMILIES).

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
    tensor missing, misshapen or left over, or a tokenizer with more ids than embedding rows.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"Model folder not found: {folder}")
  config = _read_json(os.path.join(folder, "config.json"), "config.json")
  tokenizer_path = os.path.join(folder, "tokenizer.json")
  if not os.path.isfile(tokenizer_path):
    raise FileNotFoundError(f"tokenizer.json not found: {tokenizer_path}")
  cfg = hf_config.config_from_hf(config, num_heads_bpd, head_type, head_hidden_dim, dtype)
  tokenizer = tokenizers.hf_tokenizer(folder, config)
  # Qwen's embeddings have rows beyond its tokenizer's ids (padding); fewer rows than ids is an
  # error.
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f"Tokenizer vocabulary size {tokenizer.vocab_size} ({tokenizer_path}) "
                     f"exceeds the embedding's {cfg.vocab_size} rows (config.json vocab_size)")
  family = hf_config.family_of(hf_config.language_model_config(config))
  state = hf_weights.load_safetensors(folder)
  if config.get("model_type") == "gemma3":      # Multimodal: the language model only.
    state = hf_weights.language_model_tensors(state)
  base = hf_weights.params_from_hf(state, cfg, norm_offset=1.0 if family.gemma else 0.0)
  return cfg, heads_lib.with_fresh_heads(cfg, base, seed), tokenizer
