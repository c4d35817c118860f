"""popsed_viz.fit_in_background: the fit runs in a thread and its monitor streams while it runs."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO / "sample_data" / "mock_sdss" / "catalog.ecsv"

pytestmark = pytest.mark.skipif(not CATALOG.is_file()
                                or importlib.util.find_spec("engine.population") is None,
                                reason="sample catalog / engine.population missing")


@pytest.fixture()
def small_catalog(tmp_path):
    from astropy.table import Table

    path = tmp_path / "catalog.ecsv"
    Table.read(CATALOG, format="ascii.ecsv")[:1500].write(path)
    return path


def test_fit_in_background_streams_monitor_updates(tmp_path, small_catalog):
    from popsed_viz import fit_in_background

    seen = []  # (steps the monitor holds, whether the fit had finished) at every monitor update
    fit = fit_in_background(small_catalog, tmp_path / "run", members=2, steps=5, batch=128, preview_every=2,
                            population_samples=500)
    fit.monitor.param.watch(lambda e: seen.append((e.new, fit.finished, fit.running)), "n_steps")
    polled = []
    while fit.running:  # the caller's thread is free while the fit runs, and sees the monitor grow
        polled.append(fit.monitor.n_steps)
        time.sleep(0.01)
    fit.wait(60)
    assert fit.error is None and fit.finished and not fit.stopped
    assert fit.monitor.n_steps == 10
    during = sorted({n for n, finished, running in seen if not finished and running and n > 0})
    assert len(during) >= 3, seen  # step by step, before the fit ended
    assert any(0 < n < 10 for n in polled), polled[-20:]
    assert (tmp_path / "run" / "population.parquet").is_file()


def test_fit_in_background_reports_a_failed_fit(tmp_path):
    from popsed_viz import fit_in_background

    fit = fit_in_background(tmp_path / "no_such_catalog.ecsv", tmp_path / "run", members=1, steps=2)
    with pytest.raises(Exception, match="no_such_catalog"):
        fit.wait(120)
    assert fit.finished and not fit.running
