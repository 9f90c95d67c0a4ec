"""Config validation: bad values become clear errors before anything is compiled."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys

from absl import app
import ml_collections

from bpdjax import model as model_lib
from bpdjax import partitioning

_TASKS = ("wiki", "tiny_shakespeare", "c4", "token_file", "sft")
_DTYPES = ("float32", "bfloat16")


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(f"Invalid config: {message}")


def validate_model(m) -> model_lib.TransformerConfig:
  """Checks the `model` section and returns it as a TransformerConfig."""
  _check(m.num_heads_bpd >= 1, f"model.num_heads_bpd (h) must be >= 1, got {m.num_heads_bpd}")
  _check(m.head_type in model_lib._HEAD_TYPES,  # pylint: disable=protected-access
         f"model.head_type must be one of {model_lib._HEAD_TYPES}, got {m.head_type!r}")  # pylint: disable=protected-access
  _check(m.mlp_activation in model_lib._ACTIVATIONS,  # pylint: disable=protected-access
         f"model.mlp_activation must be one of {model_lib._ACTIVATIONS}, got {m.mlp_activation!r}")  # pylint: disable=protected-access
  _check(m.get("markov_rank", 0) >= 0,
         f"model.markov_rank must be >= 0 (0: no Markov correction), got {m.get('markov_rank')}")
  _check(m.dtype in _DTYPES, f"model.dtype must be one of {_DTYPES}, got {m.dtype!r}")
  for key in ("vocab_size", "num_layers", "emb_dim", "num_heads", "num_kv_heads", "head_dim",
              "mlp_dim", "max_len", "head_hidden_dim"):
    _check(m[key] >= 1, f"model.{key} must be >= 1, got {m[key]}")
  _check(m.head_dim % 2 == 0, f"model.head_dim must be even for rotary embeddings, got {m.head_dim}")
  _check(m.num_heads % m.num_kv_heads == 0,
         f"model.num_heads ({m.num_heads}) must be a multiple of model.num_kv_heads "
         f"({m.num_kv_heads})")
  _validate_family_fields(m)
  return model_lib.TransformerConfig.from_config(m)


def _validate_family_fields(m) -> None:
  """The family features of layers.py (absent fields take TransformerConfig's defaults)."""
  defaults = {f.name: f.default for f in dataclasses.fields(model_lib.TransformerConfig)}
  get = lambda key: m.get(key, defaults[key])
  for key in ("rope_theta", "rope_factor", "embed_scale", "norm_eps"):
    _check(get(key) > 0, f"model.{key} must be > 0, got {get(key)}")
  for key in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap",
              "local_rope_theta", "sliding_window"):
    _check(get(key) >= 0, f"model.{key} must be >= 0 (0: off), got {get(key)}")
  layers = list(get("sliding_window_layers"))
  _check(all(isinstance(i, int) and 0 <= i < m.num_layers for i in layers)
         and len(set(layers)) == len(layers),
         f"model.sliding_window_layers must be distinct layer indices in [0, model.num_layers="
         f"{m.num_layers}), got {layers}")
  _check(not layers or get("sliding_window") >= 1,
         f"model.sliding_window_layers={layers} needs model.sliding_window >= 1, got "
         f"{get('sliding_window')}")


def validate(config: ml_collections.ConfigDict) -> model_lib.TransformerConfig:
  """Checks a training config; returns the model config. Raises ValueError on bad values."""
  model_config = validate_model(config.model)
  d = config.data
  _check(d.task in _TASKS, f"data.task must be one of {_TASKS}, got {d.task!r}")
  _check(1 <= d.seq_len <= config.model.max_len,
         f"data.seq_len ({d.seq_len}) must be in [1, model.max_len={config.model.max_len}]")
  _check(0.0 < d.eval_fraction < 1.0, f"data.eval_fraction must be in (0, 1), got {d.eval_fraction}")
  _check(d.task != "token_file" or bool(d.get("token_dir")),
         "data.task='token_file' needs data.token_dir (a folder written by bpdjax.distill)")
  validate_init(config)
  _check(config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}")
  _check(config.num_train_steps >= 1, f"num_train_steps must be >= 1, got {config.num_train_steps}")
  _check(config.learning_rate > 0, f"learning_rate must be > 0, got {config.learning_rate}")
  horizon = config.num_train_steps if config.schedule_steps <= 0 else config.schedule_steps
  _check(0 <= config.warmup_steps <= horizon,
         f"warmup_steps ({config.warmup_steps}) must be in [0, {horizon}] (schedule_steps, or "
         f"num_train_steps when schedule_steps <= 0)")
  _check(config.head_loss_decay > 0, f"head_loss_decay must be > 0, got {config.head_loss_decay}")
  for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps",
              "max_checkpoints_to_keep"):
    _check(config[key] >= 1, f"{key} must be >= 1, got {config[key]}")
  _check(config.get("max_nonfinite_skips", 0) >= 0,
         f"max_nonfinite_skips must be >= 0, got {config.get('max_nonfinite_skips')}")
  validate_mesh(config)
  return model_config


def init_source(config: ml_collections.ConfigDict) -> str:
  """"hf", "llama2c", "workdir" or "" (random initialisation), from config.init (absent in old
  configs)."""
  init = config.get("init") or {}
  if init.get("workdir"):
    return "workdir"
  if init.get("hf_model"):
    return "hf"
  if init.get("llama2c_bin") or init.get("llama2c_tokenizer"):
    return "llama2c"
  return ""


def validate_init(config: ml_collections.ConfigDict) -> None:
  """Checks config.init and train_heads_only (files are checked by the import itself)."""
  init = config.get("init") or {}
  _check(not (init.get("hf_model") and (init.get("llama2c_bin") or init.get("llama2c_tokenizer"))),
         "set either init.hf_model or init.llama2c_bin/init.llama2c_tokenizer, not both")
  _check(not (init.get("workdir") and (init.get("hf_model") or init.get("llama2c_bin"))),
         "set either init.workdir (a bpdjax workdir) or init.hf_model / init.llama2c_bin, "
         "not both")
  _check(bool(init.get("llama2c_bin")) == bool(init.get("llama2c_tokenizer")),
         "init.llama2c_bin and init.llama2c_tokenizer must be given together")
  if config.get("train_heads_only", False):
    _check(bool(init_source(config)),
           "train_heads_only=True needs a pretrained base: set init.hf_model, "
           "init.llama2c_bin + init.llama2c_tokenizer, or init.workdir")
    _check(config.model.num_heads_bpd >= 2,
           f"train_heads_only=True needs model.num_heads_bpd >= 2 (head 1 is the frozen LM "
           f"head), got {config.model.num_heads_bpd}")


def validate_mesh(config: ml_collections.ConfigDict) -> None:
  """Checks mesh sizes and that logical_axis_rules name only mesh axes (the device count is
  checked later, by partitioning.mesh_shape)."""
  axes = partitioning.MESH_AXES
  for axis in axes:
    size = config.mesh[axis]
    _check(size == -1 or size >= 1, f"mesh.{axis} must be >= 1 or -1, got {size}")
  _check(sum(config.mesh[a] == -1 for a in axes) <= 1,
         f"at most one mesh axis may be -1, got {dict(config.mesh)}")
  for rule in config.logical_axis_rules:
    _check(len(rule) == 2 and isinstance(rule[0], str),
           f"logical_axis_rules entries must be (logical_name, mesh_axes), got {rule!r}")
    targets = rule[1]
    targets = () if targets is None else (targets,) if isinstance(targets, str) else targets
    for target in targets:
      _check(target in axes, f"logical_axis_rules maps {rule[0]!r} to {target!r}, which is not "
             f"a mesh axis {axes}")


def config_file(path: str) -> str:
  """`path` if it is a file; else, for a path under configs/ (`--config=configs/tiny.py`, the
  spelling of earlier versions, from a checkout or from anywhere), that file of the package's
  `bpdjax.configs`. A `:ARGS` suffix (`configs/finetune.py:squad`) is kept. Unchanged when
  neither exists, so the flag parser names the missing file."""
  file, sep, args = path.partition(":")
  if os.path.isfile(file):
    return path
  parts = os.path.normpath(file).split(os.sep)
  if len(parts) > 1 and parts[0] == "configs":
    spec = importlib.util.find_spec("bpdjax.configs")  # Locates the package; imports nothing.
    for root in (spec.submodule_search_locations or []) if spec else []:
      candidate = os.path.join(root, *parts[1:])
      if os.path.isfile(candidate):
        return candidate + sep + args
  return path


def resolve_config_flag(argv: list) -> list:
  """argv with the value of its --config=FILE flag passed through `config_file`."""
  return [f"--config={config_file(a.split('=', 1)[1])}" if a.startswith("--config=") else a
          for a in argv]


_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def run_app(main_fn) -> None:
  """absl's app.run(main_fn), except that asking for help exits 0 (absl exits 1 after printing
  the usage, which scripts and CI read as a failure)."""
  try:
    app.run(main_fn)
  except SystemExit as e:
    if e.code == 1 and any(a in _HELP_FLAGS for a in sys.argv[1:]):
      raise SystemExit(0) from None
    raise


def check_override_keys(argv, config) -> None:
  """Raises ValueError naming any `--config.KEY=...` argument whose KEY the config lacks.

  ml_collections would fail on it too, but with a bare AttributeError; this names the flag and
  the keys that do exist at that level.
  """
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node = config
    parts = path.split(".")
    for depth, key in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        where = ".".join(parts[:depth]) or "the top level"
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ValueError(f"Unknown config key {path!r} in {arg!r}: no {key!r} at {where}; "
                         f"known keys there: {known}")
      node = node[key]
