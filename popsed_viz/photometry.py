"""Photometry view: observed vs predicted colour–colour densities and magnitude histograms.

Observed photometry is ``observed.parquet``; predicted photometry is
``preview.parquet`` while a fit runs (replaced every few steps) and the
``selected`` rows of ``population.parquet`` once the fit is done.  The view
refreshes when those files change (:meth:`refresh` / :meth:`start_watching`).
"""
from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import param

from popsed_viz import plots as P
from popsed_viz.base import L, RunView
from popsed_viz.population import POOLED, converged_members, member_mask, member_options
from popsed_viz.reader import colour_pairs, short_band

__all__ = ["PhotometryView"]


class PhotometryView(RunView):
    """Observed (grey density, dashed contours) vs predicted (red contours) photometry."""

    member = param.Selector(default=POOLED, objects=[POOLED], doc="pooled ensemble or one member")
    source = param.Selector(default="auto", objects=["auto", "preview", "population"],
                            doc="predicted photometry: training preview or final population (auto: newest)")

    watch_files = ("observed.parquet", "preview.parquet", "population.parquet", "config.json")

    def __init__(self, run=None, **params):
        self._memo_key = None
        self._memo = None
        self._ranges = {}
        self._conf_sig = None
        self._bands_shown = None
        super().__init__(run, **params)
        self._configure()

    def refresh(self) -> bool:
        """Re-read changed files; rebuild the grid when the band list appears or changes."""
        sig = self.reader.signature("config.json", "observed.parquet") if self.reader is not None else None
        if sig != self._conf_sig:
            self._conf_sig = sig
            self._ranges = {}
            self._configure()
            if self.bands() != self._bands_shown:
                self.param.trigger("reader")  # the grid depends on the band list
        return super().refresh()

    def _reset(self):
        self._memo_key = None
        self._memo = None
        self._ranges = {}

    @param.depends("reader", watch=True)
    def _configure(self):
        cfg = (self.reader.config() if self.reader else None) or {}
        n = cfg.get("members") if isinstance(cfg.get("members"), int) else 0
        if not n and self.reader is not None:
            pop = self.reader.population(["member"])
            if pop is not None and len(pop):
                n = int(pop["member"].max()) + 1
        opts = member_options(n)
        self.param.member.objects = opts
        if self.member not in opts:
            with param.parameterized.discard_events(self):
                self.member = POOLED

    # ------------------------------------------------------------------ data
    def bands(self) -> list[str]:
        return self.reader.bands() if self.reader is not None else []

    def _observed(self):
        if self.reader is None:
            return None
        cols = [f"mag_{b}" for b in self.bands()]
        return self.reader.observed(cols) if cols else None

    def _predicted(self, member, source):
        """(frame of mag_<band>, caption) of the predicted photometry."""
        key = (self._signature, member, source)
        if key == self._memo_key:
            return self._memo
        r = self.reader
        out = (None, "no predicted photometry yet")
        if r is not None:
            bands = self.bands()
            mags = [f"mag_{b}" for b in bands]
            use_pop = source == "population" or (
                source == "auto"
                and r.exists("population.parquet")
                and (
                    not r.exists("preview.parquet")
                    or (r.mtime("population.parquet") or 0) >= (r.mtime("preview.parquet") or 0)
                )
            )
            if use_pop:
                pop = r.population(["member", "selected"] + mags)
                if pop is not None and len(pop):
                    m = np.ones(len(pop), dtype=bool)
                    if "selected" in pop:
                        m &= pop["selected"].to_numpy().astype(bool)
                    if "member" in pop:
                        mm = member_mask(pop["member"].to_numpy(), member, converged_members(r.summary()))
                        if not isinstance(mm, slice):
                            m &= mm
                    out = (
                        pop.loc[m, [c for c in mags if c in pop]],
                        f"final population, {int(m.sum()):,} samples passing the selection",
                    )
            else:
                pv = r.preview()
                if pv is not None and len(pv):
                    m = np.ones(len(pv), dtype=bool)
                    if "member" in pv:
                        mm = member_mask(pv["member"].to_numpy(), member, None)
                        if not isinstance(mm, slice):
                            m &= mm
                    step = ""
                    if "step" in pv and m.any():
                        step = f" at step {int(pv['step'].to_numpy()[m].max())}"
                    out = (
                        pv.loc[m, [c for c in mags if c in pv]],
                        f"training preview{step}, {int(m.sum()):,} samples",
                    )
        self._memo_key, self._memo = key, out
        return out

    def _colour(self, df, a, b):
        ca, cb = f"mag_{a}", f"mag_{b}"
        if df is None or ca not in df or cb not in df:
            return np.zeros(0)
        return df[ca].to_numpy(dtype=float) - df[cb].to_numpy(dtype=float)

    def _crange(self, a, b):
        key = (a, b)
        if key not in self._ranges:
            obs = self._observed()
            self._ranges[key] = P.robust_range(self._colour(obs, a, b), 1, 99, 0.1, fallback=(-0.5, 2.5))
        return self._ranges[key]

    def _mrange(self, band):
        key = ("mag", band)
        if key not in self._ranges:
            obs = self._observed()
            v = obs[f"mag_{band}"] if obs is not None and f"mag_{band}" in obs else []
            self._ranges[key] = P.robust_range(v, 0.5, 99.9, 0.05, fallback=(14.0, 24.0))
        return self._ranges[key]

    # ----------------------------------------------------------------- plots
    def colour_colour(self, c1, c2, size=330):
        (a, b), (b2, c) = c1, c2
        xn, yn = f"{short_band(a)} − {short_band(b)}", f"{short_band(b2)} − {short_band(c)}"
        xd, yd = hv.Dimension("x", label=xn), hv.Dimension("y", label=yn)

        def obs_points(revision):
            obs = self._observed()
            return P.points(self._colour(obs, a, b), self._colour(obs, b2, c), xd, yd)

        def contours(member, source, revision):
            xr, yr = self._crange(a, b), self._crange(b2, c)
            obs = self._observed()
            o = P.contour_path(self._colour(obs, a, b), self._colour(obs, b2, c), xd, yd, xr, yr,
                               color=P.OBS_COLOR, line_dash="dashed", label_="observed")
            pred, _ = self._predicted(member, source)
            p = P.contour_path(self._colour(pred, a, b), self._colour(pred, b2, c), xd, yd, xr, yr,
                               color=P.PRED_COLOR, label_="predicted")
            return o * p

        dens = P.raster(hv.DynamicMap(obs_points, streams=[hv.streams.Params(self, ["revision"])]),
                        cmap="Greys", width=size, height=size)
        lines = hv.DynamicMap(contours, streams=[hv.streams.Params(self, ["member", "source", "revision"])])
        return (dens * lines).opts(hv.opts.Overlay(
            title=f"{yn} vs {xn}", width=size, height=size, xlim=self._crange(a, b), ylim=self._crange(b2, c),
            legend_position="bottom_right", toolbar="above", show_grid=True))

    def mag_hist(self, band, width=260, height=220):
        xd = hv.Dimension(f"mag_{short_band(band)}", label=f"{short_band(band)} [AB mag]")

        def cb(member, source, revision):
            edges = np.linspace(*self._mrange(band), 41)
            obs = self._observed()
            pred, _ = self._predicted(member, source)
            col = f"mag_{band}"
            o = P.histogram(
                obs[col] if obs is not None and col in obs else [], xd, edges, P.OBS_COLOR, True, "observed"
            )
            p = P.histogram(
                pred[col] if pred is not None and col in pred else [],
                xd,
                edges,
                P.PRED_COLOR,
                False,
                "predicted",
            )
            return o * p

        dm = hv.DynamicMap(cb, streams=[hv.streams.Params(self, ["member", "source", "revision"])])
        return dm.opts(hv.opts.Overlay(title=f"{short_band(band)} band", width=width, height=height,
                                       framewise=True, toolbar=None, show_legend=False, show_grid=True))

    def caption(self):
        def text(member, source, revision):
            if self.reader is None:
                return ""
            st = self.reader.status()
            if not st.ok:
                self._say(st.message, "danger")
                return ""
            obs = self._observed()
            if obs is None:
                prob = self.reader.problems.get("observed.parquet")
                self._say(prob or "This run has no observed.parquet: nothing to compare with.", "warning")
            else:
                self._say("")
            _, cap = self._predicted(member, source)
            nobs = 0 if obs is None else len(obs)
            return (f"Observed: **{nobs:,}** catalog galaxies (grey density, dashed 68/95% contours).  "
                    f"Predicted (red contours): {cap}.")

        return pn.pane.Markdown(pn.bind(text, self.param.member, self.param.source, self.param.revision),
                                margin=(0, 10))

    def _grids(self, reader):
        bands = self.bands()
        self._bands_shown = bands
        if len(bands) < 2:
            return pn.pane.Alert(
                "No band list in this run (config.json / observed.parquet missing or unreadable).",
                alert_type="warning",
            )
        cc = [
            pn.pane.HoloViews(self.colour_colour(c1, c2), linked_axes=False) for c1, c2 in colour_pairs(bands)
        ]
        hists = [pn.pane.HoloViews(self.mag_hist(b), linked_axes=False) for b in bands]
        return pn.Column(pn.FlexBox(*cc), pn.pane.Markdown("#### Magnitudes"), pn.FlexBox(*hists),
                         sizing_mode="stretch_width")

    def plots(self):
        """The plots without controls; rebuilt when another run (band list) is shown."""
        return pn.Column(
            self._message_pane(),
            self.caption(),
            pn.panel(pn.bind(self._grids, self.param.reader)),
            sizing_mode="stretch_width",
        )

    def controls(self):
        return pn.Column(pn.widgets.Select.from_param(self.param.member, **L("Ensemble")),
                         pn.widgets.RadioButtonGroup.from_param(self.param.source, **L("Predicted")))

    def panel(self, controls: bool = True):
        if not controls:
            return self.plots()
        return pn.Row(pn.Column(self.controls(), width=260), self.plots())
