"""Evaluation prompts without TensorFlow: what decode.py reads.

`load_prompts` gives exactly what `eval_tasks.load_prompts` (the seqio Tasks) gives, example for
example (tests/test_prompts.py compares them on every task), from the same readers
(`eval_sets`) and tokenizers (`tokenizers`), in plain Python. decode.py uses it so that a run
never imports TensorFlow and seqio (about 0.8 GB of memory before any model is loaded).
"""
from __future__ import annotations

import string
from typing import Optional

import numpy as np

from bpdjax.data import eval_sets
from bpdjax.data import tokenizers


def format_prompt(template: str, record: dict) -> str:
  """`template` ("{field}" placeholders, no format specs) filled with the record's fields."""
  out = []
  for literal, field, _, _ in string.Formatter().parse(template):
    out.append(literal)
    if field is not None:
      out.append(record[field])
  return "".join(out)


def load_prompts(name: str, data_dir: str, vocab_path: str, num_examples: Optional[int],
                 max_prompt_tokens: int, jsonl_path: Optional[str] = None,
                 seed: Optional[int] = None) -> list[dict]:
  """Up to `num_examples` (None: all) prompts of eval set `name`.

  Order: file order when seed is None; else the permutation np.random.default_rng(seed) of the
  file's examples (a sample of n is a prefix of a sample of m > n). Built-in examples whose
  prompt tokenizes to nothing are skipped; an empty JSONL prompt is a ValueError (eval_sets).

  Returns:
    dicts {"id": str, "prompt_tokens": np.ndarray int32 [1 <= n <= max_prompt_tokens] (BOS,
    when the vocabulary is a pretrained model's tokenizer, then the LAST tokens of the prompt),
    "prompt_text": str (the full formatted prompt), "reference": str ("" if none),
    "num_truncated": int (tokens cut from the start)}.
  """
  if max_prompt_tokens < 1:
    raise ValueError(f"max_prompt_tokens={max_prompt_tokens} must be >= 1.")
  if num_examples is not None and num_examples < 0:
    raise ValueError(f"num_examples={num_examples} must be >= 0.")
  records = eval_sets.read_records(name, data_dir, jsonl_path)
  tokenizer = tokenizers.load_tokenizer(vocab_path)
  bos = tokenizer.bos_id if tokenizers.is_pretrained_tokenizer(vocab_path) else None
  if bos is not None:
    if max_prompt_tokens < 2:
      raise ValueError(f"max_prompt_tokens={max_prompt_tokens} leaves no room after BOS.")
    max_prompt_tokens -= 1
  order = (np.arange(len(records)) if seed is None
           else np.random.default_rng(seed).permutation(len(records)))
  template = eval_sets.PROMPT_FORMATS[name]
  out = []
  for i in order:
    if num_examples is not None and len(out) >= num_examples:
      break
    record = records[int(i)]
    text = format_prompt(template, record)
    ids = list(tokenizer.encode(text))
    if bos is not None and ids and ids[0] == bos:  # As vocabulary.PretrainedVocabulary.
      ids = ids[1:]
    if not ids:
      continue
    keep = min(len(ids), max_prompt_tokens)
    out.append({"id": record["id"],
                "prompt_tokens": np.asarray(([bos] if bos is not None else []) + ids[len(ids) - keep:],
                                            dtype=np.int32),
                "prompt_text": text, "reference": record["reference"],
                "num_truncated": len(ids) - keep})
  return out
