"""The evaluation sets' files, prompt formats and readers, without TensorFlow (see
eval_tasks.py for the seqio Tasks built on them, and for the formats)."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Mapping, Optional, Sequence

from bpdjax import fileio

EVAL_TASKS = ("lambada", "squad", "xsum", "cnn_dailymail", "samsum", "gsm8k", "mt_bench", "jsonl")
SPLIT = "test"
PROMPT_FORMATS = {
    "lambada": "{context}",
    "squad": "{context}\n\nQuestion: {question}\nAnswer:",
    "xsum": "{document}\n\nSummary:",
    "cnn_dailymail": "{document}\n\nSummary:",
    "samsum": "{document}\n\nSummary:",
    "gsm8k": "Question: {question}\nAnswer:",
    "mt_bench": "{question}",
    "jsonl": "{prompt}",
}
# Data files of each built-in set, relative to data_dir.
DATA_FILES = {
    "lambada": ("lambada/lambada_test.jsonl",),
    "squad": ("squad_v1.1/dev-v1.1_part1_of_2.json", "squad_v1.1/dev-v1.1_part2_of_2.json"),
    "xsum": ("xsum/test_1000.jsonl",),
    "cnn_dailymail": ("cnn_dailymail/llama2_input_1000.jsonl",),
    "samsum": ("samsum/test.jsonl",),
    "gsm8k": ("gsm8k/test.jsonl",),
    "mt_bench": ("mt_bench/question.jsonl",),
}
# Tasks a model is fine-tuned on (bpdjax.data.supervised), each split into a fine-tune part and
# an evaluation part; decode.py reads only the evaluation part of these. squad (we hold only the
# v1.1 dev set) splits by article, xsum (test_1000) and samsum (test) by example id, with
# EVAL_SHARE of the articles / examples for evaluation (a stable sha256 bucket, see
# `is_evaluation`); gsm8k fine-tunes on its train file and evaluates on test.
FINETUNE_TASKS = ("squad", "xsum", "samsum", "gsm8k")
FINETUNE_FILES = {"gsm8k": ("gsm8k/train.jsonl",)}
EVAL_SHARE = 0.2
_CNN_PREFIX = "Article:"
_CNN_SUFFIX = "Summarize the above article in 3 sentences."


# One line per task for --help.
SUMMARIES = {
    "lambada": "LAMBADA passages; reference = the last word (language modelling)",
    "squad": "SQuAD v1.1 dev questions with their paragraph; reference = the first answer",
    "xsum": "XSum articles (test_1000) to summarise in one sentence",
    "cnn_dailymail": "CNN/DailyMail articles to summarise (no references in our copy)",
    "samsum": "SAMSum dialogues to summarise",
    "gsm8k": "GSM8K grade-school maths questions (test); reference = the worked answer",
    "mt_bench": "MT-Bench first-turn questions (no references)",
    "jsonl": "your own prompts: one {\"prompt\": ...} per line of --jsonl=FILE",
}


# ------------------------------------------------------------------------------ readers --


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
  """(1-based line number, object) of each non-blank line; ValueError naming file and line."""
  if not os.path.isfile(path):
    raise ValueError(f"eval data file {path!r} does not exist.")
  rows = []
  # fileio.read_text names the file and line of bytes that are not UTF-8.
  for lineno, line in enumerate(fileio.read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{lineno}: not valid JSON ({e}).") from e
    if not isinstance(obj, dict):
      raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}.")
    rows.append((lineno, obj))
  return rows


def _lambada(paths):
  records = []
  for i, (_, obj) in enumerate(_read_jsonl(paths[0])):
    words = obj["text"].strip().rsplit(None, 1)
    context, target = (words[0].rstrip(), words[1]) if len(words) == 2 else ("", obj["text"])
    records.append({"id": f"lambada-{i}", "context": context, "reference": target})
  return records


def _squad(paths):
  records = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)["data"]
    for article in data:
      for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
          answers = qa.get("answers") or [{"text": ""}]
          records.append({"id": qa["id"], "article": article["title"],
                          "context": paragraph["context"].strip(),
                          "question": qa["question"].strip(), "reference": answers[0]["text"],
                          "answers": "\n".join(a["text"].replace("\n", " ") for a in answers)})
  return records


def _xsum(paths):
  return [{"id": str(o.get("id", f"xsum-{i}")), "document": o["document"].strip(),
           "reference": o.get("summary", "")} for i, (_, o) in enumerate(_read_jsonl(paths[0]))]


def _cnn_dailymail(paths):
  records = []
  for i, (_, obj) in enumerate(_read_jsonl(paths[0])):
    text = obj["instructions"].strip()
    # Every prompt is 1-shot: the same demonstration (article, instruction, its 3 highlights),
    # then "Article: <article>" and the instruction. Keep only the last article.
    text = text[text.rfind(_CNN_PREFIX) + len(_CNN_PREFIX):] if _CNN_PREFIX in text else text
    text = text[:-len(_CNN_SUFFIX)] if text.endswith(_CNN_SUFFIX) else text
    records.append({"id": f"cnn_dailymail-{i}", "document": text.strip(), "reference": ""})
  return records


def _samsum(paths):
  return [{"id": f"samsum-{i}", "document": o["context"].replace("\r\n", "\n").strip(),
           "reference": o.get("response", "").replace("\r\n", "\n")}
          for i, (_, o) in enumerate(_read_jsonl(paths[0]))]


def _gsm8k(paths):
  return [{"id": f"gsm8k-{i}", "question": o["question"].strip(), "reference": o["answer"]}
          for i, (_, o) in enumerate(_read_jsonl(paths[0]))]


def _mt_bench(paths):
  return [{"id": f"mt_bench-{o['question_id']}", "question": o["turns"][0].strip(),
           "reference": ""} for _, o in _read_jsonl(paths[0])]


def read_jsonl_prompts(path: str) -> list[dict]:
  """Records {"id", "prompt", "reference"} of a user JSONL file (see the module docstring).

  ValueError naming the file (and line) for: a missing file, bad JSON, a line that is not an
  object, a missing/non-string/empty (or whitespace-only) `prompt`, a non-string `reference`, a
  file without any prompt.
  """
  records = []
  name = os.path.basename(path)
  for lineno, obj in _read_jsonl(path):
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
      raise ValueError(f"{path}:{lineno}: needs a string field 'prompt' (got {prompt!r}).")
    if not prompt.strip():
      raise ValueError(f"{path}:{lineno}: the 'prompt' field is empty.")
    reference = obj.get("reference", "")
    if not isinstance(reference, str):
      raise ValueError(f"{path}:{lineno}: the 'reference' field must be a string.")
    records.append({"id": str(obj.get("id", f"{name}:{lineno}")), "prompt": prompt,
                    "reference": reference})
  if not records:
    raise ValueError(f"{path}: holds no prompts.")
  return records


READERS: Mapping[str, Callable[[Sequence[str]], list[dict]]] = {
    "lambada": _lambada, "squad": _squad, "xsum": _xsum, "cnn_dailymail": _cnn_dailymail,
    "samsum": _samsum, "gsm8k": _gsm8k, "mt_bench": _mt_bench,
}




def _split_key(name: str, record: dict) -> str:
  return record["article"] if name == "squad" else record["id"]


def is_evaluation(name: str, record: dict) -> bool:
  """Whether a record of fine-tune task `name` (squad, xsum, samsum) is in the evaluation part:
  the first 8 hex digits of sha256(name/article title (squad) or id) below EVAL_SHARE."""
  digest = hashlib.sha256(f"{name}/{_split_key(name, record)}".encode("utf-8")).hexdigest()
  return int(digest[:8], 16) < EVAL_SHARE * 16 ** 8


def _read(name: str, data_dir: str, files: Sequence[str]) -> list[dict]:
  paths = [os.path.join(data_dir, p) for p in files]
  for path in paths:
    if not os.path.isfile(path):
      raise ValueError(f"eval data file {path!r} of task {name!r} does not exist (set "
                       "config.data_dir).")
  records = READERS[name](paths)
  if not records:
    raise ValueError(f"eval data files {paths} of task {name!r} hold no examples.")
  return records


def read_finetune_records(name: str, data_dir: str) -> list[dict]:
  """The fine-tune part of task `name` (FINETUNE_TASKS): records as `read_records` gives, never
  one of its evaluation records (gsm8k: its train file; the others: `is_evaluation` False)."""
  if name not in FINETUNE_TASKS:
    raise ValueError(f"task {name!r} has no fine-tuning data; fine-tune tasks: "
                     f"{', '.join(FINETUNE_TASKS)} (lambada stays language modelling).")
  if name in FINETUNE_FILES:
    return [dict(r, id=f"{name}-train-{i}")
            for i, r in enumerate(_read(name, data_dir, FINETUNE_FILES[name]))]
  return [r for r in _read(name, data_dir, DATA_FILES[name]) if not is_evaluation(name, r)]


def read_records(name: str, data_dir: str, jsonl_path: Optional[str] = None) -> list[dict]:
  """The raw records of eval set `name` (fields of its prompt format, "id", "reference"); for
  squad, xsum and samsum only their evaluation part (see `is_evaluation`).

  Raises:
    ValueError: unknown name, a missing data file (named), or a bad JSONL file (file and line).
  """
  if name not in EVAL_TASKS:
    raise ValueError(f"unknown eval task {name!r}; known: {', '.join(EVAL_TASKS)}.")
  if name == "jsonl":
    if not jsonl_path:
      raise ValueError("eval task 'jsonl' needs jsonl_path (the user's JSONL file).")
    return read_jsonl_prompts(jsonl_path)
  if jsonl_path:
    raise ValueError(f"jsonl_path is only used by eval task 'jsonl', not {name!r}.")
  records = _read(name, data_dir, DATA_FILES[name])
  if name in FINETUNE_TASKS and name not in FINETUNE_FILES:
    records = [r for r in records if is_evaluation(name, r)]
  return records
