"""Tokenizers as bpdjax uses them outside training: text in, ids out, BOS/EOS ids. No TensorFlow.

  SentencePieceTokenizer  a run's own vocab.model (seqio/T5 ids: pad 0, eos 1, unk 2, no BOS)
  HFTokenizer             a Hugging Face tokenizer.json through the `tokenizers` library
  Llama2cTokenizer        llama2.c's tokenizer .bin (sentencepiece-style scores and pieces)

All: encode(text) -> list[int], decode(ids) -> str, bos_id, eos_id, vocab_size. A pretrained
model's tokenizer puts BOS first, as the model was trained; SentencePiece vocabularies have none.
`load_tokenizer(path)` reads any of them; data/vocabulary.py gives seqio views for training.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from typing import Optional

import sentencepiece as spm
import tokenizers

from bpdjax import fileio

# Files of a Hugging Face folder that define its tokenizer (config.json: fallback BOS/EOS ids).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                      "special_tokens_map.json", "config.json")


class SentencePieceTokenizer:
  """A SentencePiece model file, with seqio's SentencePieceVocabulary semantics: encode gives
  the pieces' ids (no EOS), decode stops after the first EOS and maps out-of-range ids to unk."""

  bos_id = None

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"SentencePiece model not found: {path}")
    self.path = path
    self._sp = spm.SentencePieceProcessor(model_file=path)
    self.eos_id = self._sp.eos_id()
    self.unk_id = self._sp.unk_id()
    self.pad_id = self._sp.pad_id()

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id) + 1]
    return self._sp.decode([self.unk_id if i >= self.vocab_size else i for i in ids])


class HFTokenizer:
  """A Hugging Face tokenizer.json (via `tokenizers`): encode / decode / bos_id / eos_id.

  encode() adds BOS the way transformers does: through the tokenizer's post-processor, or, when
  tokenizer_config.json says add_bos_token and the post-processor did not add it, in front.
  """

  def __init__(self, tokenizer_json: str, bos_id: Optional[int], eos_id: Optional[int],
               add_bos: bool):
    self.path = tokenizer_json
    self._tok = tokenizers.Tokenizer.from_file(tokenizer_json)
    self.bos_id = bos_id
    self.eos_id = eos_id
    self.add_bos = add_bos
    # Filtered here: tokenizers' own skip_special_tokens keeps some (e.g. a BOS that is also a
    # vocabulary entry of the BPE model).
    self.special_ids = frozenset(
        i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    ids = list(self._tok.encode(text, add_special_tokens=True).ids)
    if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
      ids.insert(0, self.bos_id)
    return ids

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids if int(i) not in self.special_ids],
                            skip_special_tokens=False)


class Llama2cTokenizer:
  """llama2.c's tokenizer .bin (its run.c encode / decode): BOS 1, EOS 2, byte fallback <0xXX>
  pieces at ids 3..258, a dummy-prefix space, then greedy merges by score."""

  bos_id = 1
  eos_id = 2

  def __init__(self, path: str, vocab_size: Optional[int] = None):
    """vocab_size: the model's, checked against the file's piece count (None: not checked)."""
    if not os.path.isfile(path):
      raise FileNotFoundError(f"llama2.c tokenizer file not found: {path}")
    with open(path, "rb") as f:
      data = f.read()
    (self.max_token_length,) = struct.unpack_from("<i", data, 0)
    offset = 4
    pieces, scores = [], []
    while offset < len(data):
      if vocab_size is not None and len(pieces) == vocab_size:
        raise ValueError(f"Tokenizer {path} has more pieces than the model's vocab_size "
                         f"{vocab_size}")
      score, length = struct.unpack_from("<fi", data, offset)
      offset += 8
      if length < 0 or offset + length > len(data):
        raise ValueError(f"Tokenizer {path} is truncated or corrupt at piece {len(pieces)}")
      pieces.append(data[offset:offset + length])
      scores.append(score)
      offset += length
    if vocab_size is not None and len(pieces) != vocab_size:
      raise ValueError(f"Tokenizer {path} has {len(pieces)} pieces but the model's vocab_size is "
                       f"{vocab_size}")
    self.pieces = pieces
    self.scores = scores
    self._ids = {p: i for i, p in enumerate(pieces)}

  @property
  def vocab_size(self) -> int:
    return len(self.pieces)

  def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
    ids = [self.bos_id] if bos else []
    tokens: list[int] = []
    if text:
      tokens.append(self._ids[b" "])            # Dummy prefix, as sentencepiece adds.
    for ch in text:
      b = ch.encode("utf-8")
      if b in self._ids:
        tokens.append(self._ids[b])
      else:
        tokens.extend(byte + 3 for byte in b)    # Byte fallback: <0x00> is id 3.
    while True:                                  # Merge the best-scoring adjacent pair.
      best, best_id, best_i = -1e10, -1, -1
      for i in range(len(tokens) - 1):
        merged = self._ids.get(self.pieces[tokens[i]] + self.pieces[tokens[i + 1]])
        if merged is not None and self.scores[merged] > best:
          best, best_id, best_i = self.scores[merged], merged, i
      if best_i < 0:
        break
      tokens[best_i:best_i + 2] = [best_id]
    return ids + tokens + ([self.eos_id] if eos else [])

  def decode(self, ids) -> str:
    out = bytearray()
    prev = self.bos_id
    for t in (int(i) for i in ids):
      if t in (0, self.bos_id, self.eos_id):
        prev = t
        continue
      piece = self.pieces[t]
      if prev == self.bos_id and piece.startswith(b" "):
        piece = piece[1:]
      if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
        piece = bytes([int(piece[3:5], 16)])
      out += piece
      prev = t
    return out.decode("utf-8", errors="replace")


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def hf_tokenizer(folder: str, hf_config: Optional[dict] = None) -> HFTokenizer:
  """The tokenizer of a Hugging Face folder (tokenizer.json; BOS/EOS from tokenizer_config.json,
  generation_config.json or the model's config.json, in that order)."""
  tokenizer_path = os.path.join(folder, "tokenizer.json")
  if not os.path.isfile(tokenizer_path):
    raise FileNotFoundError(f"tokenizer.json not found: {tokenizer_path}")
  if hf_config is None:
    config_path = os.path.join(folder, "config.json")
    hf_config = _read_json(config_path) if os.path.isfile(config_path) else {}
  optional = {}
  for name in ("tokenizer_config.json", "generation_config.json"):   # Both optional.
    path = os.path.join(folder, name)
    optional[name] = _read_json(path) if os.path.isfile(path) else {}
  tok_config, gen_config = optional["tokenizer_config.json"], optional["generation_config.json"]
  raw = tokenizers.Tokenizer.from_file(tokenizer_path)

  def special_id(name: str) -> Optional[int]:
    if f"{name}_token" in tok_config and tok_config[f"{name}_token"] is None:
      return None     # Said outright (Qwen: "bos_token": null; its configs still name an id).
    token = tok_config.get(f"{name}_token")
    if isinstance(token, dict):
      token = token.get("content")
    if isinstance(token, str) and raw.token_to_id(token) is not None:
      return raw.token_to_id(token)
    value = gen_config.get(f"{name}_token_id", hf_config.get(f"{name}_token_id"))
    if isinstance(value, list):
      value = value[0] if value else None
    return value

  return HFTokenizer(tokenizer_path, bos_id=special_id("bos"), eos_id=special_id("eos"),
                     add_bos=bool(tok_config.get("add_bos_token", False)))


def is_pretrained_tokenizer(path: str) -> bool:
  """Whether `path` names a pretrained model's tokenizer (a folder or a llama2.c .bin) rather
  than a SentencePiece model file."""
  return fileio.isdir(path) or os.fspath(path).endswith(".bin")


def load_tokenizer(path: str):
  """The tokenizer at `path`: a folder with tokenizer.json (HFTokenizer), a llama2.c tokenizer
  .bin (Llama2cTokenizer) or a SentencePiece model file (SentencePieceTokenizer). A path in a
  bucket (gs://...) is read through a local copy (`fileio.local_copy`)."""
  if fileio.is_remote(path):
    if not fileio.exists(path):
      raise FileNotFoundError(f"Tokenizer not found: {path}")
    path = fileio.local_copy(path)
  if os.path.isdir(path):
    return hf_tokenizer(path)
  if os.path.isfile(path):
    return Llama2cTokenizer(path) if path.endswith(".bin") else SentencePieceTokenizer(path)
  raise FileNotFoundError(f"Tokenizer not found: {path} (a Hugging Face folder with "
                          f"tokenizer.json, a llama2.c tokenizer .bin or a SentencePiece model)")


def copy_tokenizer_files(model_format: str, source: str, dst: str) -> str:
  """Atomically copies a tokenizer to `dst`: the tokenizer files of Hugging Face folder
  `source` (model_format "hf"), or llama2.c tokenizer file `source` ("llama2c"). A `dst` in a
  bucket gets each file as one write-once object (`fileio.write_atomic`)."""
  if fileio.is_remote(dst):
    return _copy_tokenizer_files_remote(model_format, source, dst)
  tmp = f"{dst}.tmp{os.getpid()}"
  if model_format == "hf":
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in HF_TOKENIZER_FILES:
      if os.path.isfile(os.path.join(source, name)):
        shutil.copy(os.path.join(source, name), os.path.join(tmp, name))
    if not os.path.isfile(os.path.join(tmp, "tokenizer.json")):
      raise FileNotFoundError(f"tokenizer.json not found: {os.path.join(source, 'tokenizer.json')}")
    shutil.rmtree(dst, ignore_errors=True)
  elif model_format == "llama2c":
    shutil.copy(source, tmp)
  else:
    raise ValueError(f"Unknown tokenizer format {model_format!r} (expected 'hf' or 'llama2c')")
  os.replace(tmp, dst)
  return dst


def _copy_tokenizer_files_remote(model_format: str, source: str, dst: str) -> str:
  if model_format == "hf":
    if not os.path.isfile(os.path.join(source, "tokenizer.json")):
      raise FileNotFoundError(f"tokenizer.json not found: {os.path.join(source, 'tokenizer.json')}")
    for name in HF_TOKENIZER_FILES:
      if os.path.isfile(os.path.join(source, name)):
        fileio.copy_file(os.path.join(source, name), fileio.join(dst, name))
  elif model_format == "llama2c":
    fileio.copy_file(source, dst)
  else:
    raise ValueError(f"Unknown tokenizer format {model_format!r} (expected 'hf' or 'llama2c')")
  return dst
