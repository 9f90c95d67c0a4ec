"""What the benchmarks share: the decode configuration (configs/decode.py, with each
benchmark's own defaults and the decode.py flag aliases), its prompts, drafters and resources,
and alternating timed rounds. Benchmarks build on bpdjax's evaluation code instead of
re-declaring method knobs or re-computing report fields.

  config = common.define_config(methods="ar,bpd", num_examples=16, max_new_tokens=128)
  ...
  settings = common.settings(config.value)      # after absl parsed the command line
"""
from __future__ import annotations

import statistics
from typing import Callable, Sequence

from ml_collections import config_flags

from bpdjax import workdir as workdir_lib
from bpdjax.data import eval_tasks
from bpdjax.decoding import methods
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import resources as resources_lib
from bpdjax.eval import flags as alias_flags  # noqa: F401  (defines --workdir, --methods, ...)
from bpdjax.eval import metrics
from bpdjax.eval import session as session_lib
from bpdjax.eval import settings as settings_lib
from bpdjax.configs import decode as decode_config


def define_config(**defaults):
  """--config (a configs/decode.py ConfigDict with these defaults), --config.KEY overrides."""
  config = decode_config.get_config()
  config.update(defaults)
  return config_flags.DEFINE_config_dict("config", config, "Decode configuration.")


def settings(config) -> settings_lib.DecodeSettings:
  """The checked settings, with the decode.py flag aliases applied."""
  alias_flags.apply_aliases(config)
  if not config.output:
    config.output = "out/benchmark"     # Unused by most benchmarks; must be a valid path.
  s = settings_lib.DecodeSettings.from_config(config)
  s.validate()
  return s


def prompts(s: settings_lib.DecodeSettings, loaded, task: str,
            as_decode_py: bool = False) -> list:
  """Token ids of the first num_examples prompts of `task`, in file order, or with
  as_decode_py the seeded sample decode.py decodes (settings.example_seed); each keeps its
  last settings.max_prompt_tokens tokens (0: max_len - max_new_tokens)."""
  limit = s.max_prompt_tokens or loaded.model.config.max_len - s.max_new_tokens
  seed = s.example_seed if as_decode_py and s.example_seed >= 0 else None
  examples = eval_tasks.load_prompts(task, s.data_dir or loaded.config.data_dir,
                                     workdir_lib.vocab_path(s.workdir), s.num_examples,
                                     max_prompt_tokens=limit, jsonl_path=s.jsonl or None,
                                     seed=seed)
  return [e["prompt_tokens"] for e in examples]


def load_resources(s: settings_lib.DecodeSettings, loaded) -> resources_lib.Resources:
  """The resources the settings name, checked against the model's vocabulary."""
  return resources_lib.load(s.resource_paths, s.workdir, loaded.model.config.vocab_size)


def build_methods(s: settings_lib.DecodeSettings, generator: generator_lib.Generator,
                  prompt_width: int = 0, batch_size: int = 0, res=None) -> dict:
  """{method: registry.Built} for the settings' methods, built by the driver (resources `res`,
  or loaded now); a cost-aware method measures its cost table for `prompt_width` (default: the
  model's longest prompt) and `batch_size` (default: the settings')."""
  config = generator.config
  s.validate(config)
  res = res or resources_lib.load(s.resource_paths, s.workdir, config.vocab_size)
  return {m: generator.build(m, res, s.options[m], s.options,
                             batch_size=batch_size or s.batch_size,
                             prompt_width=prompt_width or config.max_len - s.max_new_tokens,
                             max_new_tokens=s.max_new_tokens,
                             cost_cache=session_lib.cost_cache_path(s))
          for m in s.methods}


def alternating_rounds(names: Sequence[str], measure: Callable[[str], tuple], rounds: int):
  """Calls measure(name) -> (generations, timings) for every name in turn, `rounds` times
  (after one warm-up call each, which also compiles); returns {name: (median tokens/s,
  metrics.speed_metrics of the last round, its generations)}."""
  for name in names:
    measure(name)
  speeds = {name: [] for name in names}
  last = {}
  for _ in range(rounds):
    for name in names:
      gens, timings = measure(name)
      entry = metrics.speed_metrics(gens, timings)
      entry.update(metrics.drafter_stats(timings))
      speeds[name].append(entry["tokens_per_second"])
      last[name] = (entry, gens)
  return {name: (statistics.median(speeds[name]),) + last[name] for name in names}
