"""Input iterators of the trainer: packed, sharded, deterministic and resumable numpy batches.

Every batch is a dict of int32 numpy arrays, each [rows, L] with L = config.data.seq_len:

  decoder_target_tokens  tokens to predict (0 = padding)
  decoder_input_tokens   targets shifted right within each packed segment (0 starts a segment)
  decoder_loss_weights   1 on real target tokens, 0 on padding
  decoder_segment_ids    1, 2, ... per packed example in the row, 0 on padding
  decoder_positions      0, 1, ... restarting at each segment

Sharding. The input is split into S = data.num_input_shards shards (0 means
jax.process_count()); shard s yields its own deterministic stream of [batch_size // S, L]
batches. Process p of P reads shards p*S/P .. (p+1)*S/P - 1 and stacks their batches row-wise,
in shard order, into its local batch of batch_size // P rows. The global batch (the P local
batches, process 0's rows first) therefore depends only on S, never on P.

Resuming. `make_train_iterator(config, vocab_path, start_step=n)` yields exactly batches n,
n+1, ... of the stream that starts at 0 (each shard's batched dataset is `skip(n)`-ed: the
skipped batches are recomputed, not read from disk, which costs time linear in n).
"""
from __future__ import annotations

from typing import Iterator, Optional

import jax
import ml_collections
import numpy as np
import seqio
import tensorflow as tf

from bpdjax.data import hide_accelerators
from bpdjax.data import supervised
from bpdjax.data import tasks

hide_accelerators()

Batch = dict[str, np.ndarray]
FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions")


def num_input_shards(config: ml_collections.ConfigDict) -> int:
  """S: data.num_input_shards, or jax.process_count() when that is 0 (or the key is absent)."""
  return int(config.data.get("num_input_shards", 0) or 0) or jax.process_count()


def process_shards(config: ml_collections.ConfigDict,
                   process_index: Optional[int] = None,
                   process_count: Optional[int] = None) -> range:
  """The input shards one process reads; checks S % P == 0 and batch_size % S == 0."""
  num_shards = num_input_shards(config)
  p = jax.process_index() if process_index is None else process_index
  num_processes = jax.process_count() if process_count is None else process_count
  if num_shards % num_processes:
    raise ValueError(f"data.num_input_shards={num_shards} must be a multiple of the process "
                     f"count {num_processes}.")
  if config.batch_size % num_shards:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by the number of input "
                     f"shards {num_shards} (data.num_input_shards, 0 = process count).")
  per_process = num_shards // num_processes
  return range(p * per_process, (p + 1) * per_process)


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.data.seq_len > config.model.max_len:
    raise ValueError(f"data.seq_len={config.data.seq_len} exceeds model.max_len="
                     f"{config.model.max_len}.")


def _register(config: ml_collections.ConfigDict, vocab_path: str) -> str:
  """Registers the run's seqio Task (or the supervised Mixture of data.task "sft")."""
  if config.data.task == supervised.TASK:
    return supervised.register(config, vocab_path)
  return tasks.register_task(config, vocab_path)


def _shard_batches(config: ml_collections.ConfigDict, name: str, split: str, shard_index: int,
                   num_shards: int, shuffle: bool, start_step: int = 0,
                   bos_id: int = 0) -> Iterator[Batch]:
  """Batches start_step, start_step + 1, ... [batch_size // S, L] of one shard of a task."""
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index={shard_index} is outside [0, {num_shards}).")
  if config.batch_size % num_shards:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by the number of input "
                     f"shards {num_shards} (data.num_input_shards, 0 = process count).")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  if config.data.task == supervised.TASK:  # Prompt + target rows, loss on the target only.
    lengths = supervised.feature_lengths(config)
    converter = supervised.feature_converter(bos_id)
  else:
    lengths = {"targets": config.data.seq_len}
    converter = seqio.DecoderFeatureConverter(pack=True, bos_id=bos_id)
  ds = seqio.get_dataset(
      name,
      task_feature_lengths=lengths,
      feature_converter=converter,
      dataset_split=split,
      shuffle=shuffle,
      num_epochs=None,  # Repeat forever (before packing and shuffling, as seqio does).
      shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None,
      seed=config.seed,
      batch_size=config.batch_size // num_shards,
      verbose=False)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options).skip(start_step)
  return _numpy_batches(ds, f"{split} shard {shard_index}/{num_shards} of task {name!r}")


def _numpy_batches(ds: tf.data.Dataset, what: str) -> Iterator[Batch]:
  for batch in ds.as_numpy_iterator():
    yield {k: batch[k].astype(np.int32) for k in FEATURES}
  raise ValueError(f"{what} produced no (more) batches: the split is empty or too small for "
                   "one batch.")


def _stack(iterators: list[Iterator[Batch]]) -> Iterator[Batch]:
  """Row-wise concatenation of one batch from each iterator, in order."""
  while True:
    batches = [next(it) for it in iterators]
    yield {k: np.concatenate([b[k] for b in batches], axis=0) for k in FEATURES}


def make_shard_iterator(config: ml_collections.ConfigDict, vocab_path: str, shard_index: int,
                        num_shards: int, start_step: int = 0) -> Iterator[Batch]:
  """Endless training batches [batch_size // num_shards, seq_len] of one input shard.

  Batch k of this iterator is batch start_step + k of the shard's stream.
  """
  _check_config(config)
  name = _register(config, vocab_path)
  return _shard_batches(config, name, "train", shard_index, num_shards, True, start_step,
                        tasks.input_bos_id(config, vocab_path))


def make_train_iterator(config: ml_collections.ConfigDict, vocab_path: str,
                        start_step: int = 0) -> Iterator[Batch]:
  """Endless process-local training batches, each [batch_size // process_count, seq_len] int32.

  Args:
    config: run config (data.*, batch_size, seed, model.max_len).
    vocab_path: the run's vocabulary (see `vocab.ensure_vocabulary`; unused by "token_file").
    start_step: index of the first batch to yield; resuming at step n gives exactly the batches
      n, n+1, ... of an iterator started at 0.

  Raises:
    ValueError (at call time, not at the first batch): bad sharding/batch sizes, seq_len >
      model.max_len, unknown task, missing or empty corpus.
  """
  _check_config(config)
  shards = process_shards(config)
  name = _register(config, vocab_path)
  bos_id = tasks.input_bos_id(config, vocab_path)
  return _stack([_shard_batches(config, name, "train", s, num_input_shards(config), True,
                                start_step, bos_id) for s in shards])


def make_eval_iterator(config: ml_collections.ConfigDict, vocab_path: str,
                       num_batches: int) -> list[Batch]:
  """`num_batches` process-local validation batches, [batch_size // process_count, seq_len].

  Unshuffled and deterministic: the same call gives the same list. The validation split is
  sharded like the training input and read from its start; it is repeated when it holds fewer
  than `num_batches` batches, so small splits give repeated examples.

  Raises:
    ValueError: as `make_train_iterator`, or an empty validation split.
  """
  _check_config(config)
  shards = process_shards(config)
  name = _register(config, vocab_path)
  bos_id = tasks.input_bos_id(config, vocab_path)
  stacked = _stack([_shard_batches(config, name, "validation", s, num_input_shards(config), False,
                                   bos_id=bos_id) for s in shards])
  return [next(stacked) for _ in range(num_batches)]
