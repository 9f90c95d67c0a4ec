"""The decode.py command line (also the `bpdjax-decode` console script).

Settings come from one ml_collections config (bpdjax/configs/decode.py, its settings declared
once in eval/schema.py; --config=FILE for another) with --config.KEY=VALUE overrides. The flags of earlier versions are aliases that set the same
keys (eval/flags.py): --workdir, --output, --tasks, --methods, --num_examples, --max_new_tokens,
--batch_size, --temperature, --top_k, --top_p, --seed, --record_topk, --data_dir, --jsonl,
--mesh, --rescorer_workdir, --ngram_arpa; and --k, --p, --alpha, --tree_size, --ngram_backend
set that knob of every method that has it (options.<method>.<knob>; backend for
--ngram_backend).
"""
from __future__ import annotations

import os
import runpy
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from bpdjax import configuration
from bpdjax.eval import flags as alias_flags
from bpdjax.eval import report
from bpdjax.eval import run
from bpdjax.eval import settings as settings_lib

# bpdjax/configs/decode.py, found without importing the configs (floor 4: they import us).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "decode.py")


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  alias_flags.apply_aliases(config)
  settings = settings_lib.DecodeSettings.from_config(config)
  result = run.run(settings)   # Validates once (eval/plan.py) before loading anything.
  print("\n".join(report.summary_lines(result)))
  print(f"{result['compilations']} decode programs compiled")
  print(f"Report: {settings.output}/report.json, report.md ({jax.device_count()} devices)")


def main() -> None:
  """Entry point: unknown --config.KEY overrides fail with their name, then run."""
  sys.argv[:] = configuration.resolve_config_flag(sys.argv)
  config_file = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")),
                     DEFAULT_CONFIG)
  if os.path.isfile(config_file):
    configuration.check_override_keys(sys.argv, runpy.run_path(config_file)["get_config"]())
  # Defined here, not at import: config_flags reads the file and its overrides when defined.
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Decode config file.",
                                  lock_config=True)
  sys.modules["__main__"].__doc__ = alias_flags.usage(__doc__)
  configuration.run_app(_main)
