"""Stage 1 of an evaluation run: the plan. Validated settings, the model's shape (from the
workdir's config.json, no weights) and every task's prompts tokenized and checked, all before
anything is loaded or compiled: a bad setting or a prompt too long for the model fails in
seconds, before the model loads or a cost table is measured.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax import workdir as workdir_lib
from bpdjax.data import prompts as prompts_lib
from bpdjax.decoding import generator as generator_lib
from bpdjax.eval import settings as settings_lib


@dataclasses.dataclass(frozen=True)
class Plan:
  """settings: validated; model: the model's shape; train_config: the run's config.json;
  examples: {task: [{"id", "prompt_tokens", "prompt_text", ...}]}; widths: {task: prompt slots
  its batches are padded to}; max_prompt: the prompt cap in tokens."""
  settings: settings_lib.DecodeSettings
  model: model_lib.TransformerConfig
  train_config: Any
  examples: dict
  widths: dict
  max_prompt: int

  @property
  def data_dir(self) -> str:
    return self.settings.data_dir or self.train_config.data_dir


def make(settings: settings_lib.DecodeSettings) -> Plan:
  """Validates the settings (once: alone, then against the model's shape) and reads every
  task's prompts; raises ValueError / FileNotFoundError naming what is wrong."""
  settings.validate()
  train_config = workdir_lib.load_config(settings.workdir)
  model = configuration.validate_model(train_config.model)
  settings.validate(model)
  max_prompt = settings.max_prompt_tokens or model.max_len - settings.max_new_tokens
  data_dir = settings.data_dir or train_config.data_dir
  vocab_path = workdir_lib.vocab_path(settings.workdir)
  examples = {}
  for task in settings.tasks:
    examples[task] = prompts_lib.load_prompts(
        task, data_dir, vocab_path, settings.num_examples,
        # A user's own prompts are never cut: one that is too long is an error.
        max_prompt_tokens=(1 << 30) if task == "jsonl" else max_prompt,
        jsonl_path=settings.jsonl or None,
        seed=None if settings.example_seed < 0 else settings.example_seed)
    if not examples[task]:
      raise ValueError(f"Task {task!r} has no prompt with any token to decode")
    tokens = [np.asarray(e["prompt_tokens"]) for e in examples[task]]
    try:
      generator_lib.check_prompts(tokens, settings.max_new_tokens, model)
    except ValueError as e:
      raise ValueError(f"Task {task!r}: {e}") from None
  widths = {task: generator_lib.bucket_width(max(len(e["prompt_tokens"]) for e in ex),
                                             model.max_len, settings.max_new_tokens)
            for task, ex in examples.items()}
  return Plan(settings, model, train_config, examples, widths, max_prompt)
