"""Draft refinement on a trained workdir: alpha tuned per task and rescorer, then one BE table.

  python benchmarks/refinement_table.py --workdir=workdirs/small \
      --rescorers=xs=workdirs/rescorer_xs,s=workdirs/rescorer_s \
      --ngrams=2=workdirs/small/ngram2.arpa,4=workdirs/small/ngram4.arpa --output=out/refinement

Protocol (Kim et al. 2024, section 5): per task, the evaluation examples are a seeded random
permutation of the set; the first --num_tune examples tune alpha over --alphas for every
(method, rescorer) pair by block efficiency (ties go to the smaller alpha), and the next
--num_report examples are decoded with the tuned alpha and reported. Rows: bpd,
local:<rescorer>, ngram:<order>, pbest_0gram, pbest_ngram:<order> (p = --p drafts), and the
oracle top-k block efficiency from bpd's recorded lattices. Every row is checked to be identical
to greedy AR on the reported examples. Writes OUTPUT/refinement.json and OUTPUT/refinement.md.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from bpdjax import api
from bpdjax.data import eval_tasks
from bpdjax.data import vocab as vocab_lib
from bpdjax.decoding import evaluate
from bpdjax.decoding import generate
from bpdjax.decoding import report as report_lib
from bpdjax.decoding import rescoring

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/small", "Trained BPD workdir.")
_TASKS = flags.DEFINE_list("tasks", ["lambada", "squad", "xsum", "cnn_dailymail", "samsum"],
                           "Evaluation tasks.")
_RESCORERS = flags.DEFINE_list("rescorers", [], "name=workdir of rescoring LMs (method local).")
_NGRAMS = flags.DEFINE_list("ngrams", [], "order=arpa_path of n-gram LMs (ngram methods).")
_PBEST_NGRAM = flags.DEFINE_string("pbest_ngram_order", "",
                                   "Order of the n-gram LM for pbest_ngram (default: highest).")
_ALPHAS = flags.DEFINE_list("alphas", ["0.25", "0.5", "0.75", "0.9"], "Alpha grid to tune.")
_NUM_TUNE = flags.DEFINE_integer("num_tune", 100, "Examples per task that tune alpha.")
_NUM_REPORT = flags.DEFINE_integer("num_report", 100, "Examples per task that are reported.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens generated per example.")
_TUNE_MAX_NEW = flags.DEFINE_integer("tune_max_new_tokens", 0,
                                     "Tokens per tuning example (0: --max_new_tokens).")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt_tokens", 192, "Prompts keep their last N tokens.")
_K = flags.DEFINE_integer("k", 16, "Candidates per head.")
_P = flags.DEFINE_integer("p", 16, "Drafts verified per call (p-best methods).")
_SEED = flags.DEFINE_integer("seed", 0, "Permutation seed of the examples.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Evaluation data (default: the run's data_dir).")
_OUTPUT = flags.DEFINE_string("output", "out/refinement", "Output directory.")


@dataclasses.dataclass
class Row:
  """One table row: `method` of generate.METHODS on its own Generator; tuned when alpha-based."""
  label: str
  method: str
  rescorer: object = None     # (model, params) for local.
  ngram: object = None        # dp.NgramTables for ngram / pbest_ngram.
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
  """Keeps one Generator per (row, alpha) so each compiles once for every task."""

  def __init__(self, loaded):
    self.loaded = loaded
    self.generators = {}

  def generator(self, row: Row, alpha: float) -> generate.Generator:
    key = (row.label, alpha)
    if key not in self.generators:
      self.generators[key] = generate.Generator(
          self.loaded.model, self.loaded.params, eos_id=self.loaded.vocab.eos_id,
          options=generate.MethodOptions(k=_K.value, p=_P.value, alpha=alpha),
          rescorer=row.rescorer, ngram=row.ngram)
    return self.generators[key]

  def run(self, row, alpha, prompts, max_new, record_topk=0):
    gen = self.generator(row, alpha)
    return gen.generate(prompts, row.method, max_new, 1, record_topk=record_topk,
                        prompt_width=_MAX_PROMPT.value)


def _be(generations) -> float:
  return sum(len(g.tokens) for g in generations) / sum(g.calls for g in generations)


def main(argv):
  del argv
  t_start = time.time()
  loaded = api.load(_WORKDIR.value)
  config = loaded.model.config
  h = config.num_heads_bpd
  rows = [Row("bpd", "bpd")]
  for name, path in _pairs(_RESCORERS.value):
    rows.append(Row(f"local:{name}", "local",
                    rescorer=evaluate.load_rescorer(path, _WORKDIR.value), tuned=True))
  ngrams = {}
  for order, path in _pairs(_NGRAMS.value):
    tables = rescoring.load_ngram_lm(path, config.vocab_size, "dp",
                                     vocab_digest=vocab_lib.vocab_digest(_WORKDIR.value))
    ngrams[order] = tables
    rows.append(Row(f"ngram:{order}", "ngram", ngram=tables, tuned=True))
  rows.append(Row("pbest_0gram", "pbest_0gram"))
  if ngrams:
    order = _PBEST_NGRAM.value or max(ngrams, key=int)
    rows.append(Row(f"pbest_ngram:{order}", "pbest_ngram", ngram=ngrams[order], tuned=True))
  alphas = [float(a) for a in _ALPHAS.value]
  runner = Runner(loaded)
  data_dir = _DATA_DIR.value or loaded.config.data_dir
  vocab_path = vocab_lib.workdir_vocab_path(_WORKDIR.value)
  tune_max_new = _TUNE_MAX_NEW.value or _MAX_NEW.value
  result = {"settings": {f.name: f.value for f in _OWN_FLAGS}, "step": loaded.step,
            "tasks": {}}
  for task in _TASKS.value:
    examples = eval_tasks.load_prompts(task, data_dir, vocab_path,
                                       _NUM_TUNE.value + _NUM_REPORT.value,
                                       max_prompt_tokens=_MAX_PROMPT.value, seed=_SEED.value)
    tune = [e["prompt_tokens"] for e in examples[:_NUM_TUNE.value]]
    report = [e["prompt_tokens"] for e in examples[_NUM_TUNE.value:]]
    ar, _ = runner.run(Row("ar", "ar"), 0.0, report, _MAX_NEW.value)
    task_out = {"num_tune": len(tune), "num_report": len(report)}
    for row in rows:
      entry = {}
      alpha = 0.0
      if row.tuned:
        entry["tuning_be"] = {}
        for a in alphas:
          t0 = time.time()
          entry["tuning_be"][str(a)] = _be(runner.run(row, a, tune, tune_max_new)[0])
          print(f"  {task} {row.label} alpha={a}: tuning BE {entry['tuning_be'][str(a)]:.3f} "
                f"({time.time() - t0:.0f} s)", flush=True)
        alpha = max(alphas, key=lambda a: (entry["tuning_be"][str(a)], -a))
      t0 = time.time()
      recorded, timings = runner.run(row, alpha, report, _MAX_NEW.value, record_topk=_K.value)
      entry.update(alpha=alpha, block_efficiency=_be(recorded),
                   seconds=sum(t.seconds for t in timings),
                   identical_to_ar=all(np.array_equal(a.tokens, b.tokens)
                                       for a, b in zip(ar, recorded)))
      draft_len = runner.generator(row, alpha).drafter(row.method).draft_len
      entry.update(report_lib.draft_analyses(recorded, draft_len, h))
      entry.update(report_lib.refinement_analyses(recorded, draft_len, greedy=True))
      task_out[row.label] = entry
      print(f"{task} {row.label}: alpha {alpha} BE {entry['block_efficiency']:.3f} identical "
            f"{entry['identical_to_ar']} repetition {entry['repetition_rate']} "
            f"({time.time() - t0:.0f} s)", flush=True)
    bpd_be = task_out["bpd"]["block_efficiency"]
    for row in rows:
      task_out[row.label]["be_gain_vs_bpd"] = task_out[row.label]["block_efficiency"] / bpd_be - 1
    result["tasks"][task] = task_out
    _write(result, rows)
  result["wall_minutes"] = (time.time() - t_start) / 60
  _write(result, rows)
  print(open(os.path.join(_OUTPUT.value, "refinement.md")).read())


_OWN_FLAGS = (_WORKDIR, _TASKS, _RESCORERS, _NGRAMS, _PBEST_NGRAM, _ALPHAS, _NUM_TUNE,
              _NUM_REPORT, _MAX_NEW, _TUNE_MAX_NEW, _MAX_PROMPT, _K, _P, _SEED, _DATA_DIR,
              _OUTPUT)


def _write(result: dict, rows) -> None:
  os.makedirs(_OUTPUT.value, exist_ok=True)
  with open(os.path.join(_OUTPUT.value, "refinement.json"), "w") as f:
    json.dump(result, f, indent=2, default=float)
  tasks = list(result["tasks"])
  lines = ["| row | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
  for row in rows:
    cells = []
    for task in tasks:
      e = result["tasks"][task][row.label]
      cell = f"{e['block_efficiency']:.3f}"
      if row.label != "bpd":
        cell += f" ({100 * e['be_gain_vs_bpd']:+.1f}%"
        cell += f", a={e['alpha']})" if row.tuned else ")"
      if not e["identical_to_ar"]:
        cell += " NOT IDENTICAL"
      cells.append(cell)
    lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
  oracle = [f"{result['tasks'][t]['bpd']['oracle_topk'].get(str(_K.value), float('nan')):.3f}"
            for t in tasks]
  lines.append(f"| oracle top-{_K.value} | " + " | ".join(oracle) + " |")
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
  with open(os.path.join(_OUTPUT.value, "refinement.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
