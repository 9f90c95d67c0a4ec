"""Task quality metrics (bpdjax/eval/quality.py) and decode.py's quality report."""
import json
import os

import pytest

from bpdjax import api
from bpdjax.data import eval_sets
from bpdjax.data import eval_tasks
from bpdjax.eval import quality
from bpdjax.eval import run as run_lib
from tests import helpers


def test_squad_official_normalisation_and_best_answer():
  assert quality.normalize_answer("The  Denver Broncos!") == "denver broncos"
  assert quality.squad_scores("the Denver Broncos.", ["Denver Broncos", "Broncos"]) == (1.0, 1.0)
  em, f1 = quality.squad_scores("Denver", ["Denver Broncos", "Carolina"])
  assert em == 0.0 and f1 == pytest.approx(2 / 3)   # precision 1, recall 1/2.
  assert quality.squad_scores("Panthers", ["Denver Broncos"]) == (0.0, 0.0)


def test_gsm8k_final_answer():
  reference = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18"
  assert quality.final_number(reference) == "18"
  assert quality.final_number("so 1,800 in all. #### 1,800\nQuestion: 7") == "1800"
  assert quality.final_number("It costs 5 and then 18.0") == "18"
  assert quality.final_number("no number") == ""
  assert quality.numbers("Ann has 1,800 apples, eats -2.5 and 3.") == ["1,800", "-2.5", "3"]
  records = [{"reference": reference}] * 3
  got = quality.score("gsm8k", records, ["#### 18", "the answer is 18", "#### 17"])
  assert got == {"accuracy": pytest.approx(2 / 3), "answer_format": pytest.approx(2 / 3),
                 "num_examples": 3}
  got = quality.score("gsm8k", records[:2], ["x = 4. ####", "#### -2.5 apples"])
  assert got["accuracy"] == 0 and got["answer_format"] == 0.5
  assert quality.score_examples("gsm8k", records, ["#### 18", "the answer is 18", "#### 17"]) == {
      "accuracy": [1.0, 1.0, 0.0], "answer_format": [1.0, 0.0, 1.0]}


def test_paired_comparison_of_two_models_on_the_same_examples():
  ids = [{"id": str(i)} for i in range(200)]
  before = [dict(e, accuracy=0.0) for e in ids]
  # 12 examples fixed, none broken: the paired test sees it; an unpaired look at two means
  # of 0.0 and 0.06 would need far more examples.
  after = [dict(e, accuracy=float(i < 12)) for i, e in enumerate(ids)]
  c = quality.paired_comparison(before, after, "accuracy")
  assert (c["examples"], c["better"], c["worse"]) == (200, 12, 0)
  assert c["mean_b"] == pytest.approx(0.06) and c["difference"] == pytest.approx(0.06)
  assert c["p_value"] < 0.001  # Exact McNemar: 2 * 0.5**12 = 0.0005.
  # Six fixed and six broken: no evidence either way.
  mixed = [dict(e, accuracy=float(i < 6)) for i, e in enumerate(ids)]
  broken = [dict(e, accuracy=float(6 <= i < 12)) for i, e in enumerate(ids)]
  assert quality.paired_comparison(broken, mixed, "accuracy")["p_value"] > 0.5
  assert quality.paired_comparison(before, before, "accuracy")["p_value"] == 1.0
  with pytest.raises(ValueError, match="the two runs scored different examples"):
    quality.paired_comparison(before, after[::-1], "accuracy")


def test_rouge_l_and_lambada():
  ref = [{"reference": "The cat sat on the mat."}]
  assert quality.score("xsum", ref, [" The cat sat on the mat.\nMore text"])["rougeL"] == 1.0
  half = quality.score("samsum", ref, ["the cat"])["rougeL"]
  assert 0 < half < 1
  words = [{"reference": "Dumbledore"}, {"reference": "wand"}]
  got = quality.score("lambada", words, [" dumbledore, said Harry", " stick and"])
  assert got["last_word_accuracy"] == 0.5


def test_tasks_without_references_are_errors():
  with pytest.raises(ValueError, match=r"quality: task 'cnn_dailymail' has no quality metric "
                                       r"\(our copy of it has no reference summaries\)"):
    quality.check_tasks(["squad", "cnn_dailymail"])
  settings = helpers.decode_settings(workdir="w", output="o", tasks="mt_bench", methods="ar",
                                     quality=True)
  with pytest.raises(ValueError, match=r"task 'mt_bench' has no quality metric"):
    settings.validate()


def test_decode_reports_quality_once_per_task(trained_tiny_workdir, tmp_path):
  settings = helpers.decode_settings(workdir=trained_tiny_workdir, output=str(tmp_path / "out"),
                                     tasks="squad,gsm8k,lambada", methods="ar,bpd",
                                     num_examples=3, max_new_tokens=8, record_topk=0,
                                     quality=True, max_prompt_tokens=24)
  result = run_lib.run(settings, log=lambda *_: None)
  # Examples are a seeded shuffle of the evaluation part (example_seed 0), not its first ones.
  data_dir = api.load(trained_tiny_workdir).config.data_dir
  first = [r["id"] for r in eval_sets.read_records("squad", data_dir)[:3]]
  shuffled = [e["id"] for e in eval_tasks.load_prompts(
      "squad", data_dir, os.path.join(trained_tiny_workdir, "vocab.model"), 3, 24, seed=0)]
  assert [e["id"] for e in result["samples"]["squad"]] == shuffled != first
  assert result["settings"]["max_prompt_tokens"] == 24
  for task, metric in (("squad", "f1"), ("gsm8k", "accuracy"), ("lambada", "last_word_accuracy")):
    q = result["quality"][task]
    assert q["num_examples"] == 3 and q["method"] == "ar" and q["identical_across_methods"]
    assert 0.0 <= q[metric] <= 1.0
    # Per example (for paired comparisons of two models): the same ids, rescored from the
    # recorded outputs, average to the reported mean.
    per_example = result["quality_examples"][task]
    refs = quality.references_by_id(task, data_dir)
    rescored = quality.score_examples(task, [refs[e["id"]] for e in per_example],
                                      [e["output"] for e in per_example])
    assert rescored[metric] == [e[metric] for e in per_example]
    assert abs(sum(rescored[metric]) / 3 - q[metric]) < 1e-12
  assert [e["id"] for e in result["quality_examples"]["squad"]] == shuffled
  with open(os.path.join(tmp_path, "out", "report.json")) as f:
    assert json.load(f)["quality"]["squad"]["num_examples"] == 3
  with open(os.path.join(tmp_path, "out", "report.md")) as f:
    assert "| squad | exact_match |" in f.read()
