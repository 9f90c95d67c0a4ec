"""Token-id shards (data.task "token_file"): what `python -m bpdjax.distill` and
`python -m bpdjax.data.text_shards` write and training reads. numpy only: `train-*.npz` /
`validation-*.npz` (arrays tokens [sum n] int32 or uint16, lengths [sequences] int32; zip
compressed or not) and manifest.json (vocab_size, bos_id, eos_id, and the tokenizer the ids are
of: model_format "hf", "llama2c" or "sentencepiece" and its path, relative to the folder when it
lies inside it, with its sha256 as vocab_sha256)."""
from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from bpdjax import fileio
from bpdjax import workdir as workdir_lib
from bpdjax.data import tokenizers

TOKEN_MANIFEST = "manifest.json"
FORMAT = "bpdjax-token-shards-v1"
PADDING_ID = 0  # seqio's padding id.
MODEL_FORMATS = ("hf", "llama2c", "sentencepiece")


def token_shard_files(token_dir: str, split: str) -> list[str]:
  """The `<split>-*.npz` shards of a token folder, sorted."""
  return sorted(glob.glob(os.path.join(glob.escape(token_dir), f"{split}-*.npz")))


def read_token_manifest(token_dir: str) -> dict:
  """manifest.json of a token folder ({} when there is none)."""
  path = os.path.join(token_dir, TOKEN_MANIFEST)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def write_token_shard(path: str, sequences: Sequence[np.ndarray], dtype=np.int32,
                      compress: bool = False) -> None:
  """Writes sequences (1-D int arrays) as one .npz shard (tokens, lengths), atomically; tokens
  as `dtype` (np.uint16 halves the size for vocabularies of at most 65,536 ids), zip-compressed
  with `compress`."""
  lengths = np.asarray([len(x) for x in sequences], np.int32)
  tokens = (np.concatenate([np.asarray(x, np.int64) for x in sequences]) if len(sequences)
            else np.zeros((0,), np.int64))
  info = np.iinfo(dtype)
  if tokens.size and (tokens.min() < info.min or tokens.max() > info.max):
    raise ValueError(f"token ids in [{tokens.min()}, {tokens.max()}] do not fit {np.dtype(dtype)}")
  tmp = f"{path}.tmp{os.getpid()}.npz"
  (np.savez_compressed if compress else np.savez)(tmp, tokens=tokens.astype(dtype),
                                                   lengths=lengths)
  os.replace(tmp, path)


def check_manifest(token_dir: str, vocab_size: int) -> dict:
  """The manifest of a token folder, checked against the run's model.vocab_size.

  Raises:
    ValueError: the folder is missing, or its manifest names another vocabulary size.
  """
  if not os.path.isdir(token_dir):
    raise ValueError(f"data.token_dir {token_dir!r} does not exist (write it with "
                     "`python -m bpdjax.data.text_shards` or `python -m bpdjax.distill`).")
  manifest = read_token_manifest(token_dir)
  if manifest.get("vocab_size") not in (None, vocab_size):
    raise ValueError(f"data.token_dir {token_dir!r} holds ids of a {manifest['vocab_size']}-id "
                     f"vocabulary (manifest.json) but model.vocab_size={vocab_size}: the shards "
                     f"are of another vocabulary.")
  return manifest


def file_sha256(path: str) -> str:
  """sha256 of a file's bytes (hex)."""
  return hashlib.sha256(fileio.read_bytes(path)).hexdigest()


def manifest_tokenizer(token_dir: str) -> tuple[str, str]:
  """(model_format, path) of the tokenizer a token folder's ids are of; a relative path in the
  manifest is relative to the folder. ValueError when the manifest names none."""
  manifest = read_token_manifest(token_dir)
  model_format, tokenizer = manifest.get("model_format"), manifest.get("tokenizer")
  if model_format not in MODEL_FORMATS or not tokenizer:
    raise ValueError(f"data.token_dir {token_dir!r}: its manifest.json names no tokenizer "
                     f"(model_format one of {MODEL_FORMATS} and 'tokenizer'), so the run would "
                     "have no vocabulary")
  return model_format, os.path.join(token_dir, tokenizer)


def copy_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The vocabulary of a from-scratch run on token_file data: the tokenizer its manifest names
  (the ids are that tokenizer's), copied into the workdir (vocab.model for SentencePiece, as a
  text run keeps it; a pretrained tokenizer as a pretrained run does); returns its path.

  Raises:
    ValueError: no tokenizer in the manifest, or a SentencePiece vocabulary whose sha256 is not
      the manifest's vocab_sha256 (config.data.vocab_path, the workdir's vocab.model of an
      earlier run, or the file in the folder): the shards are of another vocabulary.
  """
  token_dir = config.data.token_dir
  model_format, tokenizer = manifest_tokenizer(token_dir)
  if model_format == "sentencepiece":
    path = workdir_lib.path(workdir, workdir_lib.VOCAB_FILE)
    want = read_token_manifest(token_dir).get("vocab_sha256")
    for what, candidate in (("config.data.vocab_path", config.data.get("vocab_path", "")),
                            (f"workdir {workdir!r}'s vocab.model", path),
                            (f"{token_dir!r}'s tokenizer", tokenizer)):
      if candidate and fileio.exists(candidate) and want and file_sha256(candidate) != want:
        raise ValueError(f"data.token_dir {token_dir!r} holds ids of the vocabulary with sha256 "
                         f"{want} (manifest.json vocab_sha256), but {what} {candidate!r} is "
                         f"another vocabulary (sha256 {file_sha256(candidate)}).")
    if not fileio.exists(path) and jax.process_index() == 0:
      fileio.makedirs(workdir)
      fileio.write_atomic(path, fileio.read_bytes(tokenizer))
    return path
  path = workdir_lib.path(workdir, workdir_lib.tokenizer_name(model_format))
  if not fileio.exists(path) and jax.process_index() == 0:
    fileio.makedirs(workdir)
    src = os.path.dirname(tokenizer) if model_format == "hf" else tokenizer
    tokenizers.copy_tokenizer_files(model_format, src, path)
  return path


def read_token_split(token_dir: str, split: str, vocab_size: int) -> list[np.ndarray]:
  """Every sequence of one split of a token folder, in shard order.

  Raises:
    ValueError: no such folder, no shards of the split, a malformed shard, an empty split, or
      an id outside [0, vocab_size) (naming the file, the id and the vocabulary size).
  Tokens of id 0 (seqio's padding id, which a tokenizer such as TinyStories' uses for <unk>)
  are dropped, with a warning: seqio would read them as padding.
  """
  if not os.path.isdir(token_dir):
    raise ValueError(f"data.token_dir {token_dir!r} does not exist (write it with "
                     "`python -m bpdjax.distill`).")
  files = token_shard_files(token_dir, split)
  if not files:
    raise ValueError(f"data.token_dir {token_dir!r} has no {split}-*.npz shards.")
  sequences: list[np.ndarray] = []
  for path in files:
    with np.load(path) as shard:
      if "tokens" not in shard or "lengths" not in shard:
        raise ValueError(f"token shard {path!r} lacks the arrays 'tokens' and 'lengths' "
                         f"(has {sorted(shard.keys())}).")
      tokens, lengths = shard["tokens"], shard["lengths"]
    if tokens.ndim != 1 or lengths.ndim != 1 or np.any(lengths < 0) or (
        int(lengths.sum()) != tokens.size):
      raise ValueError(f"token shard {path!r} is malformed: {tokens.size} tokens, lengths sum "
                       f"to {int(lengths.sum())}.")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"token shard {path!r} holds {tokens.dtype} tokens, not integer ids.")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
      bad = int(tokens.max()) if tokens.max() >= vocab_size else int(tokens.min())
      raise ValueError(f"token shard {path!r} has token id {bad}, outside [0, {vocab_size}) "
                       f"(model.vocab_size={vocab_size}): was it made with another model?")
    pieces = np.split(tokens.astype(np.int32), np.cumsum(lengths)[:-1])
    padding = int(np.sum(tokens == PADDING_ID))
    if padding:  # seqio would read them as padding and misalign the packed rows.
      logging.warning("token shard %r: dropped %d tokens of id %d (seqio's padding id; a "
                      "tokenizer's <unk> there)", path, padding, PADDING_ID)
      pieces = [x[x != PADDING_ID] for x in pieces]
    sequences.extend(pieces)
  sequences = [x for x in sequences if x.size]
  if not sequences:
    raise ValueError(f"data.token_dir {token_dir!r}: split {split!r} holds no tokens.")
  return sequences
