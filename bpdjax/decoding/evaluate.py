"""decode.py's work: decode evaluation tasks with several methods and build the report."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import jax
import numpy as np
import tqdm

from bpdjax.data import eval_tasks
from bpdjax.data import vocab as vocab_lib
from bpdjax.decoding import generate
from bpdjax.decoding import report as report_lib
from bpdjax.decoding import rescoring
from bpdjax.decoding import sampling


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  tasks: tuple[str, ...]
  methods: tuple[str, ...]
  num_examples: int
  max_new_tokens: int
  batch_size: int = 1
  temperature: float = 0.0
  record_topk: int = 16
  data_dir: str = ""
  jsonl_path: Optional[str] = None
  seed: int = 0
  k: int = 16                  # Candidates per head (lattice methods).
  p: int = 16                  # Drafts verified per call (p-best methods).
  alpha: float = 0.5           # Rescorer weight (local / n-gram methods).
  tree_size: int = 64          # Medusa sparse-tree nodes, root included (medusa methods).
  rescorer_workdir: Optional[str] = None
  ngram_arpa: Optional[str] = None   # ARPA file over the model's token ids (ngram methods).
  ngram_backend: str = "dp"          # "dp" (exact, on device) or "wfst" (OpenFST, on the host).

  def validate(self) -> None:
    """Raises ValueError for bad settings before any model is loaded or compiled."""
    for task in self.tasks:
      if task not in eval_tasks.EVAL_TASKS:
        raise ValueError(f"Unknown task {task!r}; known: {sorted(eval_tasks.EVAL_TASKS)}")
    if "jsonl" in self.tasks and not self.jsonl_path:
      raise ValueError("Task 'jsonl' needs --jsonl=PATH (a file with a 'prompt' per line)")
    if not self.methods:
      raise ValueError("No decoding method given")
    for method in self.methods:
      generate.check_method(method)
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.num_examples < 1:
      raise ValueError(f"num_examples must be >= 1, got {self.num_examples}")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
    if self.k < 1 or self.p < 1:
      raise ValueError(f"k and p must be >= 1, got k={self.k}, p={self.p}")
    if {"ngram", "pbest_ngram"} & set(self.methods) and not self.ngram_arpa:
      raise ValueError("Methods 'ngram' and 'pbest_ngram' need --ngram_arpa (an ARPA n-gram LM "
                       "over the model's token ids)")
    rescoring.check_ngram_backend(self.ngram_backend)
    if self.tree_size < 1:
      raise ValueError(f"tree_size must be >= 1, got {self.tree_size}")
    for method in ("local", "medusa_local"):
      if method in self.methods and not self.rescorer_workdir:
        raise ValueError(f"Method {method!r} needs --rescorer_workdir (a bpdjax LM with h = 1)")


def run(loaded, settings: EvalSettings, output_dir: str, workdir: str, mesh=None) -> dict:
  """Decodes every task with every method and writes the report to output_dir.

  `loaded` is a bpdjax.api.LoadedModel. A method list that includes "ar" gets speedup and
  identical-output columns against it. Returns the report dict.
  """
  settings.validate()
  stale = os.path.join(output_dir, "report.json")
  if os.path.exists(stale):  # Never leave an older report next to a failed run's output.
    os.remove(stale)
  config = loaded.model.config
  rules = loaded.config.logical_axis_rules if mesh is not None else None
  rescorer = None
  if settings.rescorer_workdir:
    rescorer = load_rescorer(settings.rescorer_workdir, workdir)
  ngram = None
  if settings.ngram_arpa:
    ngram = rescoring.load_ngram_lm(settings.ngram_arpa, config.vocab_size,
                                    settings.ngram_backend, settings.alpha,
                                    vocab_digest=vocab_lib.vocab_digest(workdir))
  generator = generate.Generator(
      loaded.model, loaded.params, eos_id=loaded.vocab.eos_id, mesh=mesh, rules=rules,
      options=generate.MethodOptions(k=settings.k, p=settings.p, alpha=settings.alpha,
                                     tree_size=settings.tree_size,
                                     ngram_backend=settings.ngram_backend),
      rescorer=rescorer, ngram=ngram)
  sampling_config = sampling.SamplingConfig(temperature=settings.temperature)
  max_prompt = config.max_len - settings.max_new_tokens
  vocab_path = vocab_lib.workdir_vocab_path(workdir)
  data_dir = settings.data_dir or loaded.config.data_dir
  result = {"settings": dict(dataclasses.asdict(settings), workdir=workdir, step=loaded.step,
                             device=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                             max_prompt_tokens=max_prompt),
            "tasks": {}}
  for task in settings.tasks:
    examples = eval_tasks.load_prompts(
        task, data_dir, vocab_path, settings.num_examples,
        # A user's own prompts are never cut: one that is too long is an error (Generator).
        max_prompt_tokens=(1 << 30) if task == "jsonl" else max_prompt,
        jsonl_path=settings.jsonl_path)
    prompts = [e["prompt_tokens"] for e in examples]
    task_report, outputs = {}, {}
    progress = tqdm.tqdm(total=len(prompts) * len(settings.methods) * 2, desc=task, unit="ex")
    for method in settings.methods:
      timed, timings = generator.generate(
          prompts, method, settings.max_new_tokens, settings.batch_size, sampling_config,
          rng=jax.random.PRNGKey(settings.seed), progress=progress.update)
      entry = report_lib.speed_metrics(timed, timings)
      recorded, _ = generator.generate(
          prompts, method, settings.max_new_tokens, settings.batch_size, sampling_config,
          rng=jax.random.PRNGKey(settings.seed), record_topk=settings.record_topk,
          progress=progress.update)
      entry.update(report_lib.draft_analyses(
          recorded, generator.drafter(method).draft_len, config.num_heads_bpd))
      if sampling_config.greedy and not all(
          np.array_equal(a.tokens, b.tokens) for a, b in zip(timed, recorded)):
        raise RuntimeError(f"{task}/{method}: recorded and timed runs differ (a decoding bug)")
      entry.update(report_lib.refinement_analyses(
          recorded, generator.drafter(method).draft_len, sampling_config.greedy))
      report_lib.add_rescoring_share(entry, report_lib.rescoring_cost(
          generator, method, prompts, settings.max_new_tokens, settings.batch_size))
      outputs[method] = [g.tokens for g in timed]
      task_report[method] = entry
    progress.close()
    report_lib.compare_to_ar(task_report, outputs, sampling_config.greedy)
    report_lib.compare_to_bpd(task_report)
    result["tasks"][task] = task_report
    result["samples"] = result.get("samples", {})
    result["samples"][task] = [
        {"id": e["id"], "prompt_tail": e["prompt_text"][-200:],
         "output": loaded.vocab.decode(outputs[settings.methods[0]][i].tolist())}
        for i, e in enumerate(examples[:3])]
  result["complete"] = True
  report_lib.write(output_dir, result)
  return result


def load_rescorer(rescorer_workdir: str, workdir: str):
  """(model, params) of a rescoring LM; its vocabulary must be the model's (same file bytes)."""
  from bpdjax import api  # pylint: disable=g-import-not-at-top
  if vocab_lib.vocab_digest(rescorer_workdir) != vocab_lib.vocab_digest(workdir):
    raise ValueError(f"Rescorer {rescorer_workdir!r} uses another vocabulary: "
                     f"{vocab_lib.workdir_vocab_path(rescorer_workdir)} differs from "
                     f"{vocab_lib.workdir_vocab_path(workdir)}")
  loaded = api.load(rescorer_workdir)
  return loaded.model, loaded.params


def parse_list(value: str) -> tuple[str, ...]:
  return tuple(x.strip() for x in value.split(",") if x.strip())


def summary_lines(result: dict) -> Sequence[str]:
  lines = []
  for task, methods in result["tasks"].items():
    for method, e in methods.items():
      speed = e.get("speedup_vs_ar")
      lines.append(
          f"{task:14s} {method:6s} BE {e['block_efficiency']:.3f}  acc/call "
          f"{e['accepted_tokens_per_call']:.3f}  {e['tokens_per_second']:8.1f} tok/s"
          + (f"  speedup {speed:.2f}" if speed is not None else "")
          + (f"  identical {e['identical_to_ar']}" if e.get("identical_to_ar") is not None else "")
          + _refinement_summary(method, e))
  return lines


def _refinement_summary(method: str, e: dict) -> str:
  """BE gain over bpd, steps won/tied/lost against the vanilla draft, rescoring cost."""
  if method in ("ar", "bpd"):
    return ""
  out = ""
  if e.get("be_gain_vs_bpd") is not None:
    out += f"  vs bpd {e['be_gain_vs_bpd']:+.1%}"
  st = e.get("steps_vs_vanilla")
  if st and st["iterations"]:
    out += f"  W/T/L {st['win_fraction']:.0%}/{st['tie_fraction']:.0%}/{st['loss_fraction']:.0%}"
    if e.get("repetition_repair_share") is not None:
      out += f" (repairs {e['repetition_repair_share']:.0%} of wins)"
  if e.get("rescoring_ms_per_step") is not None and e.get("rescoring_share") is not None:
    out += f"  rescoring {e['rescoring_ms_per_step']:.2f} ms/step ({e['rescoring_share']:.0%})"
  return out
