"""The served dashboard in a real headless Chromium (Debian ``chromium`` + the ``playwright`` package).

The tests start ``panel serve app/`` themselves (through the launcher, which binds 127.0.0.1) and drive
it like a user: the app loads with its plots drawn and no console error, moving the redshift range
changes the star-forming-main-sequence raster, two sessions do not interfere, a bad run directory gives
a message, and a short fit started from the app makes the loss curve grow.  Screenshots are saved in
``test-artifacts/``.  Skipped when /usr/bin/chromium is missing (``.ci/run`` installs it).
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import BROWSER_MARKS, wait_until

pytestmark = BROWSER_MARKS

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
SAMPLE_RUN = REPO / "sample_data" / "run_sdss"
SAMPLE_CATALOG = REPO / "sample_data" / "mock_sdss" / "catalog.ecsv"
SFMS = "Star-forming main sequence"
LOSS = "Loss per member"


def _engine_fit_available() -> bool:
    return importlib.util.find_spec("engine.population.api") is not None and SAMPLE_CATALOG.is_file()


@pytest.fixture(scope="module")
def app_run(tmp_path_factory):
    """The bundled sample run, else a tiny real run made by ``popsed fit``, else a synthetic one."""
    if (SAMPLE_RUN / "population.parquet").is_file():
        return SAMPLE_RUN
    out = tmp_path_factory.mktemp("runs") / "tiny"
    if _engine_fit_available():
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "fit",
                str(SAMPLE_CATALOG),
                "--out",
                str(out),
                "--steps",
                "4",
                "--members",
                "2",
                "--batch",
                "256",
                "--no-progress",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if res.returncode == 0 and (out / "population.parquet").is_file():
            return out
    from synthetic_run import write_synthetic_run

    return write_synthetic_run(out, n_population=20000, members=2)


@pytest.fixture(scope="module")
def server(app_run, tmp_path_factory):
    from browser import AppServer

    ARTIFACTS.mkdir(exist_ok=True)
    runs = tmp_path_factory.mktemp("app_runs")
    srv = AppServer(app_run, env={"POPSED_RUNS_DIR": str(runs)}, log_path=ARTIFACTS / "panel_serve.log")
    srv.start(timeout=120)
    srv.runs_dir = runs
    yield srv
    srv.stop()


@pytest.fixture()
def page(browser):
    from browser import JSErrorLog

    pg = browser.new_page(viewport={"width": 1500, "height": 1000})
    pg.js_errors = JSErrorLog(pg)
    yield pg
    pg.close()


def open_app(page, server):
    from browser import wait_for_plots

    page.goto(server.url)
    # loss, noise, learning rate (no Sinkhorn blur: sliced loss)
    wait_for_plots(page, 3, timeout=90, titles=[LOSS])


def show_tab(page, name, titles=None, absent=None, n=1):
    from browser import wait_for_plots

    page.locator(".bk-tab").filter(has_text=name).click()
    return wait_for_plots(page, n, timeout=60, titles=titles, absent=absent)


def drag_upper_z_handle(page, dx):
    handle = page.locator(".popsed-z .noUi-handle-upper").first
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=8)
    page.mouse.up()


def test_localhost_binding(server):
    """The launcher binds 127.0.0.1 only (panel serve alone would listen on every interface)."""
    from popsed_viz.serve import serve_command

    cmd = serve_command(None, port=5006)
    assert cmd[cmd.index("--address") + 1] == "127.0.0.1"
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, port = local.rsplit(":", 1)
            if int(port, 16) == server.port and state == "0A":  # LISTEN
                listening.append(addr)
    if not listening:
        pytest.skip("cannot read /proc/net/tcp")
    assert set(listening) <= {"0100007F", "00000000000000000000000001000000"}, listening


def test_app_loads_with_plots_drawn(page, server):
    from browser import text_of

    t0 = time.time()
    open_app(page, server)
    load = time.time() - t0
    page.screenshot(path=str(ARTIFACTS / "app_training.png"), full_page=True)
    assert page.locator("canvas").count() > 0 or page.evaluate(
        "() => [...Bokeh.index.all_views()].some(v => v.canvas_view !== undefined)")
    assert "complete" in text_of(page, ".popsed-status") or "population" in text_of(page, ".popsed-status")
    show_tab(page, "Photometry", absent=[LOSS], n=4)
    page.screenshot(path=str(ARTIFACTS / "app_photometry.png"), full_page=True)
    show_tab(page, "Population", titles=[SFMS, "Mass–metallicity", "Stellar-mass distribution",
                                         "Redshift distribution"], n=4)
    page.screenshot(path=str(ARTIFACTS / "app_population.png"), full_page=True)
    show_tab(page, "Corner", absent=[SFMS], n=3)
    page.screenshot(path=str(ARTIFACTS / "app_corner.png"), full_page=True)
    assert page.js_errors.errors == []
    print(f"first load to plots drawn: {load:.2f} s")


def test_redshift_range_changes_sfms_and_sessions_do_not_interfere(browser, page, server):
    from browser import JSErrorLog, plot_data_signature, wait_for_plots

    other = browser.new_page(viewport={"width": 1500, "height": 1000})
    other_errors = JSErrorLog(other)
    try:
        for pg in (page, other):
            open_app(pg, server)
            show_tab(pg, "Population", titles=[SFMS], n=4)
        before = plot_data_signature(page, SFMS)
        before_other = plot_data_signature(other, SFMS)
        assert before and before["images"] >= 1 and before["image_sum"] > 0
        assert before_other == before
        drag_upper_z_handle(page, -120)
        after = wait_until(lambda: (s := plot_data_signature(page, SFMS)) != before and s, timeout=30)
        assert after and after != before, "the SFMS raster did not change with the redshift range"
        assert after["image_sum"] < before["image_sum"]  # a narrower redshift range holds fewer samples
        wait_for_plots(page, 4, timeout=30, titles=[SFMS])
        page.screenshot(path=str(ARTIFACTS / "app_population_zcut.png"), full_page=True)
        time.sleep(1.5)  # the other session would have been updated by now if state were shared
        assert plot_data_signature(other, SFMS) == before_other
        assert page.js_errors.errors == [] and other_errors.errors == []
    finally:
        other.close()


@pytest.mark.parametrize("kind", ["missing", "corrupt", "partial"])
def test_bad_run_directory_shows_a_message(page, server, tmp_path, kind):
    from browser import text_of
    from synthetic_run import write_synthetic_run

    path = tmp_path / "run"
    expected = {"missing": "not found", "corrupt": "corrupt", "partial": "in progress"}[kind]
    if kind == "corrupt":
        write_synthetic_run(path, truth=False)
        (path / "config.json").write_text("{ broken")
        (path / "population.parquet").write_bytes(b"\x00" * 64)
    elif kind == "partial":
        write_synthetic_run(path, complete=False, lock=True, truth=False)
    open_app(page, server)
    page.locator(".popsed-run-input input").fill(str(path))
    page.locator(".popsed-open button").click()
    msg = wait_until(lambda: expected in text_of(page, ".popsed-status") and text_of(page, ".popsed-status"))
    assert msg and expected in msg
    for tab in ("Photometry", "Population", "Corner", "Training"):
        page.locator(".bk-tab").filter(has_text=tab).click()
        time.sleep(0.6)
    body = page.locator("body").inner_text()
    assert "Traceback" not in body
    page.screenshot(path=str(ARTIFACTS / f"app_bad_run_{kind}.png"), full_page=True)
    assert page.js_errors.errors == []


@pytest.mark.skipif(not _engine_fit_available(), reason="engine.population / sample catalog not available")
def test_start_fit_makes_loss_curve_grow_and_stop(page, server):
    from browser import plot_data_signature, text_of

    open_app(page, server)
    for css, value in ((".popsed-steps", "40"), (".popsed-members", "1"), (".popsed-batch", "256")):
        box = page.locator(f"{css} input")
        box.fill(value)
        box.press("Enter")
    time.sleep(0.5)
    page.locator(".popsed-start button").click()
    assert wait_until(lambda: "running" in text_of(page, ".popsed-job"), timeout=20), text_of(
        page, ".popsed-job"
    )
    # the app now shows the new run: wait for its first steps, then for the curve to grow
    assert wait_until(lambda: "sample-" in page.locator(".popsed-run-input input").input_value(), timeout=20)
    counts = []

    def grew():
        s = plot_data_signature(page, LOSS)
        n = s["points"] if s else 0
        if n and (not counts or n != counts[-1]):
            counts.append(n)
        # the curve of the previous run is replaced by the new run's, which then grows step by step
        return len(counts) >= 4 and counts[-3] < counts[-2] < counts[-1]

    assert wait_until(grew, timeout=150, every=0.5), f"loss curve point counts: {counts}"
    page.screenshot(path=str(ARTIFACTS / "app_live_fit.png"), full_page=True)
    page.locator(".popsed-stop button").click()
    msg = wait_until(lambda: "stopped" in (t := text_of(page, ".popsed-job")) and t, timeout=60)
    assert msg, text_of(page, ".popsed-job")
    assert page.js_errors.errors == []
    # the runs directory holds the run the app wrote (a checkpoint for --resume)
    runs = [p for p in server.runs_dir.iterdir() if p.is_dir() and p.name.startswith("sample-")]
    assert runs and (runs[0] / "history.jsonl").is_file()
    shutil.rmtree(runs[0], ignore_errors=True)
