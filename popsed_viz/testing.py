"""Helpers to drive the served app in headless Chromium (tests and bench).

Uses the Debian ``chromium`` through the ``playwright`` package
(``executable_path="/usr/bin/chromium"``; never ``playwright install``).  A
bare ``chromium --screenshot`` of a Bokeh app is blank, so readiness is judged
from BokehJS itself: every plot view reports ``has_finished()``.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from popsed_viz.jobs import REPO_ROOT

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "free_port", "AppServer", "launch_browser", "plots_state",
           "wait_for_plots", "plot_data_signature", "JSErrorLog", "text_of", "write_synthetic_run"]

CHROMIUM = os.environ.get("POPSED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``panel serve app/`` on 127.0.0.1 in a child process (context manager)."""

    def __init__(self, run: str | os.PathLike | None = None, port: int | None = None, env: dict | None = None,
                 log_path: str | os.PathLike | None = None, extra_args: list[str] | None = None):
        self.port = port or free_port()
        self.run = run
        self.env = dict(os.environ, **(env or {}))
        if run is not None:  # preloaded by the server's warm-up (app/server_lifecycle.py)
            self.env.setdefault("POPSED_RUN", str(Path(run).resolve()))
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/app"

    def command(self) -> list[str]:
        """The launcher's command (``python -m popsed_viz``): default address, i.e. 127.0.0.1."""
        from popsed_viz.serve import serve_command

        return serve_command(self.run, port=self.port, extra=self.extra_args)

    def start(self, timeout: float = 90.0) -> "AppServer":
        out = subprocess.DEVNULL
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
            out = self._log
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                                     env=self.env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"panel serve exited with status {self.proc.returncode} (log: {self.log_path})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                # the port is open: check the server answers HTTP (static resource, no session)
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/static/js/bokeh.min.js", timeout=5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"panel serve did not start within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def launch_browser(playwright, **kw):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, **kw)
    try:
        yield browser
    finally:
        browser.close()


class JSErrorLog:
    """Collects console errors and uncaught page errors of a playwright page."""

    IGNORE = ("favicon.ico",)

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg):
        if msg.type == "error" and not any(s in msg.text for s in self.IGNORE):
            self.errors.append(f"console.error: {msg.text}")


#: JS: state of every Bokeh plot view on the page.
PLOTS_STATE_JS = """
() => {
  if (!window.Bokeh || !Bokeh.index) return null;
  const out = [];
  for (const v of Bokeh.index.all_views()) {
    const m = v.model;
    if (m && m.renderers !== undefined && m.toolbar !== undefined && v.canvas_view !== undefined) {
      const title = (m.title && m.title.text !== undefined) ? m.title.text : "";
      const el = v.el;
      const visible = !!(el && el.isConnected && el.getBoundingClientRect().width > 0);
      out.push({title: title, finished: v.has_finished(), visible: visible});
    }
  }
  return out;
}
"""

#: JS: a signature of the data drawn by the plot whose title is ``title``
#: (sum and size of every image, total number of points in column data).
PLOT_DATA_JS = """
(title) => {
  if (!window.Bokeh || !Bokeh.index) return null;
  for (const v of Bokeh.index.all_views()) {
    const m = v.model;
    if (!(m && m.renderers !== undefined && m.title && m.title.text === title)) continue;
    let n = 0, sum = 0, images = 0;
    for (const r of m.renderers) {
      const ds = r.data_source;
      if (!ds || !ds.data) continue;
      const data = ds.data;
      if (data.image !== undefined) {
        for (const img of data.image) {
          const arr = img.array !== undefined ? img.array : img;
          images += 1;
          for (let i = 0; i < arr.length; i++) { const x = Number(arr[i]); if (isFinite(x)) sum += x; }
        }
      } else {
        const cols = Object.keys(data);
        if (cols.length) n += data[cols[0]].length;
      }
    }
    return {points: n, image_sum: sum, images: images};
  }
  return null;
}
"""


def plots_state(page) -> list[dict] | None:
    return page.evaluate(PLOTS_STATE_JS)


def plot_data_signature(page, title: str) -> dict | None:
    return page.evaluate(PLOT_DATA_JS, title)


def wait_for_plots(page, min_plots: int = 1, timeout: float = 60.0, titles: list[str] | None = None,
                   settle: float = 0.3, absent: list[str] | None = None) -> list[dict]:
    """Wait until at least ``min_plots`` visible plots exist and all have finished drawing.

    ``titles``: plots that must be among them; ``absent``: titles that must no
    longer be visible (e.g. the previous tab's plots after switching tabs).
    """
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            state = plots_state(page)
        except Exception:  # noqa: BLE001 - page navigating
            state = None
        if state:
            vis = [s for s in state if s["visible"]]
            have = {s["title"] for s in vis if s["finished"]}
            if len(vis) >= min_plots and all(s["finished"] for s in vis) and (
                    not titles or all(t in have for t in titles)) and (
                    not absent or not any(s["title"] in absent for s in vis)):
                if settle:
                    time.sleep(settle)
                    state2 = plots_state(page) or []
                    vis2 = [s for s in state2 if s["visible"]]
                    if len(vis2) == len(vis) and all(s["finished"] for s in vis2):
                        return vis2
                else:
                    return vis
        last = state
        time.sleep(0.05)
    raise TimeoutError(f"plots not drawn within {timeout} s; last state: {last}")


# --------------------------------------------------------------------------------------------
# Synthetic run directories for the viewer's own tests (format only: random numbers, no physics)
# --------------------------------------------------------------------------------------------
SYNTH_BANDS = ["sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z"]
SYNTH_PARAMS = ["z", "log_mstar", "kappa1", "kappa2", "kappa3", "t_burst", "f_burst", "log_zmet", "n_dust", "tau1",
                "tau2"]
SYNTH_DERIVED = ["log_sfr_10myr", "log_sfr_100myr", "log_ssfr_100myr", "log_mformed", "mwage_gyr"]


def _synthetic_table(n: int, seed: int):
    """Random columns with the run format's names (Gaussian blobs; not a galaxy model)."""
    import numpy as np
    import pandas as pd

    r = np.random.default_rng(seed)
    d = {p: r.uniform(0.0, 1.0, n) for p in SYNTH_PARAMS}
    d["z"] = r.uniform(0.01, 0.6, n)
    d["log_mstar"] = r.normal(10.3, 0.6, n)
    d["log_zmet"] = r.normal(-0.5, 0.4, n)
    for k in SYNTH_DERIVED:
        d[k] = r.normal(0.0, 1.0, n)
    for i, b in enumerate(SYNTH_BANDS):
        d[f"mag_{b}"] = r.normal(18.5 - 0.3 * i, 1.0, n)
    return pd.DataFrame(d)


def write_synthetic_run(path, n_population: int = 3000, members: int = 2, steps: int = 30, complete: bool = True,
                        lock: bool = False, truth: bool = True):
    """Write a run directory in the documented layout (docs/run_format.md) from random numbers.

    For tests of the *viewer* only (file handling, bad input, widgets): the
    values mean nothing.  Real checks use a run made by ``popsed fit``.
    """
    import json
    import time as _time

    import numpy as np

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"format_version": 1, "popsed_version": "synthetic", "catalog": {"path": str(path / "catalog.ecsv"),
           "sha256": "", "n_rows": 500}, "bands": SYNTH_BANDS, "forward": "none", "loss": "sliced",
           "members": members, "steps": steps, "batch": 100, "seed": 0, "seeds": list(range(members)),
           "selection": [{"band": "sdss2010-r", "op": "<", "value": 19.8}], "redshift": "free", "z_max": 0.65,
           "param_names": SYNTH_PARAMS, "bounds": {p: [0.0, 1.0] for p in SYNTH_PARAMS}, "device": "cpu"}
    (path / "config.json").write_text(json.dumps(cfg))
    obs = _synthetic_table(500, 99)[[f"mag_{b}" for b in SYNTH_BANDS]]
    obs["z_spec"] = np.random.default_rng(5).uniform(0.01, 0.6, len(obs))
    obs["split"] = np.where(np.arange(len(obs)) % 5 == 0, "val", "train")
    obs.to_parquet(path / "observed.parquet")
    if lock:
        (path / "run.lock").write_text("synthetic")
    t0 = _time.time()
    lines = [{"event": "start", "members": members, "steps": steps, "time": 0.0, "wall": t0}]
    for k in range(members):
        for i in range(steps):
            lines.append({"event": "step", "member": k, "step": i, "train_loss": 1.0 / (1 + i) + 0.01,
                          "val_loss": (1.0 / (1 + i) + 0.02) if i % 10 == 0 else None,
                          "noise": min(1.0, i / max(1, steps - 1)), "blur": None, "lr": 1e-3, "seconds": 0.01,
                          "time": 0.01 * (k * steps + i), "wall": t0 + 0.01 * (k * steps + i)})
        if complete:
            lines.append({"event": "member_done", "member": k, "status": "converged", "best_val_loss": 0.03,
                          "best_step": steps - 1, "time": 0.01 * (k + 1) * steps, "wall": t0})
    pv = _synthetic_table(300, 7)[[f"mag_{b}" for b in SYNTH_BANDS]]
    pv.insert(0, "step", steps - 1)
    pv.insert(0, "member", np.arange(len(pv)) % members)
    pv.to_parquet(path / "preview.parquet")
    if complete:
        pop = _synthetic_table(n_population, 11)
        pop.insert(0, "member", np.arange(n_population) % members)
        pop["selected"] = pop["mag_sdss2010-r"] < 19.8
        pop.to_parquet(path / "population.parquet")
        (path / "summary.json").write_text(json.dumps({"members": [
            {"member": k, "status": "converged", "best_val_loss": 0.03} for k in range(members)]}))
        lines.append({"event": "done", "status": "complete", "time": 1.0, "wall": t0 + 1})
    with open(path / "history.jsonl", "w") as fh:
        for ev in lines:
            fh.write(json.dumps(ev) + "\n")
    if truth:
        from astropy.table import Table

        Table.from_pandas(_synthetic_table(1000, 13)[SYNTH_PARAMS + SYNTH_DERIVED]).write(
            path / "truth.ecsv", overwrite=True)
    return path


def text_of(page, css: str) -> str:
    """Visible text of the first element matching ``css`` (Bokeh renders it inside a shadow root)."""
    loc = page.locator(css)
    if loc.count() == 0:
        return ""
    return loc.first.evaluate(
        "e => { const root = e.shadowRoot || e;"
        " return Array.from(root.children).filter(c => !['STYLE', 'LINK', 'SCRIPT'].includes(c.tagName))"
        ".map(c => c.innerText || c.textContent || '').join(' ').trim(); }")
