"""Tests of bpdjax.data: vocabulary, seqio tasks and the sharded, resumable input iterators."""
import os

import jax
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from bpdjax.data import pipeline
from bpdjax.data import tasks
from bpdjax import workdir as workdir_lib
from bpdjax.data import vocab
from bpdjax.data import vocabulary
from bpdjax.configs import tiny

N_RESUME = 6


def _config(**data):
  config = tiny.get_config()
  config.data.update(data)
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def first_batches(tiny_vocab_path):
  """Batches 0..N_RESUME-1 of the tiny config's training stream."""
  return _take(pipeline.make_train_iterator(_config(), tiny_vocab_path), N_RESUME)


# ------------------------------------------------------------------------------ vocabulary --


def test_vocabulary_ids_and_roundtrip(tiny_vocab_path):
  assert os.path.basename(tiny_vocab_path) == workdir_lib.VOCAB_FILE
  v = vocabulary.load_vocabulary(tiny_vocab_path)
  assert (v.vocab_size, v.pad_id, v.eos_id, v.unk_id) == (512, 0, 1, 2)
  text = "First Citizen:\nBefore we proceed, héllo 日本!\n\nAll:\nSpeak."
  ids = v.encode(text)
  assert min(ids) > 2 and max(ids) < 512  # byte_fallback: no <unk>, no pad/eos.
  assert v.decode(ids) == text


def test_ensure_vocabulary_reuses_cache_and_workdir(tiny_vocab_path, tmp_path, monkeypatch):
  def no_training(*args):
    raise AssertionError("must not retrain")
  monkeypatch.setattr(vocab, "train_vocabulary", no_training)
  # An explicit vocab_path is copied in, byte for byte.
  path = vocab.ensure_vocabulary(_config(vocab_path=tiny_vocab_path), str(tmp_path / "a"))
  assert path == str(tmp_path / "a" / "vocab.model")
  with open(path, "rb") as f, open(tiny_vocab_path, "rb") as g:
    assert f.read() == g.read()
  # A cached <vocab_dir>/<task>_<vocab_size>.model is reused.
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / "tiny_shakespeare_512.model").write_bytes(open(tiny_vocab_path, "rb").read())
  assert os.path.isfile(vocab.ensure_vocabulary(_config(vocab_dir=str(cache)), str(tmp_path / "b")))
  # An existing workdir/vocab.model wins over data.vocab_path.
  assert vocab.ensure_vocabulary(_config(vocab_path="/nonexistent.model"), str(tmp_path / "a")) \
      == path


def test_vocabulary_errors(tiny_vocab_path, tmp_path):
  with pytest.raises(ValueError, match="does not exist") as e:
    vocab.ensure_vocabulary(_config(vocab_path=str(tmp_path / "nope.model")), str(tmp_path / "w"))
  assert "nope.model" in str(e.value)
  config = _config(vocab_path=tiny_vocab_path)
  config.model.vocab_size = 1024
  with pytest.raises(ValueError, match="vocabulary size mismatch") as e:
    vocab.ensure_vocabulary(config, str(tmp_path / "w"))
  assert "512" in str(e.value) and "1024" in str(e.value)
  with pytest.raises(ValueError, match="vocab_path must be given"):
    vocab.ensure_vocabulary(_config(task="c4"), str(tmp_path / "w"))


# ---------------------------------------------------------------------------- train stream --


def _check_batch_format(batch, config):
  """Keys, shapes, dtypes, token range and packed-segment consistency of one batch."""
  rows, length = config.batch_size, config.data.seq_len
  assert set(batch) == set(pipeline.FEATURES)
  for k, v in batch.items():
    assert v.shape == (rows, length) and v.dtype == np.int32, k
  targets, inputs = batch["decoder_target_tokens"], batch["decoder_input_tokens"]
  seg, pos = batch["decoder_segment_ids"], batch["decoder_positions"]
  assert targets.min() >= 0 and targets.max() < config.model.vocab_size
  real = seg > 0
  np.testing.assert_array_equal(batch["decoder_loss_weights"], real.astype(np.int32))
  np.testing.assert_array_equal(targets > 0, real)  # Pad id 0 only on padding.
  np.testing.assert_array_equal(np.diff(seg, axis=1)[real[:, 1:]] >= 0, True)
  starts = np.concatenate([np.ones((rows, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  # Positions restart at 0 at each segment start and count up inside a segment.
  np.testing.assert_array_equal(pos[starts & real], 0)
  cont = (~starts & real)[:, 1:]
  np.testing.assert_array_equal(pos[:, 1:][cont], pos[:, :-1][cont] + 1)
  # Inputs are the targets shifted right within each segment; 0 starts a segment.
  np.testing.assert_array_equal(inputs[starts & real], 0)
  np.testing.assert_array_equal(inputs[:, 1:][cont], targets[:, :-1][cont])


def test_train_batch_format(first_batches):
  for batch in first_batches:
    _check_batch_format(batch, _config())


def test_train_stream_is_deterministic(first_batches, tiny_vocab_path):
  _assert_same(first_batches, _take(pipeline.make_train_iterator(_config(), tiny_vocab_path),
                                    N_RESUME))
  assert not np.array_equal(first_batches[0]["decoder_target_tokens"],
                            first_batches[1]["decoder_target_tokens"])


def test_resume_gives_the_following_batches(first_batches, tiny_vocab_path):
  half = N_RESUME // 2
  resumed = _take(pipeline.make_train_iterator(_config(), tiny_vocab_path, start_step=half),
                  N_RESUME - half)
  _assert_same(first_batches[half:], resumed)


def test_shards_concatenate_into_the_global_batch(tiny_vocab_path, monkeypatch):
  config = _config(num_input_shards=2)
  one_process = _take(pipeline.make_train_iterator(config, tiny_vocab_path, start_step=1), 2)
  shards = [_take(pipeline.make_shard_iterator(config, tiny_vocab_path, s, 2, start_step=1), 2)
            for s in range(2)]
  assert shards[0][0]["decoder_target_tokens"].shape == (4, config.data.seq_len)
  assert not np.array_equal(shards[0][0]["decoder_target_tokens"],
                            shards[1][0]["decoder_target_tokens"])
  # Two processes with the default num_input_shards=0 (= process count): process p reads shard p.
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  per_process = []
  for p in range(2):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    per_process.append(_take(pipeline.make_train_iterator(_config(), tiny_vocab_path, 1), 2))
  for step in range(2):
    for parts in (shards, per_process):
      concat = {k: np.concatenate([parts[0][step][k], parts[1][step][k]]) for k in
                pipeline.FEATURES}
      _assert_same([one_process[step]], [concat])


def test_eval_batches(tiny_vocab_path):
  config = _config()
  batches = pipeline.make_eval_iterator(config, tiny_vocab_path, 3)
  assert len(batches) == 3
  assert batches[0]["decoder_target_tokens"].shape == (config.batch_size, config.data.seq_len)
  _assert_same(batches, pipeline.make_eval_iterator(config, tiny_vocab_path, 3))


def test_sharding_errors(tiny_vocab_path, monkeypatch):
  with pytest.raises(ValueError, match="batch_size=8 is not divisible .* 3"):
    pipeline.make_train_iterator(_config(num_input_shards=3), tiny_vocab_path)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match="num_input_shards=3 must be a multiple of the process"):
    pipeline.make_train_iterator(_config(num_input_shards=3), tiny_vocab_path)
  config = _config()
  config.data.seq_len = 1000
  with pytest.raises(ValueError, match="seq_len=1000 exceeds model.max_len"):
    pipeline.make_eval_iterator(config, tiny_vocab_path, 1)


# -------------------------------------------------------------------------------- corpora --


def _write_wiki_corpus(root):
  """Two WikiExtractor files in root/AA with docs 100..105 and 106..111; at eval_fraction=0.25
  docs 104 and 110 are held out."""
  docs = {}
  os.makedirs(root / "AA")
  for name, ids in (("wiki_00", range(100, 106)), ("wiki_01", range(106, 112))):
    lines = []
    for i in ids:
      title = f"Title{i}"
      body = f"Article {i} is about the number {i}. " * 12
      lines += [f'<doc id="{i}" url="http://en.wikipedia.org/wiki?curid={i}" title="{title}">',
                title, "", body, f"Second paragraph of {i}.", "</doc>"]
      docs[str(i)] = f"{title}\n\n{body}\nSecond paragraph of {i}."
    (root / "AA" / name).write_text("\n".join(lines) + "\n")
  return docs


def _source_texts(name, split, shard_info=None):
  ds = seqio.get_mixture_or_task(name).source.get_dataset(split, shuffle=False,
                                                          shard_info=shard_info)
  return [ex["text"].decode() for ex in ds.as_numpy_iterator()]


def test_wiki_task(tiny_vocab_path, tmp_path):
  docs = _write_wiki_corpus(tmp_path / "wikipedia_en_2015")  # The default under data_dir.
  config = _config(task="wiki", eval_fraction=0.25)
  config.data_dir = str(tmp_path)
  name = tasks.register_task(config, tiny_vocab_path)
  train, valid = _source_texts(name, "train"), _source_texts(name, "validation")
  assert sorted(valid) == sorted(docs[i] for i in ("104", "110"))
  assert sorted(train + valid) == sorted(docs.values())  # Disjoint, nothing lost, tags gone.
  assert not any("<doc" in t or "</doc>" in t for t in train + valid)
  # Source sharding: shard 0 of 2 reads the first file only.
  shard0 = _source_texts(name, "train", seqio.ShardInfo(0, 2))
  assert sorted(shard0) == sorted(docs[i] for i in ("100", "101", "102", "103", "105"))
  v = vocabulary.load_vocabulary(tiny_vocab_path)
  batch = next(pipeline.make_train_iterator(config, tiny_vocab_path))
  row = batch["decoder_target_tokens"][0]
  assert "Article" in v.decode(row[row > 0].tolist())
  assert len(pipeline.make_eval_iterator(config, tiny_vocab_path, 2)) == 2
  config.data.eval_fraction = 0.0
  with pytest.raises(ValueError, match="validation shard 0/1 .* produced no"):
    pipeline.make_eval_iterator(config, tiny_vocab_path, 1)


def test_corpus_errors(tiny_vocab_path, tmp_path):
  missing = str(tmp_path / "missing")
  with pytest.raises(ValueError, match="wiki corpus folder .*missing.* does not exist"):
    tasks.register_task(_config(task="wiki", corpus_dir=missing), tiny_vocab_path)
  with pytest.raises(ValueError, match="tiny_shakespeare corpus file .*missing"):
    pipeline.make_train_iterator(_config(corpus_dir=missing), tiny_vocab_path)
  empty = tmp_path / "empty"
  (empty / "AA").mkdir(parents=True)
  (empty / "AA" / "wiki_00").write_text("no documents here\n")
  with pytest.raises(ValueError, match="holds no documents") as e:
    pipeline.make_train_iterator(_config(task="wiki", corpus_dir=str(empty)), tiny_vocab_path)
  assert str(empty) in str(e.value)
  with pytest.raises(ValueError, match="'nope' is not one of"):
    tasks.register_task(_config(task="nope"), tiny_vocab_path)


def _mock_c4_metadata(data_dir):
  """dataset_info.json with train/validation splits, so seqio can ask TFDS for split sizes."""
  builder = tfds.builder(tasks.C4_TFDS_NAME, data_dir=data_dir)
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name="c4", filetype_suffix="tfrecord")
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0,
                          filename_template=template.replace(split=s))
      for s, n in (("train", 16), ("validation", 8))]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)


def test_c4_task_with_mock_data(tiny_vocab_path, tmp_path):
  data_dir = str(tmp_path / "tfds")
  _mock_c4_metadata(data_dir)
  config = _config(task="c4", tfds_data_dir=data_dir, vocab_path=tiny_vocab_path)
  workdir_vocab = vocab.ensure_vocabulary(config, str(tmp_path / "workdir"))
  with tfds.testing.mock_data(num_examples=16, data_dir=data_dir):
    batch = next(pipeline.make_train_iterator(config, workdir_vocab))
    eval_batches = pipeline.make_eval_iterator(config, workdir_vocab, 1)
  for b in (batch, eval_batches[0]):
    _check_batch_format(b, config)
    # Short documents: several packed per row, each ending in EOS (id 1).
    assert (b["decoder_segment_ids"].max(axis=1) >= 2).all()
    assert ((b["decoder_target_tokens"] == 1).sum(axis=1) >= 2).all()
