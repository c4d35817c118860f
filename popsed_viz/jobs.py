"""Start and stop a ``popsed fit`` in the background (a child process).

The dashboard does not train anything itself: it launches the project's own
command line (``python -m engine.cli fit CATALOG --out RUN ...``) as a child
process, watches the run directory it writes, and can stop it (SIGINT first,
so the engine can checkpoint, then SIGTERM / SIGKILL).  One :class:`FitJob`
belongs to one browser session.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from popsed_viz.paths import (
    REPO_ROOT,
    SOURCE_CHECKOUT,
    pythonpath_with_checkout,
    sample_catalog,
    sample_run_dir,
)

__all__ = ["FitJob", "REPO_ROOT", "default_runs_dir", "sample_run_dir", "sample_catalog", "safe_filename",
           "fit_command", "new_run_dir"]

#: Default settings of a fit started from the dashboard (small: it is a demo / check).
DEFAULT_FIT = {"steps": 300, "members": 2, "batch": 1024}


def default_runs_dir() -> Path:
    """Where fits started from the dashboard write (``$POPSED_RUNS_DIR`` or ``./runs``)."""
    return Path(os.environ.get("POPSED_RUNS_DIR", Path.cwd() / "runs")).expanduser()


def safe_filename(name: str) -> str:
    base = os.path.basename(str(name or "")).strip() or "catalog"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    return base[:120] or "catalog"


def new_run_dir(runs_dir: Path, label: str = "fit") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    label = re.sub(r"[^A-Za-z0-9_-]+", "_", label)[:40] or "fit"
    cand = runs_dir / f"{label}-{stamp}"
    i = 1
    while cand.exists():
        i += 1
        cand = runs_dir / f"{label}-{stamp}-{i}"
    return cand


def fit_command(catalog: str | os.PathLike, out: str | os.PathLike, steps: int | None = None,
                members: int | None = None, extra: list[str] | None = None,
                batch: int | None = None) -> list[str]:
    """The command line of a background fit (the project's own ``popsed fit``).

    ``$POPSED_APP_FIT_ARGS`` adds options (e.g. ``--loss sinkhorn --device cuda``).
    """
    cmd = [sys.executable, "-m", "engine.cli", "fit", str(catalog), "--out", str(out), "--no-progress"]
    if batch:
        cmd += ["--batch", str(int(batch))]
    if steps:
        cmd += ["--steps", str(int(steps))]
    if members:
        cmd += ["--members", str(int(members))]
    extra_env = os.environ.get("POPSED_APP_FIT_ARGS", "").split()
    return cmd + list(extra or []) + extra_env


class FitJob:
    """One background ``popsed fit`` process."""

    def __init__(self, catalog, out, steps: int | None = None, members: int | None = None,
                 extra: list[str] | None = None, batch: int | None = None):
        self.catalog = Path(catalog)
        self.out = Path(out)
        self.cmd = fit_command(catalog, out, steps, members, extra, batch)
        self.log_path = self.out.with_name(self.out.name + ".log")
        self.proc: subprocess.Popen | None = None
        self.started = None
        self.stopped_by_user = False

    def start(self) -> "FitJob":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = pythonpath_with_checkout(env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         cwd=str(REPO_ROOT) if SOURCE_CHECKOUT else None, env=env,
                                         start_new_session=True)
        finally:
            log.close()
        self.started = time.time()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the fit: SIGINT (checkpoint and exit), then SIGTERM, then SIGKILL."""
        if not self.running:
            return self.poll()
        self.stopped_by_user = True
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)  # the job's own process group (start_new_session)
            except (ProcessLookupError, PermissionError):
                break
            try:
                return self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return self.poll()

    def log_tail(self, n: int = 6) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 4000))
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    @property
    def failed(self) -> bool:
        """Ended with a non-zero status without being stopped from the app."""
        rc = self.poll()
        return rc not in (None, 0) and not self.stopped_by_user

    def error_message(self) -> str:
        """Why the fit failed, whole: the command line's one-line error(s), else the end of its log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("popsed fit: error:")]
        return "\n".join(errors or lines[-15:])

    def describe(self) -> tuple[str, str]:
        """(markdown, alert level) describing the job."""
        if self.proc is None:
            return "", "info"
        rc = self.poll()
        if rc is None:
            el = time.time() - (self.started or time.time())
            return f"Fit running (pid {self.proc.pid}, {el:.0f} s) → `{self.out.name}`", "info"
        if self.stopped_by_user:
            return f"Fit stopped (exit status {rc}); its run stays in `{self.out.name}`.", "warning"
        if rc == 0:
            return f"Fit finished: `{self.out.name}`.", "success"
        return f"Fit failed (exit status {rc}): the message is above the plots.", "danger"
