"""Shared pytest fixtures; and the package under test: an installed bpdjax (not editable, as
.ci/run installs it) rather than the checkout that `python -m pytest` puts on sys.path."""
import filecmp
import gc
import importlib
import importlib.metadata
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_installed_package() -> None:
  """Imports bpdjax and configs from the environment's installed copy when there is one (its
  own files in site-packages, not an editable link to this checkout), after checking that it
  holds exactly the checkout's sources: tests of a stale install would test other code."""
  elsewhere = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != ROOT]
  dist = next(iter(importlib.metadata.distributions(name="bpdjax", path=elsewhere)), None)
  if dist is None:
    return                                          # Testing the checkout itself.
  url = json.loads(dist.read_text("direct_url.json") or "{}")
  if url.get("dir_info", {}).get("editable"):
    return
  site = str(dist.locate_file(""))
  differs = []
  for package in ("bpdjax",):
    for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      for name in files:
        if name.endswith(".pyc"):
          continue
        source = os.path.join(folder, name)
        copy = os.path.join(site, os.path.relpath(source, ROOT))
        if not (os.path.exists(copy) and filecmp.cmp(source, copy, shallow=False)):
          differs.append(os.path.relpath(source, ROOT))
  if differs:
    pytest.exit(f"The installed bpdjax ({site}) is not this checkout's: {differs[:5]} differ "
                f"({len(differs)} files). Reinstall it (pip install --no-deps .), install it "
                "editable (pip install --no-deps -e .) or uninstall it.", returncode=2)
  path = sys.path[:]
  sys.path[:] = elsewhere
  try:
    for package in ("bpdjax",):
      module = importlib.import_module(package)
      assert module.__file__.startswith(site), (package, module.__file__)
  finally:
    sys.path[:] = path


_import_installed_package()


def _compile_quickly() -> None:
  """Asks XLA's CPU backend to compile quickly, through the environment so that the train.py /
  decode.py / benchmark subprocesses the tests start inherit it: the suite is mostly compiling
  tiny models' programs, which run for microseconds. The lowest LLVM optimization level
  (test_medusa.py: 50 s at the default level, 33 s at 0) and XLA's loop emitters in place of
  its newer fusion emitters (three decode programs of a small model: 4.2-4.9 s of compiling
  -> 2.8-3.0 s, the same tokens, the same run time). Behaviour is what the tests assert, and
  every program of a comparison is compiled alike. A run that sets either flag keeps it."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "--xla_backend_optimization_level" not in flags:
    flags = f"{flags} --xla_backend_optimization_level=0"
  if "--xla_cpu_use_fusion_emitters" not in flags:
    flags = f"{flags} --xla_cpu_use_fusion_emitters=false"
  os.environ["XLA_FLAGS"] = flags.strip()


_compile_quickly()

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from tests import helpers

# The tests compare two computations of the same float32 math (cached vs full forward, tree vs
# chain). GPUs default to TF32 matmuls, which moved those logits by up to 4e-4 on an H200; ask
# for full float32 (no effect on CPU).
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops every compiled program after each test module. XLA's CPU backend maps memory for
  each executable it loads; the whole suite in one process grew past Linux's default limit of
  65530 mappings (vm.max_map_count) and LLVM then segfaulted inside a compile. A module's
  tests still share their programs."""
  yield
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def tiny_vocab_path(tmp_path_factory) -> str:
  """The 512-piece tiny_shakespeare SentencePiece model (configs/tiny.py), trained once (~5 s)."""
  from bpdjax.data import vocab  # pylint: disable=g-import-not-at-top
  from bpdjax.configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.vocab_dir = str(tmp_path_factory.mktemp("vocab_cache"))
  return vocab.ensure_vocabulary(config, str(tmp_path_factory.mktemp("tiny_workdir")))


def pytest_report_header(config):
  del config
  import bpdjax  # pylint: disable=g-import-not-at-top
  return f"bpdjax under test: {os.path.dirname(bpdjax.__file__)}"


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: subprocess runs of train.py (tens of seconds each); part of the default "
      "suite, deselect with -m 'not slow' for a quick pass")


@pytest.fixture(scope="session")
def trained_tiny_workdir(tmp_path_factory, tiny_vocab_path) -> str:
  """A configs/tiny.py workdir trained for 30 steps (~15 s), shared by decoding tests."""
  from bpdjax.train import loop  # pylint: disable=g-import-not-at-top
  from bpdjax.configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.num_train_steps = 30
  config.data.vocab_path = tiny_vocab_path
  workdir = str(tmp_path_factory.mktemp("trained_tiny"))
  loop.train_and_evaluate(config, workdir)
  return workdir


# KenLM n-gram LMs shared by test_ngram.py and test_wfst_drafter.py (sizes in helpers.py).
NGRAM_VOCAB = helpers.NGRAM_VOCAB
NGRAM_CORPUS_V = helpers.NGRAM_CORPUS_V


@pytest.fixture(scope="session")
def lmplz():
  import subprocess  # pylint: disable=g-import-not-at-top
  from bpdjax.ngram import estimate  # pylint: disable=g-import-not-at-top
  try:
    return estimate.find_lmplz(build=True)
  except (FileNotFoundError, subprocess.CalledProcessError) as e:
    pytest.skip(f"KenLM lmplz could not be built here (bpdjax/ngram/build_kenlm.sh): {e}")


@pytest.fixture(scope="session")
def lms(lmplz, tmp_path_factory):
  """{order: (arpa path, ArpaModel)} for orders 2, 3, 4 on a Markov-chain corpus."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from bpdjax.ngram import arpa, estimate  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  trans = rng.dirichlet(np.full(NGRAM_CORPUS_V, 0.3), size=NGRAM_CORPUS_V)
  seqs = []
  for _ in range(300):
    s = [int(rng.integers(NGRAM_CORPUS_V))]
    for _ in range(int(rng.integers(4, 19))):
      s.append(int(rng.choice(NGRAM_CORPUS_V, p=trans[s[-1]])))
    seqs.append(s)
  d = tmp_path_factory.mktemp("ngram")
  corpus = str(d / "corpus.txt")
  assert estimate.write_token_corpus(seqs, corpus) == 300
  out = {}
  for order in (2, 3, 4):
    path = estimate.estimate_arpa(corpus, order, str(d / f"o{order}.arpa"), lmplz=lmplz,
                                  memory=helpers.LMPLZ_MEMORY)
    out[order] = (path, arpa.parse_arpa(path, NGRAM_VOCAB))
  return out
