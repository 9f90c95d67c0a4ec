"""Block heads on a frozen imported base (Medusa-1 style): self-distillation data from
bpdjax.distill, the "token_file" task, train_heads_only training of FFN and Medusa heads on
TinyStories-656K, the base checksum, loading heads onto a fresh import, resume, clear errors.

Small settings throughout (24 sampled sequences of 48 tokens, batches of 4, a few steps).
Needs the shared model (data_dir/models/TinyStories-656K); skips without it.
"""
import itertools
import json
import os
import shutil

import jax
import numpy as np
import pytest

from bpdjax import api
from bpdjax import configuration
from bpdjax import distill
from bpdjax import params as params_lib
from bpdjax import workdir as workdir_lib
from bpdjax.data import tokenizers
from bpdjax.decoding import resources
from bpdjax.importers import hf
from bpdjax.ngram import estimate
from bpdjax.train import loop as train_loop
from bpdjax.data import pipeline
from bpdjax.data import token_files
from bpdjax.configs import tinystories_heads

MODEL = tinystories_heads.get_config().init.hf_model
STORIES260K = os.path.join(os.path.dirname(MODEL), "stories260K")
SEQ_LEN = 48
N = 6  # Steps of the reference runs.

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(MODEL, "model.safetensors")),
                                reason=f"TinyStories-656K not found at {MODEL}")


def _config(token_dir, head_type="ffn", **overrides):
  config = tinystories_heads.get_config()
  config.data.token_dir = token_dir
  config.data.seq_len = SEQ_LEN
  config.data.shuffle_buffer = 16
  config.model.head_type = head_type
  config.update({**dict(batch_size=4, num_train_steps=N, schedule_steps=100, warmup_steps=1,
                        learning_rate=1e-2, log_every_steps=1, eval_every_steps=1000,
                        num_eval_batches=1, checkpoint_every_steps=1000), **overrides})
  config.lock()           # As train.py's --config gives it: the import may add no new key.
  return config


def _train_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if "loss" in r]


def _leaves(params):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(params))}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("distill"))
  manifest = distill.distill(out, num_sequences=24, seq_len=SEQ_LEN, hf_model=MODEL,
                             temperature=1.0, seed=0, batch_size=8, eval_fraction=0.25,
                             log=lambda *a: None)
  return out, manifest


@pytest.fixture(scope="module", params=["ffn", "medusa"])
def trained(request, distilled, tmp_path_factory):
  """(head_type, workdir, result) of an N-step train_heads_only run."""
  workdir = str(tmp_path_factory.mktemp(f"heads_{request.param}"))
  result = train_loop.train_and_evaluate(_config(distilled[0], request.param), workdir)
  return request.param, workdir, result


def test_distill_output(distilled):
  out, manifest = distilled
  assert manifest["vocab_size"] == 2048 and manifest["bos_id"] == 1 and manifest["eos_id"] == 2
  held_out = [i for i in range(24) if distill.is_held_out(i, 0.25)]
  assert held_out == [3, 7, 11, 15, 19, 23]
  assert manifest["splits"]["validation"]["sequences"] == 6
  assert manifest["splits"]["train"]["sequences"] == 18
  train = token_files.read_token_split(out, "train", 2048)
  assert len(train) == 18 and all(1 <= len(x) <= SEQ_LEN for x in train)
  assert sum(len(x) for x in train) == manifest["splits"]["train"]["tokens"]
  _, params, _ = hf.import_hf(MODEL)
  assert manifest["base_checksum"] == params_lib.params_checksum(params)
  # The pipeline feeds [BOS, t1, ...] -> [t1, t2, ...], packed, as the model saw in pretraining.
  batch = pipeline.make_eval_iterator(_config(out), "", num_batches=1)[0]
  starts = batch["decoder_positions"] == 0
  assert np.all(batch["decoder_input_tokens"][starts & (batch["decoder_segment_ids"] > 0)] == 1)
  assert batch["decoder_target_tokens"].shape == (4, SEQ_LEN)


def test_frozen_base_and_trained_heads(trained, distilled):
  head_type, workdir, result = trained
  with open(os.path.join(workdir, workdir_lib.BASE_CHECKSUM_FILE)) as f:
    sums = json.load(f)
  imported = distilled[1]["base_checksum"]
  assert sums["imported"] == sums["start"] == sums["end"] == imported
  assert sums["end_step"] == N
  assert params_lib.params_checksum(result["params"], exclude_prefix="head_") == imported

  _, fresh, _ = hf.import_hf(MODEL, num_heads_bpd=4, head_type=head_type)
  before, after = _leaves(fresh), _leaves(result["params"])
  assert before.keys() == after.keys()
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  heads = {k for k in before if k.startswith("['head_") and not k.startswith("['head_1']")}
  assert changed and changed <= heads, changed - heads      # Only heads 2..h moved ...
  for h in (2, 3, 4):                                       # ... and each of them did.
    assert any(k.startswith(f"['head_{h}']") for k in changed), (h, changed)

  records = _train_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, N + 1))
  losses = [r["loss"] for r in records]
  assert np.mean(losses[-2:]) < losses[0] - 1.0, losses
  for r in records:  # Head 1 is reported but not in the loss.
    assert len(r["accuracy"]) == 4 and r["accuracy"][0] > 0.2
    np.testing.assert_allclose(r["loss"], sum(r["head_loss"][1:]), rtol=1e-5)
  assert len(result["eval_accuracy"]) == 4
  print(f"{head_type}: loss {losses[0]:.3f} -> {losses[-1]:.3f}; eval acc/head "
        f"{[round(a, 3) for a in result['eval_accuracy']]}; base sha256 {imported[:16]}...")


def test_load_and_heads_onto_fresh_import(trained):
  head_type, workdir, result = trained
  loaded = api.load(workdir)
  assert loaded.step == N and loaded.model.config.head_type == head_type
  tok = loaded.vocab
  assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 2048)
  ids = tok.encode("Once upon a time")
  assert ids[0] == 1 and tok.decode(ids) == "Once upon a time"
  reference = _leaves(result["params"])
  for params in (loaded.params, api.load_heads_onto(MODEL, workdir).params):
    got = _leaves(params)
    assert got.keys() == reference.keys()
    for k in reference:
      np.testing.assert_array_equal(got[k], reference[k], err_msg=k)


@pytest.mark.parametrize("trained", ["ffn"], indirect=True)
def test_resume_is_exact(trained, distilled, tmp_path):
  _, straight, result = trained
  workdir = str(tmp_path)
  train_loop.train_and_evaluate(_config(distilled[0], num_train_steps=N // 2), workdir)
  resumed = train_loop.train_and_evaluate(_config(distilled[0]), workdir)
  assert resumed["step"] == N
  ref, got = _leaves(result["params"]), _leaves(resumed["params"])
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
  a, b = _train_metrics(workdir), _train_metrics(straight)
  assert [r["step"] for r in a] == list(range(1, N + 1))
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
  with open(os.path.join(workdir, workdir_lib.BASE_CHECKSUM_FILE)) as f:
    sums = json.load(f)
  assert sums["start_step"] == N // 2 and sums["start"] == sums["end"] == sums["imported"]

  # Resuming with train_heads_only flipped is refused (the optimizer states differ).
  with pytest.raises(ValueError, match="train_heads_only=True; the config has False"):
    train_loop.train_and_evaluate(_config(distilled[0], train_heads_only=False,
                                       num_train_steps=N + 1), workdir)


def test_token_ids_beyond_vocab(distilled, tmp_path):
  out = tmp_path / "tokens"
  shutil.copytree(distilled[0], out)
  token_files.write_token_shard(str(out / "train-00000-of-00001.npz"),
                          [np.asarray([5, 6, 2048, 7], np.int32)])
  with pytest.raises(ValueError, match=r"train-00000-of-00001.npz.*token id 2048, outside "
                                       r"\[0, 2048\)"):
    pipeline.make_train_iterator(_config(str(out)), "")
  with pytest.raises(ValueError, match=r"token id 2048"):
    train_loop.train_and_evaluate(_config(str(out)), str(tmp_path / "run"))
  with pytest.raises(ValueError, match="has no validation-\\*.npz shards"):
    token_files.read_token_split(str(tmp_path), "validation", 2048)
  token_files.write_token_shard(str(out / "train-00000-of-00001.npz"),
                                [np.asarray([5, 0, 6], np.int32), np.asarray([0], np.int32),
                                 np.asarray([7, 8], np.int32)])
  got = token_files.read_token_split(str(out), "train", 2048)
  assert [x.tolist() for x in got] == [[5, 6], [7, 8]]   # id 0 is seqio's padding: dropped.


def test_missing_model_and_bad_config(distilled, tmp_path):
  config = _config(distilled[0])
  config.init.hf_model = str(tmp_path / "no_such_model")
  with pytest.raises(FileNotFoundError, match="Model folder not found.*no_such_model"):
    train_loop.train_and_evaluate(config, str(tmp_path / "run"))
  with pytest.raises(FileNotFoundError, match="Model folder not found.*no_such_model"):
    distill.distill(str(tmp_path / "out"), 4, 16, hf_model=str(tmp_path / "no_such_model"))
  folder = tmp_path / "model"
  shutil.copytree(MODEL, folder)
  os.remove(folder / "tokenizer.json")
  config.init.hf_model = str(folder)
  with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
    train_loop.train_and_evaluate(config, str(tmp_path / "run"))

  config = _config(distilled[0])
  config.init.hf_model = ""
  with pytest.raises(ValueError, match="train_heads_only=True needs a pretrained base"):
    configuration.validate(config)
  config = _config(distilled[0])
  config.model.num_heads_bpd = 1
  with pytest.raises(ValueError, match="num_heads_bpd >= 2"):
    configuration.validate(config)
  config = _config(distilled[0])
  config.init.llama2c_bin = "x.bin"
  with pytest.raises(ValueError, match="either init.hf_model or init.llama2c_bin"):
    configuration.validate(config)
  config = _config("")
  with pytest.raises(ValueError, match="token_file' needs data.token_dir"):
    configuration.validate(config)


@pytest.mark.skipif(not os.path.isfile(os.path.join(STORIES260K, "stories260K.bin")),
                    reason="stories260K not found")
def test_llama2c_base(tmp_path):
  """The llama2.c import path end to end: distill, 2 steps of Medusa heads, load, heads onto a
  fresh import."""
  bin_path = os.path.join(STORIES260K, "stories260K.bin")
  tok_path = os.path.join(STORIES260K, "tok512.bin")
  out = str(tmp_path / "tokens")
  manifest = distill.distill(out, num_sequences=8, seq_len=32, llama2c_bin=bin_path,
                             llama2c_tokenizer=tok_path, batch_size=8, eval_fraction=0.25,
                             log=lambda *a: None)
  assert manifest["vocab_size"] == 512 and manifest["model_format"] == "llama2c"
  config = _config(out, "medusa", num_train_steps=2)
  config.model.num_heads_bpd = 2
  config.init.hf_model = ""
  config.init.llama2c_bin, config.init.llama2c_tokenizer = bin_path, tok_path
  config.data.seq_len = 32
  workdir = str(tmp_path / "run")
  result = train_loop.train_and_evaluate(config, workdir)
  assert params_lib.params_checksum(result["params"]) == manifest["base_checksum"]
  loaded = api.load(workdir)
  assert isinstance(loaded.vocab, tokenizers.Llama2cTokenizer) and loaded.model.config.vocab_size == 512
  assert loaded.vocab.decode(loaded.vocab.encode("Once upon a time")) == "Once upon a time"
  onto = api.load_heads_onto(bin_path, workdir, tokenizer_path=tok_path)
  reference = _leaves(result["params"])
  for k, v in _leaves(onto.params).items():
    np.testing.assert_array_equal(v, reference[k], err_msg=k)
  with pytest.raises(ValueError, match="pass tokenizer_path"):
    api.load_heads_onto(bin_path, workdir)
  # Heads trained on one base never land on another.
  with pytest.raises(ValueError, match="vocab_size: checkpoint has 512, config has 2048"):
    api.load_heads_onto(MODEL, workdir)


def test_rescorer_from_scratch_on_distill_data(trained, distilled, tiny_vocab_path, tmp_path):
  """A from-scratch LM on token_file data keeps the tokenizer its manifest names, so it can
  rescore the heads model's drafts; a rescorer with another vocabulary is refused by name."""
  from bpdjax.configs import tinystories_rescorer  # pylint: disable=g-import-not-at-top
  config = tinystories_rescorer.get_config()
  config.data.token_dir = distilled[0]
  config.data.seq_len = SEQ_LEN
  config.data.shuffle_buffer = 16
  config.update(batch_size=4, num_train_steps=2, warmup_steps=1, log_every_steps=1,
                eval_every_steps=1000, num_eval_batches=1, checkpoint_every_steps=1000)
  rescorer_dir = str(tmp_path / "rescorer")
  train_loop.train_and_evaluate(config, rescorer_dir)
  assert os.path.isfile(os.path.join(rescorer_dir, "hf_tokenizer", "tokenizer.json"))
  loaded = api.load(rescorer_dir)
  assert loaded.vocab.encode("Once upon a time") == tokenizers.load_tokenizer(MODEL).encode(
      "Once upon a time")
  model = resources.load_rescorer(rescorer_dir, trained[1]).model
  assert model.config.vocab_size == 2048 and model.config.num_heads_bpd == 1
  other = str(tmp_path / "other")
  os.makedirs(other)
  shutil.copy(tiny_vocab_path, os.path.join(other, "vocab.model"))
  with pytest.raises(ValueError, match="uses another vocabulary"):
    resources.load_rescorer(other, trained[1])


@pytest.mark.parametrize("trained", ["ffn"], indirect=True)
def test_full_fine_tuning_from_heads_workdir(trained, tmp_path):
  """configs/finetune_tinystories.py: supervised fine-tuning from a heads-on-frozen-base
  workdir trains every parameter, body included, and keeps the parent's tokenizer and shape."""
  from bpdjax.configs import finetune_tinystories  # pylint: disable=g-import-not-at-top
  _, parent, parent_result = trained
  config = finetune_tinystories.get_config("squad")
  config.init.workdir = parent
  config.model.num_heads_bpd = 4
  config.data.seq_len = 64
  config.data.sft_prompt_tokens = 48
  config.data.shuffle_buffer = 16
  config.update(batch_size=4, num_train_steps=2, warmup_steps=1, log_every_steps=1,
                eval_every_steps=1000, num_eval_batches=1, checkpoint_every_steps=1000)
  child = str(tmp_path / "child")
  result = train_loop.train_and_evaluate(config, child)
  assert os.path.isfile(os.path.join(child, "hf_tokenizer", "tokenizer.json"))
  assert api.load(child).model.config == api.load(parent).model.config
  before, after = _leaves(parent_result["params"]), _leaves(result["params"])
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert any(not k.startswith("['head_") for k in changed), changed   # The body trains too.
  assert all(np.isfinite(r["loss"]) for r in _train_metrics(child))
  with pytest.raises(ValueError, match="no such fine-tuning task"):
    finetune_tinystories.get_config("lambada")


@pytest.mark.parametrize("trained", ["ffn"], indirect=True)
def test_supervised_rows_with_a_tokenizer_whose_id_0_is_unk(trained):
  """TinyStories' tokenizer encodes '#', '(' or 'é' as <unk> = id 0, seqio's padding id; the
  supervised examples drop those tokens, so every packed row's loss weights sit on the target
  tokens (before the fix, a squad row weighted padding and read its answer as zeros)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from bpdjax.data import supervised  # pylint: disable=g-import-not-at-top
  from bpdjax.configs import finetune_tinystories  # pylint: disable=g-import-not-at-top
  vocab_path = os.path.join(trained[1], "hf_tokenizer")
  tok = tokenizers.load_tokenizer(vocab_path)
  assert 0 in tok.encode("#### 18 (é)")
  config = finetune_tinystories.get_config("squad")
  lengths = supervised.feature_lengths(config)
  task = seqio.get_mixture_or_task(supervised.register(config, vocab_path))
  ds = task.get_dataset(sequence_length=lengths, split="validation", shuffle=False)
  examples = list(ds.take(40).as_numpy_iterator())
  assert all(0 not in ex["inputs"] and 0 not in ex["targets"] for ex in examples)
  rows = list(supervised.feature_converter(tok.bos_id)(ds.take(40), lengths).as_numpy_iterator())
  weighted = [r["decoder_target_tokens"][r["decoder_loss_weights"] > 0] for r in rows]
  got = np.concatenate(weighted)
  assert np.array_equal(got, np.concatenate([ex["targets"] for ex in examples]))


@pytest.mark.parametrize("trained", ["ffn"], indirect=True)
def test_ngram_corpus_of_fine_tuning_targets_drops_id_0(trained, tmp_path):
  """The n-gram LM of an sft workdir's targets sees the tokens its fine-tuning saw: GSM8K's
  '####' is <unk> = id 0 for the TinyStories tokenizer, dropped as the supervised rows drop it."""
  config = workdir_lib.load_config(trained[1])
  config.data.update(task="sft", sft_tasks="gsm8k", sft_prompt_tokens=96)
  workdir = str(tmp_path / "ft")
  shutil.copytree(os.path.join(trained[1], "hf_tokenizer"), os.path.join(workdir, "hf_tokenizer"))
  workdir_lib.save_config(workdir, config)
  tok = tokenizers.load_tokenizer(workdir_lib.vocab_path(workdir))
  assert 0 in tok.encode("#### 18")
  documents = list(itertools.islice(estimate.training_token_documents(workdir), 50))
  assert len(documents) == 50 and all(documents)
  assert not any(0 in document for document in documents)
