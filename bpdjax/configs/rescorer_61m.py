"""Rescorer LM (h = 1) of 61M parameters (the paper's size), trained on C4.

Uses T5's 32000-piece C4 SentencePiece vocabulary, which must be given:
--config.data.vocab_path=PATH (the same model as configs/c4_1p5b.py's).
Shapes and training settings in configs/_rescorer.py.
"""
from bpdjax.configs import _rescorer


def get_config():
  return _rescorer.make_config("61m")
