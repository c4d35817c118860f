"""Ensemble members as ``dask.distributed`` tasks (``popsed fit --workers N`` / ``--scheduler ADDR``).

Each member is one task (:func:`train_member`).  The task gets only plain data -- the training
configuration, the forward model's description (``emulator``/``sps``/``MODULE:FACTORY`` and its file),
the noise model and the cuts as JSON-like dicts, the observed rows as numpy arrays (scattered once; for
a streamed catalog the resident rows and the Parquet path) and, when resuming, the member's checkpoint
as ``torch.save`` bytes -- and rebuilds the forward model and the
:class:`~engine.population.trainer.Trainer` on the worker.  It trains the member and streams its events
through a ``distributed.Queue`` to the client: every step event, the dashboard previews and, every
``checkpoint_every`` steps (or ``checkpoint_seconds``), the member's resumable state.  It returns the
final state (bytes).  The *client* writes everything into the run directory -- ``history.jsonl`` line
by line as the events arrive, ``preview.parquet``, ``checkpoints/``, ``flows/``, ``population.parquet``
and ``summary.json`` -- so no file system needs to be shared with the workers, and the run keeps its
guarantees (atomic writes, the lock, ``--resume``).

Failures: tasks are submitted with ``retries`` (an exception in the task is retried that many times;
a worker that dies is replaced and its task rescheduled by dask).  A retried attempt announces itself;
the client then cuts that member's events back to where the attempt starts (the same state, so the
same steps are redone with the same numbers) and records a ``member_retry`` event.  A member whose
task finally fails is reported -- a ``member_failed`` event, ``status: failed`` and a note in
``summary.json`` -- never dropped silently; ``--resume`` trains it again.

Determinism: a member trained on a worker is the member trained in-process with the same number of
torch threads (local clusters give each worker ``cpu_count // workers`` threads, at least one).

dask is imported only here, and only when a cluster is asked for.
"""
from __future__ import annotations

import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from engine.catalog import open_catalog_stream
from engine.errors import PopsedError

from .config import TrainConfig
from .forward import make_forward_model, resolve_device
from .noise import NoiseModel
from .observed import Observed
from .selection import parse_selection
from .stream import StreamingTrainer, StreamOptions
from .trainer import Trainer

__all__ = ["build_trainer", "open_client", "run_members", "state_from_bytes", "state_to_bytes",
           "train_member"]


# ---------------------------------------------------------------------------------------------- serialisation
def state_to_bytes(state: dict) -> bytes:
    """A member state dict (tensors, numbers, strings) as ``torch.save`` bytes."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def state_from_bytes(data: bytes) -> dict:
    """Inverse of :func:`state_to_bytes` (``weights_only=True``: no pickled objects)."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------- cluster
def _warm_up() -> None:
    """Import the modules a member task needs (run on every worker of a new local cluster): the imports are
    the point of this function, so they are local to it."""
    import engine.population.trainer  # noqa: F401  (torch, nflows, the trainer)
    import engine.sps.model  # noqa: F401


def open_client(workers: int | None = None, scheduler: str | None = None, client: Any = None
                ) -> tuple[Any, Callable[[], None], int | None]:
    """A dask ``Client``: the given one, one connected to ``scheduler``, or a new local cluster.

    Returns ``(client, close, torch_threads)``: ``close()`` shuts down what was started here;
    ``torch_threads`` is the torch thread count each task should use (local clusters:
    ``cpu_count // workers``, at least 1; None = leave the worker's setting alone).
    """
    try:
        # dask is imported only when a cluster is asked for (module docstring)
        import distributed
    except ImportError as exc:  # pragma: no cover - dask is a dependency
        raise PopsedError(f"--workers/--scheduler need dask.distributed ({exc})") from None
    if client is not None:
        return client, (lambda: None), None
    if scheduler:
        try:
            c = distributed.Client(scheduler, timeout="20s")
        except Exception as exc:
            raise PopsedError(f"cannot connect to the dask scheduler at {scheduler}: {type(exc).__name__}: "
                              f"{exc}") from None
        return c, c.close, None
    if workers is None or int(workers) < 1:
        raise PopsedError(f"--workers must be >= 1, got {workers}")
    n = int(workers)
    import dask  # with distributed above

    # dask's nannies export MALLOC_TRIM_THRESHOLD_=65536 to their workers; with torch's large short-lived
    # tensors that makes every step page-fault its memory back in (glibc returns freed pages to the system)
    env = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
           if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
    c = distributed.Client(cluster)
    c.wait_for_workers(n, timeout=120)
    # import torch, nflows and the trainer on every worker at once, before any member is submitted: otherwise
    # each task pays seconds of imports when it lands, and members that should run side by side start apart
    c.run(_warm_up)

    def close() -> None:
        c.close()
        cluster.close()

    return c, close, max(1, (os.cpu_count() or 1) // n)


# ---------------------------------------------------------------------------------------------- worker side
def _observed(payload: dict) -> Observed:
    return Observed(tuple(payload["bands"]), payload["flux"], payload["flux_err"], payload["z_spec"],
                    np.asarray(payload["split"]).astype(str), dict(payload["report"]))


def build_trainer(spec: dict, observed: dict):
    """Rebuild the forward model and the trainer from the plain ``spec`` (see :func:`run_members`)."""
    dev = resolve_device(spec["device"])
    if spec.get("forward_object") is not None:
        model = spec["forward_object"]
    else:
        fw = spec["forward"]
        model, _ = make_forward_model(fw["kind"], spec["model_bands"], dev, spec["z_max"], fw.get("file"))
    cfg = TrainConfig.from_dict(spec["train"])
    noise = NoiseModel.from_dict(spec["noise"])
    cuts = parse_selection(spec["cuts"])
    obs = _observed(observed)
    st = spec.get("stream")
    if st:
        opts = StreamOptions.from_dict(st["options"])
        stream = open_catalog_stream(st["path"], bands=st["catalog_bands"], chunk_rows=opts.chunk_rows)
        trainer = StreamingTrainer(model, obs, noise, cuts, cfg, dev, stream, opts)
    else:
        trainer = Trainer(model, obs, noise, cuts, cfg, dev)
    trainer.preview_every = int(spec.get("preview_every", 0))
    return trainer


def train_member(spec: dict, observed: dict, member: int, state: bytes | None) -> bytes:
    """The task: train member ``member`` (from ``state``, a checkpoint, if given) and return its final
    state as bytes; events, previews and checkpoints go to the ``distributed.Queue`` ``spec["queue"]``."""
    # dask only when a cluster is used (module docstring)
    from distributed import Queue

    attempt = uuid.uuid4().hex
    threads = spec.get("torch_threads")
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        trainer = build_trainer(spec, observed)
        ms = trainer.load_member(state_from_bytes(state)) if state else trainer.new_member(int(member))
        q = Queue(spec["queue"])
        q.put({"kind": "attempt", "member": int(member), "attempt": attempt, "from_step": int(ms.step),
               "pid": os.getpid()})
        every, secs = int(spec.get("checkpoint_every", 50)), float(spec.get("checkpoint_seconds", 30.0))
        last_step, last_t = ms.step - 1, time.time()
        for ev in trainer.iter_member(ms):
            msg: dict = {"kind": "event", "member": int(member), "attempt": attempt, "event": ev}
            if ev["event"] == "step":
                p = trainer.last_preview
                if p is not None and p["step"] == ev["step"]:
                    mag = np.ascontiguousarray(p["mag"], dtype="<f8")
                    msg["preview"] = {"step": int(p["step"]), "shape": list(mag.shape), "mag": mag.tobytes()}
                if ev["step"] - last_step >= every or time.time() - last_t >= secs:
                    msg["checkpoint"] = state_to_bytes(trainer.member_state_dict(ms))
                    last_step, last_t = ev["step"], time.time()
            q.put(msg)
        return state_to_bytes(trainer.member_state_dict(ms))
    finally:
        if threads:
            torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------- client side
def _payload(observed: dict) -> dict:
    return observed


def _drain(q, wait: float) -> list:
    """Everything waiting in the queue; when empty, sleep ``wait`` seconds and look once more.

    (Polling with ``batch=True`` rather than ``get(timeout=...)``: a timed-out ``get`` makes the scheduler
    log a traceback.)"""
    out = list(q.get(batch=True) or [])
    if not out and wait > 0:
        time.sleep(wait)
        out = list(q.get(batch=True) or [])
    return out


def run_members(client, spec: dict, observed: dict, todo: dict[int, bytes | None], *, retries: int = 2,
                poll: float = 0.2, stop_requested: Callable[[], bool] | None = None) -> Iterator[tuple]:
    """Submit one task per member in ``todo`` (member -> checkpoint bytes or None) and yield, in arrival
    order:

    - ``("event", ev, preview, checkpoint)`` -- a step event of the current attempt of a member (with the
      preview ``{"step", "mag"}`` and/or checkpoint bytes when the worker sent them);
    - ``("retry", member, from_step, attempt_number)`` -- a new attempt of a member started (its earlier
      events from ``from_step`` on are void);
    - ``("result", member, state_bytes, member_done_event)`` -- a member finished;
    - ``("failed", member, error_text, attempts)`` -- a member's task failed for good.

    ``spec`` is the plain configuration read by :func:`build_trainer`.  Raises ``KeyboardInterrupt``
    (after cancelling the tasks) when ``stop_requested()`` becomes true.
    """
    # dask only when a cluster is used (module docstring)
    from distributed import Queue, wait

    tag = uuid.uuid4().hex[:12]
    spec = dict(spec, queue=f"popsed-events-{tag}")
    q = Queue(spec["queue"], client=client)
    # the observed rows as the result of a task (recomputed by dask if every copy is lost with its workers,
    # which scattered data would not be), copied to every worker (dask places tasks where their data is)
    obs_f = client.submit(_payload, observed, key=f"popsed-observed-{tag}", pure=False)
    wait([obs_f])
    try:
        client.replicate([obs_f])
    except Exception:  # pragma: no cover - e.g. a worker leaving meanwhile; locality only
        pass
    futs = {k: client.submit(train_member, spec, obs_f, k, state, key=f"popsed-member-{k}-{tag}",
                             retries=int(retries), pure=False)
            for k, state in sorted(todo.items())}
    attempts = _Attempts()
    try:
        while futs:
            for m in _drain(q, poll):
                yield from attempts.handle(m)
            yield from _collect_finished(futs, q, attempts)
            if stop_requested is not None and stop_requested():
                raise KeyboardInterrupt
    finally:
        for f in futs.values():
            f.cancel()
        try:
            obs_f.release()
        except Exception:
            pass


class _Attempts:
    """The current attempt of every member: messages of superseded attempts are dropped, a new attempt
    voids the earlier one's events (``("retry", ...)``)."""

    def __init__(self):
        self.current: dict[int, str] = {}
        self.n: dict[int, int] = {}
        self.held_done: dict[int, dict] = {}

    def handle(self, m: dict) -> Iterator[tuple]:
        k = int(m["member"])
        if m["kind"] == "attempt":
            self.n[k] = self.n.get(k, 0) + 1
            if k in self.current and self.current[k] != m["attempt"]:
                self.held_done.pop(k, None)
                self.current[k] = m["attempt"]
                yield ("retry", k, int(m["from_step"]), self.n[k])
            self.current[k] = m["attempt"]
            return
        if self.current.get(k) != m["attempt"]:
            return  # a superseded attempt (e.g. a worker presumed lost that still ran)
        ev = m["event"]
        if ev["event"] == "member_done":
            self.held_done[k] = ev  # released with the result, after the flow is written
            return
        prev = m.get("preview")
        if prev is not None:
            prev = {"step": prev["step"],
                    "mag": np.frombuffer(prev["mag"], dtype="<f8").reshape(prev["shape"])}
        yield ("event", ev, prev, m.get("checkpoint"))


def _collect_finished(futs: dict, q, attempts: _Attempts) -> Iterator[tuple]:
    """``("result", ...)`` / ``("failed", ...)`` of the member tasks that ended (removed from ``futs``), after
    the messages they sent."""
    for k, f in list(futs.items()):
        if f.status == "finished":
            for m in _drain(q, 0.05):
                yield from attempts.handle(m)
            data = f.result()
            del futs[k]
            yield ("result", k, data, attempts.held_done.pop(k, None))
        elif f.status in ("error", "cancelled", "lost"):
            for m in _drain(q, 0.05):
                yield from attempts.handle(m)
            try:
                exc = f.exception(timeout=5)
                text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            except Exception as e2:  # cancelled
                text = f"task {f.status} ({type(e2).__name__})"
            del futs[k]
            yield ("failed", k, text, max(1, attempts.n.get(k, 0)))
