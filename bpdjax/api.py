"""Library / Colab entry point: a trained model from its workdir (`bpdjax.load` is `load`).

  import bpdjax
  m = bpdjax.load("workdirs/tiny")           # latest checkpoint; load(dir, step=200) for another
  m = bpdjax.load("gs://bucket/run")         # a workdir in a bucket reads the same way
  m = bpdjax.load("models/TinyStories-656K", heads="workdirs/ts_ffn")   # HF base + trained heads
  tokens = jnp.asarray([m.vocab.encode("First Citizen:")])
  logits, _ = m.model.apply({"params": m.params}, tokens,
                            jnp.arange(tokens.shape[1])[None])   # [1, L, h, V]

Only the parameters are restored (no optimizer state), unsharded on the default device. Loading
imports neither TensorFlow nor the trainer: `vocab` is a data/tokenizers.py tokenizer
(encode(text) -> ids, decode(ids), bos_id, eos_id, vocab_size): the workdir's SentencePiece
model, or for a run trained from a pretrained import the model's own tokenizer.
`load_heads_onto(model_path, workdir)` puts a workdir's trained heads on a fresh import of the
base instead of reading the base from the checkpoint.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import ml_collections

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax import params as params_lib
from bpdjax import workdir as workdir_lib
from bpdjax.data import tokenizers
from bpdjax.importers import heads as heads_lib
from bpdjax.importers import pretrained


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  config: ml_collections.ConfigDict   # The run's training config (WORKDIR/config.json).
  model: model_lib.Transformer
  params: Any                         # Plain arrays (no partitioning boxes).
  vocab: Any                          # A data/tokenizers.py tokenizer.
  step: int                           # Training step of the checkpoint.


def load(path: str, step: Optional[int] = None, heads: Optional[str] = None,
         tokenizer_path: Optional[str] = None) -> LoadedModel:
  """A model to decode with: a train.py workdir (local or gs://), or a pretrained model.

  Args:
    path: a workdir (its config, vocabulary and the parameters at `step`, default the latest);
      or a Hugging Face Llama folder (or a llama2.c .bin with `tokenizer_path`): with `heads`, a
      workdir whose run trained block heads on that base (`load_heads_onto`); without, the
      plain model with h = 1 (only plain decoding, method "ar").
    step: checkpoint step of the workdir (of `heads` when given).
  Raises:
    FileNotFoundError: `path` is neither a workdir nor a model folder (the message says what
      each would hold), or a workdir lacks its vocabulary or a checkpoint; FileNotFoundError /
      ValueError for a gs:// path whose bucket is missing or a URL of unknown scheme.
  """
  if heads is not None:
    return load_heads_onto(path, heads, step, tokenizer_path)
  if tokenizer_path is not None or pretrained.is_model_folder(path):
    cfg, params, tokenizer = pretrained.import_model(path, tokenizer_path, num_heads_bpd=1)
    config = ml_collections.ConfigDict({"model": dataclasses.asdict(cfg)})
    return LoadedModel(config=config, model=model_lib.Transformer(cfg),
                       params=jax.device_put(params), vocab=tokenizer, step=0)
  if not workdir_lib.is_workdir(path):
    raise FileNotFoundError(
        f"No {workdir_lib.CONFIG_FILE} in {path!r}: it is neither a bpdjax workdir (train.py "
        f"writes config.json there) nor a Hugging Face model folder (config.json, "
        f"tokenizer.json and *.safetensors)")
  workdir = path
  config = workdir_lib.load_config(workdir)
  vocab = tokenizers.load_tokenizer(workdir_lib.vocab_path(workdir))
  model = model_lib.Transformer(configuration.validate_model(config.model))
  params, step = checkpoints.restore_params(workdir, params_lib.abstract_params(model), step)
  return LoadedModel(config=config, model=model, params=params, vocab=vocab, step=int(step))


def load_heads_onto(model_path: str, workdir: str, step: Optional[int] = None,
                    tokenizer_path: Optional[str] = None) -> LoadedModel:
  """A fresh import of a pretrained base with the block heads of a workdir's checkpoint.

  Only the heads (every head_* entry) are read from the checkpoint; the base comes from
  `model_path`. Its sha256 (`params.params_checksum`) must equal the one the training run
  logged for its base (WORKDIR/base_checksum.json), so heads never land on another base. For a
  train_heads_only run the result equals the checkpoint's parameters.

  Args:
    model_path: a Hugging Face Llama folder, or a llama2.c checkpoint .bin (then also
      `tokenizer_path`, its tokenizer .bin).
    workdir: a workdir trained from a pretrained import (config.init).
    step: checkpoint step (default: latest).
  Returns:
    LoadedModel (config: the workdir's; vocab: the fresh import's tokenizer).
  Raises:
    FileNotFoundError: a missing model or workdir file; ValueError: a base whose config or
    checksum differs from the one the heads were trained on.
  """
  config = workdir_lib.load_config(workdir)
  m = config.model
  cfg, fresh, tokenizer = pretrained.import_model(
      model_path, tokenizer_path, num_heads_bpd=m.num_heads_bpd, head_type=m.head_type,
      head_hidden_dim=m.head_hidden_dim, dtype=m.dtype)
  imported = ml_collections.ConfigDict(dataclasses.asdict(cfg))
  checkpoints.check_compatible(m, imported, workdir)
  checksums = workdir_lib.read_base_checksum(workdir)
  if checksums is not None:
    fresh_sum = params_lib.params_checksum(fresh, exclude_prefix="head_")
    if fresh_sum != checksums["imported"]:
      raise ValueError(f"The base at {model_path} (sha256 {fresh_sum}) is not the one the heads "
                       f"in {workdir!r} were trained on (sha256 {checksums['imported']})")
  model = model_lib.Transformer(configuration.validate_model(config.model))
  heads, step = checkpoints.restore_params(
      workdir, params_lib.abstract_params(model, keep=lambda k: k.startswith("head_")), step)
  params = heads_lib.merge_heads(jax.device_put(fresh), heads)
  params_lib.check_params(model.config, params)
  return LoadedModel(config=config, model=model, params=params, vocab=tokenizer, step=int(step))
