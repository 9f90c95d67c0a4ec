"""Importers of pretrained Llama-family models: Hugging Face folders and llama2.c checkpoints.

  from bpdjax.importers import pretrained
  cfg, params, tokenizer = pretrained.import_model("../shared/data/models/TinyStories-656K",
                                                  num_heads_bpd=4)

  llama.py    Hugging Face Llama (config.json, *.safetensors, tokenizer.json)
  llama2c.py  legacy llama2.c .bin checkpoints and their tokenizer .bin
  heads.py    fresh block heads on an import; trained heads merged onto a fresh import
  pretrained.py  import_model(path) / import_for_config(config): the right importer

Training from an import (config.init; configs/tinystories_heads.py) goes through
`pretrained.import_for_config`; `bpdjax.api.load_heads_onto` puts trained heads on a fresh import.
"""
