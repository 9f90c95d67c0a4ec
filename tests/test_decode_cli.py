"""decode.py end to end on a trained tiny workdir, and its bad inputs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bpdjax import api
from bpdjax.decoding import evaluate
from bpdjax.decoding import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT_FIELDS = ("block_efficiency", "accepted_tokens_per_call", "calls", "tokens", "wall_seconds",
                 "tokens_per_second", "speedup_vs_ar", "identical_to_ar", "repetition_rate",
                 "head_entropy", "h_max", "oracle_topk", "accepted_length_histogram",
                 "head_acceptance")


def _run_decode(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "decode.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_decode_py_writes_full_report(trained_tiny_workdir, tmp_path):
  out = tmp_path / "report"
  proc = _run_decode(f"--workdir={trained_tiny_workdir}", "--tasks=lambada,squad",
                     "--methods=ar,bpd", "--num_examples=3", "--max_new_tokens=12",
                     "--batch_size=2", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert report["complete"] is True
  for task in ("lambada", "squad"):
    for method in ("ar", "bpd"):
      entry = report["tasks"][task][method]
      for field in REPORT_FIELDS:
        assert field in entry, (task, method, field)
      assert entry["identical_to_ar"] is True
      assert len(entry["head_entropy"]) == 4
      assert set(entry["oracle_topk"]) == {"1", "2", "4", "8", "16"}
    assert report["tasks"][task]["ar"]["block_efficiency"] == 1.0
    bpd = report["tasks"][task]["bpd"]
    # Oracle with k = 1 replays BPD's own acceptance: equal to its measured block efficiency.
    assert bpd["oracle_topk"]["1"] == pytest.approx(bpd["block_efficiency"])
  assert (out / "report.md").exists() and (out / "lambada.png").exists()


@pytest.mark.parametrize("flags,message", [
    (["--tasks=nope"], "Unknown task 'nope'"),
    (["--methods=ar,magic"], "Unknown decoding method 'magic'"),
    (["--max_new_tokens=0"], "max_new_tokens must be >= 1"),
])
def test_bad_settings_fail_before_loading(flags, message, tmp_path):
  proc = _run_decode(f"--workdir={tmp_path}/missing", f"--output={tmp_path}/out", *flags)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not (tmp_path / "out" / "report.json").exists()


def test_workdir_without_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    api.load(str(tmp_path))
  proc = _run_decode(f"--workdir={tmp_path}", f"--output={tmp_path}/out")
  assert proc.returncode != 0 and str(tmp_path) in proc.stderr


def test_generator_rejects_bad_prompts(trained_tiny_workdir):
  loaded = api.load(trained_tiny_workdir)
  gen = generate.Generator(loaded.model, loaded.params, eos_id=loaded.vocab.eos_id)
  max_len = loaded.model.config.max_len
  with pytest.raises(ValueError, match="Prompt 1 is empty"):
    gen.generate([np.array([5, 6]), np.array([], np.int32)], "bpd", 4)
  with pytest.raises(ValueError, match=f"exceeds the model's max_len={max_len}"):
    gen.generate([np.arange(max_len) % 50 + 3], "bpd", 4)
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
    gen.generate([np.array([5, 6])], "ar", 0)
  with pytest.raises(ValueError, match="outside"):
    gen.generate([np.array([5, 10**6])], "ar", 3)


def test_settings_validation():
  with pytest.raises(ValueError, match="needs --jsonl"):
    evaluate.EvalSettings(tasks=("jsonl",), methods=("ar",), num_examples=1,
                          max_new_tokens=4).validate()
  with pytest.raises(ValueError, match="need --ngram_arpa"):
    evaluate.EvalSettings(tasks=("lambada",), methods=("pbest_ngram",), num_examples=1,
                          max_new_tokens=4).validate()
  with pytest.raises(ValueError, match="needs --rescorer_workdir"):
    evaluate.EvalSettings(tasks=("lambada",), methods=("local",), num_examples=1,
                          max_new_tokens=4).validate()
  with pytest.raises(ValueError, match="alpha"):
    evaluate.EvalSettings(tasks=("lambada",), methods=("ar",), num_examples=1,
                          max_new_tokens=4, alpha=1.5).validate()
  with pytest.raises(ValueError, match="num_examples"):
    evaluate.EvalSettings(tasks=("lambada",), methods=("ar",), num_examples=0,
                          max_new_tokens=4).validate()
