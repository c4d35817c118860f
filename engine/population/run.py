"""Run directories (docs/run_format.md): atomic writes, the lock, history, checkpoints, results.

- every file is written to a temporary file in the same directory and moved into place with
  ``os.replace`` (:func:`atomic_write_bytes` and friends); ``history.jsonl`` is appended and flushed line
  by line, and rewritten atomically when a resume truncates it back to the last checkpoint;
- ``run.lock`` holds an exclusive ``fcntl.flock`` (and the writer's pid) while a process writes into the
  run; a second writer gets a :class:`~engine.errors.RunDirError` naming that pid;
- checkpoints and flows are ``torch.save``-d dicts of tensors / numbers / strings, read back with
  ``torch.load(..., weights_only=True)`` (no pickled objects).
"""
from __future__ import annotations

import errno
import fcntl
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.errors import ModelFileError, RunDirError

from .flow import FlowConfig, PopulationFlow
from .noise import NoiseModel

FORMAT_VERSION = 1
RUN_FILES = ("config.json", "noise_model.json", "observed.parquet", "history.jsonl", "preview.parquet",
             "checkpoints", "flows", "population.parquet", "summary.json", "run.lock")


# ---------------------------------------------------------------------------------------------- atomic
def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_json(obj):
    """Replace non-finite floats by None (strict JSON for browsers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def dumps(obj, indent=None) -> str:
    return json.dumps(clean_json(obj), default=_json_default, indent=indent, allow_nan=False)


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (dumps(obj, indent=1) + "\n").encode())


def atomic_write_parquet(path, columns: dict) -> None:
    # pyarrow is imported lazily (here and in Run.population): reading a run's JSON files must not need it
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def torch_load(path, what: str = "file"):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{what} {path} does not exist") from None
    except Exception as exc:  # truncated / foreign / pickled objects
        raise ModelFileError(f"{what} {path} cannot be read ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from None


def read_json(path, what: str = "file") -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise RunDirError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{what} {path} is not valid JSON ({exc})") from None


# ---------------------------------------------------------------------------------------------- lock
class RunLock:
    """Exclusive ``flock`` on ``<run>/run.lock``; the file holds the owner's pid and goes when released."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "run.lock"
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                pid = "?"
                try:
                    pid = self.path.read_text().strip() or "?"
                except OSError:
                    pass
                raise RunDirError(f"run directory {self.path.parent} is in use by another popsed process "
                                  f"(pid {pid}); wait for it to finish or stop it first") from None
            # the file may have been unlinked by a releasing owner between open and flock: retry then
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
            self.fd = fd
            return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---------------------------------------------------------------------------------------------- history
def read_history(path) -> list[dict]:
    """Events of ``history.jsonl``; a torn last line (killed mid-write) is skipped."""
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return []
    return out


class History:
    """Append-and-flush writer of ``history.jsonl``."""

    def __init__(self, path):
        self.path = Path(path)
        self.fh = None

    def open(self):
        self.fh = open(self.path, "a", encoding="utf-8")
        return self

    def append(self, ev: dict) -> None:
        self.fh.write(dumps(ev) + "\n")
        self.fh.flush()

    def rewrite(self, events: list[dict]) -> None:
        """Replace the file atomically by ``events`` (used when resuming)."""
        self.close()
        atomic_write_bytes(self.path, "".join(dumps(e) + "\n" for e in events).encode())

    def close(self):
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def truncate_events(events: list[dict], finished: set[int], next_steps: dict[int, int]) -> list[dict]:
    """Events kept when resuming: every ``start``; all events of the ``finished`` members; ``step`` events of
    each unfinished member before its checkpoint's step ``next_steps[k]`` (none for a member without one);
    nothing else (later steps are redone from the checkpoints)."""
    keep = []
    for e in events:
        kind = e.get("event")
        if kind == "start":
            keep.append(e)
            continue
        k = e.get("member")
        if k is None:
            continue
        if k in finished:
            if kind in ("step", "member_done"):
                keep.append(e)
        elif kind == "step" and int(e.get("step", -1)) < next_steps.get(k, 0):
            keep.append(e)
    return keep


# ---------------------------------------------------------------------------------------------- reading runs
def is_run_dir(path) -> bool:
    return (Path(path) / "config.json").is_file()


def check_overwritable(path) -> None:
    """Raise unless ``path`` only holds run files (so ``--overwrite`` may delete them)."""
    foreign = [p.name for p in Path(path).iterdir() if p.name not in RUN_FILES and not p.name.startswith(".")]
    if foreign:
        raise RunDirError(f"{path} does not look like a popsed run directory (it holds "
                          f"{', '.join(sorted(foreign)[:5])}); not overwriting")


def clear_run_files(path) -> None:
    for name in RUN_FILES:
        if name == "run.lock":
            continue
        p = Path(path) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in Path(path).glob(".*.tmp"):
        p.unlink()


class Run:
    """Read access to a run directory (also what :func:`engine.population.fit` returns)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} does not exist")
        if not is_run_dir(self.path):
            raise RunDirError(f"{self.path} is not a popsed run directory (no config.json)")

    def __repr__(self):
        return f"Run({str(self.path)!r})"

    @property
    def config(self) -> dict:
        return read_json(self.path / "config.json", "config")

    @property
    def complete(self) -> bool:
        return (self.path / "summary.json").is_file() and (self.path / "population.parquet").is_file()

    def summary_json(self) -> dict | None:
        p = self.path / "summary.json"
        return read_json(p, "summary") if p.is_file() else None

    def history(self) -> list[dict]:
        return read_history(self.path / "history.jsonl")

    def population(self, pooled_only: bool = True):
        """``population.parquet`` as a pyarrow Table (diverged members are never in it)."""
        import pyarrow.parquet as pq  # lazy: see atomic_write_parquet

        p = self.path / "population.parquet"
        if not p.is_file():
            raise RunDirError(f"{self.path} has no population.parquet yet (the fit has not finished)")
        return pq.read_table(p)

    def noise_model(self):
        return NoiseModel.load(self.path / "noise_model.json")

    def load_flow(self, member: int):
        """The best flow of ``member`` as a :class:`~engine.population.flow.PopulationFlow`."""
        d = torch_load(self.path / "flows" / f"member_{member}.pt", "flow")
        if not isinstance(d, dict) or d.get("format") != "popsed-flow":
            raise ModelFileError(f"{self.path}/flows/member_{member}.pt is not a popsed flow")
        flow = PopulationFlow(d["bounds"], FlowConfig.from_dict(d["flow_config"]))
        flow.load_state_dict(d["state_dict"])
        return flow

    def summary(self) -> dict:
        """Per-parameter 16/50/84 percentiles of the pooled population, per-member status, losses.

        Works on unfinished runs too (status from the history; no percentiles)."""
        cfg = self.config
        s = self.summary_json()
        if s is not None:
            return s
        hist = self.history()
        members = {}
        last = {}
        for e in hist:
            if e.get("event") == "step":
                last[e["member"]] = e
            elif e.get("event") == "member_done":
                members[e["member"]] = {k: e.get(k) for k in ("member", "status", "best_val_loss",
                                                              "best_step", "final_val_loss", "seconds")}
                # the event's value: finished, not yet judged
                if members[e["member"]]["status"] == "converged":
                    members[e["member"]]["status"] = "finished"
        out = []
        for k in range(int(cfg.get("members", 0))):
            if k in members:
                out.append(members[k])
            elif k in last:
                out.append({"member": k,
                            "status": "running" if (self.path / "run.lock").exists() else "interrupted",
                            "step": last[k]["step"], "train_loss": last[k].get("train_loss")})
            else:
                out.append({"member": k, "status": "pending"})
        return {"format_version": FORMAT_VERSION, "status": "incomplete", "members": out, "percentiles": None}
