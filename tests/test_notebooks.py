"""The notebooks run top to bottom (quick mode: tiny models, seconds each).

Full mode (the saved outputs) is run by hand:
    LMGEN_NOTEBOOK_MODE=full jupyter execute --inplace notebooks/*.ipynb
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist_with_a_mode_parameter():
    assert [p.name for p in NOTEBOOKS] == ["01_quick_tour.ipynb", "02_url_detector.ipynb", "03_quote_detector.ipynb",
                                           "04_atlas_and_interventions.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert any("LMGEN_NOTEBOOK_MODE" in c.source for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("LMGEN_NOTEBOOK_MODE", "quick")  # the kernel inherits this environment
    monkeypatch.setenv("LMGEN_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("LMGEN_CORPORA", str(mirror))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("LMGEN_NOTEBOOK_CHECKPOINT", raising=False)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # the coloured-text views rendered as HTML, and the text inside is escaped
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any('class="lmgen-viz"' in h for h in html), path.name
    assert os.environ["LMGEN_NOTEBOOK_MODE"] == "quick"
