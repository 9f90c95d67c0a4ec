"""Evaluation prompts as seqio Tasks, for decode.py (decoding-speed measurement).

Every task has one split, "test" (SQuAD's official dev set is exposed under this name too), and
yields, per example:

  inputs                int32 [n], n >= 1: the SentencePiece ids of the prompt (no EOS appended);
  inputs_pretokenized   str: the formatted prompt text (before any truncation);
  reference             str: a reference continuation, "" where the file has none;
  id                    str: a stable example id;
  num_truncated         int32: tokens cut from the START of the prompt (0 unless truncated).

Pipeline: local files, parsed in Python at registration (so a missing/bad file fails there), ->
`from_tensor_slices` of raw string fields -> `format_prompt` (fill `eval_sets.PROMPT_FORMATS[name]` with
tf.strings ops) -> tokenize -> drop examples whose prompt has no tokens (built-in sets only; a
JSONL file with an empty prompt is an error at registration) -> `truncate_left` (keeps the last
sequence_length["inputs"] tokens: the end of a prompt sits next to the generation point).

Prompt formats (`PROMPT_FORMATS`; "{field}" is a raw field of the source):

  lambada        "{context}": the passage without its last whitespace-separated word (and without
                 the whitespace before it); reference = that word.
  squad          "{context}\\n\\nQuestion: {question}\\nAnswer:"; reference = first answer. One
                 example per question of the evaluation part (1,925 of the 10,570: the
                 articles eval_sets.is_evaluation holds out of fine-tuning), in file order.
  xsum           "{document}\\n\\nSummary:"; reference = the summary (evaluation part: 189
                 of test_1000; the rest is fine-tuning data, bpdjax/data/supervised.py).
  cnn_dailymail  "{document}\\n\\nSummary:"; the file's prompts are 1-shot (one fixed demo
                 article + highlights, then "Article: <article>\\n\\nSummarize the above
                 article in 3 sentences."): document = the last article only (no demo, no
                 instruction); reference = "" (the file has no highlights).
  samsum         "{document}\\n\\nSummary:"; document = the dialogue (CRLF -> LF); reference = the
                 summary (evaluation part: 174 of 819).
  gsm8k          "Question: {question}\\nAnswer:" (test split); reference = the full answer (the
                 final number follows "#### ").
  mt_bench       "{question}": the first turn; reference = "".
  jsonl          "{prompt}": the `prompt` field verbatim. Optional fields: `id` (str or int;
                 default "<file name>:<line>") and `reference` (str; default ""). Blank lines are
                 skipped.

Documents are stripped of surrounding whitespace. Long documents are not cut here; `load_prompts`
(via sequence_length) truncates from the left.
"""
from __future__ import annotations

import functools
import string
from typing import Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from bpdjax.data import eval_sets
from bpdjax.data import hide_accelerators
from bpdjax.data import vocabulary as vocab_lib

hide_accelerators()

EVAL_TASKS = eval_sets.EVAL_TASKS
SPLIT = "test"


def task_name(name: str) -> str:
  """Name under which `register_eval_task` registers eval set `name`."""
  return f"bpdjax_eval_{name}"


# --------------------------------------------------------------------- source + task --


class RecordSource(seqio.DataSource):
  """In-memory records (equal str fields) -> tf.data of tf.string scalars; split "test".

  shuffle=True is a permutation of the records by np.random.default_rng(seed) (the Task itself
  does no shuffling), so a seeded order is deterministic and a shorter sample is a prefix of a
  longer one.
  """

  def __init__(self, records: Sequence[dict]):
    # No num_input_examples: seqio would .cache() and warn on iterators that stop early.
    super().__init__(splits=(SPLIT,), performs_internal_shuffling=True)
    keys = sorted(records[0])
    self._columns = {k: [r[k] for r in records] for k in keys}
    self._size = len(records)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def get_dataset(self, split: str = SPLIT, shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    if split != SPLIT:
      raise ValueError(f"eval tasks have only split {SPLIT!r}, not {split!r}.")
    order = np.arange(self._size)
    if shuffle:
      order = np.random.default_rng(seed).permutation(self._size)
    if shard_info is not None:
      order = order[shard_info.index::shard_info.num_shards]
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.constant([v[i] for i in order], dtype=tf.string) for k, v in self._columns.items()})


def format_prompt(dataset: tf.data.Dataset, template: str) -> tf.data.Dataset:
  """Adds "inputs" = `template` filled with the example's fields; keeps "id" and "reference"."""
  parts = []
  for literal, field, _, _ in string.Formatter().parse(template):
    parts.append(("lit", literal))
    if field is not None:
      parts.append(("field", field))

  def _format(ex):
    pieces = [ex[v] if kind == "field" else tf.constant(v) for kind, v in parts if v]
    return {"inputs": tf.strings.join(pieces), "id": ex["id"], "reference": ex["reference"]}

  return dataset.map(_format, num_parallel_calls=tf.data.AUTOTUNE)


def drop_empty(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Drops examples whose "inputs" has no tokens."""
  return dataset.filter(lambda ex: tf.size(ex["inputs"]) > 0)


def truncate_left(dataset: tf.data.Dataset,
                  sequence_length: Optional[Mapping[str, int]] = None) -> tf.data.Dataset:
  """Keeps the last sequence_length["inputs"] tokens of "inputs"; adds "num_truncated"."""
  length = (sequence_length or {}).get("inputs")

  def _truncate(ex):
    n = tf.size(ex["inputs"])
    keep = n if not length else tf.minimum(n, int(length))
    return {**ex, "inputs": ex["inputs"][n - keep:], "num_truncated": n - keep}

  return dataset.map(_truncate, num_parallel_calls=tf.data.AUTOTUNE)


def register_eval_task(name: str, data_dir: str, vocab_path: str,
                       jsonl_path: Optional[str] = None) -> str:
  """Registers (replacing an earlier one) the seqio Task of eval set `name`; returns its name.

  Args:
    name: one of EVAL_TASKS.
    data_dir: the shared data folder (config.data_dir); its files are listed in eval_sets.DATA_FILES.
    vocab_path: the SentencePiece model file.
    jsonl_path: the user's JSONL file; required for "jsonl", must be None otherwise.

  Raises:
    ValueError: unknown name, a missing data file (named), or a bad JSONL file (file and line).
  """
  records = eval_sets.read_records(name, data_dir, jsonl_path)
  vocabulary = vocab_lib.load_vocabulary(vocab_path)
  registered = task_name(name)
  seqio.TaskRegistry.remove(registered)
  seqio.TaskRegistry.add(
      registered,
      source=RecordSource(records),
      preprocessors=[
          functools.partial(format_prompt, template=eval_sets.PROMPT_FORMATS[name]),
          functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=True),
          drop_empty,
          truncate_left,
      ],
      output_features={"inputs": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)},
      shuffle_buffer_size=None)
  return registered


def load_prompts(name: str, data_dir: str, vocab_path: str, num_examples: Optional[int],
                 max_prompt_tokens: int, jsonl_path: Optional[str] = None,
                 seed: Optional[int] = None) -> list[dict]:
  """Up to `num_examples` (None: all) prompts of eval set `name`, read through its seqio Task.

  Order: file order when seed is None; else the permutation np.random.default_rng(seed) of the
  file's examples, so the result for n examples is a prefix of the result for m > n (take
  [:k] for tuning and [k:] for reporting: disjoint). Built-in examples whose prompt tokenizes
  to nothing are skipped (none in the shipped files); an empty JSONL prompt is a ValueError.

  Returns:
    dicts {"id": str, "prompt_tokens": np.ndarray int32 [1 <= n <= max_prompt_tokens] (BOS, when
    the vocabulary is a pretrained model's tokenizer, then the LAST
    tokens of the prompt), "prompt_text": str (the full formatted prompt, before truncation),
    "reference": str ("" if none), "num_truncated": int (tokens cut from the start)}.
  """
  if max_prompt_tokens < 1:
    raise ValueError(f"max_prompt_tokens={max_prompt_tokens} must be >= 1.")
  if num_examples is not None and num_examples < 0:
    raise ValueError(f"num_examples={num_examples} must be >= 0.")
  task = seqio.get_mixture_or_task(register_eval_task(name, data_dir, vocab_path, jsonl_path))
  # A pretrained model's tokenizer starts every text with BOS (as transformers does); the seqio
  # view leaves it out (vocabulary.PretrainedVocabulary), so it is put back in front of the tail.
  vocabulary = task.output_features["inputs"].vocabulary
  bos = (vocabulary.bos_id if isinstance(vocabulary, vocab_lib.PretrainedVocabulary) else None)
  if bos is not None:
    if max_prompt_tokens < 2:
      raise ValueError(f"max_prompt_tokens={max_prompt_tokens} leaves no room after BOS.")
    max_prompt_tokens -= 1
  ds = task.get_dataset(sequence_length={"inputs": max_prompt_tokens}, split=SPLIT,
                        shuffle=seed is not None, seed=seed, num_epochs=1)
  if num_examples is not None:
    ds = ds.take(num_examples)
  return [{"id": ex["id"].decode("utf-8"),
           "prompt_tokens": np.asarray(([bos] if bos is not None else []) + list(ex["inputs"]),
                                       dtype=np.int32),
           "prompt_text": ex["inputs_pretokenized"].decode("utf-8"),
           "reference": ex["reference"].decode("utf-8"),
           "num_truncated": int(ex["num_truncated"])} for ex in ds.as_numpy_iterator()]
