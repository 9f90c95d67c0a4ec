"""The import layers of DESIGN.md: lower floors never import higher ones, no cycles, no
function-local imports of bpdjax modules, and loading a model stays light."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "bpdjax")
# Floor of each module, by longest matching prefix (floor 4: the entry scripts, outside, and the
# configs they read, which may import any floor: bpdjax/configs/decode.py is eval/schema.py's).
FLOORS = {
    "bpdjax": 1, "bpdjax.model": 1, "bpdjax.cache": 1, "bpdjax.partitioning": 1,
    "bpdjax.checkpoints": 1, "bpdjax.workdir": 1, "bpdjax.fileio": 1, "bpdjax.params": 1,
    "bpdjax.configuration": 1, "bpdjax.losses": 1, "bpdjax.data": 1,
    "bpdjax.decoding": 2, "bpdjax.ngram": 2, "bpdjax.importers": 2,
    "bpdjax.eval": 3, "bpdjax.train": 3, "bpdjax.api": 3, "bpdjax.distill": 3,
    "bpdjax.text": 3, "bpdjax.configs": 4, "bpdjax.bench": 4,
}


def _modules():
  mods = {}
  for directory, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(directory, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        mods[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
  return mods


def floor(module: str) -> int:
  best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
  return FLOORS[best]


def _imports(mods):
  """{module: {(imported bpdjax module, line, function-local)}}."""
  out = {}
  for name, path in mods.items():
    tree = ast.parse(open(path).read())
    local_nodes = {id(n) for fn in ast.walk(tree)
                   if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(fn)}
    found = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        targets = [f"{node.module}.{a.name}" for a in node.names]
      else:
        continue
      for target in targets:
        while target and target not in mods:
          target = target.rpartition(".")[0]
        if target and target != name:
          found.add((target, node.lineno, id(node) in local_nodes))
    out[name] = found
  return out


def test_floors_point_down_and_no_cycles():
  mods = _modules()
  edges = _imports(mods)
  upward = [f"{m}:{line} imports {t} (floor {floor(m)} -> {floor(t)})"
            for m, found in edges.items() for t, line, _ in found if floor(t) > floor(m)]
  assert not upward, "\n".join(upward)
  graph = {m: {t for t, _, _ in found} for m, found in edges.items()}
  visiting, done, cycles = set(), set(), []

  def visit(m, stack):
    visiting.add(m)
    for t in graph[m]:
      if t in visiting:
        cycles.append(stack[stack.index(t):] + [t])
      elif t not in done:
        visit(t, stack + [t])
    visiting.discard(m)
    done.add(m)

  for m in graph:
    if m not in done:
      visit(m, [m])
  assert not cycles, cycles
  local = [f"{m}:{line} imports {t} inside a function"
           for m, found in edges.items() for t, line, is_local in found if is_local]
  assert not local, "\n".join(local)


def test_floor_table_covers_every_module():
  for name in _modules():
    assert floor(name) in (1, 2, 3, 4), name


@pytest.mark.slow
def test_load_imports_neither_tensorflow_nor_the_trainer(trained_tiny_workdir):
  code = ("import sys, bpdjax\n"
          f"m = bpdjax.load({trained_tiny_workdir!r})\n"
          "assert m.vocab.decode(m.vocab.encode('First Citizen')) == 'First Citizen'\n"
          "heavy = [k for k in ('tensorflow', 'optax', 'clu', 'seqio', 'bpdjax.train',"
          " 'bpdjax.train.loop') if k in sys.modules]\n"
          "print('HEAVY', heavy)\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "HEAVY []" in proc.stdout, proc.stdout
