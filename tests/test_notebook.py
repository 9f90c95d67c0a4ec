"""notebooks/quickstart.ipynb runs top to bottom (nbclient, a fresh kernel) on a tiny model it
trains itself, and its outputs show identical texts for ar, bpd and medusa, their block
efficiencies, a plot and streamed blocks."""
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


def _outputs(cell):
  texts, images = [], 0
  for out in cell.get("outputs", []):
    if out.get("output_type") == "stream":
      texts.append(out["text"])
    elif "data" in out:
      images += "image/png" in out["data"]
      texts.append(out["data"].get("text/plain", ""))
  return "".join(texts), images


@pytest.mark.slow
def test_quickstart_notebook_runs(monkeypatch):
  for name in ("BPDJAX_HEADS_WORKDIR", "BPDJAX_BASE_MODEL", "BPDJAX_PROMPT"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  code = [c for c in nb.cells if c.cell_type == "code"]
  shown = [_outputs(c) for c in code]
  text = "\n".join(t for t, _ in shown)
  print(text)
  assert "identical texts: True" in text
  for method in ("ar", "bpd", "medusa"):
    assert f"{method:>6}: BE " in text
  assert "    ar: BE 1.000" in text
  assert sum(images for _, images in shown) == 1          # The block-efficiency plot.
  assert text.count("|") >= 2                             # Streamed blocks.
