"""``fit`` / ``iter_fit``: a population fit written into a run directory (docs/run_format.md).

``iter_fit(...)`` is a generator of the training events (the same dicts that go to ``history.jsonl``);
``fit(...)`` consumes it and returns the :class:`~engine.population.run.Run`.  Members are trained one
after the other; the run is checkpointed every ``checkpoint_every`` steps (and when the consumer stops
iterating, on a graceful interrupt, and at the end of every member), so a fit killed at any moment can be
continued with ``resume=True``: the history is cut back to the checkpoint and the steps after it are
redone (with the saved random state, so the resumed run is the run that would have been).
"""
from __future__ import annotations

import importlib
import math
import os
import platform
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from engine.errors import PopsedError, RunDirError

from .flow import FlowConfig
from .noise import NoiseModel, pogson_mag
from .run import (FORMAT_VERSION, History, Run, RunLock, atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_parquet,
                  check_overwritable, clear_run_files, is_run_dir, read_history, read_json, torch_load, truncate_events)
from .selection import check_cuts, parse_selection
from .stream import StreamOptions
from .train import Observed, TrainConfig, Trainer, _cpu_state, ensemble_report, prepare_observed

FORWARD_KINDS = ("auto", "emulator", "sps")


def resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PopsedError("--device cuda requested but CUDA is not available on this machine")
    return dev


# ---------------------------------------------------------------------------------------------- inputs
def load_catalog(catalog, bands="auto"):
    """A catalog object (``engine.catalog.Catalog`` or anything with bands/flux/flux_err/z_spec/sha256)."""
    if hasattr(catalog, "flux") and hasattr(catalog, "bands"):
        cat = catalog
    else:
        from engine.catalog import read_catalog

        b = None if bands in (None, "auto") else bands
        cat = read_catalog(str(catalog), bands=b)
    if bands not in (None, "auto"):
        want = [s.strip() for s in bands.split(",")] if isinstance(bands, str) else list(bands)
        missing = [b for b in want if b not in cat.bands]
        if missing:
            raise PopsedError(f"band(s) {', '.join(missing)} not in the catalog (it has {', '.join(cat.bands)})")
        idx = [list(cat.bands).index(b) for b in want]
        cat = _Sub(cat, want, idx)
    return cat


class _Sub:
    def __init__(self, cat, bands, idx):
        self.bands = tuple(bands)
        self.flux = np.asarray(cat.flux)[:, idx]
        self.flux_err = np.asarray(cat.flux_err)[:, idx]
        self.z_spec = cat.z_spec
        self.sha256 = cat.sha256
        self.path = getattr(cat, "path", None)
        self.report = getattr(cat, "report", ())
        filters = tuple(getattr(cat, "filters", ()) or ())
        self.filters = tuple(filters[i] for i in idx) if len(filters) == len(cat.bands) else self.bands


def make_forward_model(kind, bands, device, z_max: float = 0.65, emulator_path=None):
    """Build the forward model; returns ``(model, description dict)``.

    ``kind``: ``sps`` (engine.sps.SPSModel), ``emulator`` (engine.emulator, the packaged file or
    ``emulator_path``), ``auto`` (the emulator when one covering the bands is available, else the SPS), or
    ``module:factory`` (called as ``factory(bands=..., device=..., z_max=...)``)."""
    bands = list(bands)
    if kind not in FORWARD_KINDS and isinstance(kind, str) and ":" in kind:
        mod, _, attr = kind.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise PopsedError(f"cannot load forward model {kind!r}: {exc}") from None
        return factory(bands=bands, device=device, z_max=z_max), {"kind": kind}
    if kind not in FORWARD_KINDS:
        raise PopsedError(f"--forward must be one of {', '.join(FORWARD_KINDS)} or MODULE:FACTORY, got {kind!r}")
    if kind in ("emulator", "auto"):
        err = None
        try:
            import engine.emulator as em

            path = Path(emulator_path) if emulator_path else em.default_emulator_path()
            if not path.is_file():
                raise PopsedError(f"no emulator file at {path} (train one with `popsed emulator train`)")
            model = em.load(path, device=device, bands=bands)
            return model, {"kind": "emulator", "file": str(path), "z_max": float(model.z_max)}
        except (ImportError, PopsedError) as exc:
            err = exc
        if kind == "emulator":
            raise PopsedError(f"--forward emulator: {err}")
    from engine.sps import SPSModel

    try:
        model = SPSModel(bands, device=device, z_max=z_max)
    except ValueError as exc:
        raise PopsedError(f"--forward sps: {exc}") from None
    return model, {"kind": "sps", "file": None, "z_max": float(z_max)}


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("nflows", "geomloss", "pyarrow"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception:
            out[name] = None
    return out


# ---------------------------------------------------------------------------------------------- interrupt
class _Interrupt:
    """First Ctrl-C asks for a clean stop at the next step boundary; a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        import signal

        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                self.requested = True
                signal.signal(signal.SIGINT, self._old if self._old is not None else signal.default_int_handler)

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


# ---------------------------------------------------------------------------------------------- the fit
def iter_fit(catalog, out, *, bands="auto", members: int = 4, steps: int = 1000, batch: int = 4096,
             loss: str = "sliced", forward="auto", redshift: str = "free", selection=None, device="auto",
             seed: int = 0, resume: bool = False, overwrite: bool = False, z_max: float = 0.65,
             emulator_path=None, checkpoint_every: int = 50, checkpoint_seconds: float = 30.0,
             preview_every: int = 25, stop_requested=None, workers: int | None = None, scheduler: str | None = None,
             client=None, retries: int = 2, stream: str | bool = "auto", stream_options: dict | None = None,
             **options) -> Iterator[dict]:
    """Run (or resume) a population fit into run directory ``out``; yields every event.

    ``catalog``: a path (read with :func:`engine.catalog.read_catalog`) or a catalog object.
    ``forward``: ``auto``/``emulator``/``sps``/``MODULE:FACTORY`` or a forward-model object.
    ``selection``: e.g. ``"sdss2010-r<19.8"`` or a list of cuts.  Further ``options`` are
    :class:`~engine.population.train.TrainConfig` fields (``lr``, ``n_proj``, ``noise_ramp``, ``flow=...``).
    ``stop_requested``: optional callable polled between steps; when true the run is checkpointed and
    ``KeyboardInterrupt`` is raised (the CLI wires Ctrl-C to it).

    Beyond one process (:mod:`engine.population.distributed`): ``workers=N`` trains the members in
    parallel on a local dask cluster of N worker processes, ``scheduler="tcp://HOST:PORT"`` on an
    existing cluster, ``client=`` on a given ``distributed.Client``; ``retries`` is how often a failed
    member task is retried.  Without any of them the members are trained one after the other in this
    process, exactly as before.

    Large catalogs (:mod:`engine.population.stream`): ``stream="auto"`` streams Parquet catalogs with
    more than :data:`engine.catalog.STREAM_MIN_ROWS` rows from the file (``True``/``"on"``: always,
    ``False``/``"off"``: never); ``stream_options``: :class:`~engine.population.stream.StreamOptions`
    fields.
    """
    from engine.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    out = Path(out)
    dev = resolve_device(device)
    distributed = bool(workers or scheduler or client is not None)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out).acquire()
    history = History(out / "history.jsonl")
    cat = None
    try:
        existing = [p for p in out.iterdir() if p.name != "run.lock" and not p.name.startswith(".")]
        resuming = False
        if existing:
            if resume and is_run_dir(out):
                resuming = True
            elif overwrite:
                check_overwritable(out)
                clear_run_files(out)
            elif resume:
                raise RunDirError(f"{out} has no config.json: nothing to resume (use --overwrite to start afresh)")
            else:
                raise RunDirError(f"run directory {out} already exists; use --resume to continue it or --overwrite to replace it")
        (out / "checkpoints").mkdir(exist_ok=True)
        (out / "flows").mkdir(exist_ok=True)

        if resuming:
            cfg_json = read_json(out / "config.json", "config")
            if cfg_json.get("format_version") != FORMAT_VERSION:
                raise RunDirError(f"{out}/config.json has format_version {cfg_json.get('format_version')!r}; expected {FORMAT_VERSION}")
            cfg = TrainConfig.from_dict(cfg_json["train"])
            streaming = "stream" in cfg_json
            cat_src = catalog if catalog is not None else cfg_json["catalog"]["path"]
            if streaming:
                from engine.catalog import open_catalog_stream

                sopts = StreamOptions.from_dict(cfg_json["stream"])
                cat = open_catalog_stream(str(cat_src), bands=cfg_json.get("catalog_bands", cfg_json["bands"]),
                                          chunk_rows=sopts.chunk_rows)
            else:
                cat = load_catalog(cat_src, cfg_json["bands"])
            if cat.sha256 != cfg_json["catalog"]["sha256"]:
                raise RunDirError(f"the catalog's sha256 differs from the one {out} was fitted to; resume needs the same catalog")
            fdesc = cfg_json["forward"]
            model_bands_arg = list(cfg_json["bands"])
            fit_z_max = cfg_json.get("z_max", z_max)
            if hasattr(forward, "fluxes"):
                model = forward
            else:
                fw = cfg_json["forward"]
                model, _ = make_forward_model(fw["kind"], cfg_json["bands"], dev, cfg_json.get("z_max", z_max), fw.get("file"))
            noise = NoiseModel.load(out / "noise_model.json")
            cuts = parse_selection(cfg_json["selection"])
        else:
            cfg = TrainConfig(members=members, steps=steps, batch=batch, loss=loss, redshift=redshift, seed=seed, **options)
            streaming = _want_stream(catalog, stream)
            if streaming:
                from engine.catalog import open_catalog_stream

                sopts = StreamOptions.from_dict(stream_options)
                want = None if bands in (None, "auto") else bands
                cat = open_catalog_stream(str(catalog), bands=want, chunk_rows=sopts.chunk_rows)
            else:
                cat = load_catalog(catalog, bands)
            cuts = parse_selection(selection)
            check_cuts(cuts, cat.bands)
            model_bands_arg = list(getattr(cat, "filters", None) or cat.bands)
            fit_z_max = z_max
            if hasattr(forward, "fluxes"):
                model, fdesc = forward, {"kind": "custom", "class": type(forward).__name__}
            else:
                model, fdesc = make_forward_model(forward, model_bands_arg, dev, z_max, emulator_path)
            if len(model.bands) != len(cat.bands):
                raise PopsedError(f"forward model bands {list(model.bands)} do not match the catalog bands {list(cat.bands)}")
            model_bands = tuple(model.bands)
            noise = None if streaming else NoiseModel.fit(cat.flux, cat.flux_err, model_bands)
            bounds = torch.as_tensor(model.bounds).detach().cpu().double()
            zmax_eff = float(bounds[list(model.param_names).index("z"), 1]) if "z" in model.param_names else None
            if redshift == "observed":
                try:
                    from engine.catalog import check_redshift

                    if hasattr(cat, "measured"):
                        check_redshift(cat, float(bounds[0, 0]), zmax_eff)
                except ImportError:
                    pass
            cfg_json = {
                "format_version": FORMAT_VERSION,
                "popsed_version": _popsed_version(),
                "catalog": {"path": None if getattr(cat, "path", None) is None else str(Path(cat.path).resolve()),
                            "sha256": cat.sha256,
                            "n_rows": int(cat.n_file_rows if streaming else np.asarray(cat.flux).shape[0])},
                "bands": list(model_bands),
                "catalog_bands": list(cat.bands),
                "forward": fdesc, "loss": cfg.loss, "members": cfg.members, "steps": cfg.steps, "batch": cfg.batch,
                "seed": cfg.seed, "seeds": cfg.member_seeds(),
                "selection": [c.to_dict() for c in cuts], "redshift": cfg.redshift, "z_max": zmax_eff,
                "param_names": list(model.param_names), "bounds": bounds.tolist(),
                "derived_names": list(getattr(model, "derived_names", ())),
                "device": str(dev), "versions": _versions(), "train": cfg.to_dict(),
            }
            if streaming:
                cfg_json["stream"] = sopts.to_dict()
            if distributed:
                cfg_json["execution"] = {"workers": workers, "scheduler": scheduler, "retries": int(retries)}
        # selection bands refer to the model's band names
        cuts = [type(c)(_map_band(c.band, cat.bands, model.bands), c.op, c.value) for c in cuts]
        if streaming:
            from .stream import StreamingTrainer, prepare_streamed

            if resuming:
                obs = _read_observed(out, tuple(model.bands), cfg_json)
            else:
                obs, noise = prepare_streamed(cat, tuple(model.bands), cuts, cfg, sopts)
            trainer = StreamingTrainer(model, obs, noise, cuts, cfg, dev, cat, sopts)
        else:
            obs = prepare_observed(cat.flux, cat.flux_err, tuple(model.bands), cat.z_spec, cuts, cfg.redshift,
                                   cfg.val_fraction, cfg.seed)
            trainer = Trainer(model, obs, noise, cuts, cfg, dev)
        trainer.preview_every = preview_every

        states = {}
        failed: dict[int, str] = {}
        if resuming and distributed:
            states, next_steps = _load_all_checkpoints(out, trainer, cfg)
            finished = {k for k, ms in states.items() if ms.finished}
            events = truncate_events(read_history(out / "history.jsonl"), finished, next_steps)
            history.rewrite(events)
            trainer.time_offset = float(events[-1].get("time", 0.0)) if events else 0.0
            history.open()
            todo = [k for k in range(cfg.members) if not (k in states and states[k].finished)]
            start = {"event": "start", "resumed": True, "from_member": min(todo) if todo else cfg.members,
                     "from_step": next_steps.get(min(todo), 0) if todo else 0,
                     "from_steps": {str(k): next_steps.get(k, 0) for k in todo}}
        elif resuming:
            states, finished, current, next_step = _load_checkpoints(out, trainer, cfg)
            events = truncate_events(read_history(out / "history.jsonl"), finished,
                                     {} if current is None else {current: next_step})
            history.rewrite(events)
            trainer.time_offset = float(events[-1].get("time", 0.0)) if events else 0.0
            history.open()
            start = {"event": "start", "resumed": True, "from_member": current, "from_step": next_step}
        else:
            atomic_write_json(out / "noise_model.json", noise.to_dict())
            _write_observed(out, obs, cat)
            cfg_json["observed"] = obs.report
            cfg_json["noise_floor"] = trainer.noise_floor
            cfg_json["features"] = trainer.feat.names(list(model.bands))
            atomic_write_json(out / "config.json", cfg_json)
            history.rewrite([])
            history.open()
            start = {"event": "start", "resumed": False}
        start.update({"members": cfg.members, "steps": cfg.steps, "batch": cfg.batch, "loss": cfg.loss,
                      "device": str(dev), "pid": os.getpid(), "noise_floor": trainer.noise_floor})
        start = trainer._stamp(start)
        history.append(start)
        yield start

        previews: dict[int, dict] = {}
        if distributed:
            spec = {"train": cfg.to_dict(), "forward": fdesc, "model_bands": model_bands_arg, "z_max": fit_z_max,
                    "forward_object": model if (hasattr(forward, "fluxes") or fdesc.get("kind") == "custom") else None,
                    "device": str(device), "noise": noise.to_dict(), "cuts": [c.to_dict() for c in cuts],
                    "checkpoint_every": int(checkpoint_every), "checkpoint_seconds": float(checkpoint_seconds),
                    "preview_every": int(preview_every),
                    "stream": ({"path": str(Path(cat.path).resolve()), "catalog_bands": list(cat.bands),
                                "options": sopts.to_dict()} if streaming else None)}
            yield from _run_distributed(out, history, trainer, cfg, spec, obs, states, failed, previews, model,
                                        workers=workers, scheduler=scheduler, client=client, retries=retries,
                                        stop_requested=stop_requested)
        else:
            yield from _run_sequential(out, history, trainer, cfg, states, previews, model, checkpoint_every,
                                       checkpoint_seconds, stop_requested)

        # ------------------------------------------------------------------ results
        for k in range(cfg.members):
            if k in failed:
                continue
            if k not in states or states[k].best_flow is None:
                sd = torch_load(out / "checkpoints" / f"member_{k}.pt", "checkpoint")
                states[k] = trainer.load_member(sd)
        member_rows = [{"member": k, "status": states[k].status, "best_val_loss": _fin(states[k].best_val),
                        "best_step": states[k].best_step, "final_val_loss": _fin(states[k].last_val),
                        "seconds": round(states[k].seconds, 3)} if k not in failed else
                       {"member": k, "status": "failed", "best_val_loss": None, "best_step": None,
                        "final_val_loss": None, "seconds": None} for k in range(cfg.members)]
        rep = ensemble_report(member_rows, cfg.converge_factor, trainer.noise_floor)
        for row in rep["members"]:
            if row["member"] in failed:
                row["status"] = "failed"
                row["note"] = f"task failed on the cluster: {failed[row['member']]}"
        pop_cols: dict[str, list] = {}
        for k in rep["converged"]:
            cols = trainer.population(states[k])
            for name, v in cols.items():
                pop_cols.setdefault(name, []).append(v)
        pop = {name: np.concatenate(v) for name, v in pop_cols.items()}
        if pop:
            atomic_write_parquet(out / "population.parquet", pop)
        summary = _summary(cfg, cfg_json if not resuming else read_json(out / "config.json"), rep, pop, trainer,
                           list(model.param_names), list(pop.keys()))
        if failed:
            summary["failed"] = sorted(failed)
            summary["notes"].append(
                f"members {sorted(failed)} failed on the cluster and are not in population.parquet "
                f"({'; '.join(f'{k}: {v}' for k, v in sorted(failed.items()))}); `popsed fit --resume` trains them again")
        atomic_write_json(out / "summary.json", summary)
        done = trainer._stamp({"event": "done", "status": "complete", "converged": rep["converged"],
                               "dropped": rep["dropped"], **({"failed": sorted(failed)} if failed else {})})
        history.append(done)
        yield done
    finally:
        if cat is not None and hasattr(cat, "close"):
            cat.close()
        history.close()
        lock.release()


def _run_sequential(out, history, trainer, cfg, states, previews, model, checkpoint_every, checkpoint_seconds,
                    stop_requested) -> Iterator[dict]:
    """Members one after the other in this process (the behaviour without a cluster)."""
    last_ckpt = {"step": -1, "t": time.time()}
    gen = trainer.events(states)
    try:
        for ev in gen:
            history.append(ev)
            ms = trainer.current
            if ev["event"] == "step":
                if trainer.last_preview is not None and trainer.last_preview["step"] == ev["step"]:
                    previews[ms.member] = trainer.last_preview
                    _write_preview(out, previews, model.bands)
                due = (ev["step"] - last_ckpt["step"] >= checkpoint_every
                       or time.time() - last_ckpt["t"] >= checkpoint_seconds)
                stop = stop_requested is not None and stop_requested()
                if due or stop:
                    _save_checkpoint(out, trainer, ms)
                    last_ckpt.update(step=ev["step"], t=time.time())
                if stop:
                    raise KeyboardInterrupt
            elif ev["event"] == "member_done":
                _save_flow(out, trainer, ms, cfg)
                _save_checkpoint(out, trainer, ms)
                states[ms.member] = _light(ms)
                last_ckpt.update(step=-1, t=time.time())
            yield ev
    except GeneratorExit:
        # the consumer stopped iterating: the trainer sits between steps, so its state is consistent
        ms = getattr(trainer, "current", None)
        if ms is not None and not ms.finished:
            _save_checkpoint(out, trainer, ms)
        raise


def _run_distributed(out, history, trainer, cfg, spec, obs, states, failed, previews, model, *, workers, scheduler,
                     client, retries, stop_requested) -> Iterator[dict]:
    """Members as dask tasks (:mod:`engine.population.distributed`); this process writes the run."""
    from . import distributed as dd

    todo: dict[int, bytes | None] = {}
    for k in range(cfg.members):
        ms = states.get(k)
        if ms is not None and ms.finished:
            continue
        todo[k] = dd.state_to_bytes(trainer.member_state_dict(ms)) if ms is not None else None
    if not todo:
        return
    payload = {"bands": list(obs.bands), "flux": obs.flux, "flux_err": obs.flux_err, "z_spec": obs.z_spec,
               "split": np.asarray(obs.split).astype(str), "report": obs.report}
    c, close, threads = dd.open_client(workers, scheduler, client)
    spec = dict(spec, torch_threads=threads)
    try:
        for msg in dd.run_members(c, spec, payload, todo, retries=retries, stop_requested=stop_requested):
            kind = msg[0]
            if kind == "event":
                _, ev, prev, ckpt = msg
                ev["time"] = round(trainer.now(), 4)
                history.append(ev)
                k = ev["member"]
                if prev is not None:
                    previews[k] = {"member": k, "step": prev["step"], "mag": prev["mag"]}
                    _write_preview(out, previews, model.bands)
                if ckpt is not None:
                    atomic_write_bytes(out / "checkpoints" / f"member_{k}.pt", ckpt)
                yield ev
            elif kind == "retry":
                _, k, from_step, attempt = msg
                kept = [e for e in read_history(out / "history.jsonl")
                        if not (e.get("member") == k and e.get("event") in ("step", "member_done")
                                and int(e.get("step", from_step)) >= from_step)]
                history.rewrite(kept)
                history.open()
                ev = trainer._stamp({"event": "member_retry", "member": k, "from_step": from_step, "attempt": attempt})
                history.append(ev)
                yield ev
            elif kind == "result":
                _, k, data, done_ev = msg
                ms = trainer.load_member(dd.state_from_bytes(data))
                _save_flow(out, trainer, ms, cfg)
                _save_checkpoint(out, trainer, ms)
                states[k] = ms
                ev = done_ev or {"event": "member_done", "member": k, "status": ms.status,
                                 "best_val_loss": _fin(ms.best_val), "best_step": ms.best_step,
                                 "final_val_loss": _fin(ms.last_val), "seconds": round(ms.seconds, 3)}
                ev["time"] = round(trainer.now(), 4)
                history.append(ev)
                yield ev
            elif kind == "failed":
                _, k, text, attempts = msg
                failed[k] = f"{text} (after {attempts} attempt{'s' if attempts != 1 else ''})"
                ev = trainer._stamp({"event": "member_failed", "member": k, "error": text, "attempts": attempts})
                history.append(ev)
                yield ev
    finally:
        close()


def _want_stream(catalog, stream) -> bool:
    """Whether to stream the catalog from its Parquet file (see :func:`iter_fit`)."""
    if stream in (False, "off", "no", "never"):
        return False
    if hasattr(catalog, "flux") or catalog is None:
        if stream in (True, "on", "yes", "always"):
            raise PopsedError("streaming needs a Parquet catalog file, not an in-memory catalog")
        return False
    if stream in (True, "on", "yes", "always"):
        return True
    if stream not in ("auto", None):
        raise PopsedError(f"--stream must be auto, on or off, got {stream!r}")
    from engine.catalog import STREAM_MIN_ROWS, parquet_num_rows

    n = parquet_num_rows(catalog)
    return n is not None and n > STREAM_MIN_ROWS


def _read_observed(out: Path, bands, cfg_json: dict) -> Observed:
    """The resident rows of a streamed fit, back from ``observed.parquet`` (for ``--resume``)."""
    import pyarrow.parquet as pq

    t = pq.read_table(out / "observed.parquet")
    flux = np.stack([t.column(f"flux_{b}").to_numpy() for b in bands], axis=1)
    err = np.stack([t.column(f"flux_err_{b}").to_numpy() for b in bands], axis=1)
    z = t.column("z_spec").to_numpy() if "z_spec" in t.column_names else None
    split = np.asarray(t.column("split").to_pylist()).astype(str)
    return Observed(tuple(bands), flux, err, z, split, dict(cfg_json.get("observed") or {}))


def _load_all_checkpoints(out: Path, trainer: Trainer, cfg: TrainConfig):
    """Every member's checkpoint (members run in parallel may all be part-way): states, next step."""
    states, next_steps = {}, {}
    for k in range(cfg.members):
        p = out / "checkpoints" / f"member_{k}.pt"
        if not p.is_file():
            next_steps[k] = 0
            continue
        sd = torch_load(p, "checkpoint")
        if not isinstance(sd, dict) or sd.get("format") != "popsed-checkpoint":
            raise RunDirError(f"{p} is not a popsed checkpoint")
        ms = trainer.load_member(sd)
        states[k] = ms
        next_steps[k] = ms.step
    return states, next_steps


def fit(catalog, out, *, progress: bool = False, **kwargs) -> Run:
    """Run :func:`iter_fit` to the end and return the :class:`Run`.  Same arguments as :func:`iter_fit`.

    In the main thread, the first Ctrl-C stops at the next step boundary with a checkpoint (resume with
    ``resume=True``) and raises ``KeyboardInterrupt``; a second Ctrl-C interrupts at once.
    """
    bar = None
    with _Interrupt() as intr:
        it = iter_fit(catalog, out, stop_requested=lambda: intr.requested, **kwargs)
        try:
            for ev in it:
                if progress:
                    bar = _progress(bar, ev)
        finally:
            it.close()
            if bar is not None:
                bar.close()
    return Run(out)


# ---------------------------------------------------------------------------------------------- helpers
def _popsed_version() -> str:
    try:
        from engine import __version__

        return __version__
    except Exception:  # pragma: no cover
        return "?"


def _fin(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _map_band(band, cat_bands, model_bands):
    if band in model_bands:
        return band
    if band in cat_bands:
        return model_bands[list(cat_bands).index(band)]
    return band


def _light(ms):
    ms.opt = None  # drop the optimiser state of a finished member (keeps memory flat)
    ms.flow = ms.ema_flow = None
    return ms


def _progress(bar, ev):
    if ev["event"] == "start":
        from tqdm.auto import tqdm

        total = ev["members"] * ev["steps"]
        if bar is None:
            bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        done = ev.get("from_member", 0) or 0
        bar.n = done * ev["steps"] + (ev.get("from_step", 0) or 0) if ev.get("resumed") else 0
        bar.refresh()
    elif ev["event"] == "step" and bar is not None:
        bar.update(1)
        post = {"m": ev["member"], "loss": f"{ev['train_loss']:.4f}" if ev["train_loss"] is not None else "nan",
                "noise": f"{ev['noise']:.2f}"}
        if ev.get("val_loss") is not None:
            post["val"] = f"{ev['val_loss']:.4f}"
        bar.set_postfix(post, refresh=False)
    elif ev["event"] == "member_done" and bar is not None:
        bar.write(f"member {ev['member']}: {ev['status']}, best validation loss {ev['best_val_loss']} at step {ev['best_step']}")
    return bar


def _save_checkpoint(out: Path, trainer: Trainer, ms) -> None:
    atomic_torch_save(out / "checkpoints" / f"member_{ms.member}.pt", trainer.member_state_dict(ms))


def _save_flow(out: Path, trainer: Trainer, ms, cfg: TrainConfig) -> None:
    state = ms.best_flow if ms.best_flow else _cpu_state(ms.eval_flow)
    atomic_torch_save(out / "flows" / f"member_{ms.member}.pt", {
        "format": "popsed-flow", "version": 1, "member": ms.member, "seed": ms.seed,
        "best_step": ms.best_step, "best_val_loss": float(ms.best_val), "status": ms.status,
        "flow_config": cfg.flow.to_dict(), "bounds": trainer.bounds.clone(),
        "param_names": list(trainer.param_names), "state_dict": state,
    })


def _load_checkpoints(out: Path, trainer: Trainer, cfg: TrainConfig):
    states, finished = {}, set()
    current, next_step = None, 0
    for k in range(cfg.members):
        p = out / "checkpoints" / f"member_{k}.pt"
        if p.is_file():
            sd = torch_load(p, "checkpoint")
            if not isinstance(sd, dict) or sd.get("format") != "popsed-checkpoint":
                raise RunDirError(f"{p} is not a popsed checkpoint")
            ms = trainer.load_member(sd)
            states[k] = ms
            if ms.finished:
                finished.add(k)
                continue
            current, next_step = k, ms.step
            break
        current, next_step = k, 0
        break
    return states, finished, current, next_step


def _write_observed(out: Path, obs: Observed, cat) -> None:
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
    atomic_write_parquet(out / "observed.parquet", cols)


def _write_preview(out: Path, previews: dict, bands) -> None:
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
    atomic_write_parquet(out / "preview.parquet", {k: np.concatenate(v) for k, v in cols.items()})


#: Bluest effective wavelength [Å] above which a fit's bands see no ultraviolet (SDSS u: 3590 Å).
UV_EDGE_AA = 3000.0


def optical_only_note(bands) -> str | None:
    """A note for fits whose bands are all redder than :data:`UV_EDGE_AA`: there, grey dust (n_dust near 1,
    a flat attenuation curve across the optical) trades ``tau2`` against ``log_mstar`` with colour changes of
    a few hundredths of a magnitude, and the population is only loosely pinned along that direction (README,
    "Dust and mass from optical colours"; ``bench/identifiability.py``).  ``None`` when a band is bluer, or a
    band is not a known filter."""
    from engine.sps.photometry import load_filter

    try:
        lam = [load_filter(b).effective_wavelength for b in bands]
    except ValueError:  # e.g. the toy model's bands
        return None
    if not lam or min(lam) <= UV_EDGE_AA:
        return None
    return (f"no band bluer than {UV_EDGE_AA:.0f} A (bluest {min(lam):.0f} A): for grey dust (n_dust near 1) "
            "these bands tell tau2 from log_mstar only by colour changes of a few hundredths of a magnitude, so "
            "both are loosely constrained there; UV bands (e.g. GALEX FUV/NUV) constrain them")


def _summary(cfg, cfg_json, rep, pop, trainer, param_names, columns) -> dict:
    pct = {}
    if pop:
        for name in list(param_names) + [c for c in columns if c not in param_names and c not in ("member", "selected")]:
            v = np.asarray(pop[name], dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                p16, p50, p84 = np.percentile(v, [16, 50, 84])
                pct[name] = {"p16": float(p16), "p50": float(p50), "p84": float(p84)}
    notes = []
    if rep["dropped"]:
        notes.append(f"members {rep['dropped']} did not converge and are not in population.parquet")
    optical = optical_only_note(cfg_json.get("bands", []))
    if optical:
        notes.append(optical)
    return {
        "format_version": FORMAT_VERSION,
        "status": "complete",
        "members": rep["members"],
        "converged": rep["converged"],
        "dropped": rep["dropped"],
        "notes": notes,
        "noise_floor": trainer.noise_floor,
        "noise_floor_definition": "sliced Wasserstein distance (fixed directions) between the validation and training rows of the catalog, in the loss's standardised space",
        "val_loss_definition": "sliced Wasserstein distance (fixed directions) between predicted (full noise, selected) and validation rows",
        "n_population": int(len(pop["member"])) if pop else 0,
        "percentiles": pct,
        "observed": cfg_json.get("observed"),
        "wall_time_s": round(trainer.now(), 3),
        "member_seconds": {m["member"]: m.get("seconds") for m in rep["members"]},
    }
