"""python -m bpdjax.ngram.estimate: a workdir's n-gram LM over its own training corpus."""
import json
import os
import subprocess
import sys

import pytest

from bpdjax import workdir as workdir_lib
from bpdjax.data import eval_sets
from bpdjax.data import tasks
from bpdjax.data import vocabulary as vocabulary_lib
from bpdjax.decoding import resources
from bpdjax.ngram import arpa
from bpdjax.ngram import estimate
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_estimate_workdir_holds_out_eval_documents(trained_tiny_workdir, lmplz, tmp_path):
  out, corpus = str(tmp_path / "ngram2.arpa"), str(tmp_path / "corpus.txt")
  lines = []
  stats = estimate.main([f"--workdir={trained_tiny_workdir}", "--order=2", f"--output={out}",
                         f"--corpus={corpus}", f"--lmplz={lmplz}",
                         f"--memory={helpers.LMPLZ_MEMORY}"])
  config = workdir_lib.load_config(trained_tiny_workdir)
  vocabulary = vocabulary_lib.load_vocabulary(os.path.join(trained_tiny_workdir, "vocab.model"))
  chunks = tasks.shakespeare_chunks(tasks.corpus_path(config), config.data.eval_fraction)
  assert chunks["validation"], "the tiny config holds out documents"
  encode = lambda text: " ".join(map(str, vocabulary.encode(text)))  # noqa: E731
  with open(corpus) as f:
    lines = f.read().splitlines()
  # Exactly the train split, one tokenized document per line, in corpus order.
  assert lines == [encode(c) for c in chunks["train"]]
  assert not {encode(c) for c in chunks["validation"]} & set(lines)
  assert stats["documents"] == len(chunks["train"])
  assert stats["tokens"] == sum(len(x.split()) for x in lines)
  model = arpa.parse_arpa(out, config.model.vocab_size)  # ids of the model's vocabulary
  assert model.order == 2 and model.num_ngrams() == stats["ngrams"]
  assert len(model.words) == stats["types"]
  assert stats["arpa_bytes"] == os.path.getsize(out) and stats["corpus"] == corpus
  # Limits: documents, and tokens (the last document cut to fit).
  few = estimate.estimate_workdir(trained_tiny_workdir, 2, str(tmp_path / "few.arpa"),
                                  max_documents=5, lmplz=lmplz,
                                  memory=helpers.LMPLZ_MEMORY, log=lines.append)
  assert few["documents"] == 5 and few["corpus"] is None
  assert not [p for p in os.listdir(tmp_path) if p.startswith("ngram_corpus_")]
  capped = estimate.estimate_workdir(trained_tiny_workdir, 3, str(tmp_path / "cap.arpa"),
                                     max_tokens=1000, prune=[0, 0, 1], lmplz=lmplz,
                                     memory=helpers.LMPLZ_MEMORY,
                                     log=lines.append)
  assert capped["tokens"] == 1000 and set(capped["ngrams"]) == {1, 2, 3}


def test_arpa_vocabulary_is_recorded_and_checked(trained_tiny_workdir, lmplz, tmp_path):
  """The ARPA's token ids belong to the workdir's vocabulary; loading it for a model with another
  vocabulary (same size, other pieces) fails and names both."""
  out = str(tmp_path / "ngram2.arpa")
  estimate.estimate_workdir(trained_tiny_workdir, 2, out, max_documents=20, lmplz=lmplz,
                            memory=helpers.LMPLZ_MEMORY,
                            log=lambda _: None)
  own = workdir_lib.vocab_digest(trained_tiny_workdir)
  with open(workdir_lib.arpa_vocab_record_path(out)) as f:
    record = json.load(f)
  assert record == {"vocab_path": os.path.join(trained_tiny_workdir, "vocab.model"),
                    "vocab_sha256": own}
  vocab_size = workdir_lib.load_config(trained_tiny_workdir).model.vocab_size
  assert resources.load_ngram_lm(out, vocab_size, trained_tiny_workdir).order == 2
  other = tmp_path / "other"
  other.mkdir()
  (other / "vocab.model").write_bytes(b"another sentencepiece model")
  with pytest.raises(ValueError, match=r"ngram2.arpa was built with another vocabulary: .*"
                     r"ngram2.arpa.vocab.json names '.*vocab.model'"):
    resources.load_ngram_lm(out, vocab_size, str(other))
  os.remove(workdir_lib.arpa_vocab_record_path(out))  # Made elsewhere: its ids are checked.
  assert resources.load_ngram_lm(out, vocab_size, str(other)).order == 2


def test_estimate_command_line(trained_tiny_workdir, lmplz, tmp_path):
  out = tmp_path / "ngram2.arpa"
  proc = subprocess.run(
      [sys.executable, "-m", "bpdjax.ngram.estimate", f"--workdir={trained_tiny_workdir}",
       "--order=2", f"--output={out}", "--max_documents=20", f"--lmplz={lmplz}",
       f"--memory={helpers.LMPLZ_MEMORY}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "tokenized 20 training documents" in proc.stdout
  assert "n-grams 1:" in proc.stdout and f"wrote {out}" in proc.stdout and "MiB" in proc.stdout
  assert out.exists()


@pytest.mark.parametrize("flags,message", [
    (["--order=1"], "order must be >= 2"),
    (["--order=4", "--prune=0 1 0"], "non-decreasing"),
    (["--order=2", "--prune=0 0 1"], "at most 2"),
    (["--order=2", "--prune=a"], "expected integers"),
    (["--order=2", "--max_tokens=0"], "max_tokens must be >= 1"),
])
def test_estimate_bad_flags(trained_tiny_workdir, lmplz, tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit) as e:
    estimate.main([f"--workdir={trained_tiny_workdir}", f"--output={tmp_path}/x.arpa",
                   f"--lmplz={lmplz}", f"--memory={helpers.LMPLZ_MEMORY}", *flags])
  assert e.value.code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "x.arpa").exists()


def test_estimate_missing_workdir(tmp_path, capsys):
  with pytest.raises(SystemExit):
    estimate.main([f"--workdir={tmp_path}/none", "--order=2"])
  assert "config.json" in capsys.readouterr().err


def test_estimate_on_fine_tuning_targets(trained_tiny_workdir, lmplz, tmp_path):
  """An sft workdir's n-gram LM is estimated on its tasks' fine-tuning targets only (the paper's
  appendix: n-gram LMs on each task's fine-tuning data), never on an evaluation reference."""
  config = workdir_lib.load_config(trained_tiny_workdir)
  config.data.update(task="sft", sft_tasks="samsum", sft_prompt_tokens=48)
  workdir = str(tmp_path / "ft")
  os.makedirs(workdir)
  workdir_lib.save_config(workdir, config)
  with open(workdir_lib.vocab_path(trained_tiny_workdir), "rb") as src, \
       open(os.path.join(workdir, "vocab.model"), "wb") as dst:
    dst.write(src.read())
  corpus = str(tmp_path / "corpus.txt")
  stats = estimate.estimate_workdir(workdir, 2, str(tmp_path / "ngram2.arpa"),
                                    corpus_path=corpus, lmplz=lmplz,
                                    memory=helpers.LMPLZ_MEMORY, log=lambda _: None)
  vocabulary = vocabulary_lib.load_vocabulary(workdir_lib.vocab_path(workdir))
  encode = lambda text: " ".join(map(str, vocabulary.encode(text.strip())))  # noqa: E731
  finetune = eval_sets.read_finetune_records("samsum", config.data_dir)
  evaluation = eval_sets.read_records("samsum", config.data_dir)
  with open(corpus) as f:
    lines = f.read().splitlines()
  assert lines == [encode(r["reference"]) for r in finetune]
  assert stats["documents"] == len(finetune) > 0
  assert not {encode(r["reference"]) for r in evaluation} & set(lines)
