"""Executing a fit: the members one after the other in this process (:func:`run_sequential`) or as dask
tasks (:func:`run_distributed`, with :mod:`engine.population.distributed`).  Either way this process writes
the run directory; both yield the events as they are written to ``history.jsonl``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from . import distributed as dd
from .config import FitOptions
from .observed import Observed
from .problem import FitProblem
from .run import read_history
from .rundir import RunDir, member_done_event
from .trainer import MemberState, Trainer

__all__ = ["run_distributed", "run_sequential", "task_spec"]


def _light(ms: MemberState) -> MemberState:
    ms.opt = None  # drop the optimiser state of a finished member (keeps memory flat)
    ms.flow = ms.ema_flow = None
    return ms


def run_sequential(rd: RunDir, trainer: Trainer, states: dict, previews: dict, options: FitOptions,
                   stop_requested: Callable[[], bool] | None) -> Iterator[dict]:
    """Members one after the other in this process (the behaviour without a cluster)."""
    cfg, bands = trainer.cfg, trainer.bands
    last_ckpt = {"step": -1, "t": time.time()}
    gen = trainer.events(states)
    try:
        for ev in gen:
            rd.history.append(ev)
            ms = trainer.current
            if ev["event"] == "step":
                if trainer.last_preview is not None and trainer.last_preview["step"] == ev["step"]:
                    previews[ms.member] = trainer.last_preview
                    rd.write_preview(previews, bands)
                due = (ev["step"] - last_ckpt["step"] >= options.checkpoint_every
                       or time.time() - last_ckpt["t"] >= options.checkpoint_seconds)
                stop = stop_requested is not None and stop_requested()
                if due or stop:
                    rd.save_checkpoint(trainer, ms)
                    last_ckpt.update(step=ev["step"], t=time.time())
                if stop:
                    raise KeyboardInterrupt
            elif ev["event"] == "member_done":
                rd.save_flow(trainer, ms, cfg)
                rd.save_checkpoint(trainer, ms)
                states[ms.member] = _light(ms)
                last_ckpt.update(step=-1, t=time.time())
            yield ev
    except GeneratorExit:
        # the consumer stopped iterating: the trainer sits between steps, so its state is consistent
        ms = getattr(trainer, "current", None)
        if ms is not None and not ms.finished:
            rd.save_checkpoint(trainer, ms)
        raise


def task_spec(p: FitProblem, options: FitOptions) -> dict:
    """The plain description of the fit a worker rebuilds its trainer from
    (:func:`distributed.build_trainer`)."""
    custom = p.custom_forward or p.forward.get("kind") == "custom"
    return {"train": p.cfg.to_dict(), "forward": p.forward, "model_bands": p.model_bands, "z_max": p.z_max,
            "forward_object": p.model if custom else None,
            "device": str(options.device), "noise": p.noise.to_dict(), "cuts": [c.to_dict() for c in p.cuts],
            "checkpoint_every": int(options.checkpoint_every),
            "checkpoint_seconds": float(options.checkpoint_seconds),
            "preview_every": int(options.preview_every),
            "stream": ({"path": str(Path(p.cat.path).resolve()), "catalog_bands": list(p.cat.bands),
                        "options": p.stream.to_dict()} if p.stream is not None else None)}


def _payload(obs: Observed) -> dict:
    return {"bands": list(obs.bands), "flux": obs.flux, "flux_err": obs.flux_err, "z_spec": obs.z_spec,
            "split": np.asarray(obs.split).astype(str), "report": obs.report}


def run_distributed(rd: RunDir, trainer: Trainer, spec: dict, states: dict, failed: dict, previews: dict,
                    options: FitOptions, stop_requested=None) -> Iterator[dict]:
    """Members as dask tasks (:mod:`engine.population.distributed`); this process writes the run.  ``spec``:
    :func:`task_spec`; the observed rows are the trainer's.  Members whose task fails for good go into
    ``failed`` (member -> reason)."""
    todo: dict[int, bytes | None] = {}
    for k in range(trainer.cfg.members):
        ms = states.get(k)
        if ms is not None and ms.finished:
            continue
        todo[k] = dd.state_to_bytes(trainer.member_state_dict(ms)) if ms is not None else None
    if not todo:
        return
    c, close, threads = dd.open_client(options.workers, options.scheduler, options.client)
    spec = dict(spec, torch_threads=threads)
    try:
        for msg in dd.run_members(c, spec, _payload(trainer.obs), todo, retries=options.retries,
                                  stop_requested=stop_requested):
            yield from _handle(rd, trainer, msg, states, failed, previews)
    finally:
        close()


def _handle(rd: RunDir, trainer: Trainer, msg: tuple, states: dict, failed: dict,
            previews: dict) -> Iterator[dict]:
    """Write what one message of :func:`distributed.run_members` brings; yield its event."""
    kind = msg[0]
    if kind == "event":
        _, ev, prev, ckpt = msg
        ev["time"] = round(trainer.now(), 4)
        rd.history.append(ev)
        k = ev["member"]
        if prev is not None:
            previews[k] = {"member": k, "step": prev["step"], "mag": prev["mag"]}
            rd.write_preview(previews, trainer.bands)
        if ckpt is not None:
            rd.write_checkpoint_bytes(k, ckpt)
        yield ev
    elif kind == "retry":
        _, k, from_step, attempt = msg
        kept = [e for e in read_history(rd.path / "history.jsonl")
                if not (e.get("member") == k and e.get("event") in ("step", "member_done")
                        and int(e.get("step", from_step)) >= from_step)]
        rd.history.rewrite(kept)
        rd.history.open()
        ev = trainer._stamp({"event": "member_retry", "member": k, "from_step": from_step,
                             "attempt": attempt})
        rd.history.append(ev)
        yield ev
    elif kind == "result":
        _, k, data, done_ev = msg
        ms = trainer.load_member(dd.state_from_bytes(data))
        rd.save_flow(trainer, ms, trainer.cfg)
        rd.save_checkpoint(trainer, ms)
        states[k] = ms
        ev = done_ev or member_done_event(ms)
        ev["time"] = round(trainer.now(), 4)
        rd.history.append(ev)
        yield ev
    elif kind == "failed":
        _, k, text, attempts = msg
        failed[k] = f"{text} (after {attempts} attempt{'s' if attempts != 1 else ''})"
        ev = trainer._stamp({"event": "member_failed", "member": k, "error": text, "attempts": attempts})
        rd.history.append(ev)
        yield ev
