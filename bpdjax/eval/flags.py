"""decode.py's flags of earlier versions, kept as aliases of configs/decode.py's keys (decode.py
and the benchmarks define them by importing this module).

--workdir, --output, --tasks, --methods, --num_examples, --max_new_tokens, --batch_size,
--temperature, --top_k, --top_p, --seed, --record_topk, --data_dir, --jsonl, --mesh,
--rescorer_workdir, --ngram_arpa set the key of the same name; --k, --p, --alpha, --tree_size
and --ngram_backend set that knob of every method that has it (options.<method>.<knob>;
backend for --ngram_backend).
"""
from __future__ import annotations

from absl import flags

from bpdjax.data import eval_sets
from bpdjax.decoding import methods

_TOP_LEVEL = {
    "workdir": (flags.DEFINE_string, "A workdir written by train.py."),
    "output": (flags.DEFINE_string, "Directory for report.json, report.md and plots."),
    "tasks": (flags.DEFINE_string, "Comma-separated evaluation tasks (see above)."),
    "methods": (flags.DEFINE_string, "Comma-separated decoding methods (see above)."),
    "num_examples": (flags.DEFINE_integer, "Examples per task."),
    "max_new_tokens": (flags.DEFINE_integer, "Tokens to generate per example."),
    "batch_size": (flags.DEFINE_integer, "Prompts decoded together."),
    "temperature": (flags.DEFINE_float, "0 = greedy; > 0 = sampling, exact in distribution."),
    "top_k": (flags.DEFINE_integer, "Sampling: keep the k most likely tokens (0 = off)."),
    "top_p": (flags.DEFINE_float, "Sampling: nucleus mass in (0, 1] (1 = off)."),
    "acceptance": (flags.DEFINE_string, "Sampling acceptance rule: tokenwise or block "
                   "(lossless), typical_lossy (Medusa's typical acceptance, NOT lossless)."),
    "seed": (flags.DEFINE_integer, "Sampling seed."),
    "record_topk": (flags.DEFINE_integer, "Top-K per head recorded for the analyses (0: none)."),
    "data_dir": (flags.DEFINE_string, "Evaluation data folder (default: the run's)."),
    "jsonl": (flags.DEFINE_string, "Prompts file for task 'jsonl'."),
    "mesh": (flags.DEFINE_string, "data,fsdp,tensor sizes to shard decoding, e.g. 2,2,2."),
    "rescorer_workdir": (flags.DEFINE_string, "Rescoring LM workdir (methods that need one)."),
    "ngram_arpa": (flags.DEFINE_string, "ARPA n-gram LM over the model's token ids."),
}
_KNOBS = {  # Alias -> (knob, flag type, help).
    "k": ("k", flags.DEFINE_integer, "Candidates per head (lattice methods)."),
    "p": ("p", flags.DEFINE_integer, "Drafts verified per call (p-best methods)."),
    "alpha": ("alpha", flags.DEFINE_float, "Rescorer weight in [0, 1] (rescoring methods)."),
    "tree_size": ("tree_size", flags.DEFINE_integer, "Medusa tree nodes, root included."),
    "ngram_backend": ("backend", flags.DEFINE_string, "n-gram rescoring: dp (exact, on device) "
                      "or wfst (OpenFST on the host)."),
}
_ALIASES = {name: define(name, None, text) for name, (define, text) in _TOP_LEVEL.items()}
_ALIASES.update({name: define(name, None, text) for name, (_, define, text) in _KNOBS.items()})


def usage(doc: str = "") -> str:
  """decode.py --help's head: what it does, then every method and task by name."""
  tasks = "\n".join(f"  {t}: {eval_sets.SUMMARIES[t]}" for t in eval_sets.EVAL_TASKS)
  return (f"Evaluates decoding methods on a trained workdir and writes a report.\n\n"
          f"  python decode.py --workdir=W --output=OUT [--tasks=...] [--methods=...] "
          f"[--config.KEY=VALUE ...]\n\nMethods:\n{methods.help_text()}\n\nTasks:\n{tasks}\n\n"
          f"{doc}")


def apply_aliases(config) -> None:
  """Copies every alias flag given on the command line into the config."""
  for name, holder in _ALIASES.items():
    if holder.value is None:
      continue
    if name in _KNOBS:
      knob = _KNOBS[name][0]
      for options in config.options.values():
        if knob in options:
          options[knob] = holder.value
    else:
      config[name] = holder.value


