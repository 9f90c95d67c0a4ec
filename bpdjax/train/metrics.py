"""Training metrics: TensorBoard scalars (clu) and metrics.jsonl, and the progress line."""
from __future__ import annotations

import json
import time

from clu import metric_writers
import jax

from bpdjax import fileio
from bpdjax import workdir as workdir_lib


def progress_line(step, total, summary, tokens_per_s, seconds_left) -> str:
  acc = " ".join(f"{a:.3f}" for a in summary["accuracy"])
  eta = time.strftime("%H:%M:%S", time.gmtime(max(seconds_left, 0)))
  return (f"step {step}/{total} | loss {summary['loss']:.4f} | acc/head [{acc}] | "
          f"{tokens_per_s:,.0f} tok/s | ETA {eta}")


class MetricsLog:
  """TensorBoard (clu) scalars plus one JSON line per logged step in WORKDIR/metrics.jsonl.

  metrics.jsonl is written through `fileio.append_text` (a bucket workdir rewrites the object);
  TensorBoard events go through tf.io.gfile (clu), which reaches real buckets but no emulator:
  tensorboard=False leaves them out.
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.is_main = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not (self.is_main and tensorboard))
    self.jsonl = workdir_lib.path(workdir, workdir_lib.METRICS_FILE) if self.is_main else None

  def write(self, step: int, record: dict) -> None:
    scalars = {}
    for key, value in record.items():
      if isinstance(value, list):
        scalars.update({f"{key}/head_{i + 1}": v for i, v in enumerate(value)})
      elif isinstance(value, (int, float)):
        scalars[key] = value
    if scalars:
      self.writer.write_scalars(step, scalars)
    if self.jsonl:
      fileio.append_text(self.jsonl, json.dumps(dict(step=step, **record)) + "\n")

  def close(self):
    self.writer.flush()
    self.writer.close()
