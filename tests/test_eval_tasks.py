"""Tests of bpdjax.data.eval_tasks: evaluation prompts as seqio Tasks."""
import json
import os

import numpy as np
import pytest
import seqio

from bpdjax.data import eval_sets
from bpdjax.data import eval_tasks
from bpdjax.configs import default

DATA_DIR = default.get_config().data_dir
BUILTIN = [n for n in eval_tasks.EVAL_TASKS if n != "jsonl"]
needs_data = pytest.mark.skipif(
    not os.path.isdir(DATA_DIR), reason=f"shared data folder {DATA_DIR} not found")
# How each built-in formatted prompt ends.
ENDINGS = {"squad": "\nAnswer:", "xsum": "\n\nSummary:", "cnn_dailymail": "\n\nSummary:",
           "samsum": "\n\nSummary:", "gsm8k": "\nAnswer:"}


def _load(name, vocab, n=3, max_tokens=10_000, **kw):
  return eval_tasks.load_prompts(name, DATA_DIR, vocab, n, max_tokens, **kw)


def _check(examples, max_tokens=None):
  for ex in examples:
    tokens = ex["prompt_tokens"]
    assert tokens.dtype == np.int32 and tokens.ndim == 1 and tokens.size > 0
    assert max_tokens is None or tokens.size <= max_tokens
    assert isinstance(ex["id"], str) and ex["id"]
    assert isinstance(ex["prompt_text"], str) and ex["prompt_text"].strip()
    assert isinstance(ex["reference"], str)


@needs_data
@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_tasks(tiny_vocab_path, name):
  examples = _load(name, tiny_vocab_path)
  assert len(examples) == 3
  _check(examples)
  vocab = seqio.SentencePieceVocabulary(tiny_vocab_path)
  for ex in examples:
    text = ex["prompt_text"]
    assert text.endswith(ENDINGS.get(name, "")), text[-40:]
    assert ex["num_truncated"] == 0
    # Untruncated tokens are exactly the tokenized prompt text.
    np.testing.assert_array_equal(ex["prompt_tokens"], vocab.encode(text))
    if name == "squad":
      assert "\n\nQuestion: " in text and ex["reference"]
    if name == "gsm8k":
      assert text.startswith("Question: ") and "####" in ex["reference"]
    if name == "cnn_dailymail":
      assert "Article:" not in text and "Summarize the above" not in text
    if name in ("xsum", "samsum"):
      assert ex["reference"] and "\r" not in text
  assert len({ex["id"] for ex in examples}) == 3


@needs_data
def test_lambada_reference_is_last_word(tiny_vocab_path):
  examples = _load("lambada", tiny_vocab_path)
  with open(os.path.join(DATA_DIR, eval_sets.DATA_FILES["lambada"][0])) as f:
    texts = [json.loads(next(f))["text"] for _ in range(3)]
  for ex, text in zip(examples, texts):
    word = ex["reference"]
    assert word and not any(c.isspace() for c in word)
    assert text.rstrip().endswith(word)
    assert not ex["prompt_text"].endswith(word) and ex["prompt_text"] == ex["prompt_text"].rstrip()
    assert text.startswith(ex["prompt_text"])
    assert text[len(ex["prompt_text"]):].strip() == word


@needs_data
def test_truncation_keeps_the_end(tiny_vocab_path):
  full = _load("squad", tiny_vocab_path, n=2)
  cut = _load("squad", tiny_vocab_path, n=2, max_tokens=16)
  _check(cut, max_tokens=16)
  for f, c in zip(full, cut):
    assert f["prompt_tokens"].size > 16 and c["prompt_tokens"].size == 16
    np.testing.assert_array_equal(c["prompt_tokens"], f["prompt_tokens"][-16:])
    assert c["num_truncated"] == f["prompt_tokens"].size - 16
    assert c["prompt_text"] == f["prompt_text"]


@needs_data
def test_seeded_sample_is_deterministic_and_splittable(tiny_vocab_path):
  a = _load("mt_bench", tiny_vocab_path, n=5, seed=3)
  b = _load("mt_bench", tiny_vocab_path, n=5, seed=3)
  head = _load("mt_bench", tiny_vocab_path, n=2, seed=3)
  ordered = _load("mt_bench", tiny_vocab_path, n=5)
  ids = [ex["id"] for ex in a]
  assert ids == [ex["id"] for ex in b]
  assert [ex["id"] for ex in head] == ids[:2]  # Tuning [:2] and reporting [2:] are disjoint.
  assert len(set(ids)) == 5 and ids != [ex["id"] for ex in ordered]
  assert ids != [ex["id"] for ex in _load("mt_bench", tiny_vocab_path, n=5, seed=4)]
  assert len(_load("mt_bench", tiny_vocab_path, n=None, max_tokens=4)) == 80


def _write(tmp_path, lines, name="prompts.jsonl"):
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def test_jsonl(tiny_vocab_path, tmp_path):
  path = _write(tmp_path, [json.dumps({"prompt": "To be, or not to be:"}), "",
                           json.dumps({"prompt": " Hello\nworld", "id": 7, "reference": "x"})])
  examples = eval_tasks.load_prompts("jsonl", "/nonexistent", tiny_vocab_path, 10, 64,
                                     jsonl_path=path)
  _check(examples)
  assert [ex["prompt_text"] for ex in examples] == ["To be, or not to be:", " Hello\nworld"]
  assert [ex["id"] for ex in examples] == ["prompts.jsonl:1", "7"]
  assert [ex["reference"] for ex in examples] == ["", "x"]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"text": "no prompt"}), "'prompt'"),
    (json.dumps({"prompt": 3}), "'prompt'"),
    (json.dumps({"prompt": "  "}), "empty"),
    (json.dumps(["a list"]), "JSON object"),
])
def test_jsonl_bad_lines(tiny_vocab_path, tmp_path, line, message):
  path = _write(tmp_path, [json.dumps({"prompt": "fine"}), line])
  with pytest.raises(ValueError, match=message) as e:
    eval_tasks.register_eval_task("jsonl", "", tiny_vocab_path, jsonl_path=path)
  assert f"{path}:2" in str(e.value)


def test_jsonl_missing_or_empty_file(tiny_vocab_path, tmp_path):
  missing = str(tmp_path / "missing.jsonl")
  with pytest.raises(ValueError, match="missing.jsonl"):
    eval_tasks.register_eval_task("jsonl", "", tiny_vocab_path, jsonl_path=missing)
  with pytest.raises(ValueError, match="no prompts"):
    eval_tasks.register_eval_task("jsonl", "", tiny_vocab_path, jsonl_path=_write(tmp_path, [""]))
  with pytest.raises(ValueError, match="jsonl_path"):
    eval_tasks.register_eval_task("jsonl", "", tiny_vocab_path)


def test_unknown_task_and_missing_data(tiny_vocab_path, tmp_path):
  with pytest.raises(ValueError, match="squad, xsum"):
    eval_tasks.register_eval_task("nope", DATA_DIR, tiny_vocab_path)
  with pytest.raises(ValueError, match=os.path.join(str(tmp_path), "gsm8k", "test.jsonl")):
    eval_tasks.register_eval_task("gsm8k", str(tmp_path), tiny_vocab_path)
  with pytest.raises(ValueError, match="max_prompt_tokens"):
    eval_tasks.load_prompts("gsm8k", DATA_DIR, tiny_vocab_path, 1, 0)
