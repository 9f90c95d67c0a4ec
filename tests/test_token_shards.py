"""Token shards of a text corpus (bpdjax/data/text_shards.py) and their numpy batches
(bpdjax/data/token_batches.py): the same tokens as the text pipeline, uint16 and compressed,
resumable batches, training without TensorFlow, and shards of another vocabulary refused."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio

from bpdjax.data import tasks
from bpdjax.data import text_shards
from bpdjax.data import token_batches
from bpdjax.data import token_files
from bpdjax.train import inputs
from bpdjax.configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _text_config(vocab_path):
  config = tiny.get_config()
  config.data.vocab_path = vocab_path
  return config


def _shard_config(token_dir, **overrides):
  config = tiny.get_config()
  config.data.task = "token_file"
  config.data.token_dir = token_dir
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def shards(tiny_vocab_path, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("shards"))
  manifest = text_shards.write_text_shards(_text_config(tiny_vocab_path), out,
                                           shard_tokens=20_000, log=lambda *_: None)
  return out, manifest


def test_shards_hold_the_text_pipelines_tokens(shards, tiny_vocab_path):
  out, manifest = shards
  assert manifest["vocab_size"] == 512 and manifest["model_format"] == "sentencepiece"
  assert manifest["vocab_sha256"] == token_files.file_sha256(tiny_vocab_path)
  assert len(manifest["splits"]["train"]["files"]) > 1
  with np.load(os.path.join(out, manifest["splits"]["train"]["files"][0])) as shard:
    assert shard["tokens"].dtype == np.uint16
  config = _text_config(tiny_vocab_path)
  name = tasks.register_task(config, tiny_vocab_path)
  for split in ("train", "validation"):
    stored = token_files.read_token_split(out, split, 512)
    assert sum(x.size for x in stored) == manifest["splits"][split]["tokens"]
    pieces = seqio.get_mixture_or_task(name).get_dataset(
        {"targets": config.data.seq_len}, split=split, shuffle=False, num_epochs=1)
    text = np.concatenate([x["targets"] for x in pieces.as_numpy_iterator()])
    np.testing.assert_array_equal(np.concatenate(stored), text)  # Same documents, same ids.


def test_batches_resume_exactly_and_cover_every_token(shards):
  out, manifest = shards
  config = _shard_config(out, batch_size=4)
  stream = token_batches.make_train_iterator(config)
  first = [next(stream) for _ in range(30)]
  later = token_batches.make_train_iterator(config, start_step=17)
  for k in range(17, 30):
    b = next(later)
    for key in token_batches.FEATURES:
      np.testing.assert_array_equal(b[key], first[k][key])
  # One epoch of packed rows holds each train token exactly once.
  packed = token_batches.PackedStream(token_files.read_token_split(out, "train", 512),
                                      config.data.seq_len, seed=0, shuffle=True)
  rows = packed._plan(0)[1].size - 1  # pylint: disable=protected-access
  epoch = packed.rows(0, rows)
  assert int(epoch["decoder_loss_weights"].sum()) == manifest["splits"]["train"]["tokens"]
  b = first[0]
  segments = b["decoder_segment_ids"]
  starts = (b["decoder_positions"] == 0) & (segments > 0)
  assert np.all(b["decoder_input_tokens"][starts] == 0)  # SentencePiece runs: bos 0.
  inner = (b["decoder_positions"] > 0)
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:][inner[:, 1:]],
                                b["decoder_target_tokens"][:, :-1][inner[:, 1:]])
  assert np.all(b["decoder_target_tokens"][segments == 0] == 0)


def test_shards_of_another_vocabulary_are_refused(shards, tmp_path):
  out, _ = shards
  with pytest.raises(ValueError, match="512-id vocabulary .* model.vocab_size=1024"):
    token_batches.make_train_iterator(_shard_config(out, model=dict(tiny.get_config().model,
                                                                    vocab_size=1024)))
  other = tmp_path / "other.model"
  other.write_bytes(b"not the shards' vocabulary")
  config = _shard_config(out)
  config.data.vocab_path = str(other)
  with pytest.raises(ValueError, match="vocab_sha256.*another vocabulary"):
    inputs.ensure_vocabulary(config, str(tmp_path / "workdir"))


_WITHOUT_TENSORFLOW = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in ("tensorflow", "seqio", "clu", "pynini"):
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_trains_on_shards_without_tensorflow(shards, tmp_path):
  """train.py on token shards where TensorFlow, seqio, clu and pynini cannot be imported (a
  JAX-only GPU/TPU image); a text task there is a clear error, not an ImportError."""
  out, _ = shards
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  common = ["--config=configs/tiny.py", "--config.num_train_steps=3", 
            "--config.warmup_steps=1", "--config.eval_every_steps=3", "--config.tensorboard=False"]
  ok = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, *common,
                       f"--workdir={tmp_path / 'run'}", "--config.data.task=token_file",
                       f"--config.data.token_dir={out}"],
                      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  steps = [json.loads(l)["step"] for l in open(tmp_path / "run" / "metrics.jsonl")
           if "loss" in l]
  assert steps[-1] == 3
  text = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, *common,
                         f"--workdir={tmp_path / 'text'}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert text.returncode != 0
  assert "config.data.task='tiny_shakespeare' reads text through seqio" in text.stderr
