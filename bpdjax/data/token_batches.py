"""Training batches of a token folder (data.task "token_file") in numpy alone, without
TensorFlow or seqio, so a machine that has only JAX (a GPU or TPU image) can train on shards.

Every batch is a dict of int32 arrays [rows, L], L = data.seq_len, with the features of
`pipeline.FEATURES` (targets; inputs shifted right within each packed segment, starting with the
manifest's bos_id, else 0; loss weights 1 on tokens; segment ids 1, 2, ...; positions restarting
at 0 in each segment; 0 on padding).

The stream. Each sequence of a split is cut into pieces of at most L tokens (as the text
pipeline's `tasks.split_tokens`: a long document stays whole, in consecutive pieces). Epoch e
orders the pieces by a permutation of numpy's Generator seeded (data seed, e) for "train", in
file order for "validation", and packs them in that order: a row takes pieces while they fit,
then the rest of it is padding. The stream is epoch 0's rows, then epoch 1's, ...; global batch
k is rows k*B .. (k+1)*B - 1 (B = batch_size) and process p of P reads its B/P rows of it
(process 0's first), so the global batch depends on neither the process count nor
data.num_input_shards.

Resuming: `make_train_iterator(config, vocab_path, start_step=n)` yields batches n, n+1, ...
exactly as an iterator started at 0 does, without reading the batches before n (an epoch's
packing plan costs one pass over its piece lengths).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import jax
import ml_collections
import numpy as np

from bpdjax.data import token_files

Batch = dict[str, np.ndarray]


class PackedStream:
  """The packed rows of one split, epoch after epoch (see the module docstring)."""

  def __init__(self, sequences: Sequence[np.ndarray], seq_len: int, seed: int, shuffle: bool,
               bos_id: int = 0):
    if seq_len < 1:
      raise ValueError(f"data.seq_len={seq_len} must be >= 1.")
    self.seq_len, self.seed, self.shuffle, self.bos_id = seq_len, seed, shuffle, bos_id
    lengths = np.asarray([len(x) for x in sequences], np.int64)
    self.tokens = (np.concatenate([np.asarray(x, np.int32) for x in sequences])
                   if len(sequences) else np.zeros((0,), np.int32))
    pieces_per = -(-lengths // seq_len)
    first = np.repeat(np.cumsum(lengths) - lengths, pieces_per)  # Its sequence's offset.
    index = np.arange(int(pieces_per.sum())) - np.repeat(np.cumsum(pieces_per) - pieces_per,
                                                          pieces_per)
    self.piece_start = first + index * seq_len                      # [pieces]
    self.piece_len = np.minimum(seq_len, np.repeat(lengths, pieces_per) - index * seq_len)
    if not self.piece_len.size:
      raise ValueError("no tokens to pack (the split is empty).")
    self._plans: list[tuple[np.ndarray, np.ndarray]] = []  # Per epoch: (order, row bounds).
    self._epoch_rows = [0]                                 # Cumulative rows before epoch e.

  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(piece order [pieces], row bounds [rows + 1] into it) of an epoch."""
    while len(self._plans) <= epoch:
      e = len(self._plans)
      order = (np.random.default_rng([self.seed, e]).permutation(self.piece_len.size)
               if self.shuffle else np.arange(self.piece_len.size))
      bounds, fill = [0], 0
      for i, n in enumerate(self.piece_len[order].tolist()):
        if fill + n > self.seq_len:
          bounds.append(i)
          fill = 0
        fill += n
      bounds.append(order.size)
      self._plans.append((order, np.asarray(bounds, np.int64)))
      self._epoch_rows.append(self._epoch_rows[-1] + len(bounds) - 1)
    return self._plans[epoch]

  def _locate(self, row: int) -> tuple[int, int]:
    """(epoch, row within the epoch) of global row `row`."""
    epoch = 0
    while True:
      self._plan(epoch)
      if row < self._epoch_rows[epoch + 1]:
        return epoch, row - self._epoch_rows[epoch]
      epoch += 1

  def rows(self, start: int, count: int) -> Batch:
    """Rows start .. start + count - 1 of the stream, packed: features [count, L] int32."""
    out = {k: np.zeros((count, self.seq_len), np.int32) for k in FEATURES}
    for r in range(count):
      epoch, i = self._locate(start + r)
      order, bounds = self._plan(epoch)
      fill = 0
      for segment, piece in enumerate(order[bounds[i]:bounds[i + 1]].tolist(), start=1):
        n = int(self.piece_len[piece])
        s = int(self.piece_start[piece])
        span = slice(fill, fill + n)
        out["decoder_target_tokens"][r, span] = self.tokens[s:s + n]
        out["decoder_input_tokens"][r, fill] = self.bos_id
        out["decoder_input_tokens"][r, fill + 1:fill + n] = self.tokens[s:s + n - 1]
        out["decoder_loss_weights"][r, span] = 1
        out["decoder_segment_ids"][r, span] = segment
        out["decoder_positions"][r, span] = np.arange(n)
        fill += n
    return out


FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions")


def _stream(config: ml_collections.ConfigDict, split: str) -> PackedStream:
  if config.data.seq_len > config.model.max_len:
    raise ValueError(f"data.seq_len={config.data.seq_len} exceeds model.max_len="
                     f"{config.model.max_len}.")
  token_dir = config.data.token_dir
  vocab_size = config.model.vocab_size
  manifest = token_files.check_manifest(token_dir, vocab_size)
  bos = manifest.get("bos_id")
  return PackedStream(token_files.read_token_split(token_dir, split, vocab_size),
                      config.data.seq_len, config.seed, shuffle=split == "train",
                      bos_id=0 if bos is None else int(bos))


def _process_rows(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(first row of this process within a global batch, rows per process)."""
  count = jax.process_count()
  if config.batch_size % count:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by the process count "
                     f"{count}.")
  per = config.batch_size // count
  return jax.process_index() * per, per


def make_train_iterator(config: ml_collections.ConfigDict, vocab_path: str = "",
                        start_step: int = 0) -> Iterator[Batch]:
  """Endless process-local training batches [batch_size // process_count, seq_len] int32 of
  data.token_dir, from batch `start_step` on (vocab_path unused: the ids are given)."""
  del vocab_path
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  stream = _stream(config, "train")
  offset, per = _process_rows(config)

  def batches():
    step = start_step
    while True:
      yield stream.rows(step * config.batch_size + offset, per)
      step += 1
  return batches()


def make_eval_batches(config: ml_collections.ConfigDict, vocab_path: str = "",
                      num_batches: int = 1) -> list[Batch]:
  """`num_batches` process-local validation batches from the split's start, unshuffled (the
  split is repeated when it holds fewer rows)."""
  del vocab_path
  stream = _stream(config, "validation")
  offset, per = _process_rows(config)
  return [stream.rows(k * config.batch_size + offset, per) for k in range(num_batches)]
