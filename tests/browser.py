"""Helpers to drive the served dashboard in headless Chromium (browser tests and ``bench/dashboard_load.py``).

Uses the Debian ``chromium`` through the ``playwright`` package
(``executable_path="/usr/bin/chromium"``; never ``playwright install``).  A
bare ``chromium --screenshot`` of a Bokeh app is blank, so readiness is judged
from BokehJS itself: every plot view reports ``has_finished()``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from popsed_viz.jobs import REPO_ROOT

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "free_port", "AppServer", "launch_browser", "plots_state",
           "wait_for_plots", "plot_data_signature", "JSErrorLog", "text_of"]

CHROMIUM = os.environ.get("POPSED_CHROMIUM", "/usr/bin/chromium")
#: The marks of a browser test module (``pytestmark = BROWSER_MARKS``): skipped without chromium or
#: playwright.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright package missing"),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


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
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
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
                raise RuntimeError(
                    f"panel serve exited with status {self.proc.returncode} (log: {self.log_path})"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                # the port is open: check the server answers HTTP (static resource, no session)
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/static/js/bokeh.min.js", timeout=5
                ):
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


def text_of(page, css: str) -> str:
    """Visible text of the first element matching ``css`` (Bokeh renders it inside a shadow root)."""
    loc = page.locator(css)
    if loc.count() == 0:
        return ""
    return loc.first.evaluate(
        "e => { const root = e.shadowRoot || e;"
        " return Array.from(root.children).filter(c => !['STYLE', 'LINK', 'SCRIPT'].includes(c.tagName))"
        ".map(c => c.innerText || c.textContent || '').join(' ').trim(); }")


def wait_until(fn, timeout: float = 30.0, every: float = 0.2):
    """Poll ``fn()`` until it returns something truthy (returned) or ``timeout`` seconds pass (its last
    value is returned)."""
    deadline = time.time() + timeout
    value = None
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    return value
