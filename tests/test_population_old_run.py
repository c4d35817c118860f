"""A run directory written by an earlier popsed (format 1, before the population package was split into
config / forward / objective / trainer / rundir / execute) still loads, resumes and completes with the
numbers that earlier code gave (tests/data/make_old_run_v1.py made both the run and the expected numbers).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.population import Run, fit
from engine.population.run import read_history
from engine.population.toy import make_toy_catalog

DATA = Path(__file__).parent / "data"
TOY = "engine.population.toy:ToyForwardModel"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def old_run(tmp_path):
    out = tmp_path / "old_run_v1"
    shutil.copytree(DATA / "old_run_v1", out)
    return out


def test_old_run_loads(old_run):
    run = Run(old_run)
    cfg = run.config
    assert cfg["format_version"] == 1 and cfg["members"] == 2 and cfg["steps"] == 12
    assert not run.complete
    steps = [(e["member"], e["step"]) for e in run.history() if e["event"] == "step"]
    assert steps[0] == (0, 0) and all(m == 0 for m, _ in steps)


def test_old_run_resumes_to_the_numbers_of_the_code_that_wrote_it(old_run):
    expected = json.loads((DATA / "old_run_v1_completion.json").read_text())
    cat = make_toy_catalog(400, seed=11)[0]
    run = fit(cat, old_run, resume=True, forward=TOY)
    assert run.complete
    hist = read_history(old_run / "history.jsonl")
    assert hist[-1]["event"] == "done"
    got = {f"{e['member']}:{e['step']}": [e["train_loss"], e["val_loss"]]
           for e in hist if e["event"] == "step"}
    assert sorted(got) == sorted(expected["steps"])
    for key, (tl, vl) in expected["steps"].items():
        assert got[key][0] == pytest.approx(tl, rel=1e-5, abs=1e-7), key
        assert (got[key][1] is None) == (vl is None), key
        if vl is not None:
            assert got[key][1] == pytest.approx(vl, rel=1e-5, abs=1e-7), key
    summary = run.summary_json()
    # the members the code that wrote the run pooled (it called them "converged"; today's name is "kept")
    assert summary["kept"] == expected["converged"]
    # 12 steps: none converged by today's definition, and each says why
    assert summary["converged"] == [] and all("noise floor" in m["note"] for m in summary["members"])
    assert summary["noise_floor"] == pytest.approx(expected["noise_floor"], rel=1e-6)
    for name, pct in expected["percentiles"].items():
        for q, v in pct.items():
            assert summary["percentiles"][name][q] == pytest.approx(v, rel=1e-5, abs=1e-6), (name, q)
    pop = run.population()
    assert pop.num_rows == expected["population_rows"]
    for name, mean in expected["population_means"].items():
        col = np.asarray(pop.column(name).to_numpy(zero_copy_only=False), dtype=float)
        assert math.isclose(float(np.nanmean(col)), mean, rel_tol=1e-5, abs_tol=1e-6), name
    assert run.summary()["members"]


def test_old_run_renders_in_the_dashboard_before_and_after_resuming(old_run):
    """The dashboard opens the old run as it was written (interrupted) and once resumed to completion."""
    from bokeh.document import Document

    from popsed_viz.app import Dashboard

    written = sum(1 for e in Run(old_run).history() if e["event"] == "step")
    d = Dashboard(old_run, runs_dir=old_run.parent / "runs")
    d.panel().server_doc(Document())
    assert d.monitor.n_steps == written > 0 and d.monitor.phase != "done"
    assert "stopped before finishing" in d.status_text
    fit(make_toy_catalog(400, seed=11)[0], old_run, resume=True, forward=TOY)
    d = Dashboard(old_run, runs_dir=old_run.parent / "runs")
    doc = Document()
    d.panel().server_doc(doc)
    assert doc.roots
    assert d.monitor.n_steps == 24 and d.monitor.phase == "done"
    assert "not converged" in d.monitor.members_text
    df, caption = d.photometry._predicted(d.photometry.member, d.photometry.source)
    assert len(df) > 0 and "final population" in caption
