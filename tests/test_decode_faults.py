"""decode.py under faults: checks that need no model fail before it loads, an interrupted or
failed run leaves no report that looks complete, the report states the examples decoded, and
files that are not UTF-8 are named with their line."""
import json
import os
import subprocess
import sys

import pytest

from bpdjax import api
from bpdjax import fileio
from bpdjax.eval import metrics
from bpdjax.eval import report as report_lib
from bpdjax.eval import run as run_lib
from bpdjax.eval import settings as settings_lib
from bpdjax.ngram import arpa
from bpdjax.configs import decode as decode_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["First Citizen:", "ROMEO:", "To be, or not"]


def _settings(workdir, output, jsonl, **overrides):
  config = decode_config.get_config()
  config.update(dict(workdir=workdir, output=str(output), tasks="jsonl", jsonl=str(jsonl),
                     methods="ar,bpd", num_examples=50, max_new_tokens=4, record_topk=0))
  options = overrides.pop("options", {})
  config.update(overrides)
  for (method, knob), value in options.items():
    config.options[method][knob] = value
  return settings_lib.DecodeSettings.from_config(config)


@pytest.fixture
def jsonl(tmp_path):
  path = tmp_path / "prompts.jsonl"
  path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  return path


def _old_report(output):
  """An older, complete-looking report set of tasks jsonl and lambada."""
  os.makedirs(output, exist_ok=True)
  for name in ("report.md", "jsonl.png", "lambada.png"):
    (output / name).write_bytes(b"old")
  (output / "report.json").write_text(json.dumps({"tasks": {"jsonl": {}, "lambada": {}}}))


def _left(output):
  return sorted(os.listdir(output)) if os.path.isdir(output) else []


@pytest.mark.parametrize("case,overrides,message", [
    ("output_is_a_file", {}, "exists and is not a directory"),
    ("p_beyond_the_lattice", dict(methods="ar,pbest_0gram",
                                  options={("pbest_0gram", "p"): 10**6}),
     r"p=1000000 exceeds the k\^\(h-1\)"),
    ("negative_temperature", dict(temperature=-1.0), "temperature must be >= 0"),
])
def test_late_checks_fail_before_the_model_loads(case, overrides, message, trained_tiny_workdir,
                                                 jsonl, tmp_path, monkeypatch):
  output = tmp_path / "out"
  if case == "output_is_a_file":
    output.write_text("a file")
  monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("the model was loaded"))
  with pytest.raises(ValueError, match=message):
    run_lib.run(_settings(trained_tiny_workdir, output, jsonl, **overrides))


def test_interrupted_decode_leaves_no_report(trained_tiny_workdir, jsonl, tmp_path, monkeypatch):
  output = tmp_path / "out"
  _old_report(output)

  def interrupt(*a, **k):
    raise KeyboardInterrupt
  monkeypatch.setattr(metrics, "speed_metrics", interrupt)
  with pytest.raises(KeyboardInterrupt):
    run_lib.run(_settings(trained_tiny_workdir, output, jsonl))
  assert _left(output) == []


def test_interrupted_report_writing_leaves_no_partial_set(tmp_path, monkeypatch):
  output = tmp_path / "out"
  _old_report(output)
  write = fileio.write_atomic

  def write_then_interrupt(path, data):
    if path.endswith(report_lib.REPORT_JSON):
      raise KeyboardInterrupt
    write(path, data)
  monkeypatch.setattr(fileio, "write_atomic", write_then_interrupt)
  report = {"settings": {"workdir": "w", "step": 1, "num_examples": 2, "max_new_tokens": 3,
                         "batch_size": 1, "temperature": 0.0, "device": "cpu"},
            "tasks": {"jsonl": {}}, "examples_decoded": {"jsonl": 2}}
  with pytest.raises(KeyboardInterrupt):
    report_lib.write(str(output), report)
  assert _left(output) == []


def test_report_states_the_examples_decoded(trained_tiny_workdir, jsonl, tmp_path):
  output = tmp_path / "out"
  result = run_lib.run(_settings(trained_tiny_workdir, output, jsonl, methods="ar"))
  assert result["examples_decoded"] == {"jsonl": len(PROMPTS)}
  assert json.loads((output / "report.json").read_text())["examples_decoded"] == {"jsonl": 3}
  assert "examples decoded: jsonl 3 (of 50 asked for)" in (output / "report.md").read_text()


def test_non_utf8_arpa_names_file_and_line(tmp_path):
  path = tmp_path / "lm.arpa"
  path.write_bytes(b"\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\t<s>\n-1.0\t\xff\xfe\n\\end\\\n")
  with pytest.raises(ValueError, match=rf"{path}: line 6 is not valid UTF-8"):
    arpa.parse_arpa(str(path), 16)


def test_decode_imports_no_tensorflow():
  code = ("import sys\nfrom bpdjax.eval import cli\n"
          "print('HEAVY', [k for k in ('tensorflow', 'seqio', 'tensorflow_datasets') "
          "if k in sys.modules])\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "HEAVY []" in proc.stdout, proc.stdout


def test_a_prompt_too_long_fails_before_the_model_loads(trained_tiny_workdir, tmp_path,
                                                        monkeypatch):
  """Every task's prompts are tokenized and checked in the plan stage: a jsonl prompt too long
  for max_len is refused, naming the task and the prompt, before the model loads or a cost
  table is measured (auto is listed)."""
  path = tmp_path / "long.jsonl"
  path.write_text(json.dumps({"prompt": "ROMEO:"}) + "\n"
                  + json.dumps({"prompt": "To be, or not to be " * 200}) + "\n")
  monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("the model was loaded"))
  with pytest.raises(ValueError, match=r"Task 'jsonl': Prompt 1 has \d+ tokens.*max_len"):
    run_lib.run(_settings(trained_tiny_workdir, tmp_path / "out", path,
                          methods="ar,bpd,auto"))
  assert not (tmp_path / "out" / "report.json").exists()
