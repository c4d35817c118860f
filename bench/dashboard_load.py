"""Load time of the dashboard in headless Chromium: first byte to all plots drawn.

    python bench/dashboard_load.py                       # the bundled sample run
    python bench/dashboard_load.py --big-run RUN_1E6     # also a run with a 10^6-sample population
    python bench/dashboard_load.py --make-big 1000000    # build that run from the sample run (see below)

For each run the app is served by the launcher (``python -m popsed_viz``, 127.0.0.1) and opened
``--repeat`` times in fresh browser pages.  Timings come from the page itself (Navigation Timing):

- ``ttfb``: navigation start → first byte of the HTML (the server builds the session's page);
- ``first_byte_to_drawn``: first byte → every Bokeh plot of the landing (Training) tab has finished
  drawing (BokehJS ``has_finished()`` on every plot view) — the figure the target (≤ 5 s) is about;
- ``total``: navigation start → drawn;

then, in the same page, the wall time of switching to the Photometry, Population and Corner tabs
until their plots are drawn, and of moving the redshift range until the SFMS raster has changed.

``--make-big N`` writes a run whose ``population.parquet`` holds N samples by stacking the sample run's
population (``member`` relabelled per copy) next to its other files — a viewer load test only (the
samples repeat); a population really drawn from the flows needs ``popsed fit`` with
``population_samples=N``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the browser helpers live with the browser tests

from browser import AppServer, JSErrorLog, launch_browser, plot_data_signature, wait_for_plots  # noqa: E402

SFMS = "Star-forming main sequence"

DRAWN_JS = """
(n) => {
  if (!window.Bokeh || !Bokeh.index) return false;
  let count = 0;
  for (const v of Bokeh.index.all_views()) {
    const m = v.model;
    if (m && m.renderers !== undefined && m.toolbar !== undefined && v.canvas_view !== undefined) {
      const el = v.el;
      if (!(el && el.isConnected && el.getBoundingClientRect().width > 0)) continue;
      if (!v.has_finished()) return false;
      count += 1;
    }
  }
  if (count < n) return false;
  window.__popsed_drawn = performance.now();
  return true;
}
"""


def make_big_run(src: Path, dest: Path, n: int) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("population.parquet", "run.lock"):
            shutil.copy2(f, dest / f.name)
    pop = pq.read_table(src / "population.parquet")
    members = int(pa.compute.max(pop["member"]).as_py()) + 1
    copies = int(np.ceil(n / pop.num_rows))
    tables = []
    for c in range(copies):
        t = pop.set_column(pop.schema.get_field_index("member"), "member",
                           pa.array(pop["member"].to_numpy() + c * members))
        tables.append(t)
    big = pa.concat_tables(tables).slice(0, n)
    pq.write_table(big, dest / "population.parquet")
    cfg_path = dest / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        cfg["members"] = members * copies
        cfg_path.write_text(json.dumps(cfg))
    return dest


def measure(run: Path, repeat: int, label: str, shots: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    out = {"run": str(run), "label": label, "loads": [], "tabs": [], "zcut_s": [], "js_errors": []}
    t0 = time.perf_counter()
    with AppServer(run, env={"POPSED_RUN": str(run)}) as srv:
        out["server_ready_s"] = round(time.perf_counter() - t0, 2)
        with sync_playwright() as p, launch_browser(p) as browser:
            for i in range(repeat):
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                errs = JSErrorLog(page)
                page.goto(srv.url, wait_until="commit")
                page.wait_for_function(DRAWN_JS, arg=3, timeout=120_000, polling=50)
                nav = page.evaluate("() => { const e = performance.getEntriesByType('navigation')[0];"
                                    " return {start: e.startTime, ttfb: e.responseStart}; }")
                drawn = page.evaluate("() => window.__popsed_drawn")
                load = {
                    "ttfb": (nav["ttfb"] - nav["start"]) / 1e3,
                    "first_byte_to_drawn": (drawn - nav["ttfb"]) / 1e3,
                    "total": (drawn - nav["start"]) / 1e3,
                }
                out["loads"].append({k: round(v, 3) for k, v in load.items()})
                if shots and i == 0:
                    page.screenshot(path=str(shots / f"{label}_training.png"), full_page=True)
                tabs = {}
                for tab, kw in (("Photometry", {"n": 4, "absent": ["Loss per member"]}),
                                ("Population", {"n": 4, "titles": [SFMS]}),
                                ("Corner", {"n": 3, "absent": [SFMS]})):
                    t = time.perf_counter()
                    page.locator(".bk-tab").filter(has_text=tab).click()
                    wait_for_plots(page, kw.pop("n"), timeout=120, settle=0, **kw)
                    tabs[tab] = round(time.perf_counter() - t, 3)
                    if shots and i == 0:
                        page.screenshot(path=str(shots / f"{label}_{tab.lower()}.png"), full_page=True)
                out["tabs"].append(tabs)
                # redshift cut: drag the upper handle; time until the SFMS raster changed
                page.locator(".bk-tab").filter(has_text="Population").click()
                wait_for_plots(page, 4, timeout=120, settle=0, titles=[SFMS])
                before = plot_data_signature(page, SFMS)
                handle = page.locator(".popsed-z .noUi-handle-upper").first
                box = handle.bounding_box()
                x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                page.mouse.move(x, y)
                page.mouse.down()
                t = time.perf_counter()
                page.mouse.move(x - 100 - 10 * i, y, steps=4)
                page.mouse.up()
                while time.perf_counter() - t < 60:
                    if plot_data_signature(page, SFMS) not in (before, None):
                        break
                    time.sleep(0.02)
                out["zcut_s"].append(round(time.perf_counter() - t, 3))
                out["js_errors"] += errs.errors
                page.close()
    fb = [x["first_byte_to_drawn"] for x in out["loads"]]
    tot = [x["total"] for x in out["loads"]]
    out["median_first_byte_to_drawn_s"] = round(statistics.median(fb), 3)
    out["median_total_s"] = round(statistics.median(tot), 3)
    out["median_tabs_s"] = {k: round(statistics.median(t[k] for t in out["tabs"]), 3) for k in out["tabs"][0]}
    out["median_zcut_s"] = round(statistics.median(out["zcut_s"]), 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", default=str(REPO / "sample_data" / "run_sdss"), help="run to load (default: sample run)"
    )
    ap.add_argument("--big-run", default=None, help="a run with a 10^6-sample population")
    ap.add_argument("--make-big", type=int, default=None, metavar="N",
                    help="build a run with N stacked population samples from --run and measure it too")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--screenshots", default=None, help="folder for screenshots of each tab")
    args = ap.parse_args(argv)

    import numpy as np  # noqa: F401  (fail early if the stack is missing)
    import pyarrow.parquet as pq

    shots = Path(args.screenshots) if args.screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    runs = [(Path(args.run), "sample")]
    tmp = None
    if args.make_big:
        tmp = Path(tempfile.mkdtemp(prefix="popsed_big_"))
        runs.append(
            (make_big_run(Path(args.run), tmp / "big", args.make_big), f"population_{args.make_big:.0e}")
        )
    if args.big_run:
        runs.append((Path(args.big_run), "big"))
    results = []
    try:
        for run, label in runs:
            n = (
                pq.read_metadata(run / "population.parquet").num_rows
                if (run / "population.parquet").is_file()
                else 0
            )
            res = measure(run, args.repeat, label, shots)
            res["population_rows"] = n
            results.append(res)
            print(
                f"{label:>18s} ({n:>9,d} samples): first byte → plots drawn "
                f"{res['median_first_byte_to_drawn_s']:.2f} s"
                f" (navigation → drawn {res['median_total_s']:.2f} s; server ready in "
                f"{res['server_ready_s']:.1f} s);"
                f" tabs {res['median_tabs_s']}; z-cut → SFMS redrawn {res['median_zcut_s']:.2f} s;"
                f" JS errors {len(res['js_errors'])}"
            )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
