"""Task quality of decoded outputs against the evaluation sets' references.

  lambada  last_word_accuracy: the output's first word equals the passage's last word (both
           lower-cased, surrounding punctuation stripped).
  squad    exact_match and f1 with the official SQuAD v1.1 answer normalisation (lower case, no
           punctuation, no articles a/an/the, single spaces), each the best over the question's
           answers; the prediction is the output's first line.
  xsum,    rougeL: ROUGE-L F-measure of Google's `rouge-score` package (stemming on); the
  samsum   prediction is the output's first line (the models are fine-tuned on one-line
           summaries ending in EOS).
  gsm8k    accuracy: the final number of the output (after "####" when there is one, else the
           last number) equals the reference's number after "####"; answer_format: the output
           gives its answer in the dataset's form ("#### <number>"), whatever the number — a
           model too small to solve any problem can still be seen to have learnt the format.

Scores are fractions (rougeL too, not x100): per example (`score_examples`, for paired
comparisons of two models) and their means (`score`). Tasks without references
(cnn_dailymail: our copy has none; mt_bench; jsonl) have no metric: asking for one is a
ValueError (`check_tasks`). Greedy outputs are identical across decoding methods, so quality is
computed once per task and model.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Sequence

import numpy as np
from rouge_score import rouge_scorer
from scipy import stats

from bpdjax.data import eval_sets

METRICS = {"lambada": ("last_word_accuracy",), "squad": ("exact_match", "f1"),
           "xsum": ("rougeL",), "samsum": ("rougeL",), "gsm8k": ("accuracy", "answer_format")}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_LINE = re.compile(r"####\s*" + _NUMBER.pattern)


def check_tasks(tasks: Sequence[str]) -> None:
  """ValueError naming a task that has no quality metric (no references)."""
  for task in tasks:
    if task not in METRICS:
      why = ("our copy of it has no reference summaries" if task == "cnn_dailymail"
             else "it has no references")
      raise ValueError(f"quality: task {task!r} has no quality metric ({why}); tasks with one: "
                       f"{', '.join(METRICS)}. Drop it from the tasks or set quality=False.")


def normalize_answer(text: str) -> str:
  """The official SQuAD v1.1 normalisation."""
  text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def squad_scores(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
  """(exact match, F1) of one prediction, each the maximum over the answers."""
  def f1(gold):
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
      return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)
  em = max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers)
  return em, max(f1(a) for a in answers)


def final_number(text: str) -> str:
  """The final answer of a GSM8K-style text: the first number after "####", else the last
  number; commas removed, a trailing ".0"/"." dropped; "" when there is none."""
  tail = text.split("####", 1)[1] if "####" in text else text
  numbers = _NUMBER.findall(tail)
  if not numbers:
    return ""
  number = numbers[0] if "####" in text else numbers[-1]
  number = number.replace(",", "")
  return re.sub(r"\.0*$", "", number)


def numbers(text: str) -> list[str]:
  """The numbers written in `text`, in order, as written ("1,800", "-2.5")."""
  return _NUMBER.findall(text)


def first_line(text: str) -> str:
  return text.strip().split("\n", 1)[0].strip()


def _word(text: str) -> str:
  words = text.split()
  return words[0].strip(string.punctuation).lower() if words else ""


def score_examples(task: str, references: Sequence[dict],
                   outputs: Sequence[str]) -> dict[str, list[float]]:
  """Per-example quality of `outputs` (decoded texts, in the order of `references`).

  Args:
    task: a task of METRICS.
    references: the evaluation records (eval_sets.read_records) of the outputs' examples.
    outputs: the decoded continuations.
  Returns:
    {metric: [value per example]}, each list as long as `outputs` (for paired comparisons of
    two models on the same examples).
  """
  check_tasks([task])
  if len(references) != len(outputs):
    raise ValueError(f"quality: {len(outputs)} outputs for {len(references)} references")
  values = {metric: [] for metric in METRICS[task]}
  scorer = (rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
            if "rougeL" in METRICS[task] else None)
  for record, output in zip(references, outputs):
    if task == "lambada":
      values["last_word_accuracy"].append(float(_word(output) == _word(record["reference"])))
    elif task == "squad":
      em, f1 = squad_scores(first_line(output), record["answers"].split("\n"))
      values["exact_match"].append(em)
      values["f1"].append(f1)
    elif task in ("xsum", "samsum"):
      values["rougeL"].append(
          scorer.score(record["reference"], first_line(output))["rougeL"].fmeasure)
    else:
      gold = final_number(record["reference"])
      values["accuracy"].append(float(bool(gold) and final_number(output) == gold))
      values["answer_format"].append(float(bool(_ANSWER_LINE.search(output))))
  return values


def summarize(values: dict[str, list[float]]) -> dict:
  """{metric: mean, "num_examples": n} of score_examples' per-example values."""
  result = {k: sum(v) / max(len(v), 1) for k, v in values.items()}
  result["num_examples"] = max((len(v) for v in values.values()), default=0)
  return result


def score(task: str, references: Sequence[dict], outputs: Sequence[str]) -> dict:
  """Mean quality of `outputs`: {metric: mean, "num_examples": n} (see score_examples)."""
  return summarize(score_examples(task, references, outputs))


def _stderr(values: np.ndarray) -> float:
  """Standard error of the mean of `values` [n]; nan for fewer than 2."""
  return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def paired_comparison(before: Sequence[dict], after: Sequence[dict], metric: str,
                      resamples: int = 9_999) -> dict:
  """Two models' quality on the same examples: is `after` better than `before`?

  Args:
    before, after: report.json's quality_examples[task] of each model (dicts with "id" and the
      metric), the same examples in the same order.
    metric: the metric to compare.
    resamples: Monte Carlo resamples of the test (the smallest p it can give is 1/(resamples+1)).
  Returns:
    examples; mean_a, stderr_a, mean_b, stderr_b (standard errors of the means); difference
    (mean of after - before); better / worse (examples where after is above / below before);
    p_value: two-sided, of a paired permutation test (the per-example differences' signs
    flipped at random, seeded; for 0/1 metrics a Monte Carlo McNemar test); 1.0 when no
    example differs.
  Raises:
    ValueError: the runs scored different examples (another seed, count or prompt cap).
  """
  if [e["id"] for e in before] != [e["id"] for e in after]:
    raise ValueError(f"quality: the two runs scored different examples ({len(before)} and "
                     f"{len(after)}; another seed, count or prompt cap); a paired comparison "
                     "needs the same examples in the same order")
  a = np.array([e[metric] for e in before], dtype=np.float64)
  b = np.array([e[metric] for e in after], dtype=np.float64)
  diff = b - a
  p = 1.0 if not diff.any() else float(stats.permutation_test(
      (diff,), np.mean, permutation_type="samples", vectorized=True, n_resamples=resamples,
      batch=1_000, alternative="two-sided", random_state=0).pvalue)
  return dict(examples=len(a), mean_a=float(a.mean()), stderr_a=_stderr(a),
              mean_b=float(b.mean()), stderr_b=_stderr(b), difference=float(diff.mean()),
              better=int((diff > 0).sum()), worse=int((diff < 0).sum()), p_value=p)


def references_by_id(task: str, data_dir: str) -> dict[str, dict]:
  """{example id: its evaluation record} of a task with a metric."""
  check_tasks([task])
  return {r["id"]: r for r in eval_sets.read_records(task, data_dir)}
