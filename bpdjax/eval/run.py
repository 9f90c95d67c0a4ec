"""decode.py's work: decode evaluation tasks with several methods and build the report.

Per run: settings are validated against the model's shape (config.json) before anything is
loaded; resources are loaded once; each method's drafter is built once; each (task, method)
is compiled at most twice (a timed program and, when analyses are asked for, a recording one,
shared across tasks whose prompts pad to the same width) and decoded at most twice.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
import tqdm

from bpdjax import api
from bpdjax import configuration
from bpdjax import partitioning
from bpdjax import workdir as workdir_lib
from bpdjax.data import prompts as prompts_lib
from bpdjax.decoding import cost as cost_lib
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.decoding import resources as resources_lib
from bpdjax.eval import distribution
from bpdjax.eval import drafting_cost
from bpdjax.eval import metrics
from bpdjax.eval import quality
from bpdjax.eval import report as report_lib
from bpdjax.eval import settings as settings_lib


def load_resources(settings: settings_lib.DecodeSettings,
                   vocab_size: int) -> resources_lib.Resources:
  """The resources the settings name (checked against the model's vocabulary)."""
  res = resources_lib.Resources()
  if settings.rescorer_workdir:
    res.rescorer = resources_lib.load_rescorer(settings.rescorer_workdir, settings.workdir)
  if settings.ngram_arpa:
    res.ngram_lm = resources_lib.load_ngram_lm(settings.ngram_arpa, vocab_size, settings.workdir)
  return res


def _cost_cache_path(settings: settings_lib.DecodeSettings) -> str:
  """Where measured cost tables are kept across runs ("" = memory only)."""
  if settings.cost_cache == "workdir":
    return workdir_lib.path(settings.workdir, workdir_lib.COST_TABLES_FILE)
  return settings.cost_cache


def cost_model(settings: settings_lib.DecodeSettings, loaded: api.LoadedModel, prompt_width: int,
               batch_size: int = 0, log: Callable[[str], None] = print) -> cost_lib.CostModel:
  """The cost model cost-aware methods measure their tables with (nothing is measured until a
  method asks), for these prompts' padded width and batch size (default: the settings')."""
  return cost_lib.CostModel(loaded.model, loaded.params, batch_size or settings.batch_size,
                            prompt_width, settings.max_new_tokens,
                            cache_path=_cost_cache_path(settings), log=log)


def run(settings: settings_lib.DecodeSettings, log: Callable[[str], None] = print,
        loaded: Optional[api.LoadedModel] = None) -> dict:
  """Decodes every task with every method and writes the report to settings.output.

  A method list that includes the reference (plain decoding) gets speedup and identical-output
  columns against it; one that includes the vanilla draft gets block-efficiency gains against
  it. Returns the report dict.
  """
  settings.validate()
  model_config = configuration.validate_model(workdir_lib.load_config(settings.workdir).model)
  settings.validate(model_config)
  report_lib.clear(settings.output, settings.tasks)  # No older report next to a failed run.
  mesh = None
  if settings.mesh:
    mesh = partitioning.make_mesh(dict(zip(partitioning.MESH_AXES, settings.mesh)))
  loaded = loaded or api.load(settings.workdir)
  config = loaded.model.config
  max_prompt = settings.max_prompt_tokens or config.max_len - settings.max_new_tokens
  vocab_path = workdir_lib.vocab_path(settings.workdir)
  data_dir = settings.data_dir or loaded.config.data_dir
  task_examples = {task: prompts_lib.load_prompts(
      task, data_dir, vocab_path, settings.num_examples,
      # A user's own prompts are never cut: one that is too long is an error (Generator).
      max_prompt_tokens=(1 << 30) if task == "jsonl" else max_prompt,
      jsonl_path=settings.jsonl or None,
      seed=None if settings.example_seed < 0 else settings.example_seed)
      for task in settings.tasks}
  for task, examples in task_examples.items():
    if not examples:
      raise ValueError(f"Task {task!r} has no prompt with any token to decode")
  widths = {task: generator_lib.bucket_width(max(len(e["prompt_tokens"]) for e in examples),
                                             config.max_len, settings.max_new_tokens)
            for task, examples in task_examples.items()}
  res = load_resources(settings, config.vocab_size)
  res.cost_model = cost_model(settings, loaded, max(widths.values()), log=log)
  built = {m: methods.build(m, config, res, options=settings.options[m])
           for m in settings.methods}
  generator = generator_lib.Generator(
      loaded.model, loaded.params, eos_id=loaded.vocab.eos_id, mesh=mesh,
      rules=loaded.config.logical_axis_rules if mesh is not None else None)
  result = {"settings": dict(settings.as_dict(), step=loaded.step,
                             device=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                             max_prompt_tokens=max_prompt,
                             lossless=settings.sampling.lossless),
            "reference": methods.reference(), "vanilla": methods.vanilla(),
            "tasks": {}, "samples": {}, "quality": {}, "quality_examples": {},
            "examples_decoded": {t: len(e) for t, e in task_examples.items()}}
  costs = {}
  decode = dict(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                sampling_config=settings.sampling)
  for task, examples in task_examples.items():
    prompts = [e["prompt_tokens"] for e in examples]
    generator.check_prompts(prompts, settings.max_new_tokens)
    width = widths[task]
    task_report, outputs, scores = {}, {}, {}
    passes = 2 if settings.record_topk else 1
    progress = tqdm.tqdm(total=len(prompts) * len(settings.methods) * passes, desc=task,
                         unit="ex")
    for name, b in built.items():
      rng = jax.random.PRNGKey(settings.seed)
      timed, timings = generator.generate(prompts, b.drafter, b.params, rng=rng,
                                          progress=progress.update, prompt_width=width, **decode)
      entry = metrics.speed_metrics(timed, timings)
      entry["lossless"] = settings.sampling.lossless
      entry.update(metrics.drafter_stats(timings))
      path_len = b.drafter.topology.path_len
      if settings.record_topk:
        recorded, _ = generator.generate(prompts, b.drafter, b.params, rng=rng,
                                         record_topk=settings.record_topk,
                                         progress=progress.update, prompt_width=width, **decode)
        if settings.sampling.greedy and not all(
            np.array_equal(a.tokens, r.tokens) for a, r in zip(timed, recorded)):
          raise RuntimeError(f"{task}/{name}: recorded and timed runs differ (a decoding bug)")
        entry.update(metrics.draft_analyses(recorded, path_len, config.num_heads_bpd))
        entry.update(metrics.refinement_analyses(recorded, path_len, settings.sampling.greedy))
      if name not in costs:  # Once per method: propose's cost does not depend on the task.
        costs[name] = drafting_cost.rescoring_cost(generator, b.drafter, b.params, prompts,
                                                   settings.max_new_tokens, settings.batch_size)
      metrics.add_rescoring_share(entry, costs[name])
      outputs[name] = [g.tokens for g in timed]
      if not settings.sampling.greedy:
        scores[name] = distribution.score(loaded.model, loaded.params, prompts, outputs[name],
                                          settings.sampling)
      task_report[name] = entry
    progress.close()
    for name, scored in scores.items():  # Sampling: each method's samples against the model.
      task_report[name]["distribution_check"] = dict(
          distribution.summarize(
              scored, None if name == methods.reference() else scores.get(methods.reference())),
          seed=settings.seed)
    metrics.compare_to_reference(task_report, outputs, settings.sampling.greedy,
                                 methods.reference())
    metrics.compare_to_vanilla(task_report, methods.vanilla())
    metrics.compare_to_best_other(task_report)
    result["tasks"][task] = task_report
    if settings.quality:  # Once per task: greedy outputs are identical across methods.
      scored = settings.methods[0]
      refs = quality.references_by_id(task, data_dir)
      texts = [loaded.vocab.decode(o.tolist()) for o in outputs[scored]]
      per_example = quality.score_examples(task, [refs[e["id"]] for e in examples], texts)
      result["quality"][task] = dict(
          quality.summarize(per_example), method=scored,
          identical_across_methods=all(e.get("identical_to_ar") is not False
                                       for e in task_report.values()))
      # Per example, so two models decoded on the same examples compare paired.
      result["quality_examples"][task] = [
          dict(id=e["id"], output=text, **{m: v[i] for m, v in per_example.items()})
          for i, (e, text) in enumerate(zip(examples, texts))]
    result["samples"][task] = [
        {"id": e["id"], "prompt_tail": e["prompt_text"][-200:],
         "output": loaded.vocab.decode(outputs[settings.methods[0]][i].tolist())}
        for i, e in enumerate(examples[:3])]
  result["compilations"] = generator.compilations
  result["cost_tables"] = [t.as_dict() for t in res.cost_model.tables]
  result["complete"] = True
  report_lib.write(settings.output, result)
  return result
