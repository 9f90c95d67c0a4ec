"""Draft refinement on a trained workdir: alpha tuned per task and rescorer, then one BE table.

  python -m benchmarks.refinement_table --workdir=workdirs/small \
      --rescorers=xs=workdirs/rescorer_xs,s=workdirs/rescorer_s \
      --ngrams=2=workdirs/small/ngram2.arpa,4=workdirs/small/ngram4.arpa --output=out/refinement

Protocol (Kim et al. 2024, section 5): per task, the evaluation examples are a seeded random
permutation of the set (--permutation_seed); the first --num_tune examples tune alpha over --alphas for every
(method, rescorer) pair by block efficiency (ties go to the smaller alpha), and the next
--num_report examples are decoded with the tuned alpha and reported. Rows: bpd,
local:<rescorer>, ngram:<order>, pbest_0gram, pbest_ngram:<order> (p = --p drafts), and the
oracle top-k block efficiency from bpd's recorded lattices. Every row is checked to be identical
to greedy AR on the reported examples. Writes OUTPUT/refinement.json and OUTPUT/refinement.md.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
from benchmarks import results as results_page
from bpdjax import api
from bpdjax import workdir as workdir_lib
from bpdjax.data import eval_tasks
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.decoding import resources
from bpdjax.eval import metrics

# Knobs k and p of the rows, batch size and data folder come from the decode configuration:
# --k, --p, --data_dir, --config.options.<method>.<knob>.
_CONFIG = common.define_config(workdir="workdirs/small", output="out/refinement",
                               tasks="lambada,squad,xsum,cnn_dailymail,samsum",
                               max_new_tokens=64, max_prompt_tokens=192)
_RESCORERS = flags.DEFINE_list("rescorers", [], "name=workdir of rescoring LMs (method local).")
_NGRAMS = flags.DEFINE_list("ngrams", [], "name=arpa_path of n-gram LMs (ngram methods; a row "
                            "ngram:<name>, e.g. 4=corpus.arpa,4ft=targets.arpa).")
_PBEST_NGRAM = flags.DEFINE_string("pbest_ngram_order", "",
                                   "Name (of --ngrams) of the n-gram LM for pbest_ngram "
                                   "(default: the first of the highest order).")
_ALPHAS = flags.DEFINE_list("alphas", ["0.25", "0.5", "0.75", "0.9"], "Alpha grid to tune.")
_NUM_TUNE = flags.DEFINE_integer("num_tune", 100, "Examples per task that tune alpha.")
_NUM_REPORT = flags.DEFINE_integer("num_report", 100, "Examples per task that are reported.")
_TUNE_MAX_NEW = flags.DEFINE_integer("tune_max_new_tokens", 0,
                                     "Tokens per tuning example (0: --max_new_tokens).")
_SEED = flags.DEFINE_integer("permutation_seed", 0, "Permutation seed of the examples.")
_MARKDOWN = flags.DEFINE_string("markdown", results_page.default_path("refinement_table"),
                                    results_page.HELP)


@dataclasses.dataclass
class Row:
  """One table row: registered `method` with its resources; alpha tuned when `tuned`."""
  label: str
  method: str
  res: resources.Resources = dataclasses.field(default_factory=resources.Resources)
  tuned: bool = False


def _pairs(values):
  out = []
  for v in values:
    if "=" not in v:
      raise ValueError(f"Expected name=path, got {v!r}")
    name, path = v.split("=", 1)
    out.append((name, path))
  return out


class Runner:
  """One Generator; one drafter per (row, alpha), built once and kept (compiled once)."""

  def __init__(self, loaded, config):
    self.loaded = loaded
    self.config = config
    self.generator = generator_lib.Generator(loaded.model, loaded.params,
                                             eos_id=loaded.vocab.eos_id)
    self.built = {}

  def release(self) -> None:
    """Drops every built drafter and JAX's compiled executables. A drafter bakes its n-gram
    tables into its executables, so keeping a 4-gram row's five alphas of a 3M-token LM ran the
    process out of memory (LLVM "Cannot allocate memory", then a segfault); every tuning run
    and every finished row releases."""
    self.built.clear()
    self.generator.clear_compiled()
    jax.clear_caches()
    gc.collect()

  def drafter(self, row: Row, alpha: float):
    key = (row.label, alpha)
    if key not in self.built:
      options = methods.make_options(row.method, **self.config.options[row.method])
      if "alpha" in methods.knobs(row.method):
        options = dataclasses.replace(options, alpha=alpha)
      self.built[key] = methods.build(row.method, self.loaded.model.config, row.res,
                                      options=options)
    return self.built[key]

  def run(self, row, alpha, prompts, max_new, record_topk=0):
    b = self.drafter(row, alpha)
    return self.generator.generate(prompts, b, max_new_tokens=max_new, batch_size=1,
                                   record=record_topk,
                                   prompt_width=_CONFIG.value.max_prompt_tokens)


def _be(generations) -> float:
  return sum(len(g.tokens) for g in generations) / sum(g.calls for g in generations)


def main(argv):
  del argv
  t_start = time.time()
  settings = common.settings(_CONFIG.value)
  workdir, max_new = settings.workdir, settings.max_new_tokens
  loaded = api.load(workdir)
  config = loaded.model.config
  h = config.num_heads_bpd
  rows = [Row(methods.vanilla(), methods.vanilla())]
  for name, path in _pairs(_RESCORERS.value):
    res = resources.Resources(rescorer=resources.load_rescorer(path, workdir))
    rows.append(Row(f"local:{name}", "local", res=res, tuned=True))
  ngrams = {}
  for name, path in _pairs(_NGRAMS.value):
    ngrams[name] = resources.Resources(
        ngram_lm=resources.load_ngram_lm(path, config.vocab_size, workdir))
    rows.append(Row(f"ngram:{name}", "ngram", res=ngrams[name], tuned=True))
  rows.append(Row("pbest_0gram", "pbest_0gram"))
  if ngrams:
    name = _PBEST_NGRAM.value or max(ngrams, key=lambda n: ngrams[n].ngram_lm.order)
    if name not in ngrams:
      raise ValueError(f"--pbest_ngram_order={name!r} names none of --ngrams ({', '.join(ngrams)})")
    rows.append(Row(f"pbest_ngram:{name}", "pbest_ngram", res=ngrams[name], tuned=True))
  alphas = [float(a) for a in _ALPHAS.value]
  runner = Runner(loaded, _CONFIG.value)
  data_dir = settings.data_dir or loaded.config.data_dir
  vocab_path = workdir_lib.vocab_path(workdir)
  tune_max_new = _TUNE_MAX_NEW.value or max_new
  k = runner.drafter(rows[-1], 0.0).options.k
  result = {"settings": dict({f.name: f.value for f in _OWN_FLAGS}, k=k,
                             max_prompt_tokens=_CONFIG.value.max_prompt_tokens,
                             max_new_tokens=max_new, tasks=list(settings.tasks),
                             options={r.method: dict(_CONFIG.value.options[r.method])
                                      for r in rows}),
            "step": loaded.step, "tasks": {}}
  for task in settings.tasks:
    examples = eval_tasks.load_prompts(task, data_dir, vocab_path,
                                       _NUM_TUNE.value + _NUM_REPORT.value,
                                       max_prompt_tokens=_CONFIG.value.max_prompt_tokens,
                                       jsonl_path=settings.jsonl or None, seed=_SEED.value)
    tune = [e["prompt_tokens"] for e in examples[:_NUM_TUNE.value]]
    report = [e["prompt_tokens"] for e in examples[_NUM_TUNE.value:]]
    ar, _ = runner.run(Row(methods.reference(), methods.reference()), 0.0, report, max_new)
    task_out = {"num_tune": len(tune), "num_report": len(report)}
    for row in rows:
      entry = {}
      alpha = 0.0
      if row.tuned:
        entry["tuning_be"] = {}
        for a in alphas:
          t0 = time.time()
          entry["tuning_be"][str(a)] = _be(runner.run(row, a, tune, tune_max_new)[0])
          runner.release()
          print(f"  {task} {row.label} alpha={a}: tuning BE {entry['tuning_be'][str(a)]:.3f} "
                f"({time.time() - t0:.0f} s)", flush=True)
        alpha = max(alphas, key=lambda a: (entry["tuning_be"][str(a)], -a))
      t0 = time.time()
      recorded, timings = runner.run(row, alpha, report, max_new, record_topk=k)
      entry.update(alpha=alpha, block_efficiency=_be(recorded),
                   seconds=sum(t.seconds for t in timings),
                   identical_to_ar=all(np.array_equal(a.tokens, b.tokens)
                                       for a, b in zip(ar, recorded)))
      draft_len = runner.drafter(row, alpha).drafter.topology.path_len
      entry.update(metrics.draft_analyses(recorded, draft_len, h))
      entry.update(metrics.refinement_analyses(recorded, draft_len, greedy=True))
      task_out[row.label] = entry
      runner.release()
      print(f"{task} {row.label}: alpha {alpha} BE {entry['block_efficiency']:.3f} identical "
            f"{entry['identical_to_ar']} repetition {entry['repetition_rate']} "
            f"({time.time() - t0:.0f} s)", flush=True)
    metrics.compare_to_vanilla({r.label: task_out[r.label] for r in rows}, rows[0].label)
    result["tasks"][task] = task_out
    _write(result, rows, settings.output, k)
  result["wall_minutes"] = (time.time() - t_start) / 60
  _write(result, rows, settings.output, k)
  table = open(os.path.join(settings.output, "refinement.md")).read()
  print(table)
  results_page.append(_MARKDOWN.value, "refinement_table", f"{settings.workdir}, BE per task "
                 f"({_NUM_REPORT.value} reported examples, alpha tuned on {_NUM_TUNE.value} "
                 f"others), {settings.max_new_tokens} new tokens\n\n{table}")


_OWN_FLAGS = (_RESCORERS, _NGRAMS, _PBEST_NGRAM, _ALPHAS, _NUM_TUNE, _NUM_REPORT, _TUNE_MAX_NEW,
              _SEED)


def _write(result: dict, rows, output: str, k: int) -> None:
  os.makedirs(output, exist_ok=True)
  with open(os.path.join(output, "refinement.json"), "w") as f:
    json.dump(result, f, indent=2, default=float)
  tasks = list(result["tasks"])
  lines = ["| row | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
  for row in rows:
    cells = []
    for task in tasks:
      e = result["tasks"][task][row.label]
      cell = f"{e['block_efficiency']:.3f}"
      if row is not rows[0]:
        cell += f" ({100 * e['be_gain_vs_bpd']:+.1f}%"
        cell += f", a={e['alpha']})" if row.tuned else ")"
      if not e["identical_to_ar"]:
        cell += " NOT IDENTICAL"
      cells.append(cell)
    lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
  oracle = [f"{result['tasks'][t][rows[0].label]['oracle_topk'].get(str(k), float('nan')):.3f}"
            for t in tasks]
  lines.append(f"| oracle top-{k} | " + " | ".join(oracle) + " |")
  lines += ["", "Repetition rate of the verified drafts (consecutive repeated tokens; the bpd row "
            "is the vanilla draft, i.e. before rescoring):", "",
            "| row | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
  for row in rows:
    cells = [f"{result['tasks'][t][row.label]['repetition_rate']:.3f}" for t in tasks]
    lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
  lines += ["", "Decode steps won / tied / lost against the vanilla draft from the same context "
            "(share of wins that repair a consecutive repetition):", "",
            "| row | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
  for row in rows[1:]:
    cells = []
    for t in tasks:
      e = result["tasks"][t][row.label]
      wtl, repair = e["steps_vs_vanilla"], e["repetition_repair_share"]
      cells.append(f"{wtl['win_fraction']:.0%} / {wtl['tie_fraction']:.0%} / "
                   f"{wtl['loss_fraction']:.0%}"
                   + (f" ({repair:.0%})" if repair is not None else ""))
    lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
  with open(os.path.join(output, "refinement.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
