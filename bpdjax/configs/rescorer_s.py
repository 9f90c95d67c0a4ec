"""Rescorer LM (h = 1): ~3M non-embedding parameters, wiki task, 4096-piece wiki vocabulary (CPU).

Shapes and training settings in configs/_rescorer.py.
"""
from bpdjax.configs import _rescorer


def get_config():
  return _rescorer.make_config("s")
