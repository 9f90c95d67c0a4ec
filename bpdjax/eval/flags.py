"""decode.py's flags of earlier versions, kept as aliases of the configuration's keys, made
from the settings schema (eval/schema.py): --workdir, --methods, ... set the key of the same
name; --k, --p, --alpha, --tree_size and --ngram_backend set that knob of every method that has
it (options.<method>.<knob>). decode.py and the benchmarks define them by importing this module.
"""
from __future__ import annotations

from absl import flags

from bpdjax.data import eval_sets
from bpdjax.decoding import methods
from bpdjax.eval import schema

_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_bool}
_ALIASES = {s.name: _DEFINE[s.type](s.name, None, s.help) for s in schema.SETTINGS}
_ALIASES.update({name: _DEFINE[kind](name, None, text)
                 for name, (_, kind, text) in schema.KNOB_FLAGS.items()})


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
    if name in schema.KNOB_FLAGS:
      knob = schema.KNOB_FLAGS[name][0]
      for options in config.options.values():
        if knob in options:
          options[knob] = holder.value
    else:
      config[name] = holder.value
