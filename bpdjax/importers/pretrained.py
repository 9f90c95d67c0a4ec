"""Which importer reads a pretrained model: by path (`import_model`) or by a training config's
`init` section (`import_for_config`)."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import ml_collections

from bpdjax import configuration
from bpdjax import workdir as workdir_lib
from bpdjax.data import tokenizers
from bpdjax.importers import from_workdir
from bpdjax.importers import heads as heads_lib
from bpdjax.importers import hf
from bpdjax.importers import llama2c


def is_model_folder(path: str) -> bool:
  """Whether `path` is a local Hugging Face model folder (config.json, tokenizer.json and
  safetensors weights) rather than, say, a bpdjax workdir (which has config.json too)."""
  if "://" in path or not os.path.isdir(path):
    return False
  names = os.listdir(path)
  return ("config.json" in names and "tokenizer.json" in names
          and any(n.endswith(".safetensors") for n in names))


def import_model(path: str, tokenizer_path: Optional[str] = None, **kwargs):
  """A Hugging Face folder, or a llama2.c .bin with `tokenizer_path` (its tokenizer .bin).

  kwargs: num_heads_bpd, head_type, head_hidden_dim, seed, dtype (see hf.import_hf).
  Returns (TransformerConfig, params, tokenizer).
  """
  if os.path.isdir(path):
    return hf.import_hf(path, **kwargs)
  if os.path.isfile(path):
    if not tokenizer_path:
      raise ValueError(f"{path} is a llama2.c checkpoint: pass tokenizer_path (its tokenizer "
                       ".bin)")
    return llama2c.import_llama2c(path, tokenizer_path, **kwargs)
  raise FileNotFoundError(f"Model not found: {path} (a Hugging Face folder or a llama2.c .bin)")


def import_for_config(config: ml_collections.ConfigDict):
  """Imports the pretrained model named by config.init (hf_model, or llama2c_bin +
  llama2c_tokenizer) with the config's num_heads_bpd / head_type / head_hidden_dim / dtype
  and fresh heads seeded by config.seed; or (init.workdir) a bpdjax workdir's parameters,
  heads included, and model section (see `from_workdir.import_workdir`).

  Returns:
    (a copy of config whose model section is the import's, params (numpy float32 tree, fresh
    heads included), tokenizer).
  Raises:
    ValueError if config.init names nothing; FileNotFoundError / ValueError from the import.
  """
  source = configuration.init_source(config)
  if source == "workdir":
    config, params, _ = from_workdir.import_workdir(config)
    return config, params, tokenizers.load_tokenizer(workdir_lib.vocab_path(config.init.workdir))
  m = config.model
  kwargs = dict(num_heads_bpd=m.num_heads_bpd, head_type=m.head_type,
                head_hidden_dim=m.head_hidden_dim, seed=config.seed, dtype=m.dtype)
  if source == "hf":
    cfg, params, tokenizer = hf.import_hf(config.init.hf_model, **kwargs)
  elif source == "llama2c":
    if not (config.init.llama2c_bin and config.init.llama2c_tokenizer):
      raise ValueError("init.llama2c_bin and init.llama2c_tokenizer must be given together")
    cfg, params, tokenizer = llama2c.import_llama2c(config.init.llama2c_bin,
                                                    config.init.llama2c_tokenizer, **kwargs)
  else:
    raise ValueError("config.init names no pretrained model (init.hf_model or init.llama2c_bin)")
  if m.get("markov_rank", 0) != cfg.markov_rank:   # The importers take the head type only.
    cfg = dataclasses.replace(cfg, markov_rank=m.markov_rank)
    params = heads_lib.with_fresh_heads(
        cfg, {k: v for k, v in params.items() if not k.startswith("head_")}, config.seed)
  config = config.copy_and_resolve_references()
  for field in dataclasses.fields(cfg):
    config.model[field.name] = getattr(cfg, field.name)
  return config, params, tokenizer
