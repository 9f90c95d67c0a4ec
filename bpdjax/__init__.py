"""bpdjax: blockwise parallel language models in JAX/Flax (Kim et al. 2024; Stern et al. 2018).

  import bpdjax
  m = bpdjax.load("workdirs/tiny")            # a workdir written by train.py (or gs://...)
  print(bpdjax.generate(m, "First Citizen:", method="bpd", max_new_tokens=32))

`load` is bpdjax.api.load; `generate`, `stream` and `Text` are bpdjax.text's. They are bound on
first use (PEP 562 module __getattr__) rather than imported here, so that `import bpdjax.<module>` stays as light as that module: the package
itself pulls in neither JAX nor orbax.
"""
import importlib

_LAZY = {"load": ("bpdjax.api", "load"), "load_heads_onto": ("bpdjax.api", "load_heads_onto"),
         "generate": ("bpdjax.text", "generate"), "stream": ("bpdjax.text", "stream"),
         "Text": ("bpdjax.text", "Text")}


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'bpdjax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
