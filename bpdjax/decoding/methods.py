"""Every decoding method, by name: the registry with all method families loaded.

  from bpdjax.decoding import methods
  built = methods.build("bpd", model.config)                 # -> registry.Built
  generator.generate(prompts, built, max_new_tokens=64)

Adding a method = one module under decoding/drafters/ (or decoding/policies/) that registers it
(this module imports every module there, in name order), one test file and one docs line.
"""
from __future__ import annotations

import importlib
import pkgutil

from bpdjax.decoding import drafters
from bpdjax.decoding import policies
from bpdjax.decoding import registry

for _package in (drafters, policies):
  for _module in sorted(m.name for m in pkgutil.iter_modules(_package.__path__)):
    importlib.import_module(f"{_package.__name__}.{_module}")

Built = registry.Built
Method = registry.Method
build = registry.build
get = registry.get
knobs = registry.knobs
make_options = registry.make_options
names = registry.names


def reference() -> str:
  """The method every other's greedy output must equal (plain decoding)."""
  return registry.with_role(registry.REFERENCE)


def vanilla() -> str:
  """The draft that refinements are measured against (the heads' argmax chain)."""
  return registry.with_role(registry.VANILLA)


def help_text() -> str:
  """One line per method: its name and summary (decode.py --help)."""
  return "\n".join(f"  {m}: {get(m).summary}" for m in names())
