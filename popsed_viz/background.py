"""A fit in a background thread of this Python process, with a monitor bound to its run.

In a notebook, a fit run in a cell keeps the kernel busy until it ends: with
*Run All*, the messages the page sends to the kernel queue up behind the cell,
and the training monitor stays empty until the fit is over.  Here the fit
(:func:`engine.population.iter_fit`) runs in a thread: the cell returns at
once, and the thread itself pulls every new event into the
:class:`~popsed_viz.monitor.TrainingMonitor`, so the plots stream whether the
cells are run one by one or all at once.  :meth:`BackgroundFit.wait` blocks
until the fit is over (before reading the population).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from popsed_viz.monitor import TrainingMonitor

__all__ = ["BackgroundFit", "fit_in_background"]

#: Events after which the monitor re-reads history.jsonl.
_REFRESH_ON = ("start", "step", "member_done", "done")


class BackgroundFit:
    """One ``iter_fit`` running in a daemon thread, watched by ``monitor``.

    Parameters
    ----------
    catalog, out
        The catalog and the run directory, as for :func:`engine.population.iter_fit`.
    monitor
        The monitor to feed (default: a new :class:`TrainingMonitor` of ``out``).
    **fit_kw
        Further keywords of :func:`engine.population.iter_fit` (``members``, ``steps``, ``batch``, ...).
    """

    def __init__(self, catalog, out, monitor: TrainingMonitor | None = None, **fit_kw):
        self.catalog = catalog
        self.out = Path(out)
        self.fit_kw = fit_kw
        self.monitor = monitor if monitor is not None else TrainingMonitor(self.out)
        self.thread = threading.Thread(target=self._work, name=f"popsed-fit-{self.out.name}", daemon=True)
        self.error: BaseException | None = None
        self.n_events = 0
        self.finished = False
        self.stopped = False
        self.seconds = float("nan")
        self._stop = threading.Event()

    def start(self) -> "BackgroundFit":
        self._t0 = time.perf_counter()
        self.thread.start()
        return self

    def _work(self) -> None:
        from engine.population import iter_fit

        try:
            for ev in iter_fit(self.catalog, self.out, stop_requested=self._stop.is_set, **self.fit_kw):
                self.n_events += 1
                if ev.get("event") in _REFRESH_ON:
                    self.monitor.refresh()
        except KeyboardInterrupt:  # iter_fit's answer to stop_requested: checkpointed, then stopped
            self.stopped = True
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - self._t0
            try:
                self.monitor.refresh()
            finally:
                self.finished = True

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def wait(self, timeout: float | None = None) -> "BackgroundFit":
        """Block until the fit is over (or ``timeout`` s); re-raises the fit's exception, if any."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the fit into {self.out} is still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self

    def stop(self, timeout: float | None = None) -> "BackgroundFit":
        """Ask the fit to checkpoint and stop at the next step, and wait for it (``popsed fit --resume``
        goes on)."""
        self._stop.set()
        return self.wait(timeout)

    def _repr_html_(self) -> str:  # a short status when the handle is the last expression of a cell
        state = ("running" if self.running
                 else ("failed" if self.error else ("stopped" if self.stopped else "done")))
        return f"<code>BackgroundFit({self.out.name}: {state}, {self.monitor.n_steps} steps)</code>"


def fit_in_background(catalog, out, monitor: TrainingMonitor | None = None, **fit_kw) -> BackgroundFit:
    """Start :func:`engine.population.iter_fit` in a background thread; returns its :class:`BackgroundFit`.

    Display ``handle.monitor.panel()`` to watch it live; call ``handle.wait()`` before reading the run's
    population.  The fit holds the run directory's lock as usual, so only one fit writes a run at a time.
    """
    return BackgroundFit(catalog, out, monitor=monitor, **fit_kw).start()
