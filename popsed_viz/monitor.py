"""Training monitor: loss per member, annealing state, learning rate, speed, ETA.

Step events are tailed from ``history.jsonl`` (:class:`popsed_viz.reader.HistoryTail`)
and streamed into a :class:`holoviews.streams.Buffer`, so the monitor follows a
fit started anywhere — the CLI, a notebook or the app.  Call :meth:`refresh`
(or :meth:`start_watching` for a periodic callback) to pull new lines.
"""
from __future__ import annotations

import math
import time

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import BasicTickFormatter, PrintfTickFormatter

from popsed_viz import plots as P
from popsed_viz.base import L, RunView
from popsed_viz.reader import steps_frame

__all__ = ["TrainingMonitor", "format_duration", "steps_per_member_text", "log_ticks"]


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


def steps_per_member_text(counts: dict[int, int]) -> str:
    """``"300 × 2"`` (steps per member × members), or ``"300 + 120"`` while the members differ."""
    if not counts:
        return "0"
    values = [counts[k] for k in sorted(counts)]
    if len(set(values)) == 1:
        return f"{values[0]:,} × {len(values)}"
    return " + ".join(f"{v:,}" for v in values)


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis from ``lo`` to ``hi`` (> 0): 1-2-5 per decade over up to three decades, else
    decades.

    Bokeh's own log ticker labels only whole decades on a short range, which
    leaves a converged loss (0.05-0.5) with one label or none.
    """
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mantissas = (1, 2, 5) if e1 - e0 <= 3 else (1,)
    return [m * 10.0 ** e for e in range(e0, e1 + 1) for m in mantissas if lo <= m * 10.0 ** e <= hi]


def _empty_steps() -> pd.DataFrame:
    return steps_frame([])


class TrainingMonitor(RunView):
    """Live view of a fit's ``history.jsonl``."""

    n_steps = param.Integer(default=0, precedence=-1, doc="step events seen")
    steps_per_s = param.Number(default=float("nan"), precedence=-1)
    eta_s = param.Number(default=float("nan"), precedence=-1)
    progress = param.Number(default=0.0, bounds=(0, 100), precedence=-1)
    phase = param.String(default="", precedence=-1, doc="start/running/done, from the events")
    members_text = param.String(default="", precedence=-1)
    steps_text = param.String(default="0", precedence=-1, doc="steps per member × members")
    loss_name = param.String(default="", precedence=-1, doc="the run's loss (from its start event)")
    uses_blur = param.Boolean(default=False, precedence=-1, doc="the loss has a Sinkhorn blur schedule")

    watch_files = ("history.jsonl",)

    def __init__(self, run=None, buffer_length: int = 2_000_000, **params):
        self.buffer = hv.streams.Buffer(_empty_steps(), length=buffer_length, index=False)
        self._expected = 0
        self._member_status: dict[int, dict] = {}
        self._member_steps: dict[int, int] = {}
        self._recent: list[tuple[float, int]] = []  # (event time, cumulative steps)
        self._last_wall = None
        self.noise_floor: float | None = None  # from the start event
        super().__init__(run, **params)
        self.refresh()

    # ------------------------------------------------------------------ data
    def _reset(self):
        if self.reader is not None:
            self.reader.history.reset()
        self.buffer.clear()
        self._expected = 0
        self._member_status = {}
        self._member_steps = {}
        self._recent = []
        self._last_wall = None
        self.param.update(n_steps=0, steps_per_s=float("nan"), eta_s=float("nan"), progress=0.0, phase="",
                          members_text="", steps_text="0", loss_name="", uses_blur=False)
        self.refresh()

    def refresh(self) -> bool:
        """Pull new events from history.jsonl into the stream; True if any arrived."""
        if self.reader is None:
            self._say("No run selected.", "warning")
            return False
        events, restarted = self.reader.history.poll()
        if restarted:
            self.buffer.clear()
            self._expected = 0
            self._member_status = {}
            self._member_steps = {}
            self._recent = []
            self.param.update(n_steps=0, steps_text="0", loss_name="", uses_blur=False)
        if not events:
            if self.n_steps == 0:
                st = self.reader.status()
                if not st.ok:
                    self._say(st.message, "danger")
                elif not self.reader.exists("history.jsonl"):
                    self._say("No history.jsonl in this run yet.", "warning" if not st.live else "info")
                elif st.live:
                    self._say("Waiting for the first training step…", "info")
                else:
                    self._say("history.jsonl holds no training steps.", "warning")
            self._update_speed(time.time())
            return False
        self.ingest(events)
        return True

    def ingest(self, events: list[dict]) -> None:
        """Add events (dicts as in history.jsonl) to the monitor."""
        for ev in events:
            kind = ev.get("event")
            if kind == "start":
                try:
                    self._expected = int(ev.get("members", 1)) * int(ev.get("steps", 0))
                except (TypeError, ValueError):
                    self._expected = 0
                self.phase = "running"
                self.loss_name = str(ev.get("loss") or "")
                floor = ev.get("noise_floor")
                self.noise_floor = float(floor) if isinstance(floor, (int, float)) and floor > 0 else None
            elif kind == "member_done":
                try:
                    self._member_status[int(ev.get("member", -1))] = ev
                except (TypeError, ValueError):
                    pass
            elif kind == "done":
                self.phase = "done"
                self._final_status()
        df = steps_frame(events)
        if len(df):
            self.buffer.send(df)
            self.n_steps += len(df)
            for k, n in df.groupby("member").size().items():
                self._member_steps[int(k)] = self._member_steps.get(int(k), 0) + int(n)
            self.steps_text = steps_per_member_text(self._member_steps)
            last = df["time"].to_numpy()
            t_last = float(last[-1]) if np.isfinite(last[-1]) else None
            if t_last is not None:
                self._recent.append((t_last, self.n_steps))
                self._recent = self._recent[-50:]
            w = df["wall"].to_numpy()
            if np.isfinite(w[-1]):
                self._last_wall = float(w[-1])
        blur = len(df) and "blur" in df and bool(np.isfinite(df["blur"].to_numpy(dtype=float)).any())
        self.uses_blur = self.uses_blur or bool(blur) or self.loss_name == "sinkhorn"
        self._update_speed(time.time())
        if self.n_steps:
            self._say("")
        else:
            self._say("No training steps yet.", "info")
        self._members_text()

    def _update_speed(self, now: float) -> None:
        rate = float("nan")
        if len(self._recent) >= 2:
            (t0, n0), (t1, n1) = self._recent[0], self._recent[-1]
            if t1 > t0:
                rate = (n1 - n0) / (t1 - t0)
        elif self.n_steps and len(self.buffer.data):
            t = self.buffer.data["time"].to_numpy()
            t = t[np.isfinite(t)]
            if t.size >= 2 and t[-1] > t[0]:
                rate = (t.size - 1) / (t[-1] - t[0])
        eta = float("nan")
        if self.phase == "done":
            eta = 0.0
        elif self._expected and math.isfinite(rate) and rate > 0:
            eta = max(0.0, (self._expected - self.n_steps) / rate)
        prog = 100.0 if self.phase == "done" else (
            min(100.0, 100.0 * self.n_steps / self._expected) if self._expected else 0.0)
        def same(a, b):
            return (a == b) or (isinstance(a, float) and isinstance(b, float)
                                and math.isnan(a) and math.isnan(b))

        new = {k: v for k, v in (("steps_per_s", rate), ("eta_s", eta), ("progress", prog))
               if not same(getattr(self, k), v)}
        if new:
            self.param.update(**new)

    def _final_status(self) -> None:
        """Each member's status as the finished run judged it (summary.json: converged against the noise
        floor and a plateau, or not, and why)."""
        summary = self.reader.summary() if self.reader is not None else None
        for m in (summary or {}).get("members", []):
            try:
                k = int(m["member"])
            except (KeyError, TypeError, ValueError):
                continue
            self._member_status[k] = {**self._member_status.get(k, {}), **m, "final": True}

    def _members_text(self):
        if not self._member_status:
            self.members_text = ""
            return
        parts = []
        for k in sorted(self._member_status):
            ev = self._member_status[k]
            status = str(ev.get("status", "?"))
            bv = ev.get("best_val_loss")
            bvs = f"{bv:.4g}" if isinstance(bv, (int, float)) else "—"
            at = f" at step {ev['best_step']}" if isinstance(ev.get("best_step"), int) else ""
            if not ev.get("final"):  # a member_done event: the member finished; the run judges it at the end
                status = "finished" if status == "converged" else status
            status = (f"**{status}**" if status in ("converged", "finished")
                      else f"**⚠ {status.replace('_', ' ')}**")
            note = f" ({ev['note']})" if ev.get("final") and ev.get("note") else ""
            parts.append(f"member {k}: {status}, best val. loss {bvs}{at}{note}")
        self.members_text = "  \n".join(parts)

    # ----------------------------------------------------------------- plots
    def _loss_overlay(self, data: pd.DataFrame):
        xd, yd = hv.Dimension("step"), hv.Dimension("loss", label="loss (OT distance)")
        curves = []
        if data is None or len(data) == 0:  # explicit range: a log axis cannot autorange nothing
            return hv.Overlay([hv.Curve([], kdims=[xd], vdims=[yd], label="train")]).opts(
                ylim=(1e-3, 10), yticks=log_ticks(1e-3, 10))
        for k, g in data.groupby("member", sort=True):
            color = P.PALETTE[int(k) % len(P.PALETTE)]
            tr = g[["step", "train_loss"]]
            tr = tr[np.isfinite(tr["train_loss"]) & (tr["train_loss"] > 0)]
            curves.append(hv.Curve((tr["step"].to_numpy(), tr["train_loss"].to_numpy()), xd, yd,
                                   label=f"train {k}").opts(color=color, alpha=0.45, line_width=1))
            va = g[["step", "val_loss"]]
            va = va[np.isfinite(va["val_loss"]) & (va["val_loss"] > 0)]
            if len(va):
                curves.append(hv.Curve((va["step"].to_numpy(), va["val_loss"].to_numpy()), xd, yd,
                                       label=f"val {k}").opts(color=color, line_width=2.5))
        ys = [c.dimension_values(1) for c in curves]
        ys = np.concatenate(ys) if ys else np.array([])
        if not ys.size:
            return hv.Overlay(curves).opts(ylim=(1e-3, 10), yticks=log_ticks(1e-3, 10))
        floor = getattr(self, "noise_floor", None)
        if floor:  # the loss of the catalog's validation rows against its training rows: where a fit can get
            steps = data["step"].to_numpy()
            curves.append(hv.Curve(([float(steps.min()), float(steps.max())], [floor, floor]), xd, yd,
                                   label="noise floor").opts(color="black", line_dash="dashed",
                                                             line_width=1.5))
            ys = np.append(ys, floor)
        # an explicit positive range (the log axis then never autoranges through zero), labelled at 1-2-5
        lo, hi = float(ys.min()) / 1.25, float(ys.max()) * 1.25
        return hv.Overlay(curves).opts(ylim=(lo, hi), yticks=log_ticks(lo, hi))

    def loss_plot(self, width=760, height=380):
        """Train (thin) and validation (thick) loss per member, log scale labelled at 1-2-5 (0.05, 0.1,
        0.2, ...)."""
        dm = hv.DynamicMap(self._loss_overlay, streams=[self.buffer])
        return dm.opts(hv.opts.Overlay(title="Loss per member", logy=True, width=width, height=height,
                                       legend_position="right", framewise=True, show_grid=True,
                                       responsive=False, toolbar="above",
                                       yformatter=PrintfTickFormatter(format="%g")),
                       hv.opts.Curve(tools=["hover"]))

    @staticmethod
    def _schedule(data: pd.DataFrame, col: str, label: str, logy: bool = False):
        xd, yd = hv.Dimension("step"), hv.Dimension(col, label=label)
        if data is not None and len(data):
            g = data[data["member"] == data["member"].min()]
            g = g[np.isfinite(g[col]) & ((g[col] > 0) if logy else True)]
            if len(g):
                y = g[col].to_numpy()
                # a log axis gets an explicit positive range: a flat or one-point curve would otherwise be
                # padded below zero (and HoloViews warns about the log axis)
                ylim = (float(y.min()) / 1.5, float(y.max()) * 1.5) if logy else (None, None)
                return hv.Curve((g["step"].to_numpy(), y), xd, yd).opts(title=label, ylim=ylim)
        title = (f"{label} (not used by this loss)" if col == "blur" and data is not None and len(data)
                 else label)
        return hv.Curve([], xd, yd).opts(ylim=(1e-6, 1) if logy else (0, 1), title=title)

    def schedule_plot(self, col: str, label: str, color: str, width=330, height=200, logy=False):
        dm = hv.DynamicMap(lambda data: self._schedule(data, col, label, logy), streams=[self.buffer])
        fmt = {} if logy else {"yformatter": BasicTickFormatter(precision=1, power_limit_low=-2)}
        return dm.opts(hv.opts.Curve(width=width, height=height, color=color, framewise=True,
                                     show_grid=True, logy=logy, toolbar=None, line_width=2, yticks=4, **fmt))

    def noise_plot(self, **kw):
        return self.schedule_plot("noise", "noise level", "#9467bd", **kw)

    def blur_plot(self, **kw):
        return self.schedule_plot("blur", "Sinkhorn blur", "#8c564b", **kw)

    def lr_plot(self, **kw):
        return self.schedule_plot("lr", "learning rate", "#2ca02c", **kw)

    # ------------------------------------------------------------ indicators
    def indicators(self):
        def speed(v):
            return f"{v:.2f}" if v is not None and math.isfinite(v) else "—"

        steps = pn.bind(lambda t: pn.indicators.String(**L("steps per member × members"), value=t,
                                                       font_size="28pt", title_size="11pt",
                                                       css_classes=["popsed-steps-recorded"]),
                        self.param.steps_text)
        rate = pn.bind(lambda v: pn.indicators.String(**L("steps / s"), value=speed(v), font_size="28pt",
                                                      title_size="11pt"), self.param.steps_per_s)
        eta = pn.bind(lambda v: pn.indicators.String(**L("ETA"), value=format_duration(v), font_size="28pt",
                                                     title_size="11pt"), self.param.eta_s)
        bar = pn.indicators.Progress(value=0, max=100, width=300, bar_color="primary")

        def _prog(event):
            bar.value = int(round(event.new))

        self.param.watch(_prog, "progress")
        bar.value = int(round(self.progress))
        members = pn.pane.Markdown(self.param.members_text, margin=(0, 10))
        return pn.Row(pn.panel(steps), pn.panel(rate), pn.panel(eta),
                      pn.Column(pn.pane.Markdown("progress"), bar), members)

    def panel(self):
        blur = pn.pane.HoloViews(self.blur_plot(), linked_axes=False, visible=self.uses_blur)
        # hidden unless the loss is Sinkhorn
        self.param.watch(lambda e: setattr(blur, "visible", e.new), "uses_blur")
        return pn.Column(
            self._message_pane(),
            self.indicators(),
            pn.pane.HoloViews(self.loss_plot(), linked_axes=False),
            pn.Row(
                pn.pane.HoloViews(self.noise_plot(), linked_axes=False),
                blur,
                pn.pane.HoloViews(self.lr_plot(), linked_axes=False),
            ),
            sizing_mode="stretch_width",
        )
