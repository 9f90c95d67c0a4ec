"""Library / Colab entry point: a trained model from its workdir.

  from bpdjax import api
  m = api.load("workdirs/tiny")              # latest checkpoint; api.load(dir, step=200) for another
  tokens = jnp.asarray([m.vocab.encode("First Citizen:")])
  logits, _ = m.model.apply({"params": m.params}, tokens,
                            jnp.arange(tokens.shape[1])[None])   # [1, L, h, V]

Only the parameters are restored (no optimizer state), unsharded on the default device.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import seqio

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax import partitioning


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  config: ml_collections.ConfigDict   # The run's training config (WORKDIR/config.json).
  model: model_lib.Transformer
  params: Any                         # Plain arrays (no partitioning boxes).
  vocab: seqio.SentencePieceVocabulary
  step: int                           # Training step of the checkpoint.


def load(workdir: str, step: Optional[int] = None) -> LoadedModel:
  """Loads config, vocabulary and the parameters at `step` (default: latest) of a workdir.

  Raises:
    FileNotFoundError: no config.json, vocab.model or checkpoint in `workdir`.
  """
  from bpdjax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top

  config = checkpoints.load_config(workdir)
  vocab_path = os.path.join(workdir, vocab_lib.WORKDIR_VOCAB)
  if not os.path.isfile(vocab_path):
    raise FileNotFoundError(f"No {vocab_lib.WORKDIR_VOCAB} in workdir {workdir!r}")
  model = model_lib.Transformer(configuration.validate_model(config.model))
  tokens = jnp.zeros((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          partitioning.strip_boxes(boxed))
  params, step = checkpoints.restore_params(workdir, abstract, step)
  return LoadedModel(config=config, model=model, params=params,
                     vocab=vocab_lib.load_vocabulary(vocab_path), step=int(step))
