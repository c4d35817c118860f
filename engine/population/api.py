"""``fit`` / ``iter_fit``: a population fit written into a run directory (docs/run_format.md).

``iter_fit(...)`` is a generator of the training events (the same dicts that go to ``history.jsonl``);
``fit(...)`` consumes it and returns the :class:`~engine.population.run.Run`.  The pieces: configuration
(:mod:`.config`), the catalog (:mod:`.observed`), the forward model (:mod:`.forward`), the objective
(:mod:`.objective`), the trainer (:mod:`.trainer`), the run directory (:mod:`.rundir`; checkpoints and
``--resume``) and execution (:mod:`.execute`: in this process or on a dask cluster).
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

from engine.errors import PopsedError
from engine.runtime import tune_cpu_allocator

from .config import FitOptions, FitSpec, TrainConfig, split_fit_kwargs
from .execute import run_distributed, run_sequential, task_spec
from .forward import resolve_device
from .problem import FitProblem, build_trainer, new_problem, resumed_problem
from .run import Run
from .rundir import RunDir
from .trainer import Trainer

__all__ = ["fit", "iter_fit"]


# ---------------------------------------------------------------------------------------------- interrupt
class _Interrupt:
    """First Ctrl-C asks for a clean stop at the next step boundary; a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                self.requested = True
                signal.signal(signal.SIGINT,
                              self._old if self._old is not None else signal.default_int_handler)

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


# ---------------------------------------------------------------------------------------------- the fit
def iter_fit(catalog, out, config: TrainConfig | None = None, options: FitOptions | None = None,
             spec: FitSpec | None = None, *, stop_requested=None, **kwargs) -> Iterator[dict]:
    """Run (or resume) a population fit into run directory ``out``; yields every event.

    ``catalog``: a path (read with :func:`engine.catalog.read_catalog`) or a catalog object (None when
    resuming: the path stored in the run).  ``config``: the :class:`~engine.population.config.TrainConfig`
    of a new run (a resumed run uses its own); ``options``: :class:`~engine.population.config.FitOptions`
    (resume/overwrite, checkpoint cadence, device, ``workers``/``scheduler``/``client`` for a dask
    cluster, ``stream`` for large Parquet catalogs); ``spec``: :class:`~engine.population.config.FitSpec`
    (``bands``, ``selection`` such as ``"sdss2010-r<19.8"``, ``forward``: ``auto``/``emulator``/``sps``/
    ``MODULE:FACTORY`` or a forward-model object, ``z_max``, ``emulator_path``).  The fields of all three may
    also be given as keywords (``members=2, steps=30, workers=2, selection=...``).
    ``stop_requested``: optional callable polled between steps; when true the run is checkpointed and
    ``KeyboardInterrupt`` is raised (the CLI wires Ctrl-C to it).
    """
    cfg_kwargs, options, spec = split_fit_kwargs(kwargs, options, spec)
    if config is not None and cfg_kwargs:
        raise PopsedError("TrainConfig fields given both in config and as keywords: "
                          f"{', '.join(sorted(cfg_kwargs))}")
    tune_cpu_allocator()
    dev = resolve_device(options.device)
    RunDir.check(out, options.resume, options.overwrite)
    p = trainer = None
    if not options.resume:  # every input is checked before anything is written
        p, trainer, obs = _new_fit(catalog, config, cfg_kwargs, spec, options, dev)
    try:
        rd = RunDir.open(Path(out), options.resume, options.overwrite)
    except BaseException:
        _close(p)
        raise
    try:
        if rd.resuming:
            p = resumed_problem(rd, catalog, spec, dev)
            trainer, obs = build_trainer(p, rd, dev, options.preview_every)
        states, start = (rd.begin_resume(trainer, p.cfg.members, parallel=options.distributed)
                         if rd.resuming else
                         ({}, rd.begin_new(p.cfg_json, trainer, obs, p.noise,
                                           trainer.feat.names(list(p.model.bands)))))
        if not rd.resuming and p.cfg_json.get("notices"):
            start["notices"] = list(p.cfg_json["notices"])
        yield _start_event(rd, trainer, start, dev)
        failed: dict[int, str] = {}
        previews: dict[int, dict] = {}
        if options.distributed:
            yield from run_distributed(rd, trainer, task_spec(p, options), states, failed, previews, options,
                                       stop_requested)
        else:
            yield from run_sequential(rd, trainer, states, previews, options, stop_requested)
        yield _finish(rd, trainer, p, states, failed)
    finally:
        _close(p)
        rd.close()


def _new_fit(catalog, config: TrainConfig | None, cfg_kwargs: dict, spec: FitSpec, options: FitOptions, dev):
    """The problem, trainer and observed rows of a new fit: the catalog read and checked, the bands, the
    selection, the forward model and the configuration, before the run directory is created."""
    p = new_problem(catalog, config if config is not None else TrainConfig(**cfg_kwargs), spec, options, dev)
    try:
        trainer, obs = build_trainer(p, None, dev, options.preview_every)
    except BaseException:
        _close(p)
        raise
    return p, trainer, obs


def _close(p: FitProblem | None) -> None:
    if p is not None and hasattr(p.cat, "close"):
        p.cat.close()


def _start_event(rd: RunDir, trainer: Trainer, start: dict, dev) -> dict:
    cfg = trainer.cfg
    start.update({"members": cfg.members, "steps": cfg.steps, "batch": cfg.batch, "loss": cfg.loss,
                  "device": str(dev), "pid": os.getpid(), "noise_floor": trainer.noise_floor})
    start = trainer._stamp(start)
    rd.history.append(start)
    return start


def _finish(rd: RunDir, trainer: Trainer, p: FitProblem, states: dict, failed: dict[int, str]) -> dict:
    """Write the results; the ``done`` event."""
    rep = rd.write_results(trainer, p.cfg, p.cfg_json, states, failed)
    done = trainer._stamp({"event": "done", "status": "complete", "converged": rep["converged"],
                           "kept": rep["kept"], "dropped": rep["dropped"],
                           **({"failed": sorted(failed)} if failed else {})})
    rd.history.append(done)
    return done


def fit(catalog, out, config: TrainConfig | None = None, options: FitOptions | None = None,
        spec: FitSpec | None = None, *, notify=None, **kwargs) -> Run:
    """Run :func:`iter_fit` to the end and return the :class:`Run`.  Same arguments as :func:`iter_fit`;
    ``progress=True`` (or ``options.progress``) shows a progress bar; ``notify``: a callable given each
    choice the fit made for the user (redshift mode, selection; the ``notices`` of the start event).

    In the main thread, the first Ctrl-C stops at the next step boundary with a checkpoint (resume with
    ``resume=True``) and raises ``KeyboardInterrupt``; a second Ctrl-C interrupts at once.
    """
    cfg_kwargs, options, spec = split_fit_kwargs(kwargs, options, spec)
    bar = None
    with _Interrupt() as intr:
        it = iter_fit(catalog, out, config, options, spec, stop_requested=lambda: intr.requested,
                      **cfg_kwargs)
        try:
            for ev in it:
                if notify is not None and ev["event"] == "start":
                    for notice in ev.get("notices", []):
                        notify(notice)
                if options.progress:
                    bar = _progress(bar, ev)
        finally:
            it.close()
            if bar is not None:
                bar.close()
    return Run(out)


def _progress(bar, ev):
    if ev["event"] == "start":
        total = ev["members"] * ev["steps"]
        if bar is None:
            bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        done = ev.get("from_member", 0) or 0
        bar.n = done * ev["steps"] + (ev.get("from_step", 0) or 0) if ev.get("resumed") else 0
        bar.refresh()
    elif ev["event"] == "step" and bar is not None:
        bar.update(1)
        post = {"m": ev["member"],
                "loss": f"{ev['train_loss']:.4f}" if ev["train_loss"] is not None else "nan",
                "noise": f"{ev['noise']:.2f}"}
        if ev.get("val_loss") is not None:
            post["val"] = f"{ev['val_loss']:.4f}"
        bar.set_postfix(post, refresh=False)
    elif ev["event"] == "member_done" and bar is not None:
        # converged or not: decided at the end
        what = "diverged" if ev["status"] == "diverged" else "finished"
        bar.write(f"member {ev['member']} {what}, kept validation loss {ev['best_val_loss']} at step "
                  f"{ev['best_step']}")
    return bar
