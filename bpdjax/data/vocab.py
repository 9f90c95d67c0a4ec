"""SentencePiece vocabulary of a run: find, train or copy it, and load it.

Every workdir holds its own copy at `<workdir>/vocab.model`, so a checkpoint directory is
self-contained. Ids follow seqio/T5: pad=0, eos=1, unk=2, no BOS. Trained models use
byte_fallback (any text encodes), identity normalisation and kept whitespace, so
decode(encode(text)) == text up to a leading space.

Command line (trains or copies the vocabulary, prints its path and size):

  python -m bpdjax.data.vocab --config=configs/small.py --workdir=DIR \\
      [--config.data.vocab_path=PATH]
"""
from __future__ import annotations

import hashlib
import io
import os

import ml_collections
import numpy as np
import seqio

from bpdjax.data import hide_accelerators

hide_accelerators()

WORKDIR_VOCAB = "vocab.model"
# A workdir of a run started from a pretrained model (config.init) keeps that model's tokenizer
# instead: a copy of the Hugging Face tokenizer files, or the llama2.c tokenizer .bin.
WORKDIR_HF_TOKENIZER = "hf_tokenizer"
WORKDIR_LLAMA2C_TOKENIZER = "llama2c_tokenizer.bin"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# Vocabulary training reads at most this many lines / characters of the train split, in
# corpus order (no shuffling, so the result is deterministic).
MAX_TRAIN_SENTENCES = 2_000_000
MAX_TRAIN_CHARS = 30_000_000
MAX_SENTENCE_BYTES = 16_384


class PretrainedVocabulary(seqio.Vocabulary):
  """seqio view of a pretrained model's tokenizer (`hf.HFTokenizer`, `hf.Llama2cTokenizer`).

  encode() gives the ids WITHOUT the leading BOS the tokenizer adds: in training the feature
  converter puts `bos_id` in front of every packed segment (see `tasks.input_bos_id`), so the
  model sees [BOS, t1, ...] as when it was pretrained. `tokenizer` is the wrapped object.
  """

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    super().__init__(extra_ids=0)

  @property
  def bos_id(self):
    return self.tokenizer.bos_id

  @property
  def eos_id(self):
    return self.tokenizer.eos_id

  @property
  def unk_id(self):
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _encode(self, s: str) -> list[int]:
    ids = list(self.tokenizer.encode(s))
    if ids and self.bos_id is not None and ids[0] == self.bos_id:
      ids = ids[1:]
    return ids

  def _decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids])

  def _encode_tf(self, s):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    encode = lambda x: np.asarray(self._encode(x.numpy().decode("utf-8")), np.int32)
    ids = tf.py_function(encode, [s], tf.int32)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    decode = lambda x: self._decode(x.numpy().tolist()).encode("utf-8")
    text = tf.py_function(decode, [ids], tf.string)
    text.set_shape([])
    return text

  def __eq__(self, other):
    return (isinstance(other, PretrainedVocabulary)
            and getattr(self.tokenizer, "path", id(self.tokenizer))
            == getattr(other.tokenizer, "path", id(other.tokenizer)))

  def __hash__(self):
    return hash(getattr(self.tokenizer, "path", id(self.tokenizer)))


def load_vocabulary(path: str) -> seqio.Vocabulary:
  """The seqio vocabulary at `path`: a SentencePiece model file (no extra ids), or a pretrained
  model's tokenizer (a Hugging Face folder with tokenizer.json, or a llama2.c tokenizer .bin)
  as a `PretrainedVocabulary`."""
  if os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".bin")):
    from bpdjax import hf  # pylint: disable=g-import-not-at-top
    return PretrainedVocabulary(hf.load_tokenizer(path))
  if not os.path.isfile(path):
    raise ValueError(f"SentencePiece model {path!r} does not exist.")
  return seqio.SentencePieceVocabulary(path)


def workdir_vocab_path(workdir: str) -> str:
  """The vocabulary a workdir keeps: vocab.model, or a pretrained model's tokenizer (the
  hf_tokenizer folder or llama2c_tokenizer.bin). `load_vocabulary` reads any of them."""
  for name in (WORKDIR_VOCAB, WORKDIR_HF_TOKENIZER, WORKDIR_LLAMA2C_TOKENIZER):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"No {WORKDIR_VOCAB} (or {WORKDIR_HF_TOKENIZER}/, "
                          f"{WORKDIR_LLAMA2C_TOKENIZER}) in workdir {workdir!r}")


def vocab_digest(workdir: str) -> str:
  """sha256 of a workdir's vocabulary: vocab.model, or a pretrained tokenizer (the tokenizer.json
  of its hf_tokenizer folder, or llama2c_tokenizer.bin)."""
  path = workdir_vocab_path(workdir)
  if os.path.isdir(path):
    path = os.path.join(path, "tokenizer.json")
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def cached_vocab_path(config: ml_collections.ConfigDict) -> str:
  """Where a trained vocabulary is cached: `<data.vocab_dir>/<task>_<vocab_size>.model`."""
  return os.path.join(config.data.vocab_dir,
                      f"{config.data.task}_{config.model.vocab_size}.model")


def check_vocab_size(path: str, vocab_size: int) -> None:
  """ValueError unless the model at `path` has exactly `vocab_size` pieces."""
  if os.path.isdir(path) or path.endswith(".bin"):
    size = load_vocabulary(path).vocab_size
    if size != vocab_size:
      raise ValueError(f"vocabulary size mismatch: tokenizer {path!r} has {size} ids but "
                       f"config.model.vocab_size={vocab_size}.")
    return
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  num_pieces = spm.SentencePieceProcessor(model_file=path).get_piece_size()
  if num_pieces != vocab_size:
    raise ValueError(f"vocabulary size mismatch: SentencePiece model {path!r} has {num_pieces} "
                     f"pieces but config.model.vocab_size={vocab_size}.")


def train_vocabulary(config: ml_collections.ConfigDict, output_path: str) -> str:
  """Trains a unigram SentencePiece model on the train split of a local task.

  Deterministic (same text, same bytes). Writes `output_path` atomically and returns it.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from bpdjax.data import tasks  # pylint: disable=g-import-not-at-top  (tasks imports vocab)

  if config.data.task not in ("wiki", "tiny_shakespeare"):
    raise ValueError(f"config.data.task={config.data.task!r} has no local text to train a "
                     "vocabulary on: config.data.vocab_path must be given.")

  def sentences():
    chars = 0
    for i, line in enumerate(tasks.iter_training_text(config)):
      if i >= MAX_TRAIN_SENTENCES or chars >= MAX_TRAIN_CHARS:
        return
      chars += len(line)
      yield line

  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(),
        model_writer=model,  # Not model_prefix: its path would be stored in the model.
        model_type="unigram",
        vocab_size=config.model.vocab_size,
        byte_fallback=True,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        character_coverage=0.9995,
        input_sentence_size=MAX_TRAIN_SENTENCES,
        shuffle_input_sentence=False,
        max_sentence_length=MAX_SENTENCE_BYTES,
        num_threads=os.cpu_count() or 1,
        minloglevel=2)
  except RuntimeError as e:
    raise ValueError(f"SentencePiece training of a {config.model.vocab_size}-piece vocabulary "
                     f"for task {config.data.task!r} failed: {e}") from e
  _write_atomic(model.getvalue(), output_path)
  return output_path


def _write_atomic(data: bytes, dst: str) -> None:
  """Writes via a temp file + rename so a reader never sees a half-written model."""
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  tmp = f"{dst}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, dst)


def ensure_vocabulary(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Returns the SentencePiece model of the run, making sure `<workdir>/vocab.model` holds it.

  Order: an existing `<workdir>/vocab.model` wins (resumed runs keep their vocabulary); else
  `config.data.vocab_path` is copied in; else a vocabulary is trained on the task's train split
  (cached at `<data.vocab_dir>/<task>_<vocab_size>.model`, reused if present) and copied in.
  With several processes only process 0 trains/copies; the others wait at a barrier. The
  workdir must then be on a filesystem all processes see.

  A run started from a pretrained model (config.init) instead keeps that model's tokenizer:
  `<workdir>/hf_tokenizer/` (the Hugging Face tokenizer files) or
  `<workdir>/llama2c_tokenizer.bin`, copied from the model at first start.

  Returns:
    `<workdir>/vocab.model` (or the pretrained tokenizer's path in the workdir).

  Raises:
    ValueError: vocab_path missing, c4 without vocab_path, or a piece count that differs from
      config.model.vocab_size.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from bpdjax import configuration  # pylint: disable=g-import-not-at-top

  source = configuration.init_source(config)
  if source:  # A pretrained model's own tokenizer, copied into the workdir.
    name = WORKDIR_HF_TOKENIZER if source == "hf" else WORKDIR_LLAMA2C_TOKENIZER
    path = os.path.join(workdir, name)
    if not os.path.exists(path) and jax.process_index() == 0:
      from bpdjax import hf  # pylint: disable=g-import-not-at-top
      os.makedirs(workdir, exist_ok=True)
      hf.copy_tokenizer(config, path)
  elif config.data.task == "token_file":  # Ids of a pretrained model's tokenizer: keep it.
    path = _copy_token_file_tokenizer(config, workdir)
    source = "token_file"
  else:
    path = os.path.join(workdir, WORKDIR_VOCAB)
  if not source and not os.path.exists(path):
    # Checks every process can make before the barrier, so none waits on a failed process 0.
    if config.data.vocab_path:
      source = config.data.vocab_path
      if not os.path.isfile(source):
        raise ValueError(f"config.data.vocab_path={source!r} does not exist.")
    elif config.data.task not in ("wiki", "tiny_shakespeare"):
      raise ValueError(f"config.data.task={config.data.task!r}: config.data.vocab_path must be "
                       "given (vocabularies are only trained on local corpora).")
    else:
      source = cached_vocab_path(config)
    if jax.process_index() == 0:
      if not os.path.exists(source):
        train_vocabulary(config, source)
      check_vocab_size(source, config.model.vocab_size)
      with open(source, "rb") as f:
        _write_atomic(f.read(), path)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("bpdjax_ensure_vocabulary")
  if not os.path.exists(path):
    raise ValueError(f"{path!r} is missing after process 0 wrote it: is the workdir on a shared "
                     "filesystem?")
  check_vocab_size(path, config.model.vocab_size)
  return path


def _copy_token_file_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> str:
  """A from-scratch run on token_file data keeps the tokenizer its manifest names (the ids are
  that tokenizer's), copied into the workdir as a pretrained run's is; returns its path."""
  import jax  # pylint: disable=g-import-not-at-top
  from bpdjax import hf  # pylint: disable=g-import-not-at-top
  from bpdjax.data import tasks  # pylint: disable=g-import-not-at-top
  manifest = tasks.read_token_manifest(config.data.token_dir)
  model_format, tokenizer = manifest.get("model_format"), manifest.get("tokenizer")
  if model_format not in ("hf", "llama2c") or not tokenizer:
    raise ValueError(f"data.token_dir {config.data.token_dir!r}: its manifest.json names no "
                     "tokenizer (model_format 'hf' or 'llama2c' and 'tokenizer'), so the run "
                     "would have no vocabulary")
  name = WORKDIR_HF_TOKENIZER if model_format == "hf" else WORKDIR_LLAMA2C_TOKENIZER
  path = os.path.join(workdir, name)
  if not os.path.exists(path) and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    src = os.path.dirname(tokenizer) if model_format == "hf" else tokenizer
    hf.copy_tokenizer_files(model_format, src, path)
  return path


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  path = ensure_vocabulary(config, flags.FLAGS.workdir)
  print(f"vocabulary: {path}")
  print(f"vocab_size: {load_vocabulary(path).vocab_size}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory; receives vocab.model.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
