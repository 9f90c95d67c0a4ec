"""Config files: sizes, validation, and clear errors on bad input (nothing here compiles a model)."""
import glob
import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax import partitioning
from bpdjax.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(   # Training configs; decode.py is decode.py's (tests/test_decode_cli.py).
    os.path.splitext(os.path.basename(p))[0]
    for p in glob.glob(os.path.join(ROOT, "bpdjax", "configs", "*.py"))
    if not os.path.basename(p).startswith("_")    # _*.py: shared helpers, not configs.
    and os.path.basename(p) != "decode.py")


def load(name):
  return importlib.import_module(f"bpdjax.configs.{name}").get_config()


def abstract_params(model_config):
  """Parameter shapes from jax.eval_shape of model.init: nothing is allocated."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  boxed = jax.eval_shape(
      lambda: model_lib.Transformer(model_config).init(jax.random.PRNGKey(0), tokens, tokens))
  return boxed["params"]


def count(params, skip=()):
  leaves = jax.tree_util.tree_flatten_with_path(partitioning.strip_boxes(params))[0]
  return sum(x.size for path, x in leaves
             if not any(s in jax.tree_util.keystr(path) for s in skip))


# ---------------------------------------------------------------- sizes


def test_c4_1p5b_size_and_shape():
  config = load("c4_1p5b")
  model_config = configuration.validate(config)
  params = abstract_params(model_config)
  total = count(params)
  assert 1.4e9 <= total <= 1.6e9, f"{total:,} parameters"
  assert model_config.num_heads_bpd == 9 and model_config.head_type == "ffn"
  assert sorted(k for k in params if k.startswith("head_")) == [f"head_{i}" for i in range(1, 10)]
  assert model_config.vocab_size == 32000 and model_config.dtype == "bfloat16"
  assert config.data.task == "c4" and config.data.seq_len == 512 and model_config.max_len >= 512
  assert config.batch_size == 2048
  # The mesh shards every parameter evenly, on slices from 32 to 512 devices and with tensor=2.
  for data, fsdp, tensor in ((2, 16, 1), (16, 16, 1), (8, 16, 2)):
    mesh = jax.sharding.AbstractMesh((data, fsdp, tensor), partitioning.MESH_AXES)
    partitioning.check_divisible(params, mesh, config.logical_axis_rules)
    assert config.batch_size % (data * fsdp) == 0
  assert partitioning.mesh_shape(config.mesh, 256) == (16, 16, 1)


# name: (smallest, largest) parameter count, counting the embedding or not.
RESCORER_SIZES = {
    "rescorer_xs": (0.8e6, 1.2e6, False),
    "rescorer_s": (2.5e6, 3.5e6, False),
    "rescorer_32m": (30e6, 34e6, True),
    "rescorer_61m": (58e6, 64e6, True),
    "rescorer_94m": (90e6, 98e6, True),
}


@pytest.mark.parametrize("name", sorted(RESCORER_SIZES))
def test_rescorer_sizes(name):
  low, high, with_embedding = RESCORER_SIZES[name]
  config = load(name)
  model_config = configuration.validate(config)
  assert model_config.num_heads_bpd == 1
  n = count(abstract_params(model_config), skip=() if with_embedding else ("embedding",))
  assert low <= n <= high, f"{name}: {n:,} parameters"
  if model_config.vocab_size == 32000:  # Rescores the C4 model: same task and vocabulary.
    big = load("c4_1p5b")
    assert config.data.task == big.data.task and config.data.vocab_path == big.data.vocab_path
  else:  # CPU rescorers: small.py's wiki task and vocabulary.
    base = load("small")
    assert (config.data.task, model_config.vocab_size, config.data.vocab_dir) == (
        "wiki", base.model.vocab_size, base.data.vocab_dir)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_file_validates(name):
  config = load(name)
  model_config = configuration.validate(config)
  assert isinstance(model_config, model_lib.TransformerConfig)
  assert config.data.seq_len <= model_config.max_len


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_no_path_points_inside_the_package(name):
  """Workdirs and token folders are relative to the current directory (README's commands run
  from the checkout's root), never under bpdjax/: a path built from the config file's own
  location broke when configs moved into the package."""
  config = load(name)
  package = os.path.join(ROOT, "bpdjax")
  stack = [config]
  while stack:
    for key, value in stack.pop().items():
      if hasattr(value, "items"):
        stack.append(value)
      elif isinstance(value, str) and os.sep in value:
        assert not os.path.abspath(value).startswith(package + os.sep), (name, key, value)


def test_data_dir_beside_the_checkout(monkeypatch):
  """../shared/data next to the checkout is found from any directory (what README assumes)."""
  beside = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
  if not os.path.isdir(beside):
    pytest.skip(f"no {beside}")
  if not default.__file__.startswith(os.path.join(ROOT, "bpdjax") + os.sep):
    # CI installs the package into .venv inside the checkout: ROOT/.venv/.../site-packages.
    pytest.skip("bpdjax is installed (its configs are in site-packages, beside no checkout)")
  monkeypatch.delenv("BPDJAX_DATA_DIR", raising=False)
  monkeypatch.chdir("/")
  assert default.default_data_dir() == beside


def test_rescorers_and_paper_config_present():
  for name in ("c4_1p5b", "tiny", "default", *RESCORER_SIZES):
    assert name in CONFIG_NAMES


# ---------------------------------------------------------------- bad input


def tiny():
  return load("tiny")


def test_h_below_one():
  config = tiny()
  config.model.num_heads_bpd = 0
  with pytest.raises(ValueError, match=r"num_heads_bpd.*>= 1, got 0"):
    configuration.validate(config)


def test_heads_not_multiple_of_kv_heads():
  config = tiny()
  config.model.num_heads, config.model.num_kv_heads = 4, 3
  with pytest.raises(ValueError, match=r"num_heads \(4\).*multiple.*num_kv_heads \(3\)"):
    configuration.validate(config)


def test_seq_len_above_max_len():
  config = tiny()
  config.data.seq_len = config.model.max_len + 1
  with pytest.raises(ValueError, match=r"seq_len \(129\).*max_len=128"):
    configuration.validate(config)


def test_bad_mesh_and_rules_in_config():
  config = tiny()
  config.mesh.fsdp = 0
  with pytest.raises(ValueError, match=r"mesh.fsdp must be >= 1 or -1, got 0"):
    configuration.validate(config)
  config = tiny()
  config.logical_axis_rules = (("batch", ("data", "fdsp")),)
  with pytest.raises(ValueError, match=r"'batch' to 'fdsp'.*not a mesh axis"):
    configuration.validate(config)


def test_mesh_does_not_fit_devices():
  with pytest.raises(ValueError, match=r"Mesh .*'fsdp': 16.* does not fit 8 devices"):
    partitioning.mesh_shape({"data": -1, "fsdp": 16, "tensor": 1}, 8)
  with pytest.raises(ValueError, match=r"Mesh .*'fsdp': 2.* needs 4 devices but 2 are available"):
    partitioning.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 2)
  assert partitioning.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
  n = jax.device_count()
  with pytest.raises(ValueError, match=rf"Mesh .* {n} (devices|are available)"):
    partitioning.make_mesh({"data": -1, "fsdp": n + 1, "tensor": 1})


def test_unknown_model_field():
  config = tiny()
  with config.unlocked():
    config.model.no_such_field = 1
  with pytest.raises(ValueError, match=r"Unknown model config field\(s\): \['no_such_field'\]"):
    configuration.validate(config)


def test_unknown_command_line_key(tmp_path):
  """ml_collections rejects an unknown --config.* key while parsing flags, before training starts
  (it raises AttributeError naming the key; the process exits with status 1)."""
  workdir = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
       "--config.no_such_key=1"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "Unknown config key 'no_such_key'" in proc.stderr
  assert not workdir.exists()  # Failed before the trainer touched anything.


def test_check_compatible_names_fields():
  saved = tiny().model
  config = tiny().model
  config.num_heads_bpd = 3
  config.vocab_size = 1024
  with pytest.raises(ValueError) as error:
    checkpoints.check_compatible(saved, config, "/tmp/run")
  message = str(error.value)
  assert "model.num_heads_bpd: checkpoint has 4, config has 3" in message
  assert "model.vocab_size: checkpoint has 512, config has 1024" in message
  assert "/tmp/run" in message
  # Fields that do not change parameter shapes may differ.
  config = tiny().model
  config.dtype, config.max_len = "bfloat16", 256
  checkpoints.check_compatible(saved, config, "/tmp/run")


@pytest.mark.parametrize("task", ["squad", "xsum", "samsum", "gsm8k"])
def test_finetune_configs(task):
  from bpdjax.configs import finetune  # pylint: disable=g-import-not-at-top
  config = finetune.get_config(task)
  configuration.validate(config)
  assert config.data.sft_tasks == task and config.init.workdir
  assert 1 <= config.data.sft_prompt_tokens < config.data.seq_len
  with pytest.raises(ValueError, match="no such fine-tuning task"):
    finetune.get_config("lambada")
