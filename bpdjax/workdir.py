"""The workdir: the one module that knows its file names. All I/O goes through `fileio` (epath),
so a workdir may be a local folder or a bucket URL (gs://...).

Layout of a workdir written by train.py:
  config.json          the full training config (what decode.py and `bpdjax.load` rebuild from)
  vocab.model          the SentencePiece vocabulary; a run from a pretrained import keeps that
                       model's tokenizer instead: hf_tokenizer/ (its Hugging Face tokenizer files)
                       or llama2c_tokenizer.bin
  base_checksum.json   (runs from an import) sha256 of the base parameters at start and end
  checkpoints/<step>/  orbax checkpoints of the TrainState; beside orbax's files,
                       sha256.json (checkpoint_integrity.py: every file's sha256, at save time)
  damaged_checkpoints/<step>/  checkpoints a resume found damaged, moved out of orbax's way
  superseded_checkpoints/<step>/  checkpoints newer than a --config.resume_step, moved aside
  metrics.jsonl        one JSON line per logged step; TensorBoard event files beside it
  writer.lock          the run writing into the workdir (workdir_lock.py: host, pid, start);
                       empty (or, on a bucket, absent) when none does
  cost_tables.json     (optional, decode.py --config.cost_cache=workdir) measured costs of one
                       decode iteration per verify size, keyed by what they were measured for
Beside an ARPA n-gram LM written by `bpdjax.ngram.estimate`: <arpa>.vocab.json, the
vocabulary its token ids belong to.
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

import ml_collections

from bpdjax import fileio

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.model"
HF_TOKENIZER_DIR = "hf_tokenizer"
LLAMA2C_TOKENIZER_FILE = "llama2c_tokenizer.bin"
BASE_CHECKSUM_FILE = "base_checksum.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_MANIFEST = "sha256.json"  # In each checkpoints/<step>/ (checkpoint_integrity.py).
DAMAGED_CHECKPOINT_DIR = "damaged_checkpoints"
SUPERSEDED_CHECKPOINT_DIR = "superseded_checkpoints"  # Newer than a resume_step, moved aside.
METRICS_FILE = "metrics.jsonl"
WRITER_LOCK_FILE = "writer.lock"  # workdir_lock.py: one writer per workdir.
COST_TABLES_FILE = "cost_tables.json"  # Measured decode-iteration costs (decode.py cost_cache).
_VOCAB_NAMES = (VOCAB_FILE, HF_TOKENIZER_DIR, LLAMA2C_TOKENIZER_FILE)
_ARPA_VOCAB_SUFFIX = ".vocab.json"


def path(workdir: str, name: str) -> str:
  """The path of file `name` of a workdir (one of this module's names)."""
  return fileio.join(workdir, name)


def is_workdir(workdir: str) -> bool:
  """Whether `workdir` holds a config.json (checks the bucket of a URL first)."""
  fileio.check_bucket(workdir)
  return fileio.exists(path(workdir, CONFIG_FILE))


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  fileio.write_atomic(path(workdir, CONFIG_FILE), config.to_json(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  fileio.check_bucket(workdir)  # A URL's missing bucket is named as such.
  config_path = path(workdir, CONFIG_FILE)
  if not fileio.exists(config_path):
    raise FileNotFoundError(f"No {CONFIG_FILE} in workdir {workdir!r}: is it a bpdjax workdir?")
  return ml_collections.ConfigDict(json.loads(fileio.read_text(config_path)))


def checkpoint_dir(workdir: str) -> str:
  """Where orbax keeps the checkpoints (absolute for a local workdir, as orbax requires)."""
  return fileio.join(fileio.absolute(workdir), CHECKPOINT_DIR)


def tokenizer_name(source: str) -> str:
  """The file or folder a run keeps its vocabulary in: source "" (SentencePiece trained or
  given), "hf" (a Hugging Face model's tokenizer files) or "llama2c"."""
  return {"": VOCAB_FILE, "hf": HF_TOKENIZER_DIR, "llama2c": LLAMA2C_TOKENIZER_FILE}[source]


def vocab_path(workdir: str) -> str:
  """The vocabulary a workdir keeps: vocab.model, or a pretrained model's tokenizer."""
  for name in _VOCAB_NAMES:
    candidate = path(workdir, name)
    if fileio.exists(candidate):
      return candidate
  raise FileNotFoundError(f"No {VOCAB_FILE} (or {HF_TOKENIZER_DIR}/, {LLAMA2C_TOKENIZER_FILE}) "
                          f"in workdir {workdir!r}")


def vocab_digest(workdir: str) -> str:
  """sha256 of a workdir's vocabulary (of tokenizer.json for a Hugging Face tokenizer)."""
  vocab = vocab_path(workdir)
  if fileio.isdir(vocab):
    vocab = fileio.join(vocab, "tokenizer.json")
  return hashlib.sha256(fileio.read_bytes(vocab)).hexdigest()


def write_base_checksum(workdir: str, checksums: dict) -> None:
  fileio.write_atomic(path(workdir, BASE_CHECKSUM_FILE), json.dumps(checksums, indent=2))


def read_base_checksum(workdir: str) -> Optional[dict]:
  """The base checksums a run from an import logged, or None (not such a run)."""
  checksum_path = path(workdir, BASE_CHECKSUM_FILE)
  if not fileio.exists(checksum_path):
    return None
  return json.loads(fileio.read_text(checksum_path))


def arpa_vocab_record_path(arpa_path: str) -> str:
  """Where `bpdjax.ngram.estimate` records the vocabulary an ARPA's token ids belong to."""
  return arpa_path + _ARPA_VOCAB_SUFFIX


def write_arpa_vocab_record(arpa_path: str, workdir: str) -> None:
  record = {"vocab_path": fileio.absolute(vocab_path(workdir)),
            "vocab_sha256": vocab_digest(workdir)}
  fileio.write_atomic(arpa_vocab_record_path(arpa_path), json.dumps(record, indent=2))


def check_arpa_vocab_record(arpa_path: str, digest: str) -> None:
  """ValueError when the vocabulary recorded beside the ARPA is not the one with sha256
  `digest`. An ARPA without a record (made elsewhere) passes: then only the id range is checked
  when it is read."""
  record_path = arpa_vocab_record_path(arpa_path)
  if not fileio.exists(record_path):
    return
  record = json.loads(fileio.read_text(record_path))
  if record.get("vocab_sha256") != digest:
    raise ValueError(f"{arpa_path} was built with another vocabulary: {record_path} names "
                     f"{record.get('vocab_path')!r} (sha256 {record.get('vocab_sha256')}), the model's "
                     f"vocabulary has sha256 {digest}")
