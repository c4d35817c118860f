"""Base class of the run views: a reader, a revision counter, a message area."""
from __future__ import annotations

import os

import panel as pn
import param

from popsed_viz.reader import RunReader

__all__ = ["RunView", "as_reader", "L", "C"]

_LABEL_KW = "label" if "label" in pn.widgets.Button.param else "name"


_COLOR_KW = "color" if "color" in pn.widgets.Button.param else "button_type"


def C(kind: str) -> dict:
    """Button colour keyword: ``color`` (newer Panel; ``button_type`` is deprecated there) or
    ``button_type``."""
    return {_COLOR_KW: kind}


def L(text: str) -> dict:
    """Widget caption keyword: ``label`` (Panel ≥ 1.8; ``name`` is deprecated there) or ``name``."""
    return {_LABEL_KW: text}


def as_reader(run) -> RunReader:
    """A :class:`RunReader` from a path, a reader or ``None``."""
    if isinstance(run, RunReader):
        return run
    return RunReader(run)


class RunView(param.Parameterized):
    """A view of one run directory; ``refresh()`` re-reads changed files.

    Subclasses list the run files they depend on in ``watch_files``; when the
    signature (path, mtime, size) of any of them changes, ``revision`` is
    bumped and the plots that depend on it redraw.
    """

    reader = param.ClassSelector(class_=RunReader, allow_None=True, doc="the run being shown")
    revision = param.Integer(default=0, precedence=-1, doc="bumped when the run's files change")
    message = param.String(default="", precedence=-1, doc="what the view has to say about its data")
    message_level = param.String(default="info", precedence=-1)

    watch_files: tuple[str, ...] = ()

    def __init__(self, run=None, **params):
        if run is not None and "reader" not in params:
            params["reader"] = as_reader(run)
        super().__init__(**params)
        self._signature = None
        self._periodic = None
        self._sync_signature()

    # ------------------------------------------------------------- data flow
    def set_run(self, run) -> None:
        """Show another run (path or :class:`RunReader`)."""
        self.reader = as_reader(run)

    @param.depends("reader", watch=True)
    def _on_reader(self):
        self._signature = None
        self._reset()
        self._sync_signature()
        self.revision += 1

    def _reset(self) -> None:
        """Drop per-run state (subclasses)."""

    def _sync_signature(self) -> bool:
        sig = self.reader.signature(*self.watch_files) if self.reader is not None else None
        changed = sig != self._signature
        self._signature = sig
        return changed

    def refresh(self) -> bool:
        """Re-read the run if any watched file changed; returns True if it did."""
        if self._sync_signature():
            self.revision += 1
            return True
        return False

    # -------------------------------------------------------------- live mode
    def start_watching(self, period_ms: int = 1000):
        """Poll the run every ``period_ms`` (server or live notebook kernel)."""
        if self._periodic is None:
            self._periodic = pn.state.add_periodic_callback(self.refresh, period=period_ms, start=True)
        return self._periodic

    def stop_watching(self) -> None:
        if self._periodic is not None:
            try:
                self._periodic.stop()
            except Exception:  # noqa: BLE001
                pass
            self._periodic = None

    # --------------------------------------------------------------- message
    def _message_pane(self):
        def show(message, level):
            return pn.pane.Alert(message, alert_type=level or "info", visible=bool(message), margin=(5, 10))

        return pn.bind(show, self.param.message, self.param.message_level)

    def _say(self, message: str = "", level: str = "info") -> None:
        if message != self.message or level != self.message_level:
            self.param.update(message=message, message_level=level)

    def run_name(self) -> str:
        if self.reader is None or self.reader.path is None:
            return "—"
        return os.path.basename(os.path.normpath(str(self.reader.path)))

    def __panel__(self):
        return self.panel()

    def panel(self):  # pragma: no cover - abstract
        raise NotImplementedError
