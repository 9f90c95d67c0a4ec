"""The table of benchmarks/pipelines/learned_drafts_tasks.sh: per task, head set and method, BE
greedy and at T = 1, and greedy output identical to ar, from OUT/TASK/HEADS/t{0,1}/report.json.
Appends it to --markdown (docs/results/learned_drafts.md)."""
from __future__ import annotations

import argparse
import json
import os

from benchmarks import results as results_page

HEADS = {"ffn": "ffn h=4 (ts_ffn)",
         "ffn_ngram4": "ffn h=4 (ts_ffn); local: ts_rescorer; ngram: 4-gram, distillation data",
         "ffn_ngram4ft": "ffn h=4 (ts_ffn); ngram:4ft, 4-gram of the task's targets",
         "seq": "sequential h=6 (ts_seq6)", "markov": "ffn + markov r=32 h=4 (ts_markov800)"}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", default="out/learned_drafts_tasks")
  ap.add_argument("--markdown", default=results_page.default_path("learned_drafts"),
                  help=results_page.HELP + " Default: %(default)s.")
  args = ap.parse_args()
  lines = ["| task | heads (fine-tuned from) | method | BE greedy | BE T=1 | identical to ar |",
           "|---|---|---|---|---|---|"]
  for task in sorted(os.listdir(args.out)):
    for heads, label in HEADS.items():
      runs = {}
      for t in (0, 1):
        path = os.path.join(args.out, task, heads, f"t{t}", "report.json")
        if os.path.exists(path):
          with open(path) as f:
            runs[t] = json.load(f)
      if 0 not in runs:
        continue
      examples = runs[0]["examples_decoded"][task]
      for method, entry in runs[0]["tasks"][task].items():
        if method == "ar" and heads.startswith("ffn_"):
          continue                       # The refinement runs' ar is the ffn run's.
        sampled = runs.get(1, {}).get("tasks", {}).get(task, {}).get(method, {})
        be_t1 = f"{sampled['block_efficiency']:.3f}" if sampled else "–"
        same = entry.get("identical_to_ar")
        lines.append(f"| {task} ({examples} examples) | {label} | {method} | "
                     f"{entry['block_efficiency']:.3f} | {be_t1} | "
                     f"{'–' if same is None else same} |")
  text = "\n".join(lines) + "\n"
  print(text)
  results_page.append(args.markdown, "learned_drafts_tasks", text)


if __name__ == "__main__":
  main()
