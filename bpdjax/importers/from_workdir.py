"""Start a training run from a bpdjax workdir's checkpoint (`config.init.workdir`): fine-tuning.

The parent's parameters, heads included, become the new run's initial parameters; its model
section and its vocabulary become the run's. The optimizer state and the learning-rate schedule
are the new run's own (step 0). What the new config asks of the model shape must be what the
parent has: a differing vocabulary size, head count, head type or any other shape field, or a
`data.vocab_path` that is not the parent's vocabulary, is a ValueError naming the difference.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import ml_collections

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import fileio
from bpdjax import model as model_lib
from bpdjax import params as params_lib
from bpdjax import workdir as workdir_lib


def _sha256(path: str) -> str:
  if fileio.isdir(path):
    path = fileio.join(path, "tokenizer.json")
  return hashlib.sha256(fileio.read_bytes(path)).hexdigest()


def check_parent(config: ml_collections.ConfigDict, parent: ml_collections.ConfigDict) -> None:
  """ValueError naming every shape field of config.model that differs from the parent's, and a
  data.vocab_path that is not the parent's vocabulary (compared by sha256)."""
  source = config.init.workdir
  diffs = [f"model.{k}: init.workdir has {parent.model[k]!r}, the config asks for "
           f"{config.model[k]!r}"
           for k in checkpoints.SHAPE_FIELDS
           if k in parent.model and k in config.model and parent.model[k] != config.model[k]]
  if diffs:
    raise ValueError(f"init.workdir={source!r} holds another model than the config asks for: "
                     + "; ".join(diffs) + " (drop the override, or start from a matching "
                     "workdir)")
  vocab = config.data.get("vocab_path", "")
  if vocab:
    if not os.path.exists(vocab):
      raise ValueError(f"config.data.vocab_path={vocab!r} does not exist.")
    parent_vocab = workdir_lib.vocab_path(source)
    if _sha256(vocab) != _sha256(parent_vocab):
      raise ValueError(f"config.data.vocab_path={vocab!r} is another vocabulary than "
                       f"init.workdir's ({parent_vocab!r}, sha256 differs): a fine-tuned model "
                       "keeps its parent's vocabulary (leave data.vocab_path empty)")


def import_workdir(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Any, int]:
  """The parameters of config.init.workdir at config.init.step (-1: latest checkpoint).

  Returns:
    (a copy of config whose model section is the parent's, dtype kept from config; the
    parent's parameters (every head included); the parent's checkpoint step).
  Raises:
    FileNotFoundError: not a workdir, or no checkpoint (at that step); ValueError: see
    `check_parent`.
  """
  source = config.init.workdir
  try:
    parent = workdir_lib.load_config(source)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.init.workdir={source!r} (the workdir to fine-tune from): "
                            f"{e}") from e
  check_parent(config, parent)
  step = int(config.init.get("step", -1))
  dtype = config.model.dtype
  config = config.copy_and_resolve_references()
  for key, value in parent.model.items():
    if key in config.model:
      config.model[key] = value
  config.model.dtype = dtype
  model = model_lib.Transformer(configuration.validate_model(config.model))
  manager = checkpoints.make_manager(source, read_only=True)
  if step >= 0 and step not in manager.all_steps():
    raise FileNotFoundError(f"init.step={step}: init.workdir={source!r} has checkpoints at steps "
                            f"{sorted(manager.all_steps())} only")
  params, restored_step = checkpoints.restore_params(
      source, params_lib.abstract_params(model), None if step < 0 else step)
  return config, params, int(restored_step)
