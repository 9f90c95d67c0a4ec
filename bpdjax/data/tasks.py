"""seqio Tasks for language-model pretraining: "wiki", "tiny_shakespeare", "c4", "token_file".

Every task has splits "train" and "validation" and one output feature, "targets" (int32 token
ids of a SentencePiece vocabulary or of a pretrained model's tokenizer, EOS appended).
Preprocessing of each raw text example:

  {"text": str} -> rekey -> {"targets": str} -> tokenize -> [n] int32 -> append EOS -> [n + 1]
    -> split into pieces of at most sequence_length["targets"] tokens

The last step keeps long documents whole (T5's `split_tokens` idea) instead of truncating every
Wikipedia article to its first `seq_len` tokens; only the last piece of a document ends in EOS.

"token_file" reads sequences that are already token ids (e.g. self-distillation data written by
`python -m bpdjax.distill`): data.token_dir holds `train-*.npz` and `validation-*.npz` shards
(arrays `tokens` [sum n] int32 and `lengths` [num sequences]) and a `manifest.json`. No
vocabulary and no tokenization: each sequence is cut into seq_len pieces as above, every id is
checked against model.vocab_size when the task is registered, and the manifest's `bos_id` starts
every packed segment's inputs (see `input_bos_id`).

Local corpora (wiki, tiny_shakespeare) are split deterministically into train/validation with
`config.data.eval_fraction`, and their sources honour `seqio.ShardInfo`, so input shard s of S
reads only its own files (wiki, when there are at least S files) or its own examples.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Iterator, Mapping, Optional, Sequence

import ml_collections
import numpy as np
import seqio
import tensorflow as tf

from bpdjax.data import hide_accelerators
from bpdjax.data import supervised
from bpdjax.data import token_files
from bpdjax.data import tokenizers
from bpdjax.data import vocabulary as vocab_lib

hide_accelerators()

TASKS = ("wiki", "tiny_shakespeare", "c4", "token_file")
SPLITS = ("train", "validation")
C4_TFDS_NAME = "c4/en:3.1.0"
# tiny_shakespeare: consecutive speeches are grouped into examples of at least this many chars.
SHAKESPEARE_CHUNK_CHARS = 1500
# Default corpus locations under config.data_dir.
_CORPUS_SUBPATH = {"wiki": "wikipedia_en_2015", "tiny_shakespeare": "tiny_shakespeare/input.txt"}
_DOC_START = re.compile(r"^\s*<doc[ >]")
_HASH_BUCKETS = 1_000_000


def task_name(config: ml_collections.ConfigDict) -> str:
  """Name under which `register_task` registers `config.data.task`."""
  return f"bpdjax_{config.data.task}"


def corpus_path(config: ml_collections.ConfigDict) -> str:
  """The local corpus of a wiki/tiny_shakespeare config: data.corpus_dir, else its data_dir default.

  For tiny_shakespeare a corpus_dir may name the text file itself or a folder holding input.txt.
  """
  task = config.data.task
  if task not in _CORPUS_SUBPATH:
    raise ValueError(f"config.data.task={task!r} has no local corpus; local tasks: "
                     f"{sorted(_CORPUS_SUBPATH)}.")
  if config.data.corpus_dir:
    path = config.data.corpus_dir
    if task == "tiny_shakespeare" and os.path.isdir(path):
      path = os.path.join(path, "input.txt")
    return path
  return os.path.join(config.data_dir, _CORPUS_SUBPATH[task])


# ------------------------------------------------------------------------------------ wiki --


def list_wiki_files(corpus_dir: str) -> list[str]:
  """All files under `corpus_dir`, recursively, sorted; ValueError if the folder has no docs.

  Only the first file holding a `<doc` line is read, so this is cheap on the real corpus.
  """
  if not os.path.isdir(corpus_dir):
    raise ValueError(f"wiki corpus folder {corpus_dir!r} does not exist (set config.data_dir or "
                     "config.data.corpus_dir).")
  files = sorted(
      os.path.join(root, name)
      for root, _, names in os.walk(corpus_dir) for name in names if not name.startswith("."))
  for path in files:
    with open(path, encoding="utf-8", errors="replace") as f:
      if any(_DOC_START.match(line) for line in f):
        return files
  raise ValueError(f"wiki corpus folder {corpus_dir!r} holds no documents: none of its "
                   f"{len(files)} files has a '<doc id=...>' line (WikiExtractor format).")


def _file_docs(path: tf.Tensor) -> tf.data.Dataset:
  """One WikiExtractor file -> its raw `<doc ...>` header + body strings (before `</doc>`)."""
  parts = tf.strings.split(tf.io.read_file(path), "</doc>")
  return tf.data.Dataset.from_tensor_slices(parts).filter(
      lambda part: tf.strings.regex_full_match(part, r"(?s)\s*<doc[ >][^\n]*\n.*"))


def _parse_doc(part: tf.Tensor) -> dict[str, tf.Tensor]:
  """Raw doc -> {"id": doc id (or "" if absent), "text": title + paragraphs, tag lines gone}."""
  header = tf.strings.regex_replace(part, r"(?s)^\s*(<doc[^\n]*)\n.*$", r"\1")
  doc_id = tf.strings.regex_replace(header, r'^.*?\bid="([^"]*)".*$|^.*$', r"\1")
  text = tf.strings.strip(tf.strings.regex_replace(part, r"^\s*<doc[^\n]*\n", ""))
  return {"id": doc_id, "text": text}


def is_eval_doc(doc_id: tf.Tensor, eval_fraction: float) -> tf.Tensor:
  """Stable split: a doc is held out iff a FarmHash bucket of its id is in the first fraction."""
  bucket = tf.strings.to_hash_bucket_fast(doc_id, _HASH_BUCKETS)
  return bucket < int(round(eval_fraction * _HASH_BUCKETS))


def wiki_dataset(files: Sequence[str], split: str, eval_fraction: float) -> tf.data.Dataset:
  """{"text": tf.string} per article of `split` in `files`, in file order (pure tf.data)."""
  want_eval = split == "validation"
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(files), tf.string))
  ds = ds.interleave(_file_docs, cycle_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
  ds = ds.map(_parse_doc, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.filter(lambda d: tf.logical_and(tf.strings.length(d["text"]) > 0,
                                          is_eval_doc(d["id"], eval_fraction) == want_eval))
  return ds.map(lambda d: {"text": d["text"]})


class WikiDataSource(seqio.DataSource):
  """WikiExtractor files -> {"text": tf.string} per article; one seqio shard per file."""

  def __init__(self, files: Sequence[str], eval_fraction: float):
    super().__init__(splits=SPLITS)
    self._files = tuple(files)
    self._eval_fraction = eval_fraction

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False  # With fewer files than shards, seqio shards the examples instead.

  def list_shards(self, split: str) -> Sequence[str]:
    return self._files

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # Unused, as in seqio's own sources.
    files = list(self._files)
    if shard_info is not None:
      files = files[shard_info.index::shard_info.num_shards]
    if shuffle:  # File order only; the Task's shuffle buffer mixes the articles.
      files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    return wiki_dataset(files, split, self._eval_fraction)


# ------------------------------------------------------------------------ tiny_shakespeare --


def shakespeare_chunks(path: str, eval_fraction: float) -> dict[str, list[str]]:
  """Splits the text into blank-line-separated speeches, grouped into ~1.5k-char examples.

  Returns {"train": [...], "validation": [...]}; validation is the last `eval_fraction` of the
  chunks (at least one when eval_fraction > 0).
  """
  if not os.path.isfile(path):
    raise ValueError(f"tiny_shakespeare corpus file {path!r} does not exist (set "
                     "config.data_dir or config.data.corpus_dir).")
  with open(path, encoding="utf-8") as f:
    speeches = [s.strip() for s in re.split(r"\n\s*\n", f.read()) if s.strip()]
  if not speeches:
    raise ValueError(f"tiny_shakespeare corpus file {path!r} holds no text.")
  chunks, current, size = [], [], 0
  for speech in speeches:
    current.append(speech)
    size += len(speech)
    if size >= SHAKESPEARE_CHUNK_CHARS:
      chunks.append("\n\n".join(current))
      current, size = [], 0
  if current:
    chunks.append("\n\n".join(current))
  num_eval = int(np.ceil(eval_fraction * len(chunks))) if eval_fraction > 0 else 0
  num_eval = min(num_eval, len(chunks) - 1)
  return {"train": chunks[:len(chunks) - num_eval], "validation": chunks[len(chunks) - num_eval:]}


class _InMemorySource(seqio.DataSource):
  """A small in-memory corpus {split: [example, ...]}; shards by example (shard i of n takes
  every n-th from i), then a seeded permutation when shuffling. Subclasses turn the examples
  into a dataset (`_dataset`)."""

  def __init__(self, examples: Mapping[str, Sequence]):
    # No num_input_examples: seqio would then .cache() the (cheap) source and warn on every
    # iterator that stops early.
    super().__init__(splits=tuple(examples))
    self._examples = {k: list(v) for k, v in examples.items()}

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    items = self._examples[split]
    if shard_info is not None:
      items = items[shard_info.index::shard_info.num_shards]
    if shuffle:
      items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    return self._dataset(list(items))

  def _dataset(self, items: list) -> tf.data.Dataset:
    raise NotImplementedError


class InMemoryTextSource(_InMemorySource):
  """A small in-memory corpus {split: [text, ...]} -> {"text": tf.string}."""

  def _dataset(self, items: list) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices({"text": tf.constant(items, dtype=tf.string)})


# ------------------------------------------------------------------------------ token_file --


class TokenSequenceSource(_InMemorySource):
  """In-memory token-id sequences {split: [int32 [n], ...]} -> {"targets": int32 [n]}."""

  def _dataset(self, items: list) -> tf.data.Dataset:
    lengths = np.asarray([len(x) for x in items], np.int64)
    flat = np.concatenate(items) if items else np.zeros((0,), np.int32)
    ragged = tf.RaggedTensor.from_row_lengths(tf.constant(flat, tf.int32), lengths)
    return tf.data.Dataset.from_tensor_slices({"targets": ragged})


def input_bos_id(config: ml_collections.ConfigDict, vocab_path: str) -> int:
  """The id that starts every packed segment's decoder inputs (seqio's feature converter bos_id).

  0 (seqio's default) for SentencePiece vocabularies; a pretrained model's BOS (the token_file
  manifest's `bos_id`, or the tokenizer's) otherwise, so the model sees [BOS, t1, ...] as it
  did in pretraining.
  """
  if config.data.task == "token_file":
    bos = token_files.read_token_manifest(config.data.token_dir).get("bos_id")
    return 0 if bos is None else int(bos)
  if vocab_path and tokenizers.is_pretrained_tokenizer(vocab_path):
    bos = vocab_lib.load_vocabulary(vocab_path).bos_id
    return 0 if bos is None else int(bos)
  return 0


# ------------------------------------------------------------------------------- registry --


def iter_training_documents(config: ml_collections.ConfigDict) -> Iterator[str]:
  """Yields the documents (examples) of a local task's train split, in corpus order, as training
  reads them: the documents of the validation split (config.data.eval_fraction) are held out.
  data.task "sft": the targets (references) of each data.sft_tasks task's fine-tune part, one
  document per example (never an evaluation example)."""
  task = config.data.task
  if task == supervised.TASK:
    for name in supervised.task_names(config):
      for record in supervised.split_records(name, config.data_dir,
                                             config.data.sft_jsonl)["train"]:
        if target := record["reference"].strip():
          yield target
  elif task == "wiki":
    ds = wiki_dataset(list_wiki_files(corpus_path(config)), "train", config.data.eval_fraction)
    for example in ds.as_numpy_iterator():
      yield example["text"].decode("utf-8", errors="replace")
  elif task == "tiny_shakespeare":
    yield from shakespeare_chunks(corpus_path(config), config.data.eval_fraction)["train"]
  else:
    raise ValueError(f"config.data.task={task!r}: no local training text (tasks with local "
                     f"corpora: {sorted(_CORPUS_SUBPATH)}).")


def iter_training_text(config: ml_collections.ConfigDict) -> Iterator[str]:
  """Yields the non-empty lines of a local task's train split, in corpus order (vocab training)."""
  for document in iter_training_documents(config):
    yield from (line for line in document.split("\n") if line.strip())


def split_tokens(dataset: tf.data.Dataset,
                 sequence_length: Optional[Mapping[str, int]] = None) -> tf.data.Dataset:
  """Cuts each "targets" [n] into consecutive pieces [<= sequence_length["targets"]].

  A no-op when `sequence_length` is None (seqio passes it to post-cache preprocessors).
  """
  if not sequence_length or not sequence_length.get("targets"):
    return dataset
  length = int(sequence_length["targets"])

  def _split(example):
    tokens = example["targets"]
    n = tf.size(tokens, out_type=tf.int64)
    starts = tf.range(0, n, length, dtype=tf.int64)
    row_lengths = tf.minimum(tf.constant(length, tf.int64), n - starts)
    return {"targets": tf.RaggedTensor.from_row_lengths(tokens, row_lengths)}

  return dataset.map(_split, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _source(config: ml_collections.ConfigDict) -> seqio.DataSource:
  task = config.data.task
  if task == "wiki":
    return WikiDataSource(list_wiki_files(corpus_path(config)), config.data.eval_fraction)
  if task == "tiny_shakespeare":
    return InMemoryTextSource(shakespeare_chunks(corpus_path(config), config.data.eval_fraction))
  return seqio.TfdsDataSource(
      tfds_name=C4_TFDS_NAME, tfds_data_dir=config.data.tfds_data_dir or None,
      splits={"train": "train", "validation": "validation"})


def register_task(config: ml_collections.ConfigDict, vocab_path: str) -> str:
  """Registers the seqio Task of `config.data.task` (replacing an earlier one); returns its name.

  Args:
    config: the run config (reads data.task, data.corpus_dir, data_dir, data.eval_fraction,
      data.tfds_data_dir, data.shuffle_buffer).
    vocab_path: the vocabulary (see `vocab.ensure_vocabulary`): a SentencePiece model file, or
      a pretrained model's tokenizer (`vocabulary.load_vocabulary`); unused by "token_file".

  Raises:
    ValueError: unknown task, or a missing/empty local corpus (raised here, not at first batch).
  """
  task = config.data.task
  if task not in TASKS:
    raise ValueError(f"config.data.task={task!r} is not one of {TASKS}.")
  if not 0.0 <= config.data.eval_fraction < 1.0:
    raise ValueError(f"config.data.eval_fraction={config.data.eval_fraction} must be in [0, 1).")
  if task == "token_file":
    return _register_token_task(config)
  vocabulary = vocab_lib.load_vocabulary(vocab_path)
  source = _source(config)
  name = task_name(config)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=[
          functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
          functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
          seqio.preprocessors.append_eos,
          split_tokens,
      ],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)},
      shuffle_buffer_size=config.data.shuffle_buffer)
  return name


def _register_token_task(config: ml_collections.ConfigDict) -> str:
  token_dir = config.data.get("token_dir", "")
  if not token_dir:
    raise ValueError("config.data.task='token_file' needs config.data.token_dir.")
  vocab_size = config.model.vocab_size
  manifest = token_files.read_token_manifest(token_dir)
  if manifest.get("vocab_size") not in (None, vocab_size):
    raise ValueError(f"data.token_dir {token_dir!r} holds ids of a {manifest['vocab_size']}-id "
                     f"vocabulary (manifest.json) but model.vocab_size={vocab_size}.")
  source = TokenSequenceSource({split: token_files.read_token_split(token_dir, split, vocab_size)
                                for split in SPLITS})
  vocabulary = seqio.PassThroughVocabulary(size=vocab_size, eos_id=manifest.get("eos_id"))
  name = task_name(config)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=[split_tokens],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)},
      shuffle_buffer_size=config.data.shuffle_buffer)
  return name
