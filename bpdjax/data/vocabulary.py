"""seqio views of a run's vocabulary, for the training and evaluation input pipelines.

A SentencePiece model is a seqio.SentencePieceVocabulary; a pretrained model's tokenizer
(data/tokenizers.py) is wrapped as a `PretrainedVocabulary`. Ids of trained SentencePiece models
follow seqio/T5: pad=0, eos=1, unk=2, no BOS. Code that only encodes and decodes text (loading a
model in a notebook) uses data/tokenizers.py directly, without TensorFlow.
"""
from __future__ import annotations

import os

import numpy as np
import seqio
import tensorflow as tf

from bpdjax import fileio
from bpdjax.data import hide_accelerators
from bpdjax.data import tokenizers

hide_accelerators()

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def drop_padding(ids) -> list[int]:
  """`ids` without PAD_ID: seqio reads id 0 as padding, and a tokenizer without byte fallback
  (TinyStories') encodes its unknown characters as id 0. Training examples and the n-gram
  corpora of training text go through this; decode.py's prompts keep every id."""
  return [int(i) for i in ids if i != PAD_ID]


class PretrainedVocabulary(seqio.Vocabulary):
  """seqio view of a pretrained model's tokenizer (`tokenizers.HFTokenizer`,
  `tokenizers.Llama2cTokenizer`).

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
    encode = lambda x: np.asarray(self._encode(x.numpy().decode("utf-8")), np.int32)
    ids = tf.py_function(encode, [s], tf.int32)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids):
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
  as a `PretrainedVocabulary`. A path in a bucket is read through a local copy."""
  if fileio.is_remote(path) and fileio.exists(path):
    path = fileio.local_copy(path)
  if tokenizers.is_pretrained_tokenizer(path):
    return PretrainedVocabulary(tokenizers.load_tokenizer(path))
  if not os.path.isfile(path):
    raise ValueError(f"SentencePiece model {path!r} does not exist.")
  return seqio.SentencePieceVocabulary(path)
