"""The train.py command line (also the `bpdjax-train` console script).

  python train.py --config=configs/tiny.py --workdir=/tmp/tiny --config.num_train_steps=20

Resumes from the latest checkpoint in --workdir. On a TPU pod slice (or any multi-process JAX
setup) start the same command on every host with --multihost; for processes on one machine pass
--coordinator_address, --num_processes and --process_id.
"""
from __future__ import annotations

import logging as std_logging
import os
import runpy
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import fileio
from bpdjax import workdir_lock
from bpdjax.train import guard
from bpdjax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, config and metrics.")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Call jax.distributed.initialize() with auto-detection (TPU pods).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_library_info(record) -> bool:
  """Keeps orbax's per-save INFO chatter out of the progress log (warnings still show)."""
  return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_library_info)
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _MULTIHOST.value:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  try:
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (guard.Diverged, checkpoints.DamagedCheckpoint, workdir_lock.WorkdirLocked,
          fileio.BucketUnreachable) as e:
    logging.error("%s", e)
    sys.exit(f"train.py: {e}")


def check_overrides(argv) -> None:
  """Rejects unknown --config.KEY overrides with a message that names them."""
  config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_file and os.path.isfile(config_file):
    configuration.check_override_keys(argv, runpy.run_path(config_file)["get_config"]())


def main() -> None:
  """Entry point: validate overrides, then run."""
  sys.argv[:] = configuration.resolve_config_flag(sys.argv)
  check_overrides(sys.argv)
  sys.modules["__main__"].__doc__ = __doc__  # --help of train.py and of bpdjax-train.
  configuration.run_app(_main)
