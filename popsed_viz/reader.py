"""Robust, read-only access to a run directory (docs/run_format.md).

:class:`RunReader` never raises on bad input: a missing, partial or corrupt run
directory yields ``None`` for the affected file and a human-readable entry in
:attr:`RunReader.problems`, and :meth:`RunReader.status` summarises the state in
a :class:`RunStatus` that the views show as a message.

:class:`HistoryTail` follows ``history.jsonl`` from the last byte offset read,
so a fit started anywhere (CLI, notebook, the app) can be watched live; a
partial last line (the writer has not flushed the newline yet) is left for the
next poll, and a file that shrank or was replaced is re-read from the start.

Parquet / ECSV reads go through a small process-wide cache keyed by
``(path, mtime, size, columns)``; the cached frames are shared between browser
sessions and must be treated as read-only (views filter into new frames).
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

__all__ = ["RunReader", "RunStatus", "HistoryTail", "STEP_COLUMNS", "colour_pairs"]

#: Columns of the step-event table the training monitor streams.
STEP_COLUMNS = ["member", "step", "train_loss", "val_loss", "noise", "blur", "lr", "seconds", "time", "wall"]

_CACHE_MAX = 32
_cache: "OrderedDict[tuple, Any]" = OrderedDict()
_cache_lock = threading.Lock()


def _file_key(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def _cached(key: tuple, loader):
    """Process-wide LRU cache for immutable file contents (read-only frames)."""
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = loader()
    with _cache_lock:
        _cache[key] = value
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_MAX:
            _cache.popitem(last=False)
    return value


def clear_cache() -> None:
    """Drop every cached file (tests, memory pressure)."""
    with _cache_lock:
        _cache.clear()


def colour_pairs(bands: Iterable[str]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Consecutive colour–colour panels: ((b0,b1),(b1,b2)), ((b1,b2),(b2,b3)), …"""
    bands = list(bands)
    cols = [(bands[i], bands[i + 1]) for i in range(len(bands) - 1)]
    return [(cols[i], cols[i + 1]) for i in range(len(cols) - 1)]


def short_band(band: str) -> str:
    """``sdss2010-r`` → ``r``; names without a prefix are returned unchanged."""
    return band.rsplit("-", 1)[-1] if "-" in band else band


@dataclass
class RunStatus:
    """What a view should tell the user about a run directory."""

    state: str  # missing | not_a_run | corrupt | starting | running | stalled | stopped | complete
    message: str
    level: str = "info"  # info | success | warning | danger (pn.pane.Alert alert_type)
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is anything to show (the directory is a run)."""
        return self.state not in {"missing", "not_a_run"}

    @property
    def live(self) -> bool:
        """True while a fit is (probably) writing into the run."""
        return self.state in {"starting", "running"}

    def markdown(self) -> str:
        text = self.message
        if self.details:
            text += "\n\n" + "\n".join(f"- {d}" for d in self.details)
        return text


class HistoryTail:
    """Incremental reader of ``history.jsonl`` (one JSON event per line)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0
        self._ident: tuple | None = None
        self.bad_lines = 0
        self.last_error: str | None = None

    def reset(self) -> None:
        self.offset = 0
        self._ident = None
        self.bad_lines = 0

    def poll(self, max_bytes: int = 64 * 1024 * 1024) -> tuple[list[dict], bool]:
        """Return ``(new_events, restarted)``.

        ``restarted`` is True when the file was replaced or truncated since the
        last poll (the caller should drop what it had and use the events, which
        then start from the beginning of the file).
        """
        restarted = False
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self.offset:
                self.reset()
                return [], True
            return [], False
        except OSError as exc:
            self.last_error = f"cannot read {self.path.name}: {exc}"
            return [], False
        ident = (st.st_dev, st.st_ino)
        if self._ident is not None and (ident != self._ident or st.st_size < self.offset):
            self.offset = 0
            self.bad_lines = 0
            restarted = True
        self._ident = ident
        if st.st_size == self.offset:
            return [], restarted
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read(max_bytes)
        except OSError as exc:
            self.last_error = f"cannot read {self.path.name}: {exc}"
            return [], restarted
        end = chunk.rfind(b"\n")
        if end < 0:  # only a partial line so far
            return [], restarted
        complete = chunk[: end + 1]
        self.offset += len(complete)
        events = []
        for raw in complete.splitlines():
            raw = raw.strip()
            if not raw:
                continue
            try:
                ev = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                self.bad_lines += 1
                continue
            if isinstance(ev, dict):
                events.append(ev)
            else:
                self.bad_lines += 1
        self.last_error = None
        return events, restarted


def steps_frame(events: list[dict]) -> pd.DataFrame:
    """Step events → a DataFrame with :data:`STEP_COLUMNS` (floats, NaN for null)."""
    rows = [e for e in events if e.get("event") == "step"]
    data = {}
    for col in STEP_COLUMNS:
        vals = []
        for e in rows:
            v = e.get(col)
            try:
                vals.append(float(v) if v is not None else math.nan)
            except (TypeError, ValueError):
                vals.append(math.nan)
        data[col] = np.asarray(vals, dtype=float)
    df = pd.DataFrame(data, columns=STEP_COLUMNS)
    df["member"] = df["member"].fillna(0).astype(int)
    df["step"] = df["step"].fillna(0).astype(int)
    return df


class RunReader:
    """Read (and tail) one run directory without ever raising on bad input."""

    #: A lock whose history has not moved for this long is reported as stalled.
    stall_seconds = 600.0

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path).expanduser() if path not in (None, "") else None
        self.problems: dict[str, str] = {}
        self.history = (
            HistoryTail(self.path / "history.jsonl")
            if self.path
            else HistoryTail("/nonexistent/history.jsonl")
        )

    # ------------------------------------------------------------------ files
    def _file(self, name: str) -> Path | None:
        return (self.path / name) if self.path else None

    def exists(self, name: str) -> bool:
        f = self._file(name)
        return bool(f and f.is_file())

    def mtime(self, name: str) -> float | None:
        f = self._file(name)
        try:
            return f.stat().st_mtime if f else None
        except OSError:
            return None

    def signature(self, *names: str) -> tuple:
        """A value that changes when any of the named files changes."""
        return tuple(_file_key(self._file(n)) if self.path else None for n in names)

    def _json(self, name: str) -> dict | None:
        f = self._file(name)
        if f is None or not f.is_file():
            self.problems.pop(name, None)
            return None
        key = ("json",) + (_file_key(f) or (str(f),))
        try:
            value = _cached(key, lambda: json.loads(f.read_text()))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            self.problems[name] = f"{name} is unreadable ({type(exc).__name__}: {str(exc)[:120]})"
            return None
        if not isinstance(value, dict):
            self.problems[name] = f"{name} is not a JSON object"
            return None
        self.problems.pop(name, None)
        return value

    def _parquet(self, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
        f = self._file(name)
        if f is None or not f.is_file():
            self.problems.pop(name, None)
            return None
        fk = _file_key(f)
        if fk is None:
            return None
        key = ("parquet", *fk, tuple(columns) if columns else None)
        if columns:  # a column subset of an already-cached full read costs nothing
            with _cache_lock:
                full = _cache.get(("parquet", *fk, None))
            if full is not None:
                self.problems.pop(name, None)
                return full[[c for c in columns if c in full.columns]]

        def load():
            import pyarrow.parquet as pq

            schema = pq.read_schema(f)
            cols = [c for c in columns if c in schema.names] if columns else None
            return pq.read_table(f, columns=cols).to_pandas()

        try:
            df = _cached(key, load)
        except Exception as exc:  # noqa: BLE001 - any decoder error means "corrupt file"
            self.problems[name] = f"{name} is unreadable ({type(exc).__name__}: {str(exc)[:120]})"
            return None
        self.problems.pop(name, None)
        return df

    def config(self) -> dict | None:
        return self._json("config.json")

    def summary(self) -> dict | None:
        return self._json("summary.json")

    def observed(self, columns: list[str] | None = None) -> pd.DataFrame | None:
        return self._parquet("observed.parquet", columns)

    def preview(self) -> pd.DataFrame | None:
        return self._parquet("preview.parquet")

    def population(self, columns: list[str] | None = None) -> pd.DataFrame | None:
        return self._parquet("population.parquet", columns)

    def population_columns(self) -> list[str]:
        f = self._file("population.parquet")
        if f is None or not f.is_file():
            return []
        try:
            import pyarrow.parquet as pq

            return _cached(("schema",) + (_file_key(f) or (str(f),)), lambda: list(pq.read_schema(f).names))
        except Exception as exc:  # noqa: BLE001
            self.problems["population.parquet"] = f"population.parquet is unreadable ({type(exc).__name__})"
            return []

    def truth_path(self) -> Path | None:
        """``truth.ecsv`` in the run or beside the catalog the run was fitted to."""
        cands = []
        if self.path:
            cands.append(self.path / "truth.ecsv")
        cfg = self.config() or {}
        cat = (cfg.get("catalog") or {}).get("path") if isinstance(cfg.get("catalog"), dict) else None
        if cat:
            p = Path(cat)
            cands.append(p.parent / "truth.ecsv")  # as written (absolute, or relative to cwd)
            if self.path:
                root = self.path.resolve()
                if not p.is_absolute():  # relative to where the fit ran: some ancestor of the run
                    cands += [anc / p.parent / "truth.ecsv" for anc in root.parents]
                # the run and its mock copied elsewhere together (e.g. sample_data/)
                cands.append(root.parent / p.parent.name / "truth.ecsv")
        for c in cands:
            if c.is_file():
                return c
        return None

    def truth(self) -> pd.DataFrame | None:
        f = self.truth_path()
        if f is None:
            return None
        fk = _file_key(f)

        def load():
            from astropy.table import Table

            t = Table.read(f, format="ascii.ecsv")
            names = [n for n in t.colnames if len(t[n].shape) <= 1]
            return t[names].to_pandas()

        try:
            df = _cached(("ecsv",) + (fk or (str(f),)), load)
        except Exception as exc:  # noqa: BLE001
            self.problems["truth.ecsv"] = f"truth.ecsv is unreadable ({type(exc).__name__}: {str(exc)[:120]})"
            return None
        self.problems.pop("truth.ecsv", None)
        return df

    def bands(self) -> list[str]:
        cfg = self.config() or {}
        bands = cfg.get("bands")
        if isinstance(bands, list) and all(isinstance(b, str) for b in bands):
            return bands
        obs = self.observed()
        if obs is not None:
            return [c[4:] for c in obs.columns if c.startswith("mag_")]
        return []

    def read_history(self) -> list[dict]:
        """Every complete event line of ``history.jsonl`` (independent of the tail)."""
        tail = HistoryTail(self.history.path)
        events, _ = tail.poll()
        return events

    # ----------------------------------------------------------------- status
    def status(self) -> RunStatus:
        if self.path is None:
            return RunStatus("missing", "No run directory selected.", "warning")
        if not self.path.exists():
            return RunStatus("missing", f"Run directory not found: `{self.path}`", "danger")
        if not self.path.is_dir():
            return RunStatus("missing", f"Not a directory: `{self.path}`", "danger")
        has_cfg = self.exists("config.json")
        has_hist = self.exists("history.jsonl")
        if not has_cfg and not has_hist and not self.exists("population.parquet"):
            if self.exists("run.lock"):
                return RunStatus("starting", f"`{self.path.name}`: a fit is starting (no files yet).", "info")
            return RunStatus(
                "not_a_run",
                f"`{self.path}` is not a popsed run directory (no config.json, history.jsonl or "
                "population.parquet).",
                "danger",
            )
        cfg = self.config()
        details = []
        corrupt = False
        if has_cfg and cfg is None:
            corrupt = True
        # make sure the data files are probed so problems are known
        if self.exists("population.parquet"):
            self.population_columns()
        for name in ("observed.parquet", "summary.json"):
            if self.exists(name):
                (self.observed(["split"]) if name == "observed.parquet" else self.summary())
        if self.history.bad_lines:
            details.append(f"history.jsonl: {self.history.bad_lines} unreadable line(s) skipped")
        details += list(self.problems.values())
        corrupt = corrupt or bool(self.problems)
        last = self._last_history_event()
        done = last is not None and last.get("event") == "done"
        locked = self.exists("run.lock")
        name = self.path.name
        if done and self.exists("population.parquet") and not corrupt:
            return RunStatus("complete", f"`{name}`: fit complete.", "success", details)
        if corrupt:
            return RunStatus(
                "corrupt",
                f"`{name}`: some run files are corrupt or unreadable; showing what can be read.",
                "danger",
                details,
            )
        if locked and not done:
            age = time.time() - (self.mtime("history.jsonl") or self.mtime("run.lock") or time.time())
            if age > self.stall_seconds:
                return RunStatus(
                    "stalled",
                    f"`{name}`: run.lock present but no progress for {age / 60:.0f} min — the fit may have "
                    "died.",
                    "warning",
                    details,
                )
            return RunStatus("running", f"`{name}`: fit in progress — updating live.", "info", details)
        if not done:
            if self.exists("population.parquet"):
                return RunStatus(
                    "complete", f"`{name}`: population available (no final `done` event).", "warning", details
                )
            return RunStatus(
                "stopped",
                f"`{name}`: the fit stopped before finishing (no population yet); showing its history.",
                "warning",
                details,
            )
        return RunStatus("complete", f"`{name}`: fit complete.", "success", details)

    def _last_history_event(self) -> dict | None:
        f = self._file("history.jsonl")
        if f is None or not f.is_file():
            return None
        try:
            with open(f, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 8192))
                lines = fh.read().splitlines()
        except OSError:
            return None
        for raw in reversed(lines):
            try:
                ev = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(ev, dict):
                return ev
        return None

    def __repr__(self) -> str:
        return f"RunReader({str(self.path)!r})"
