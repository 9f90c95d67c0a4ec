"""Library / Colab entry point: a trained model from its workdir.

  from bpdjax import api
  m = api.load("workdirs/tiny")              # latest checkpoint; api.load(dir, step=200) for another
  tokens = jnp.asarray([m.vocab.encode("First Citizen:")])
  logits, _ = m.model.apply({"params": m.params}, tokens,
                            jnp.arange(tokens.shape[1])[None])   # [1, L, h, V]

Only the parameters are restored (no optimizer state), unsharded on the default device.

A workdir trained from a pretrained import (config.init, e.g. configs/tinystories_heads.py)
loads the same way; its `vocab` is then the model's own tokenizer (`hf.HFTokenizer` or
`hf.Llama2cTokenizer`: encode(text) -> ids with BOS, decode(ids), bos_id, eos_id, vocab_size).
`load_heads_onto(model_path, workdir)` puts a workdir's trained heads on a fresh import of
the base instead of reading the base from the checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax import partitioning


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  config: ml_collections.ConfigDict   # The run's training config (WORKDIR/config.json).
  model: model_lib.Transformer
  params: Any                         # Plain arrays (no partitioning boxes).
  # seqio.SentencePieceVocabulary, or hf.HFTokenizer / hf.Llama2cTokenizer for a workdir
  # trained from a pretrained import (both: encode(text) -> list[int], decode(ids) -> str,
  # eos_id, vocab_size).
  vocab: Any
  step: int                           # Training step of the checkpoint.


def load(workdir: str, step: Optional[int] = None) -> LoadedModel:
  """Loads config, vocabulary and the parameters at `step` (default: latest) of a workdir.

  Raises:
    FileNotFoundError: no config.json, vocab.model (or the pretrained tokenizer) or checkpoint
      in `workdir`.
  """
  config = checkpoints.load_config(workdir)
  vocab = _workdir_vocab(workdir)
  model = model_lib.Transformer(configuration.validate_model(config.model))
  params, step = checkpoints.restore_params(workdir, _abstract_params(model), step)
  return LoadedModel(config=config, model=model, params=params, vocab=vocab, step=int(step))


def _workdir_vocab(workdir: str):
  from bpdjax import hf  # pylint: disable=g-import-not-at-top
  from bpdjax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  path = vocab_lib.workdir_vocab_path(workdir)
  if os.path.basename(path) == vocab_lib.WORKDIR_VOCAB:
    return vocab_lib.load_vocabulary(path)
  return hf.load_tokenizer(path)   # A pretrained model's tokenizer (imported or token_file run).


def _abstract_params(model, keep=None):
  """ShapeDtypeStructs of the model's parameters on the default device (top-level entries
  `keep(name)` only, when given)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          partitioning.strip_boxes(boxed))
  if keep is not None:
    abstract = {k: v for k, v in abstract.items() if keep(k)}
  return abstract


def load_heads_onto(model_path: str, workdir: str, step: Optional[int] = None,
                    tokenizer_path: Optional[str] = None) -> LoadedModel:
  """A fresh import of a pretrained base with the block heads of a workdir's checkpoint.

  Only the heads (every head_* entry) are read from the checkpoint; the base comes from
  `model_path`. Its sha256 (`checkpoints.params_checksum`) must equal the one the training run
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
  from bpdjax import hf  # pylint: disable=g-import-not-at-top
  from bpdjax import trainer  # pylint: disable=g-import-not-at-top

  config = checkpoints.load_config(workdir)
  m = config.model
  kwargs = dict(num_heads_bpd=m.num_heads_bpd, head_type=m.head_type,
                head_hidden_dim=m.head_hidden_dim, dtype=m.dtype)
  if os.path.isdir(model_path):
    cfg, fresh, tokenizer = hf.import_llama(model_path, **kwargs)
  elif os.path.isfile(model_path):
    if not tokenizer_path:
      raise ValueError(f"{model_path} is a llama2.c checkpoint: pass tokenizer_path (its "
                       f"tokenizer .bin)")
    cfg, fresh, tokenizer = hf.import_llama2c(model_path, tokenizer_path, **kwargs)
  else:
    raise FileNotFoundError(f"Model not found: {model_path} (a Hugging Face folder or a "
                            f"llama2.c .bin)")
  imported = ml_collections.ConfigDict(dataclasses.asdict(cfg))
  checkpoints.check_compatible(m, imported, workdir)
  checksum_path = os.path.join(workdir, trainer.BASE_CHECKSUM_FILE)
  if os.path.isfile(checksum_path):
    import json  # pylint: disable=g-import-not-at-top
    with open(checksum_path) as f:
      trained_on = json.load(f)["imported"]
    fresh_sum = checkpoints.params_checksum(fresh, exclude_prefix="head_")
    if fresh_sum != trained_on:
      raise ValueError(f"The base at {model_path} (sha256 {fresh_sum}) is not the one the heads "
                       f"in {workdir!r} were trained on (sha256 {trained_on})")
  model = model_lib.Transformer(configuration.validate_model(config.model))
  heads, step = checkpoints.restore_params(
      workdir, _abstract_params(model, keep=lambda k: k.startswith("head_")), step)
  params = hf.merge_heads(jax.device_put(fresh), heads)
  hf.check_params(model.config, params)
  return LoadedModel(config=config, model=model, params=params, vocab=tokenizer, step=int(step))
