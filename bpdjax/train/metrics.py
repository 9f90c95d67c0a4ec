"""Training metrics: TensorBoard scalars (clu) and metrics.jsonl, and the progress line."""
from __future__ import annotations

import json
import math
import time
from typing import Any, Optional

import jax
try:  # clu (and the TensorFlow its summary writer needs) may be absent on a JAX-only image.
  from clu import metric_writers
except ModuleNotFoundError as e:
  if (e.name or "").split(".")[0] not in ("clu", "tensorflow"):
    raise
  metric_writers = None

from bpdjax import fileio
from bpdjax import workdir as workdir_lib


def strict_json(record: dict) -> str:
  """One JSON line that strict parsers accept: NaN and infinities become null, and the record
  lists their keys under "nonfinite"."""
  bad = []

  def clean(key, value) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
      bad.append(key)
      return None
    if isinstance(value, (list, tuple)):
      return [clean(key, v) for v in value]
    return value

  out = {k: clean(k, v) for k, v in record.items()}
  if bad:
    out["nonfinite"] = sorted(set(bad))
  return json.dumps(out, allow_nan=False)


def _step_of(line: str) -> Optional[int]:
  """The step of a metrics.jsonl line; None for a line cut short (a kill during the write)."""
  try:
    return json.loads(line).get("step", 0)
  except ValueError:
    return None


def drop_after(path: str, step: int) -> int:
  """Removes the lines of metrics.jsonl logged after `step` (by a run killed after its last
  checkpoint at `step`: a resume logs those steps again), and a line cut short by a kill;
  returns how many lines it removed."""
  if not fileio.exists(path):
    return 0
  text = fileio.read_text(path)
  lines = text.splitlines(keepends=True)
  keep = [l for l in lines if (n := _step_of(l)) is not None and n <= step]
  # Lines of older versions may hold NaN: kept lines are rewritten as strict JSON.
  new = "".join(strict_json(json.loads(l)) + "\n" for l in keep)
  if new != text:
    fileio.write_atomic(path, new)
  return len(lines) - len(keep)


def progress_line(step, total, summary, tokens_per_s, seconds_left) -> str:
  acc = " ".join(f"{a:.3f}" for a in summary["accuracy"])
  eta = time.strftime("%H:%M:%S", time.gmtime(max(seconds_left, 0)))
  return (f"step {step}/{total} | loss {summary['loss']:.4f} | acc/head [{acc}] | "
          f"{tokens_per_s:,.0f} tok/s | ETA {eta}")


class MetricsLog:
  """TensorBoard (clu) scalars plus one JSON line per logged step in WORKDIR/metrics.jsonl.

  metrics.jsonl is written through `fileio.append_text` (a bucket workdir rewrites the object);
  TensorBoard events go through tf.io.gfile (clu), which reaches real buckets but no emulator:
  tensorboard=False leaves them out. With `resume_step`, lines after that step (from a run
  killed after its last checkpoint) are removed first, so that no step appears twice; a
  "resumed_from" line marks the resume.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, resume_step: Optional[int] = None):
    self.is_main = jax.process_index() == 0
    if tensorboard and metric_writers is None:
      raise ValueError("config.tensorboard=True needs clu and TensorFlow, not installed here: "
                       "set --config.tensorboard=False (metrics.jsonl is written either way).")
    self.writer = None if metric_writers is None else metric_writers.create_default_writer(
        workdir, just_logging=not (self.is_main and tensorboard))
    path = workdir_lib.path(workdir, workdir_lib.METRICS_FILE)
    dropped = drop_after(path, resume_step) if self.is_main and resume_step else 0
    self.jsonl = path if self.is_main else None
    if resume_step:
      self.write(resume_step, {"resumed_from": resume_step, "dropped_lines": dropped})

  def write(self, step: int, record: dict) -> None:
    scalars = {}
    for key, value in record.items():
      if isinstance(value, list):
        scalars.update({f"{key}/head_{i + 1}": v for i, v in enumerate(value)})
      elif isinstance(value, (int, float)):
        scalars[key] = value
    if scalars and self.writer is not None:
      self.writer.write_scalars(step, scalars)
    if self.jsonl:
      fileio.append_text(self.jsonl, strict_json(dict(step=step, **record)) + "\n")

  def close(self):
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()
