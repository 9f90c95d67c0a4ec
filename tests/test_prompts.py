"""bpdjax.data.prompts (TensorFlow-free, what decode.py reads) gives exactly what the seqio Tasks
of bpdjax.data.eval_tasks give, on every task: ids, tokens, texts, references, truncation."""
import json
import os

import numpy as np
import pytest

from bpdjax.data import eval_tasks
from bpdjax.data import prompts
from bpdjax.configs import default

DATA_DIR = default.get_config().data_dir


def _assert_same(a, b):
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    np.testing.assert_array_equal(x["prompt_tokens"], y["prompt_tokens"])
    assert x["prompt_tokens"].dtype == y["prompt_tokens"].dtype == np.int32
    for key in ("id", "prompt_text", "reference", "num_truncated"):
      assert x[key] == y[key], key


@pytest.mark.skipif(not os.path.isdir(DATA_DIR), reason=f"no shared data folder {DATA_DIR}")
@pytest.mark.parametrize("name", [n for n in eval_tasks.EVAL_TASKS if n != "jsonl"])
def test_builtin_tasks_match_the_seqio_tasks(tiny_vocab_path, name):
  for kw in (dict(num_examples=4, max_prompt_tokens=48, seed=None),
             dict(num_examples=3, max_prompt_tokens=10_000, seed=7)):
    _assert_same(prompts.load_prompts(name, DATA_DIR, tiny_vocab_path, **kw),
                 eval_tasks.load_prompts(name, DATA_DIR, tiny_vocab_path, **kw))


def test_jsonl_matches_the_seqio_task(tiny_vocab_path, tmp_path):
  path = tmp_path / "p.jsonl"
  rows = [{"prompt": "First Citizen:\nBefore we proceed", "id": 7},
          {"prompt": "  ünïcode — text  ", "reference": "r"}, {"prompt": "x " * 80}]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
  for n in (None, 2):
    _assert_same(prompts.load_prompts("jsonl", "", tiny_vocab_path, n, 20, jsonl_path=str(path)),
                 eval_tasks.load_prompts("jsonl", "", tiny_vocab_path, n, 20,
                                         jsonl_path=str(path)))


def test_non_utf8_prompts_file_names_file_and_line(tiny_vocab_path, tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
  with pytest.raises(ValueError, match=rf"{path}: line 2 is not valid UTF-8"):
    prompts.load_prompts("jsonl", "", tiny_vocab_path, None, 20, jsonl_path=str(path))
