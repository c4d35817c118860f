"""How the served dashboard reads, in headless Chromium: axis labels where the data is, no empty panels,
legends off the data, histograms that rescale after a cut, and a failed fit's error shown whole.

Screenshots go to ``test-artifacts/look_*.png``.  Skipped when /usr/bin/chromium is missing.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from browser import BROWSER_MARKS, wait_until

pytestmark = BROWSER_MARKS

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
SAMPLE_RUN = REPO / "sample_data" / "run_sdss"
LOSS, LR = "Loss per member", "learning rate"
ZHIST, MHIST = "Redshift distribution", "Stellar-mass distribution"

#: JS: per plot title, the rendered tick labels of its y axis, its y range, where its legends sit and the
#: largest value it draws (column ``top`` of histograms, ``y`` of curves).
PLOT_LOOK_JS = """
(title) => {
  const views = [...Bokeh.index.all_views()];
  for (const v of views) {
    const m = v.model;
    if (!(m && m.renderers !== undefined && m.title && m.title.text === title)) continue;
    const rect = v.el ? v.el.getBoundingClientRect() : null;
    if (!rect || rect.width === 0) continue;
    let labels = [];
    for (const a of m.left) {
      const av = views.find(x => x.model === a);
      const boxes = av.compute_labels(av.tick_coords.major[1]);
      labels = labels.concat((boxes.items ?? []).map(b => b.text));
    }
    const legends = {center: m.center.filter(r => r.type === "Legend").length,
                     outside: [...m.right, ...m.left, ...m.above, ...m.below]
                                .filter(r => r.type === "Legend").length};
    let ymax = -Infinity;
    for (const r of m.renderers) {
      const d = r.data_source && r.data_source.data;
      if (!d) continue;
      for (const col of ["top", "y", "density"]) {
        if (d[col] !== undefined) for (const x of d[col]) if (isFinite(x)) ymax = Math.max(ymax, Number(x));
      }
    }
    return {labels: labels, y_start: m.y_range.start, y_end: m.y_range.end, legends: legends, ymax: ymax};
  }
  return null;
}
"""


def _as_number(label: str) -> float:
    return float(label.replace("−", "-"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from browser import AppServer

    if not (SAMPLE_RUN / "population.parquet").is_file():
        pytest.skip("the bundled sample run is missing")
    ARTIFACTS.mkdir(exist_ok=True)
    runs = tmp_path_factory.mktemp("look_runs")
    srv = AppServer(SAMPLE_RUN, env={"POPSED_RUNS_DIR": str(runs)},
                    log_path=ARTIFACTS / "panel_serve_look.log")
    srv.start(timeout=120)
    yield srv
    srv.stop()


@pytest.fixture()
def page(browser, server):
    from browser import JSErrorLog, wait_for_plots

    pg = browser.new_page(viewport={"width": 1500, "height": 1000})
    pg.js_errors = JSErrorLog(pg)
    pg.goto(server.url)
    wait_for_plots(pg, 3, timeout=90, titles=[LOSS])
    yield pg
    pg.close()


def look(page, title):
    return page.evaluate(PLOT_LOOK_JS, title)


def test_training_tab_labels_the_loss_below_one_and_hides_unused_panels(page):
    from browser import plots_state, text_of

    page.screenshot(path=str(ARTIFACTS / "look_training.png"), full_page=True)
    loss = look(page, LOSS)
    # (a log axis's 10^n labels are math text, not text)
    values = [_as_number(t) for t in loss["labels"] if t]
    assert sum(0 < v < 1 for v in values) >= 2, loss["labels"]  # where a converged loss lives (≈ 0.08 here)
    assert min(values) <= 0.1, loss["labels"]
    assert loss["legends"]["center"] == 0  # the legend is beside the curves, not on them
    lr = look(page, LR)
    assert 2 <= len(lr["labels"]) <= 6 and len(set(lr["labels"])) == len(lr["labels"]), lr["labels"]
    visible = {s["title"] for s in plots_state(page) if s["visible"]}
    # the sample run's loss is sliced, not Sinkhorn
    assert not any("blur" in t.lower() for t in visible), visible
    steps = text_of(page, ".popsed-steps-recorded")
    cfg = json.loads((SAMPLE_RUN / "config.json").read_text())
    assert "per member" in steps and f"{cfg['steps']} × {cfg['members']}" in steps, steps
    assert page.js_errors.errors == []


def test_histograms_rescale_after_a_redshift_cut_with_legends_outside(page):
    from browser import wait_for_plots

    page.locator(".bk-tab").filter(has_text="Population").click()
    wait_for_plots(page, 4, timeout=60, titles=[ZHIST, MHIST])
    before = look(page, ZHIST)
    handle = page.locator(".popsed-z .noUi-handle-upper").first
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 200, y, steps=8)  # keep z below ~0.2: the densities grow several-fold
    page.mouse.up()
    after = wait_until(lambda: (lk := look(page, ZHIST)) and lk["ymax"] > 1.2 * before["ymax"] and lk,
                       timeout=30)
    assert after, f"the redshift histogram did not change: {before} / {look(page, ZHIST)}"
    after = wait_until(lambda: (lk := look(page, ZHIST)) and lk["y_end"] >= lk["ymax"] and lk,
                       timeout=15) or after
    page.screenshot(path=str(ARTIFACTS / "look_population_zcut.png"), full_page=True)
    assert after["y_end"] >= after["ymax"] > before["y_end"], (before, after)  # rescaled: no bar clipped
    for title in (ZHIST, MHIST):
        lk = look(page, title)
        assert lk["legends"]["center"] == 0 and lk["legends"]["outside"] >= 1, (title, lk["legends"])
    assert page.js_errors.errors == []


@pytest.mark.skipif(importlib.util.find_spec("engine.population") is None, reason="engine.population missing")
def test_failed_fit_of_an_uploaded_catalog_shows_its_error_whole_in_the_main_pane(page, tmp_path):
    from browser import text_of

    columns = ["ra", "dec", "rmag", "gmag", "objid", "a_rather_long_column_name_for_the_photometric_redshift"]
    catalog = tmp_path / "my_survey.csv"
    catalog.write_text(",".join(columns) + "\n" + ",".join(["1"] * len(columns)) + "\n")
    page.locator(".popsed-upload input[type=file]").set_input_files(str(catalog))
    assert wait_until(lambda: "Uploaded" in text_of(page, ".popsed-job"), timeout=20), \
        text_of(page, ".popsed-job")
    page.locator(".popsed-start button").click()
    shown = wait_until(lambda: "failed" in (t := text_of(page, ".popsed-fit-error")) and t, timeout=120)
    assert shown, (text_of(page, ".popsed-fit-error"), text_of(page, ".popsed-job"))
    page.screenshot(path=str(ARTIFACTS / "look_fit_error.png"), full_page=True)
    assert "no band columns" in shown and "columns present: " + ", ".join(columns) in " ".join(shown.split())
    # in the main pane (right of the sidebar), wide, and nothing cut off
    geom = page.locator(".popsed-fit-error").first.evaluate(
        "e => { const r = e.getBoundingClientRect(); const pre = (e.shadowRoot || e).querySelector('pre')"
        " || e.querySelector('pre'); return {left: r.left, width: r.width,"
        " clipped: pre ? pre.scrollWidth > pre.clientWidth + 1 : null}; }")
    sidebar = page.locator("#sidebar").first.bounding_box() if page.locator("#sidebar").count() else None
    assert geom["width"] > 600 and (sidebar is None
                                    or geom["left"] >= sidebar["x"] + sidebar["width"] - 1), geom
    assert geom["clipped"] is False, geom
    assert "above the plots" in text_of(page, ".popsed-job")
