"""Orbax checkpoints in a workdir, with the run's config stored beside the weights.

Layout of a workdir written by train.py:
  config.json        the full training config (what decode.py and `api.load` rebuild from)
  vocab.model        the SentencePiece vocabulary (a run from a pretrained import keeps the
                     model's tokenizer instead: hf_tokenizer/ or llama2c_tokenizer.bin, and
                     base_checksum.json, the sha256 of its base parameters at start and end)
  checkpoints/<step>/state    the TrainState (params, optimizer state, step)
  metrics.jsonl, TensorBoard event files
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Fields whose change makes saved parameters unusable; a restore into a differing config fails.
_SHAPE_FIELDS = ("vocab_size", "num_heads_bpd", "head_type", "num_layers", "emb_dim", "num_heads",
                 "num_kv_heads", "head_dim", "mlp_dim", "head_hidden_dim", "tie_embeddings",
                 "mlp_activation")


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No {CONFIG_FILE} in workdir {workdir!r}: is it a bpdjax workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def check_compatible(saved_model_config, model_config, workdir: str) -> None:
  """Raises ValueError naming every shape-relevant model field that differs from the saved run."""
  diffs = [f"model.{k}: checkpoint has {saved_model_config[k]!r}, config has {model_config[k]!r}"
           for k in _SHAPE_FIELDS
           if k in saved_model_config and saved_model_config[k] != model_config[k]]
  if diffs:
    raise ValueError(f"Checkpoint in {workdir!r} does not match the config: " + "; ".join(diffs))


def make_manager(workdir: str, save_every_steps: int = 1, max_to_keep: int = 3,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A manager that saves every `save_every_steps` steps (and at preemption) and keeps the latest N."""
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every_steps),
      preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
      create=not read_only, read_only=read_only,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, force: bool = False) -> bool:
  """Saves if the policy (interval or preemption) or `force` says so; returns whether it saved."""
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                      force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: Optional[int] = None) -> Any:
  """Restores into the shapes and shardings of `abstract_state` (jax.ShapeDtypeStruct leaves)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint under {manager.directory}")
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored.state


def restore_params(workdir: str, abstract_params: Any, step: Optional[int] = None) -> tuple[Any, int]:
  """Restores only the parameters of a training checkpoint (no optimizer state).

  Returns (params, step).
  """
  manager = make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint in workdir {workdir!r} (looked in {manager.directory}); train first")
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={"params": abstract_params},
      restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract_params}),
      partial_restore=True)))
  return restored.state["params"], step


def params_checksum(params: Any, exclude_prefix: Optional[str] = "head_") -> str:
  """sha256 (hex) of a parameter tree's names, dtypes, shapes and bytes, in sorted name order.

  Top-level entries whose name starts with `exclude_prefix` (default: the block heads) are
  left out, so the checksum of a model's base does not depend on its heads; None includes all.
  Bitwise: any change to any value (even -0.0 vs 0.0) changes it. Works on host, device and
  sharded arrays (gathered from all processes when not fully addressable).
  """
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_leaves_with_path(params)
  named = []
  for path, leaf in leaves:
    top = path[0]
    top = getattr(top, "key", getattr(top, "name", str(top)))
    if exclude_prefix and str(top).startswith(exclude_prefix):
      continue
    named.append((jax.tree_util.keystr(path), leaf))
  for name, leaf in sorted(named, key=lambda x: x[0]):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    arr = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
    digest.update(arr.tobytes())
  return digest.hexdigest()
