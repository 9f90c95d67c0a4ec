"""Every decode setting, declared once: name, type, default, help and the check of its value.

decode.py's configuration (bpdjax/configs/decode.py: `config()`), its alias flags (--workdir,
--methods, ... : `define_flags`), --help and validation (eval/settings.py) all come from
SETTINGS; the resource settings come from the resource registry (decoding/resources.py) and the
method knobs from the methods' own options (decoding/registry.py). KNOB_FLAGS are the flags of
earlier versions that set one knob of every method that has it (--k, --p, --alpha, ...).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import ml_collections

from bpdjax.data import eval_sets
from bpdjax.decoding import methods
from bpdjax.decoding import resources


def parse_list(value: str) -> tuple[str, ...]:
  return tuple(x.strip() for x in str(value).split(",") if x.strip())


@dataclasses.dataclass(frozen=True)
class Setting:
  """type: str, int, float or bool; check(value) -> an error message, or None when fine."""
  name: str
  type: type
  default: Any
  help: str
  check: Optional[Callable[[Any], Optional[str]]] = None


def _required(what: str, flag: str) -> Callable[[str], Optional[str]]:
  return lambda v: None if v else f"No {what} given (--{flag} or --config.{flag})"


def _at_least(name: str, low: int) -> Callable[[int], Optional[str]]:
  return lambda v: None if v >= low else f"{name} must be >= {low}, got {v}"


def _known(setting: str, kind: str, known: Callable[[], list],
           error: str) -> Callable[[str], Optional[str]]:
  def check(value: str) -> Optional[str]:
    if not parse_list(value):
      return f"No {kind} given ({setting} is empty)"
    for name in parse_list(value):
      if name not in known():
        return f"{error} {name!r} in {setting}; known: {sorted(known())}"
    return None
  return check


def _mesh(value: str) -> Optional[str]:
  try:
    sizes = [int(x) for x in parse_list(value)]
  except ValueError:
    return f"mesh must be 'data,fsdp,tensor' sizes, e.g. '2,2,2', got {value!r}"
  if value and (len(sizes) != 3 or min(sizes) < 1):
    return f"mesh must be three sizes >= 1 ('data,fsdp,tensor'), got {value!r}"
  return None


SETTINGS: tuple[Setting, ...] = (
    Setting("workdir", str, "", "A workdir written by train.py (required).",
            _required("workdir", "workdir")),
    Setting("output", str, "", "Directory for report.json, report.md and plots (required).",
            _required("output directory", "output")),
    Setting("tasks", str, "lambada", "Comma-separated evaluation tasks (see above).",
            _known("tasks", "evaluation task", lambda: list(eval_sets.EVAL_TASKS),
                   "Unknown task")),
    Setting("methods", str, "ar,bpd", "Comma-separated decoding methods (see above).",
            _known("methods", "decoding method", methods.names, "Unknown decoding method")),
    Setting("num_examples", int, 50, "Examples per task.", _at_least("num_examples", 1)),
    Setting("max_new_tokens", int, 64, "Tokens to generate per example.",
            _at_least("max_new_tokens", 1)),
    Setting("batch_size", int, 1, "Prompts decoded together.", _at_least("batch_size", 1)),
    Setting("temperature", float, 0.0, "0 = greedy; > 0 = sampling, exact in distribution."),
    Setting("top_k", int, 0, "Sampling: keep the k most likely tokens (0 = off)."),
    Setting("top_p", float, 1.0, "Sampling: nucleus mass in (0, 1] (1 = off)."),
    Setting("acceptance", str, "tokenwise", "Sampling acceptance rule: tokenwise or block "
            "(lossless), typical_lossy (Medusa's typical acceptance, NOT lossless)."),
    Setting("seed", int, 0, "Sampling seed."),
    Setting("example_seed", int, 0, "Examples: a seeded shuffle of each task's file (-1: file "
            "order)."),
    Setting("max_prompt_tokens", int, 0, "Prompts keep their last N tokens (0: max_len - "
            "max_new_tokens).", lambda v: None if v >= 0 else
            f"max_prompt_tokens must be >= 0 (0: max_len - max_new_tokens), got {v}"),
    Setting("quality", bool, False, "Task quality (ROUGE-L, SQuAD EM/F1, accuracy) of the "
            "outputs."),
    Setting("record_topk", int, 16, "Top-K per head recorded for the analyses (0: speed only).",
            _at_least("record_topk", 0)),
    Setting("data_dir", str, "", "Evaluation data folder (default: the run's data_dir)."),
    Setting("jsonl", str, "", "Prompts file of task 'jsonl'."),
    Setting("mesh", str, "", "'data,fsdp,tensor' sizes to shard decoding, e.g. '2,2,2'.", _mesh),
    Setting("cost_cache", str, "", "Measured cost tables (auto): '' memory only, 'workdir', a "
            "path."),
) + tuple(Setting(kind.setting, str, "", f"{kind.label} (methods that need one).")
          for kind in resources.kinds())

# Flags of earlier versions that set one knob of every method that has it: flag -> knob.
KNOB_FLAGS = {"k": ("k", int, "Candidates per head (lattice methods)."),
              "p": ("p", int, "Drafts verified per call (p-best methods)."),
              "alpha": ("alpha", float, "Rescorer weight in [0, 1] (rescoring methods)."),
              "tree_size": ("tree_size", int, "Medusa tree nodes, root included."),
              "ngram_backend": ("backend", str, "n-gram rescoring: dp (exact, on device) or "
                                "wfst (OpenFST on the host).")}


def config() -> ml_collections.ConfigDict:
  """decode.py's configuration: every setting at its default, and each method's knobs under
  options.METHOD at the method's own defaults."""
  c = ml_collections.ConfigDict({s.name: s.default for s in SETTINGS})
  c.options = ml_collections.ConfigDict(
      {name: ml_collections.ConfigDict(methods.knobs(name)) for name in methods.names()})
  return c


BY_NAME = {s.name: s for s in SETTINGS}


def check(values: dict, names: Optional[tuple[str, ...]] = None) -> None:
  """Raises ValueError with the message of the first setting (of `names`, default all) whose
  check fails; every message names its setting."""
  for name in names or tuple(BY_NAME):
    s = BY_NAME[name]
    message = s.check(values[s.name]) if s.check else None
    if message:
      raise ValueError(message)
