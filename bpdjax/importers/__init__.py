"""Importers of pretrained decoder models: Hugging Face folders (Llama, Mistral, Qwen2/2.5, Qwen3,
Gemma 2, Gemma 3) and llama2.c checkpoints.

  from bpdjax.importers import pretrained
  cfg, params, tokenizer = pretrained.import_model("../shared/data/models/TinyStories-656K",
                                                  num_heads_bpd=4)

  hf.py       a Hugging Face folder (config.json, *.safetensors, tokenizer.json): import_hf
  hf_config.py  config.json -> TransformerConfig per family; unsupported fields are errors
  hf_weights.py safetensors -> parameters; missing, misshapen, left-over tensors are errors
  llama2c.py  legacy llama2.c .bin checkpoints and their tokenizer .bin
  heads.py    fresh block heads on an import; trained heads merged onto a fresh import
  pretrained.py  import_model(path) / import_for_config(config): the right importer

Training from an import (config.init; configs/tinystories_heads.py) goes through
`pretrained.import_for_config`; `bpdjax.api.load_heads_onto` puts trained heads on a fresh import.
"""
