"""Writing a run directory (docs/run_format.md): opening and locking it, resuming it from its checkpoints,
the checkpoints and flows of the members, ``observed.parquet``, ``preview.parquet``, and the results
(``population.parquet``, ``summary.json``).  Reading a finished run is :class:`engine.population.run.Run`.

The run is checkpointed every ``checkpoint_every`` steps (and when the consumer stops iterating, on a
graceful interrupt, and at the end of every member), so a fit killed at any moment can be continued with
``resume=True``: the history is cut back to the checkpoint and the steps after it are redone (with the
saved random state, so the resumed run is the run that would have been).
"""
from __future__ import annotations

import importlib
import math
import platform
from pathlib import Path

import numpy as np
import torch

from engine.errors import RunDirError
from engine.sps.photometry import load_filter

from .config import TrainConfig
from .convergence import CONVERGENCE_DEFINITION, ensemble_report
from .noise import pogson_mag
from .observed import Observed
from .run import (
    FORMAT_VERSION,
    RUN_FILES,
    History,
    RunLock,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    check_overwritable,
    clear_run_files,
    is_run_dir,
    read_history,
    read_json,
    torch_load,
    truncate_events,
)
from .trainer import MemberState, Trainer, cpu_state

__all__ = ["UV_EDGE_AA", "RunDir", "optical_only_note", "summary_dict", "versions"]

#: Bluest effective wavelength [Å] above which a fit's bands see no ultraviolet (SDSS u: 3590 Å).
UV_EDGE_AA = 3000.0


class RunDir:
    """A run directory open for writing: its lock, its ``history.jsonl`` writer and its files.

    :meth:`open` creates (or, with ``resume``, continues; with ``overwrite``, clears) the directory and takes
    the lock; :meth:`close` releases it.
    """

    def __init__(self, path: Path, lock: RunLock, resuming: bool):
        self.path = Path(path)
        self.lock = lock
        self.resuming = resuming
        self.history = History(self.path / "history.jsonl")

    @staticmethod
    def check(out, resume: bool = False, overwrite: bool = False, test_lock: bool = True) -> None:
        """Raise unless :meth:`open` may open ``out`` (with ``resume``: it holds a run; without: it does not
        exist, is empty, holds only the empty ``checkpoints/`` and ``flows/`` of a start that failed, or,
        with ``overwrite``, only run files).  Creates nothing (a stale ``run.lock`` of a killed writer is
        tested and removed)."""
        out = Path(out)
        if resume and overwrite:
            raise RunDirError("--resume and --overwrite exclude each other")
        if out.exists() and not out.is_dir():
            raise RunDirError(f"{out} exists and is not a directory")
        if test_lock and (out / "run.lock").exists():
            RunLock(out).acquire().release()  # raises naming the pid when another process writes into the run
        if resume:
            if not is_run_dir(out):
                where = "does not exist" if not out.exists() else "holds no popsed run (no config.json)"
                raise RunDirError(f"nothing to resume: {out} {where}; start the fit without --resume")
            return
        entries = ([p for p in out.iterdir() if p.name != "run.lock" and not p.name.startswith(".")]
                   if out.is_dir() else [])
        if all(p.name in ("checkpoints", "flows") and p.is_dir() and not any(p.iterdir()) for p in entries):
            return  # empty, or the leftovers of a start that failed before writing anything
        if overwrite:
            check_overwritable(out)
        elif is_run_dir(out):
            raise RunDirError(f"run directory {out} already exists; use --resume to continue it or "
                              "--overwrite to replace it")
        elif any(p.name not in RUN_FILES for p in entries):
            names = sorted(p.name for p in entries if p.name not in RUN_FILES)
            raise RunDirError(f"{out} is not empty and is not a popsed run directory (it holds "
                              f"{', '.join(names[:5])}); choose another --out")
        else:
            raise RunDirError(f"{out} holds files of a fit that never started (no config.json); use "
                              "--overwrite to replace them")

    @classmethod
    def open(cls, out, resume: bool = False, overwrite: bool = False) -> RunDir:
        """Create (or, with ``resume``, continue; with ``overwrite``, clear) run directory ``out`` and lock it
        (:meth:`check` says what is refused)."""
        out = Path(out)
        cls.check(out, resume, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out).acquire()
        try:
            # again, now that no other writer can change it
            cls.check(out, resume, overwrite, test_lock=False)
            if not resume:
                clear_run_files(out)
            (out / "checkpoints").mkdir(exist_ok=True)
            (out / "flows").mkdir(exist_ok=True)
        except BaseException:
            lock.release()
            raise
        return cls(out, lock, resume)

    def close(self) -> None:
        self.history.close()
        self.lock.release()

    def read_config(self) -> dict:
        """``config.json`` of the run being resumed (its format version checked)."""
        cfg_json = read_json(self.path / "config.json", "config")
        if cfg_json.get("format_version") != FORMAT_VERSION:
            raise RunDirError(f"{self.path}/config.json has format_version "
                              f"{cfg_json.get('format_version')!r}; expected {FORMAT_VERSION}")
        return cfg_json

    # ------------------------------------------------------------------ members
    def _checkpoint(self, k: int) -> Path:
        return self.path / "checkpoints" / f"member_{k}.pt"

    def save_checkpoint(self, trainer: Trainer, ms: MemberState) -> None:
        atomic_torch_save(self._checkpoint(ms.member), trainer.member_state_dict(ms))

    def write_checkpoint_bytes(self, k: int, data: bytes) -> None:
        atomic_write_bytes(self._checkpoint(k), data)

    def load_checkpoint(self, trainer: Trainer, k: int) -> MemberState:
        p = self._checkpoint(k)
        sd = torch_load(p, "checkpoint")
        if not isinstance(sd, dict) or sd.get("format") != "popsed-checkpoint":
            raise RunDirError(f"{p} is not a popsed checkpoint")
        return trainer.load_member(sd)

    def save_flow(self, trainer: Trainer, ms: MemberState, cfg: TrainConfig) -> None:
        state = ms.best_flow if ms.best_flow else cpu_state(ms.eval_flow)
        atomic_torch_save(self.path / "flows" / f"member_{ms.member}.pt", {
            "format": "popsed-flow", "version": 1, "member": ms.member, "seed": ms.seed,
            "best_step": ms.best_step, "best_val_loss": float(ms.best_val), "status": ms.status,
            "flow_config": cfg.flow.to_dict(), "bounds": trainer.bounds.clone(),
            "param_names": list(trainer.param_names), "state_dict": state,
        })

    def load_checkpoints(self, trainer: Trainer, members: int):
        """Members run one after the other: the finished members' states and the current one's;
        ``(states, finished, current member, its next step)``."""
        states, finished = {}, set()
        current, next_step = None, 0
        for k in range(members):
            if not self._checkpoint(k).is_file():
                current, next_step = k, 0
                break
            ms = self.load_checkpoint(trainer, k)
            states[k] = ms
            if ms.finished:
                finished.add(k)
                continue
            current, next_step = k, ms.step
            break
        return states, finished, current, next_step

    def load_all_checkpoints(self, trainer: Trainer, members: int):
        """Every member's checkpoint (members run in parallel may all be part-way): states, next steps."""
        states, next_steps = {}, {}
        for k in range(members):
            if not self._checkpoint(k).is_file():
                next_steps[k] = 0
                continue
            ms = self.load_checkpoint(trainer, k)
            states[k] = ms
            next_steps[k] = ms.step
        return states, next_steps

    # ------------------------------------------------------------------ starting
    def begin_new(self, cfg_json: dict, trainer: Trainer, obs: Observed, noise, feature_names: list) -> dict:
        """Write the files of a new run (noise model, observed rows, config); the ``start`` event."""
        atomic_write_json(self.path / "noise_model.json", noise.to_dict())
        self.write_observed(obs)
        cfg_json["observed"] = obs.report
        cfg_json["noise_floor"] = trainer.noise_floor
        cfg_json["features"] = feature_names
        atomic_write_json(self.path / "config.json", cfg_json)
        self.history.rewrite([])
        self.history.open()
        return {"event": "start", "resumed": False}

    def begin_resume(self, trainer: Trainer, members: int, parallel: bool) -> tuple[dict, dict]:
        """Load the checkpoints, cut the history back to them; ``(states, start event)``.  ``parallel``:
        the members ran as parallel tasks (any of them may be part-way)."""
        if parallel:
            states, next_steps = self.load_all_checkpoints(trainer, members)
            finished = {k for k, ms in states.items() if ms.finished}
        else:
            states, finished, current, next_step = self.load_checkpoints(trainer, members)
            next_steps = {} if current is None else {current: next_step}
        events = truncate_events(read_history(self.path / "history.jsonl"), finished, next_steps)
        self.history.rewrite(events)
        trainer.time_offset = float(events[-1].get("time", 0.0)) if events else 0.0
        self.history.open()
        if not parallel:
            return states, {"event": "start", "resumed": True, "from_member": current, "from_step": next_step}
        todo = [k for k in range(members) if not (k in states and states[k].finished)]
        start = {"event": "start", "resumed": True, "from_member": min(todo) if todo else members,
                 "from_step": next_steps.get(min(todo), 0) if todo else 0,
                 "from_steps": {str(k): next_steps.get(k, 0) for k in todo}}
        return states, start

    # ------------------------------------------------------------------ observed rows, previews
    def write_observed(self, obs: Observed) -> None:
        cols = {}
        mags = pogson_mag(obs.flux)
        mags = np.where(np.isfinite(mags), mags, np.nan)
        for j, b in enumerate(obs.bands):
            cols[f"mag_{b}"] = mags[:, j]
        for j, b in enumerate(obs.bands):
            cols[f"flux_{b}"] = obs.flux[:, j]
            cols[f"flux_err_{b}"] = obs.flux_err[:, j]
        if obs.z_spec is not None:
            cols["z_spec"] = obs.z_spec
        cols["split"] = obs.split.astype(str)
        atomic_write_parquet(self.path / "observed.parquet", cols)

    def read_observed(self, bands, cfg_json: dict) -> Observed:
        """The resident rows of a streamed fit, back from ``observed.parquet`` (for ``--resume``)."""
        # lazy, as in run.py: only a resumed streamed fit reads Parquet back here
        import pyarrow.parquet as pq

        t = pq.read_table(self.path / "observed.parquet")
        flux = np.stack([t.column(f"flux_{b}").to_numpy() for b in bands], axis=1)
        err = np.stack([t.column(f"flux_err_{b}").to_numpy() for b in bands], axis=1)
        z = t.column("z_spec").to_numpy() if "z_spec" in t.column_names else None
        split = np.asarray(t.column("split").to_pylist()).astype(str)
        return Observed(tuple(bands), flux, err, z, split, dict(cfg_json.get("observed") or {}))

    def write_preview(self, previews: dict, bands) -> None:
        cols: dict[str, list] = {"member": [], "step": []}
        for b in bands:
            cols[f"mag_{b}"] = []
        for k, p in sorted(previews.items()):
            n = p["mag"].shape[0]
            cols["member"].append(np.full(n, k, dtype=np.int32))
            cols["step"].append(np.full(n, p["step"], dtype=np.int32))
            m = np.where(np.isfinite(p["mag"]), p["mag"], np.nan)
            for j, b in enumerate(bands):
                cols[f"mag_{b}"].append(m[:, j])
        atomic_write_parquet(self.path / "preview.parquet", {k: np.concatenate(v) for k, v in cols.items()})

    # ------------------------------------------------------------------ results
    def validation_histories(self) -> dict[int, list[tuple[int, float]]]:
        """Member -> its ``(step, validation loss)`` pairs, from ``history.jsonl``."""
        out: dict[int, list] = {}
        for e in read_history(self.path / "history.jsonl"):
            if e.get("event") == "step" and e.get("val_loss") is not None:
                out.setdefault(int(e["member"]), []).append((int(e["step"]), float(e["val_loss"])))
        return out

    def write_results(self, trainer: Trainer, cfg: TrainConfig, cfg_json: dict, states: dict,
                      failed: dict[int, str]) -> dict:
        """``population.parquet`` (the kept members) and ``summary.json``; returns the ensemble report
        (:func:`engine.population.convergence.ensemble_report`)."""
        for k in range(cfg.members):
            if k not in failed and (k not in states or states[k].best_flow is None):
                states[k] = trainer.load_member(torch_load(self._checkpoint(k), "checkpoint"))
        rep = ensemble_report([_member_row(k, states.get(k), failed) for k in range(cfg.members)],
                              cfg.converge_factor, trainer.noise_floor, converge_floor=cfg.converge_floor,
                              plateau_tol=cfg.plateau_tol, histories=self.validation_histories(),
                              steps=cfg.steps)
        for row in rep["members"]:
            if row["member"] in failed:
                row["status"] = "failed"
                row["note"] = f"task failed on the cluster: {failed[row['member']]}"
        pop_cols: dict[str, list] = {}
        for k in rep["kept"]:
            for name, v in trainer.population(states[k]).items():
                pop_cols.setdefault(name, []).append(v)
        pop = {name: np.concatenate(v) for name, v in pop_cols.items()}
        if pop:
            atomic_write_parquet(self.path / "population.parquet", pop)
        summary = summary_dict(cfg_json, rep, pop, trainer, list(trainer.param_names), list(pop.keys()))
        if failed:
            summary["failed"] = sorted(failed)
            summary["notes"].append(
                f"members {sorted(failed)} failed on the cluster and are not in population.parquet "
                f"({'; '.join(f'{k}: {v}' for k, v in sorted(failed.items()))}); `popsed fit --resume` "
                "trains them again")
        atomic_write_json(self.path / "summary.json", summary)
        return rep


def _fin(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _member_row(k: int, ms: MemberState | None, failed: dict) -> dict:
    if k in failed:
        return {"member": k, "status": "failed", "best_val_loss": None, "best_step": None,
                "final_val_loss": None, "seconds": None}
    return {"member": k, "status": ms.status, "best_val_loss": _fin(ms.best_val), "best_step": ms.best_step,
            "final_val_loss": _fin(ms.last_val), "seconds": round(ms.seconds, 3)}


def member_done_event(ms: MemberState) -> dict:
    """The ``member_done`` event of a member whose task ended without sending one."""
    return {"event": "member_done", "member": ms.member, "status": ms.status,
            "best_val_loss": _fin(ms.best_val),
            "best_step": ms.best_step, "final_val_loss": _fin(ms.last_val), "seconds": round(ms.seconds, 3)}


def versions() -> dict:
    """Versions of Python and the numerical packages (``config.json``)."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("nflows", "geomloss", "pyarrow"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception:
            out[name] = None
    return out


def optical_only_note(bands) -> str | None:
    """A note for fits whose bands are all redder than :data:`UV_EDGE_AA`: there, grey dust (n_dust near 1,
    a flat attenuation curve across the optical) trades ``tau2`` against ``log_mstar`` with colour changes of
    a few hundredths of a magnitude, and the population is only loosely pinned along that direction (README,
    "Dust and mass from optical colours"; ``bench/identifiability.py``).  ``None`` when a band is bluer, or a
    band is not a known filter."""
    try:
        lam = [load_filter(b).effective_wavelength for b in bands]
    except ValueError:  # e.g. the toy model's bands
        return None
    if not lam or min(lam) <= UV_EDGE_AA:
        return None
    return (f"no band bluer than {UV_EDGE_AA:.0f} A (bluest {min(lam):.0f} A): for grey dust (n_dust near 1) "
            "these bands tell tau2 from log_mstar only by colour changes of a few hundredths of a magnitude, "
            "so both are loosely constrained there; UV bands (e.g. GALEX FUV/NUV) constrain them")


def _percentiles(pop: dict, names: list) -> dict:
    pct = {}
    for name in names:
        v = np.asarray(pop[name], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            p16, p50, p84 = np.percentile(v, [16, 50, 84])
            pct[name] = {"p16": float(p16), "p50": float(p50), "p84": float(p84)}
    return pct


def summary_dict(cfg_json: dict, rep: dict, pop: dict, trainer: Trainer, param_names: list,
                 columns: list) -> dict:
    """The contents of ``summary.json``."""
    names = list(param_names) + [c for c in columns
                                 if c not in param_names and c not in ("member", "selected")]
    pct = _percentiles(pop, names) if pop else {}
    notes = []
    if rep["dropped"]:
        notes.append(f"members {rep['dropped']} are not in population.parquet (diverged, or validation loss "
                     f"above {trainer.cfg.converge_factor:g}x the ensemble's best)")
    unconverged = [m["member"] for m in rep["members"] if m["status"] != "converged"]
    if unconverged:
        notes.append(f"members {unconverged} did not converge (see their notes): the population is not final")
    optical = optical_only_note(cfg_json.get("bands", []))
    if optical:
        notes.append(optical)
    return {
        "format_version": FORMAT_VERSION,
        "status": "complete",
        "members": rep["members"],
        "converged": rep["converged"],
        "kept": rep["kept"],
        "dropped": rep["dropped"],
        "notes": notes,
        "noise_floor": trainer.noise_floor,
        "convergence_definition": CONVERGENCE_DEFINITION,
        "converge_floor": float(trainer.cfg.converge_floor),
        "plateau_tol": float(trainer.cfg.plateau_tol),
        "noise_floor_definition": "sliced Wasserstein distance (fixed directions) between the validation and "
                                  "training rows of the catalog, in the loss's standardised space",
        "val_loss_definition": "sliced Wasserstein distance (fixed directions) between predicted (full "
                               "noise, selected) and validation rows",
        "n_population": int(len(pop["member"])) if pop else 0,
        "percentiles": pct,
        "observed": cfg_json.get("observed"),
        "wall_time_s": round(trainer.now(), 3),
        "member_seconds": {m["member"]: m.get("seconds") for m in rep["members"]},
    }
