"""notebooks/quickstart.ipynb executes headless (nbclient) with a tiny fit, so it never rots: no error, no
warning on stderr, and every plot's JavaScript/CSS inline (no CDN: the plots must draw without internet)."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("nbclient") is None, reason="nbclient missing"),
    pytest.mark.skipif(not (REPO / "sample_data" / "mock_sdss" / "catalog.ecsv").is_file(),
                       reason="sample catalog missing"),
]


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("POPSED_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("POPSED_NB_STEPS", "4")
    monkeypatch.setenv("POPSED_NB_MEMBERS", "2")
    monkeypatch.setenv("POPSED_NB_BATCH", "256")
    monkeypatch.setenv("POPSED_NB_ROWS", "2000")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors, errors
    text = "\n".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "stream"
    )
    assert "fit done" in text and "8 steps recorded" in text
    assert "converged members" in text
    run = tmp_path / "quickstart"
    assert (run / "population.parquet").is_file() and (run / "history.jsonl").is_file()
    # the panel views rendered as rich outputs (bokeh/panel mimebundles), not as text reprs
    rich = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type in ("display_data", "execute_result")
            and any("panel" in k or "bokeh" in k or k == "text/html" for k in o.get("data", {}))]
    assert len(rich) >= 5
    stderr = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, stderr
    outputs = json.dumps([o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                          for o in c.get("outputs", [])])
    # (no `in` assert: its diff of MBs of JS is slow)
    remote = [host for host in CDN_HOSTS if host in outputs]
    assert not remote, f"the notebook's outputs load resources from {remote}"
    assert len(outputs) > 1_000_000  # BokehJS and Panel's JS are inline


#: Where BokehJS / Panel fetch their JS and CSS from unless told to inline them.
CDN_HOSTS = ("cdn.bokeh.org", "cdn.holoviz.org")
