"""decode.py's work, in stages: plan -> session -> decode -> analyses -> report.

  plan      validated settings, the model's shape, every task's prompts checked (eval/plan.py)
  session   model, resources, driver and methods, built once (eval/session.py)
  decode    each (task, method) once, recording as an observer (eval/decode_stage.py)
  analyses  comparisons, distribution check, quality, samples (eval/analyses.py)
  report    report.json, report.md and plots in settings.output (eval/report.py)
"""
from __future__ import annotations

from typing import Callable, Optional

from bpdjax import api
from bpdjax.eval import analyses
from bpdjax.eval import decode_stage
from bpdjax.eval import plan as plan_lib
from bpdjax.eval import report as report_lib
from bpdjax.eval import session as session_lib
from bpdjax.eval import settings as settings_lib


def run(settings: settings_lib.DecodeSettings, log: Callable[[str], None] = print,
        loaded: Optional[api.LoadedModel] = None) -> dict:
  """Decodes every task with every method and writes the report to settings.output.

  A method list that includes the reference (plain decoding) gets speedup and identical-output
  columns against it; one that includes the vanilla draft gets block-efficiency gains against
  it. Returns the report dict.
  """
  plan = plan_lib.make(settings)
  report_lib.clear(settings.output, settings.tasks)  # No older report next to a failed run.
  session = session_lib.open_session(plan, log, loaded)
  costs = {}
  runs = {task: decode_stage.decode_task(session, task, costs) for task in settings.tasks}
  result = analyses.report(session, runs)
  report_lib.write(settings.output, result)
  return result
