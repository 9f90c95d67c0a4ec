"""Shared pytest fixtures."""
import pytest


@pytest.fixture(scope="session")
def tiny_vocab_path(tmp_path_factory) -> str:
  """The 512-piece tiny_shakespeare SentencePiece model (configs/tiny.py), trained once (~5 s)."""
  from bpdjax.data import vocab  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.vocab_dir = str(tmp_path_factory.mktemp("vocab_cache"))
  return vocab.ensure_vocabulary(config, str(tmp_path_factory.mktemp("tiny_workdir")))


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: subprocess runs of train.py (tens of seconds each); part of the default "
      "suite, deselect with -m 'not slow' for a quick pass")


@pytest.fixture(scope="session")
def trained_tiny_workdir(tmp_path_factory, tiny_vocab_path) -> str:
  """A configs/tiny.py workdir trained for 30 steps (~15 s), shared by decoding tests."""
  from bpdjax import trainer  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.num_train_steps = 30
  config.data.vocab_path = tiny_vocab_path
  workdir = str(tmp_path_factory.mktemp("trained_tiny"))
  trainer.train_and_evaluate(config, workdir)
  return workdir
