"""Token-id shards (data.task "token_file"): what `python -m bpdjax.distill` writes and training
reads. numpy only: `train-*.npz` / `validation-*.npz` (arrays tokens [sum n] int32, lengths
[sequences] int32) and manifest.json."""
from __future__ import annotations

import glob
import json
import os
from typing import Sequence

from absl import logging
import numpy as np

TOKEN_MANIFEST = "manifest.json"
PADDING_ID = 0  # seqio's padding id.


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


def write_token_shard(path: str, sequences: Sequence[np.ndarray]) -> None:
  """Writes sequences (1-D int arrays) as one .npz shard (tokens, lengths), atomically."""
  lengths = np.asarray([len(x) for x in sequences], np.int32)
  tokens = (np.concatenate([np.asarray(x, np.int32) for x in sequences]) if len(sequences)
            else np.zeros((0,), np.int32))
  tmp = f"{path}.tmp{os.getpid()}.npz"
  np.savez(tmp, tokens=tokens, lengths=lengths)
  os.replace(tmp, path)


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
