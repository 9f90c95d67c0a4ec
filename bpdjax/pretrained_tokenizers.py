"""Tokenizers of pretrained models, as bpdjax uses them: text in, ids out, BOS/EOS ids.

  HFTokenizer      a Hugging Face tokenizer.json through the `tokenizers` library
  Llama2cTokenizer llama2.c's tokenizer .bin (sentencepiece-style scores and pieces)

Both: encode(text) -> list[int] (BOS first, as the model was trained), decode(ids) -> str,
bos_id, eos_id, vocab_size. bpdjax.hf imports the models and finds their tokenizer files;
data/vocab.PretrainedVocabulary gives either a seqio view.
"""
from __future__ import annotations

import os
import struct
from typing import Optional


class HFTokenizer:
  """A Hugging Face tokenizer.json (via `tokenizers`): encode / decode / bos_id / eos_id.

  encode() adds BOS the way transformers does: through the tokenizer's post-processor, or, when
  tokenizer_config.json says add_bos_token and the post-processor did not add it, in front.
  """

  def __init__(self, tokenizer_json: str, bos_id: Optional[int], eos_id: Optional[int],
               add_bos: bool):
    import tokenizers  # pylint: disable=g-import-not-at-top
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
