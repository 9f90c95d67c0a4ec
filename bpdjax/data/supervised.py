"""Supervised fine-tuning data: prompt -> target examples as seqio Tasks and a Mixture.

config.data.task = "sft" trains on the tasks named by data.sft_tasks (comma-separated, of
eval_sets.FINETUNE_TASKS: squad, xsum, samsum, gsm8k; or "jsonl" with data.sft_jsonl, a file of
{"prompt": ..., "reference": ...} lines). Split "train" is a task's fine-tune part, split
"validation" its evaluation part, the one decode.py evaluates on (eval_sets.read_finetune_records /
read_records: disjoint by construction; a JSONL file splits by `eval_sets.is_evaluation` of its
ids). lambada stays a language-modelling task and cannot be fine-tuned on.

Each example, tokenised here in Python when the task is registered (so a bad example fails
there, named):

  inputs   int32 [n], 1 <= n <= P = data.sft_prompt_tokens: the prompt, in the format decode.py
           uses (eval_sets.PROMPT_FORMATS); a longer prompt keeps its last P tokens when
           data.sft_long_prompts = "keep_last" (decode.py cuts prompts the same way) and is a
           ValueError with "error";
  targets  int32 [m], 1 <= m <= seq_len - P: the reference, then EOS (cut after seq_len - P
           tokens when longer). An empty reference is a ValueError.

seqio's PrefixLMFeatureConverter (pack=True, loss_on_targets_only=True) concatenates inputs and
targets into packed rows of P + (seq_len - P) = seq_len tokens with segment ids; the loss
weights are 1 on target tokens only, so with `losses.head_targets` head i at position t is
trained on token t+i only where that token and token t+1 are target tokens of the same
example. The extra feature decoder_causal_attention is not used (the model is causal
throughout, as at decoding time).
"""
from __future__ import annotations

from typing import Optional

from absl import logging
import ml_collections
import numpy as np
import seqio
import tensorflow as tf

from bpdjax.data import eval_sets
from bpdjax.data import hide_accelerators
from bpdjax.data import vocabulary as vocab_lib

hide_accelerators()

TASK = "sft"
TASKS = eval_sets.FINETUNE_TASKS + ("jsonl",)
LONG_PROMPTS = ("keep_last", "error")


def task_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The supervised tasks of data.sft_tasks; ValueError for an unknown or missing one."""
  names = tuple(x.strip() for x in str(config.data.sft_tasks).split(",") if x.strip())
  if not names:
    raise ValueError("data.task='sft' needs data.sft_tasks (e.g. 'squad,xsum,samsum,gsm8k').")
  for name in names:
    if name not in TASKS:
      extra = " (lambada stays a language-modelling task)" if name == "lambada" else ""
      raise ValueError(f"data.sft_tasks: {name!r} is not a supervised task{extra}; known: "
                       f"{', '.join(TASKS)}.")
  if "jsonl" in names and not config.data.sft_jsonl:
    raise ValueError("data.sft_tasks names 'jsonl': set data.sft_jsonl (one {\"prompt\": ..., "
                     "\"reference\": ...} per line).")
  return names


def feature_lengths(config: ml_collections.ConfigDict) -> dict[str, int]:
  """{"inputs": P, "targets": seq_len - P}: their sum is the packed row length, seq_len."""
  prompt, seq_len = int(config.data.sft_prompt_tokens), int(config.data.seq_len)
  if not 1 <= prompt < seq_len:
    raise ValueError(f"data.sft_prompt_tokens={prompt} must be in [1, data.seq_len={seq_len}): "
                     "the target needs at least one token of the row.")
  return {"inputs": prompt, "targets": seq_len - prompt}


def split_records(name: str, data_dir: str, jsonl_path: str = "") -> dict[str, list[dict]]:
  """{"train": fine-tune records, "validation": evaluation records} of one task."""
  if name == "jsonl":
    records = eval_sets.read_jsonl_prompts(jsonl_path)
    return {"train": [r for r in records if not eval_sets.is_evaluation(name, r)],
            "validation": [r for r in records if eval_sets.is_evaluation(name, r)]}
  return {"train": eval_sets.read_finetune_records(name, data_dir),
          "validation": eval_sets.read_records(name, data_dir)}


def encode_examples(name: str, records: list[dict], vocabulary: seqio.Vocabulary,
                    lengths: dict[str, int], long_prompts: str) -> list[dict]:
  """{"inputs": int32 [n], "targets": int32 [m]} per record (see the module docstring).

  seqio reads id 0 as padding: inside a packed row it would misalign the converter's inputs,
  targets and loss weights (a target's tokens read as 0, weights on padding). A tokenizer whose
  id 0 is a real token (TinyStories-656K's <unk>, which '#', '(', '%', accented letters ...
  become) has those tokens dropped here, and their count logged; decode.py's prompts keep them.

  Raises:
    ValueError naming the task and example id: an empty reference, a prompt without tokens, or
    (long_prompts="error") a prompt of more than lengths["inputs"] tokens.
  """
  if long_prompts not in LONG_PROMPTS:
    raise ValueError(f"data.sft_long_prompts={long_prompts!r} must be one of {LONG_PROMPTS}.")
  template = eval_sets.PROMPT_FORMATS[name]
  eos = vocabulary.eos_id
  examples, dropped = [], 0

  def encode(text: str) -> list[int]:
    nonlocal dropped
    ids = vocabulary.encode(text)
    kept = vocab_lib.drop_padding(ids)
    dropped += len(ids) - len(kept)
    return kept

  for record in records:
    target_text = record["reference"].strip()
    if not target_text:
      raise ValueError(f"supervised task {name!r}: example {record['id']!r} has an empty target "
                       "(reference); every fine-tuning example needs one.")
    prompt = encode(template.format(**record))
    if not prompt:
      raise ValueError(f"supervised task {name!r}: example {record['id']!r} has an empty prompt.")
    if len(prompt) > lengths["inputs"]:
      if long_prompts == "error":
        raise ValueError(
            f"supervised task {name!r}: the prompt of example {record['id']!r} has "
            f"{len(prompt)} tokens, more than data.sft_prompt_tokens={lengths['inputs']} "
            "(the prompt room of a data.seq_len row); set data.sft_long_prompts='keep_last' to "
            "keep its last tokens, as decode.py does.")
      prompt = prompt[-lengths["inputs"]:]
    target = encode(target_text)
    if not target:
      raise ValueError(f"supervised task {name!r}: the target of example {record['id']!r} "
                       f"({target_text[:40]!r}) has no tokens but id {vocab_lib.PAD_ID} (the "
                       "tokenizer's unknown token, seqio's padding id).")
    target = (target + [eos])[:lengths["targets"]]
    examples.append({"inputs": np.asarray(prompt, np.int32),
                     "targets": np.asarray(target, np.int32)})
  if dropped:
    logging.warning("supervised task %r: dropped %d tokens of id %d (the tokenizer's unknown "
                    "token; seqio's padding id) from %d examples", name, dropped, vocab_lib.PAD_ID,
                    len(records))
  return examples


class PairSource(seqio.DataSource):
  """In-memory {split: [{"inputs": [n], "targets": [m]}, ...]} -> ragged int32 features.
  Shards by example (shard i of n takes every n-th from i); shuffle is a seeded permutation."""

  def __init__(self, examples: dict[str, list[dict]]):
    super().__init__(splits=tuple(examples))
    self._examples = examples

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str):
    return [split]

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    items = self._examples[split]
    if shard_info is not None:
      items = items[shard_info.index::shard_info.num_shards]
    if shuffle:
      items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    features = {}
    for key in ("inputs", "targets"):
      rows = [x[key] for x in items]
      flat = np.concatenate(rows) if rows else np.zeros((0,), np.int32)
      features[key] = tf.RaggedTensor.from_row_lengths(
          tf.constant(flat, tf.int32), np.asarray([len(r) for r in rows], np.int64))
    return tf.data.Dataset.from_tensor_slices(features)


def register(config: ml_collections.ConfigDict, vocab_path: str) -> str:
  """Registers one seqio Task per name of data.sft_tasks and, for several, a Mixture with rates
  proportional to their fine-tune examples; returns the name to read (a Task or the Mixture).

  Raises:
    ValueError: see `task_names`, `feature_lengths`, `encode_examples`; an empty split.
  """
  names = task_names(config)
  lengths = feature_lengths(config)
  vocabulary = vocab_lib.load_vocabulary(vocab_path)
  features = {k: seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)
              for k in ("inputs", "targets")}
  registered, rates = [], []
  for name in names:
    splits = split_records(name, config.data_dir, config.data.sft_jsonl)
    for split, records in splits.items():
      if not records:
        raise ValueError(f"supervised task {name!r}: its {split} split holds no examples.")
    examples = {split: encode_examples(name, records, vocabulary, lengths,
                                       config.data.sft_long_prompts)
                for split, records in splits.items()}
    task = f"bpdjax_sft_{name}"
    seqio.TaskRegistry.remove(task)
    seqio.TaskRegistry.add(task, source=PairSource(examples), preprocessors=[],
                           output_features=features,
                           shuffle_buffer_size=config.data.shuffle_buffer)
    registered.append(task)
    rates.append(float(len(examples["train"])))
  if len(registered) == 1:
    return registered[0]
  mixture = "bpdjax_sft_mixture_" + "_".join(names)
  seqio.MixtureRegistry.remove(mixture)
  seqio.MixtureRegistry.add(mixture, list(zip(registered, rates)))
  return mixture


def feature_converter(bos_id: int) -> seqio.FeatureConverter:
  """Packed prefix-LM rows, loss on the targets only (see the module docstring)."""
  return seqio.PrefixLMFeatureConverter(pack=True, loss_on_targets_only=True, bos_id=bos_id)

