"""Stage 4 of an evaluation run: what the decoded outputs say, per task: comparisons against
plain decoding (identical outputs, speedup) and the vanilla draft (block-efficiency gains), the
distribution check of sampled outputs, task quality and samples; then the report dict.
"""
from __future__ import annotations

import jax

from bpdjax.decoding import methods
from bpdjax.eval import decode_stage
from bpdjax.eval import distribution
from bpdjax.eval import metrics
from bpdjax.eval import quality
from bpdjax.eval import session as session_lib


def task_report(session: session_lib.Session, task: str, run: decode_stage.TaskRun) -> dict:
  """The task's entries with every comparison added (in place) and returned."""
  s, loaded = session.plan.settings, session.loaded
  prompts = [e["prompt_tokens"] for e in session.plan.examples[task]]
  report, reference = run.entries, methods.reference()
  if not s.sampling.greedy:   # Sampling: each method's samples against the model.
    scores = {name: distribution.score(loaded.model, loaded.params, prompts, outputs,
                                       s.sampling) for name, outputs in run.outputs.items()}
    for name, scored in scores.items():
      report[name]["distribution_check"] = dict(
          distribution.summarize(scored, None if name == reference else scores.get(reference)),
          seed=s.seed)
  metrics.compare_to_reference(report, run.outputs, s.sampling.greedy, reference)
  metrics.compare_to_vanilla(report, methods.vanilla())
  metrics.compare_to_best_other(report)
  return report


def task_quality(session: session_lib.Session, task: str, run: decode_stage.TaskRun) -> tuple:
  """(quality summary, per-example scores) of the first method's outputs (greedy outputs are
  identical across methods)."""
  s, examples = session.plan.settings, session.plan.examples[task]
  scored = s.methods[0]
  refs = quality.references_by_id(task, session.plan.data_dir)
  texts = [session.loaded.vocab.decode(o.tolist()) for o in run.outputs[scored]]
  per_example = quality.score_examples(task, [refs[e["id"]] for e in examples], texts)
  summary = dict(quality.summarize(per_example), method=scored,
                 identical_across_methods=all(e.get("identical_to_ar") is not False
                                              for e in run.entries.values()))
  # Per example, so two models decoded on the same examples compare paired.
  rows = [dict(id=e["id"], output=text, **{m: v[i] for m, v in per_example.items()})
          for i, (e, text) in enumerate(zip(examples, texts))]
  return summary, rows


def samples(session: session_lib.Session, task: str, run: decode_stage.TaskRun) -> list:
  first = run.outputs[session.plan.settings.methods[0]]
  return [{"id": e["id"], "prompt_tail": e["prompt_text"][-200:],
           "output": session.loaded.vocab.decode(first[i].tolist())}
          for i, e in enumerate(session.plan.examples[task][:3])]


def report(session: session_lib.Session, runs: dict) -> dict:
  """The whole report dict of the runs {task: TaskRun}."""
  s, plan = session.plan.settings, session.plan
  result = {"settings": dict(s.as_dict(), step=session.loaded.step,
                             device=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                             max_prompt_tokens=plan.max_prompt, lossless=s.sampling.lossless),
            "reference": methods.reference(), "vanilla": methods.vanilla(),
            "tasks": {}, "samples": {}, "quality": {}, "quality_examples": {},
            "examples_decoded": {t: len(e) for t, e in plan.examples.items()}}
  for task, run in runs.items():
    result["tasks"][task] = task_report(session, task, run)
    if s.quality:
      result["quality"][task], result["quality_examples"][task] = task_quality(session, task,
                                                                              run)
    result["samples"][task] = samples(session, task, run)
  result["compilations"] = session.generator.compilations
  result["cost_tables"] = [t.as_dict() for t in session.cost_tables]
  result["complete"] = True
  return result
