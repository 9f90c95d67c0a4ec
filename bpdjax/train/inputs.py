"""Where a training run's batches and vocabulary come from: token shards (data.task
"token_file", `data.token_batches`, numpy only) or the seqio text pipeline (`data.pipeline`,
which needs TensorFlow and seqio).

A machine without TensorFlow (a GPU or TPU image with JAX alone) can still train on token
shards: the text pipeline is then absent, and a run that needs it gets an error naming the
missing package instead of an ImportError at start-up.
"""
from __future__ import annotations

from typing import Any, Callable

import ml_collections

from bpdjax import configuration
from bpdjax.data import token_batches
from bpdjax.data import token_files

# Packages the text pipeline needs that a JAX-only image may lack; another ImportError is a bug.
_TEXT_PIPELINE_PACKAGES = ("tensorflow", "seqio", "tensorflow_datasets", "tensorflow_text")
try:
  from bpdjax.data import pipeline
  from bpdjax.data import vocab as vocab_lib
  _MISSING = ""
except ModuleNotFoundError as e:
  if (e.name or "").split(".")[0] not in _TEXT_PIPELINE_PACKAGES:
    raise
  pipeline = vocab_lib = None
  _MISSING = e.name


def _text_pipeline(config: ml_collections.ConfigDict):
  if pipeline is None:
    raise ValueError(f"config.data.task={config.data.task!r} reads text through seqio, which "
                     f"needs {_MISSING!r} (not installed here: pip install -r "
                     "requirements.txt); on a machine with JAX alone, train on token shards "
                     "(data.task='token_file', written by `python -m bpdjax.data.text_shards`).")
  return pipeline


def ensure_vocabulary(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The run's vocabulary in the workdir (see `vocab.ensure_vocabulary`)."""
  if config.data.task == "token_file" and not configuration.init_source(config):
    return token_files.copy_tokenizer(config, workdir)
  _text_pipeline(config)
  return vocab_lib.ensure_vocabulary(config, workdir)


def train_iterator_fn(config: ml_collections.ConfigDict) -> Callable[..., Any]:
  """f(config, vocab_path, start_step) -> process-local training batches."""
  if config.data.task == "token_file":
    return token_batches.make_train_iterator
  return _text_pipeline(config).make_train_iterator


def eval_batches_fn(config: ml_collections.ConfigDict) -> Callable[..., Any]:
  """f(config, vocab_path, num_batches) -> process-local validation batches."""
  if config.data.task == "token_file":
    return token_batches.make_eval_batches
  return _text_pipeline(config).make_eval_iterator
