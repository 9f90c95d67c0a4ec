"""The fine-tuning tables from benchmarks/pipelines/finetune_pipeline.sh's outputs (no decoding here).

  python -m benchmarks.pipelines.finetune_tables --out=out/finetune --tasks=squad,xsum,samsum,gsm8k \
      [--markdown=docs/results/finetune.md]

Reads, per task and model (pretrained --pretrained, fine-tuned --finetuned_prefix + TASK),
OUT/MODEL/TASK/report.json
(decode.py: ar and bpd with analyses and task quality) and OUT/MODEL/TASK/blocks.json
(benchmarks/block_sizes.py), and prints:
(a) the paper's Table 1 shape: BE of greedy BPD per block size k = 2..9 (the first k heads of
    the h = 9 model), with task quality, pretrained beside fine-tuned;
(b) per task and model: the outputs' repetition rate, the vanilla drafts' consecutive
    repetition rate, per-head mean entropy, h_max and BE (k = 9); and the Pearson correlation
    between h_max and BE over those (task, model) points, with its two-sided p-value;
(c) with --quality_dir (OUT/MODEL/TASK/QUALITY_DIR/report.json: decode.py ar only on more
    evaluation examples, with per-example quality): per task and metric, the pretrained and
    fine-tuned means with their standard errors on the same examples, the paired difference,
    and the two-sided p-value of a paired permutation test (signs of the per-example
    differences flipped at random; for 0/1 accuracies a Monte Carlo McNemar test).
--markdown keeps the text that file holds above its first table (its title and commands).
"""
import json
import os

from absl import app
from absl import flags
from scipy import stats

from bpdjax.eval import quality

_OUT = flags.DEFINE_string("out", "out/finetune", "The pipeline's output folder.")
_TASKS = flags.DEFINE_list("tasks", ["squad", "xsum", "samsum", "gsm8k"], "Tasks.")
_PRETRAINED = flags.DEFINE_string("pretrained", "small", "The parent workdir's name under OUT.")
_FINETUNED_PREFIX = flags.DEFINE_string("finetuned_prefix", "ft_",
                                        "The fine-tuned workdirs' names under OUT: PREFIX + task.")
_QUALITY_DIR = flags.DEFINE_string(
    "quality_dir", "", "Table (c): the quality run's folder name under OUT/MODEL/TASK.")
_MARKDOWN = flags.DEFINE_string("markdown", "", "Also write the tables to this file.")
_FIRST_TABLE = "(a) Block efficiency"
QUALITY = {"squad": ("f1",), "xsum": ("rougeL",), "samsum": ("rougeL",),
           "gsm8k": ("accuracy", "answer_format")}


def _read(model: str, task: str, name: str) -> dict:
  path = os.path.join(_OUT.value, model, task, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: run benchmarks/pipelines/finetune_pipeline.sh first")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _fmt(x, spec=".3f"):
  return "–" if x is None else format(x, spec)


def main(argv):
  del argv
  lines, points = [], []
  sizes = None
  rows_a, rows_b = [], []
  for task in _TASKS.value:
    for label, model in (("pretrained", _PRETRAINED.value),
                         ("fine-tuned", _FINETUNED_PREFIX.value + task)):
      report, blocks = _read(model, task, "report.json"), _read(model, task, "blocks.json")
      sizes = sizes or sorted(blocks["block_efficiency"], key=int)
      task_quality = report.get("quality", {}).get(task, {})
      shown = ", ".join(f"{m} {_fmt(task_quality.get(m))}" for m in QUALITY[task])
      bes = [blocks["block_efficiency"][k] for k in sizes]
      rows_a.append(f"| {task} | {label} | {shown} | "
                    + " | ".join(f"{be:.3f}" for be in bes) + " |")
      bpd = report["tasks"][task]["bpd"]
      entropy = ", ".join(f"{e:.2f}" for e in bpd["head_entropy"])
      rows_b.append(f"| {task} | {label} | {_fmt(bpd['output_repetition_rate'])} | "
                    f"{_fmt(bpd['repetition_rate'])} | {entropy} | {bpd['h_max']} | "
                    f"{bpd['block_efficiency']:.3f} |")
      points.append((bpd["h_max"], bpd["block_efficiency"]))
  lines += [_FIRST_TABLE + " of greedy BPD per block size k (the first k heads of one h = 9 "
            "model; output identical to greedy decoding for every k), and task quality of the "
            "greedy outputs.", "",
            "| task | model | quality | " + " | ".join(f"k={k}" for k in sizes) + " |",
            "|---|---|---|" + "---|" * len(sizes)] + rows_a
  lines += ["", "(b) Repetition and head entropy (bpd, k = 9, recorded analyses): the outputs' "
            "token repetition rate, the vanilla drafts' consecutive repetition rate, mean "
            "entropy (nats) of heads 1..9, h_max (the last head up to which entropy rises) and "
            "BE.", "",
            "| task | model | output repetition | draft repetition | head entropy | h_max | BE |",
            "|---|---|---|---|---|---|---|"] + rows_b
  h, be = zip(*points)
  if len(set(h)) > 1 and len(set(be)) > 1:
    r, p = stats.pearsonr(h, be)
    lines += ["", f"Pearson correlation of h_max and BE over the {len(points)} (task, model) "
              f"points: r = {r:.3f}, two-sided p = {p:.3g}."]
  else:
    lines += ["", f"h_max takes one value over the {len(points)} points ({sorted(set(h))}): no "
              "correlation with BE can be estimated."]
  if _QUALITY_DIR.value:
    rows_c = []
    for task in _TASKS.value:
      before, after = (
          _read(model, os.path.join(task, _QUALITY_DIR.value), "report.json")
          ["quality_examples"][task]
          for model in (_PRETRAINED.value, _FINETUNED_PREFIX.value + task))
      for metric in QUALITY[task]:
        c = quality.paired_comparison(before, after, metric)
        rows_c.append(
            f"| {task} | {metric} | {c['examples']} | {c['mean_a']:.4f} ± {c['stderr_a']:.4f} | "
            f"{c['mean_b']:.4f} ± {c['stderr_b']:.4f} | {c['difference']:+.4f} | "
            f"{c['better']} / {c['worse']} | {c['p_value']:.3g} |")
    lines += ["", "(c) Task quality on more evaluation examples (greedy, the same examples for "
              "both models): mean ± standard error, the fine-tuned minus pretrained difference, "
              "the examples it improves / worsens, and the two-sided p-value of a paired "
              "permutation test (9,999 resamples: 0.0002 is the smallest p it gives).", "",
              "| task | metric | examples | pretrained | fine-tuned | difference | better / worse "
              "| p |", "|---|---|---|---|---|---|---|---|"] + rows_c
  text = "\n".join(lines)
  print(text)
  if _MARKDOWN.value:
    preamble = ""
    if os.path.exists(_MARKDOWN.value):
      with open(_MARKDOWN.value, encoding="utf-8") as f:
        preamble = f.read().partition(_FIRST_TABLE)[0]
        preamble = preamble if preamble.strip() else ""
    with open(_MARKDOWN.value, "w", encoding="utf-8") as f:
      f.write(preamble + text + "\n")


if __name__ == "__main__":
  app.run(main)
