"""The vocabulary of a run: find, train or copy it into the workdir.

Every workdir holds its own copy at `<workdir>/vocab.model`, so a checkpoint directory is
self-contained. Ids follow seqio/T5: pad=0, eos=1, unk=2, no BOS. Trained models use
byte_fallback (any text encodes), identity normalisation and kept whitespace, so
decode(encode(text)) == text up to a leading space.

Command line (trains or copies the vocabulary, prints its path and size):

  python -m bpdjax.data.vocab --config=configs/small.py --workdir=DIR \\
      [--config.data.vocab_path=PATH]
"""
from __future__ import annotations

import io
import os

from absl import app
from absl import flags
import jax
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import sentencepiece as spm

from bpdjax import configuration
from bpdjax import fileio
from bpdjax import workdir as workdir_lib
from bpdjax.data import tasks
from bpdjax.data import token_files
from bpdjax.data import tokenizers
from bpdjax.data import vocabulary

# Vocabulary training reads at most this many lines / characters of the train split, in
# corpus order (no shuffling, so the result is deterministic).
MAX_TRAIN_SENTENCES = 2_000_000
MAX_TRAIN_CHARS = 30_000_000
MAX_SENTENCE_BYTES = 16_384


def cached_vocab_path(config: ml_collections.ConfigDict) -> str:
  """Where a trained vocabulary is cached: `<data.vocab_dir>/<task>_<vocab_size>.model`."""
  return os.path.join(config.data.vocab_dir,
                      f"{config.data.task}_{config.model.vocab_size}.model")


def check_vocab_size(path: str, vocab_size: int) -> None:
  """ValueError unless the model at `path` has exactly `vocab_size` pieces (a pretrained
  model's tokenizer: at most `vocab_size` ids; Qwen's embeddings have padding rows beyond them)."""
  if tokenizers.is_pretrained_tokenizer(path):
    size = tokenizers.load_tokenizer(path).vocab_size
    if size > vocab_size:
      raise ValueError(f"vocabulary size mismatch: tokenizer {path!r} has {size} ids but "
                       f"config.model.vocab_size={vocab_size} (more ids than embedding rows).")
    return
  num_pieces = tokenizers.load_tokenizer(path).vocab_size
  if num_pieces != vocab_size:
    raise ValueError(f"vocabulary size mismatch: SentencePiece model {path!r} has {num_pieces} "
                     f"pieces but config.model.vocab_size={vocab_size}.")


def train_vocabulary(config: ml_collections.ConfigDict, output_path: str) -> str:
  """Trains a unigram SentencePiece model on the train split of a local task.

  Deterministic (same text, same bytes). Writes `output_path` atomically and returns it.
  """
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
        pad_id=vocabulary.PAD_ID, eos_id=vocabulary.EOS_ID, unk_id=vocabulary.UNK_ID, bos_id=-1,
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
  fileio.write_atomic(output_path, model.getvalue())
  return output_path


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
  source = configuration.init_source(config)
  if source == "workdir":  # Fine-tuning keeps the parent workdir's vocabulary, copied in.
    path = _copy_parent_vocabulary(config.init.workdir, workdir)
  elif source:  # A pretrained model's own tokenizer, copied into the workdir.
    path = workdir_lib.path(workdir, workdir_lib.tokenizer_name(source))
    if not fileio.exists(path) and jax.process_index() == 0:
      fileio.makedirs(workdir)
      if source == "hf":
        tokenizers.copy_tokenizer_files("hf", config.init.hf_model, path)
      else:
        tokenizers.copy_tokenizer_files("llama2c", config.init.llama2c_tokenizer, path)
  elif config.data.task == "token_file":  # Ids of a pretrained model's tokenizer: keep it.
    path = token_files.copy_tokenizer(config, workdir)
    source = "token_file"
  else:
    path = workdir_lib.path(workdir, workdir_lib.VOCAB_FILE)
  if not source and not fileio.exists(path):
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
      fileio.write_atomic(path, fileio.read_bytes(source))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("bpdjax_ensure_vocabulary")
  if not fileio.exists(path):
    raise ValueError(f"{path!r} is missing after process 0 wrote it: is the workdir on a shared "
                     "filesystem?")
  check_vocab_size(path, config.model.vocab_size)
  return path


def _copy_parent_vocabulary(parent: str, workdir: str) -> str:
  """Copies a parent workdir's vocabulary (vocab.model or a pretrained model's tokenizer) into
  `workdir` under the same name, unless it is there already; returns its path."""
  try:  # Copied at the first start: a resume needs no parent (it may be gone).
    return workdir_lib.vocab_path(workdir)
  except FileNotFoundError:
    pass
  parent_vocab = workdir_lib.vocab_path(parent)
  name = os.path.basename(parent_vocab.rstrip("/"))
  path = workdir_lib.path(workdir, name)
  if not os.path.exists(path) and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    if name == workdir_lib.HF_TOKENIZER_DIR:
      tokenizers.copy_tokenizer_files("hf", parent_vocab, path)
    else:
      fileio.write_atomic(path, fileio.read_bytes(parent_vocab))
  return path


def main(argv):
  del argv
  config = flags.FLAGS.config
  path = ensure_vocabulary(config, flags.FLAGS.workdir)
  print(f"vocabulary: {path}")
  print(f"vocab_size: {tokenizers.load_tokenizer(path).vocab_size}")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory; receives vocab.model.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
