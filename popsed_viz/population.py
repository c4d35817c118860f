"""Population views: SFMS, mass–metallicity, mass and redshift distributions, corner plot.

Everything reads ``population.parquet`` (and ``truth.ecsv`` for mocks,
``observed.parquet`` for spec-z); a redshift range cuts every view, and the
member selector shows the pooled ensemble or one member.  2-D densities are
datashader rasters, so 10⁶ samples stay interactive.
"""
from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import param

from popsed_viz import plots as P
from popsed_viz.base import L, RunView

__all__ = ["PopulationView", "member_options", "member_mask"]

POOLED = "pooled"
SELECTED = "passes selection"
WHOLE = "whole population"
DEFAULT_CORNER = ["z", "log_mstar", "log_zmet", "n_dust", "tau2"]
SFR = "log_sfr_100myr"
LEGEND = {"label_text_font_size": "8pt", "background_fill_alpha": 0.7, "spacing": 0}


#: Width of a 1-D histogram with its legend outside, on the right (a legend inside covers the data).
HIST_WIDTH = 520


def _hist_opts(dm: hv.DynamicMap, title: str, width: int, height: int) -> hv.DynamicMap:
    """Options of a 1-D histogram overlay: every element normalised per frame (``framewise``), so the y-range
    follows a redshift cut; the legend outside the axes."""
    return dm.opts(hv.opts.Overlay(title=title, width=width, height=height, legend_position="right",
                                   framewise=True, toolbar="above", show_grid=True, legend_opts=LEGEND),
                   hv.opts.Histogram(framewise=True), hv.opts.Curve(framewise=True))


def member_options(n_members: int) -> list[str]:
    return [POOLED] + [f"member {k}" for k in range(max(0, int(n_members)))]


def member_mask(members: np.ndarray, choice: str,
                pooled_members: list[int] | None = None) -> np.ndarray | slice:
    """Boolean mask for a member choice (``pooled`` keeps ``pooled_members`` or all)."""
    if choice == POOLED or not choice:
        if pooled_members is None:
            return slice(None)
        return np.isin(members, pooled_members)
    try:
        k = int(str(choice).split()[-1])
    except ValueError:
        return slice(None)
    return members == k


def converged_members(summary: dict | None) -> list[int] | None:
    """Members pooled in summary.json: ``kept`` where the summary has it, else (older summaries, where the
    pooled members were the ones marked ``converged``) the status (None: pool everything)."""
    if not isinstance(summary, dict):
        return None
    members = summary.get("members")
    if isinstance(members, dict):
        members = [dict(v, member=int(k)) if isinstance(v, dict) else {} for k, v in members.items()]
    if not isinstance(members, list):
        return None
    keep = []
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            continue
        if m.get("kept", m.get("status", "converged") == "converged"):
            keep.append(int(m.get("member", i)))
    return keep or None


class PopulationView(RunView):
    """The learned population of a run, cut in redshift, pooled or per member."""

    z_range = param.Range(default=(0.0, 0.65), bounds=(0.0, 0.65), doc="redshift range cutting every view")
    member = param.Selector(default=POOLED, objects=[POOLED],
                            doc="pooled ensemble (converged members) or one member")
    show_truth = param.Boolean(default=True, doc="overlay the mock's truth (when the run has truth.ecsv)")
    sample = param.Selector(default=SELECTED, objects=[SELECTED, WHOLE],
                            doc="learned samples shown: those passing the run's selection (comparable with "
                                "the catalog, its spec-z and a mock's truth, which hold catalogued galaxies "
                                "only) or the whole learned population")
    corner_params = param.ListSelector(default=list(DEFAULT_CORNER), objects=list(DEFAULT_CORNER),
                                       doc="parameters of the corner plot")
    max_points = param.Integer(default=2_000_000, doc="samples used per view (random subset beyond)")

    watch_files = ("population.parquet", "summary.json", "observed.parquet", "config.json")

    def __init__(self, run=None, **params):
        self._memo_key = None
        self._memo = None
        self._ranges: dict[str, tuple[float, float]] = {}
        self._conf_sig = None
        super().__init__(run, **params)
        self._configure()

    def refresh(self) -> bool:
        """Re-read changed files; adapt the controls when config / population appear or change."""
        sig = self.reader.signature("config.json", "population.parquet") if self.reader is not None else None
        if sig != self._conf_sig:
            self._ranges = {}
            self._configure(keep=True)
        return super().refresh()

    # ------------------------------------------------------------------ data
    def _reset(self):
        self._memo_key = None
        self._memo = None
        self._ranges = {}

    @param.depends("reader", watch=True)
    def _configure(self, keep: bool = False):
        """Adapt the controls (z bounds, member list, corner choices) to the run.

        ``keep``: the same run changed on disk; keep the user's cut if it still fits.
        """
        r = self.reader
        self._conf_sig = r.signature("config.json", "population.parquet") if r is not None else None
        cfg = (r.config() if r else None) or {}
        zmax = cfg.get("z_max")
        try:
            zmax = float(zmax)
        except (TypeError, ValueError):
            zmax = None
        pop_cols = r.population_columns() if r else []
        n_members = cfg.get("members")
        if not isinstance(n_members, int):
            n_members = 0
        if (zmax is None or n_members == 0) and "z" in pop_cols:
            pop = r.population(["member", "z"])
            if pop is not None and len(pop):
                if zmax is None:
                    zmax = float(np.nanmax(pop["z"])) if np.isfinite(pop["z"]).any() else None
                if n_members == 0 and "member" in pop:
                    n_members = int(pop["member"].max()) + 1
        zmax = zmax if zmax and zmax > 0 else 0.65
        opts = member_options(n_members)
        names = [c for c in pop_cols if c not in ("member", "selected") and not c.startswith("mag_")]
        corner_objs = names or list(DEFAULT_CORNER)
        corner = ([c for c in self.corner_params if c in corner_objs]
                  or [c for c in DEFAULT_CORNER if c in corner_objs])
        same_bounds = tuple(self.param.z_range.bounds) == (0.0, zmax)
        self.param.z_range.bounds = (0.0, zmax)
        self.param.member.objects = opts
        self.param.corner_params.objects = corner_objs
        z_range = self.z_range if (keep and same_bounds) else (0.0, zmax)
        member = self.member if self.member in opts else POOLED
        if keep:  # live: let the widgets follow
            self.param.update(z_range=z_range, member=member, corner_params=corner[:6])
        else:
            with param.parameterized.discard_events(self):
                self.z_range = z_range
                self.member = member
                self.corner_params = corner[:6]

    def _population(self):
        r = self.reader
        if r is None:
            return None
        return r.population()

    def _selection(self, z_range, member):
        """(frame, row indices) for the current cut; memoised for the 5 views."""
        key = (self._signature, tuple(z_range) if z_range else None, member, self.sample, self.max_points)
        if key == self._memo_key:
            return self._memo
        pop = self._population()
        out = (None, None)
        status = self.reader.status() if self.reader is not None else None
        if pop is None or len(pop) == 0:
            if status is not None and not status.ok:
                self._say(status.message, "danger")
            elif self.reader is not None and "population.parquet" in self.reader.problems:
                self._say(self.reader.problems["population.parquet"], "danger")
            elif status is not None and status.live:
                self._say("The fit is running: the population appears here when it finishes "
                          "(watch the Training and Photometry tabs meanwhile).", "info")
            else:
                self._say("This run has no population.parquet yet.", "warning")
        else:
            mask = np.ones(len(pop), dtype=bool)
            if "member" in pop:
                pooled = converged_members(self.reader.summary())
                mm = member_mask(pop["member"].to_numpy(), member, pooled)
                if not isinstance(mm, slice):
                    mask &= mm
            if self.sample == SELECTED and "selected" in pop:
                mask &= pop["selected"].to_numpy().astype(bool)
            if "z" in pop and z_range is not None:
                z = pop["z"].to_numpy()
                mask &= (z >= z_range[0]) & (z <= z_range[1])
            idx = np.flatnonzero(mask)
            if idx.size > self.max_points:
                idx = np.sort(np.random.default_rng(0).choice(idx, self.max_points, replace=False))
            out = (pop, idx)
            if idx.size == 0:
                self._say("No samples in this redshift range / member selection.", "warning")
            else:
                self._say("")
        self._memo_key, self._memo = key, out
        return out

    def _truth_sel(self, z_range):
        if not self.show_truth or self.reader is None:
            return None
        t = self.reader.truth()
        if t is None or len(t) == 0:
            return None
        if "z" in t and z_range is not None:
            z = t["z"].to_numpy()
            return t.loc[(z >= z_range[0]) & (z <= z_range[1])]
        return t

    def _col(self, pop, idx, name):
        if pop is None or name not in pop:
            return np.zeros(0)
        return pop[name].to_numpy()[idx]

    def _range(self, name: str) -> tuple[float, float]:
        """Axis range of a column over the whole (uncut) population: stable axes."""
        if name in self._ranges:
            return self._ranges[name]
        pop = self._population()
        fallback = {"z": (0.0, self.param.z_range.bounds[1]), "log_mstar": (8.0, 12.0), SFR: (-4.0, 2.0),
                    "log_zmet": (-2.3, 0.4)}.get(name, (0.0, 1.0))
        if pop is None or name not in pop or len(pop) == 0:
            return fallback
        v = pop[name].to_numpy()
        if v.size > 200_000:
            v = v[np.random.default_rng(1).choice(v.size, 200_000, replace=False)]
        rng = P.robust_range(v, fallback=fallback)
        if name == "z":
            rng = (0.0, max(self.param.z_range.bounds[1], rng[1]))
        self._ranges[name] = rng
        return rng

    # ------------------------------------------------------------ 2-D views
    def _points_cb(self, xname, yname):
        def cb(z_range, member, revision, **kw):
            pop, idx = self._selection(z_range, member)
            xd, yd = P.xy_dims(xname, yname, self._range(xname), self._range(yname))
            if pop is None or xname not in pop or yname not in pop:
                return P.empty_points(xd, yd)
            return P.points(self._col(pop, idx, xname), self._col(pop, idx, yname), xd, yd)

        return cb

    def _truth_cb(self, xname, yname):
        def cb(z_range, show_truth, revision):
            xr, yr = self._range(xname), self._range(yname)
            xd, yd = P.xy_dims(xname, yname)
            t = self._truth_sel(z_range) if show_truth else None
            if t is None or xname not in t or yname not in t:
                return hv.Path([], kdims=[xd, yd], label="truth (68/95%)").opts(color=P.TRUTH_COLOR)
            return P.contour_path(t[xname], t[yname], xd, yd, xr, yr, color=P.TRUTH_COLOR,
                                  label_="truth (68/95%)", line_dash="dashed")

        return cb

    def density_plot(self, xname: str, yname: str, title: str, width=HIST_WIDTH, height=360):
        """Rasterised learned density of (xname, yname) with the truth contours."""
        pts = hv.DynamicMap(self._points_cb(xname, yname),
                            streams=[hv.streams.Params(self, ["z_range", "member", "sample", "revision"])])
        truth = hv.DynamicMap(self._truth_cb(xname, yname),
                              streams=[hv.streams.Params(self, ["z_range", "show_truth", "revision"])])
        img = P.raster(pts, cmap="fire", width=width, height=height)
        return (img * truth).opts(
            hv.opts.Overlay(title=title, width=width, height=height, xlim=self._range(xname),
                            ylim=self._range(yname), legend_position="bottom_right", framewise=False,
                            toolbar="above", show_grid=True)
        )

    def sfms(self, **kw):
        """Star-forming main sequence: log SFR(100 Myr) vs log M*."""
        return self.density_plot("log_mstar", SFR, "Star-forming main sequence", **kw)

    def mzr(self, **kw):
        """Mass–metallicity relation: log Z vs log M*."""
        return self.density_plot("log_mstar", "log_zmet", "Mass–metallicity", **kw)

    # ------------------------------------------------------------ 1-D views
    def _mass_cb(self, z_range, member, show_truth, revision, **kw):
        pop, idx = self._selection(z_range, member)
        rng = self._range("log_mstar")
        edges = np.linspace(rng[0], rng[1], 61)
        xd = P.dim("log_mstar")
        learned = P.histogram(self._col(pop, idx, "log_mstar"), xd, edges, P.PRED_COLOR, True,
                              self._learned_label())
        t = self._truth_sel(z_range) if show_truth else None
        out = learned
        if t is not None and "log_mstar" in t:
            out = out * P.histogram(t["log_mstar"], xd, edges, P.TRUTH_COLOR, False, "truth")
        if self.sample == WHOLE and pop is not None and "selected" in pop and idx is not None and idx.size:
            sel = pop["selected"].to_numpy()[idx].astype(bool)
            out = out * P.histogram(self._col(pop, idx, "log_mstar")[sel], xd, edges, "#ff7f0e", False,
                                    "learned, passes selection")
        return hv.Overlay([out]) if not isinstance(out, hv.Overlay) else out

    def _z_cb(self, z_range, member, show_truth, revision, **kw):
        pop, idx = self._selection(z_range, member)
        zmax = self.param.z_range.bounds[1]
        edges = np.linspace(0.0, zmax, 61)
        xd = P.dim("z")
        out = P.histogram(self._col(pop, idx, "z"), xd, edges, P.PRED_COLOR, True, self._learned_label())
        if self.sample == WHOLE and pop is not None and "selected" in pop and idx is not None and idx.size:
            sel = pop["selected"].to_numpy()[idx].astype(bool)
            out = out * P.histogram(self._col(pop, idx, "z")[sel], xd, edges, "#ff7f0e", False,
                                    "learned, passes selection")
        t = self._truth_sel(z_range) if show_truth else None
        if t is not None and "z" in t:
            out = out * P.histogram(t["z"], xd, edges, P.TRUTH_COLOR, False, "truth")
        obs = self.reader.observed(["z_spec"]) if self.reader is not None else None
        if obs is not None and "z_spec" in obs:
            zs = obs["z_spec"].to_numpy(dtype=float)
            if np.isfinite(zs).any():
                zs = zs[(zs >= z_range[0]) & (zs <= z_range[1])]
                out = out * P.histogram(zs, xd, edges, P.OBS_COLOR, False, "spec-z (catalog)").opts(
                    line_dash="dashed")
        return hv.Overlay([out]) if not isinstance(out, hv.Overlay) else out

    def _learned_label(self):
        return "learned (passes selection)" if self.sample == SELECTED else "learned (whole population)"

    def mass_hist(self, width=HIST_WIDTH, height=300):
        dm = hv.DynamicMap(self._mass_cb, streams=[
            hv.streams.Params(self, ["z_range", "member", "sample", "show_truth", "revision"])])
        return _hist_opts(dm, "Stellar-mass distribution", width, height)

    def z_hist(self, width=HIST_WIDTH, height=300):
        dm = hv.DynamicMap(self._z_cb, streams=[
            hv.streams.Params(self, ["z_range", "member", "sample", "show_truth", "revision"])])
        return _hist_opts(dm, "Redshift distribution", width, height)

    # ---------------------------------------------------------------- corner
    @param.depends("z_range", "member", "sample", "show_truth", "corner_params", "revision")
    def corner(self):
        """Corner plot of the chosen parameters (rasterised 2-D panels)."""
        from holoviews.operation.datashader import rasterize

        pop, idx = self._selection(self.z_range, self.member)
        names = [n for n in self.corner_params if pop is not None and n in pop]
        if not names:
            return pn.pane.Markdown("*No population to show.*")
        t = self._truth_sel(self.z_range)
        n = len(names)
        size = max(110, min(170, 820 // n))
        cells = []
        for i, yn in enumerate(names):
            for j, xn in enumerate(names):
                xr = self._range(xn)
                if j > i:
                    cells.append(hv.Empty())
                    continue
                if i == j:
                    edges = np.linspace(xr[0], xr[1], 41)
                    el = P.histogram(self._col(pop, idx, xn), P.dim(xn), edges, P.PRED_COLOR, True)
                    if t is not None and xn in t:
                        el = el * P.histogram(t[xn], P.dim(xn), edges, P.TRUTH_COLOR, False)
                    el = el.opts(hv.opts.Histogram(yaxis=None), hv.opts.Curve(yaxis=None),
                                 hv.opts.Overlay(yaxis=None, show_legend=False))
                else:
                    yr = self._range(yn)
                    xd, yd = P.xy_dims(xn, yn, xr, yr)
                    pts = P.points(self._col(pop, idx, xn), self._col(pop, idx, yn), xd, yd)
                    el = rasterize(pts, dynamic=False, width=size, height=size, x_range=xr, y_range=yr)
                    el = el.opts(cmap="fire", cnorm="eq_hist", colorbar=False)
                show_x = i == n - 1
                show_y = j == 0 and i > 0
                xa = "bottom" if show_x else None
                el = el.opts(hv.opts.Histogram(xaxis=xa), hv.opts.Curve(xaxis=xa),
                             hv.opts.Overlay(xaxis=xa),
                             hv.opts.Image(xaxis=xa, yaxis="left" if show_y else None))
                cells.append(el)
        frame = dict(frame_width=size, frame_height=size)
        lay = hv.Layout(cells).cols(n).opts(
            hv.opts.Layout(shared_axes=False, toolbar=None),
            hv.opts.Image(tools=[], toolbar=None, **frame),
            hv.opts.Histogram(toolbar=None, **frame),
            hv.opts.Curve(toolbar=None, **frame),
            hv.opts.Overlay(toolbar=None, show_legend=False, **frame),
        )
        return pn.pane.HoloViews(lay, linked_axes=False)

    # ----------------------------------------------------------------- panel
    def count_text(self):
        def text(z_range, member, revision, *args):
            pop, idx = self._selection(z_range, member)
            if pop is None:
                return ""
            n = 0 if idx is None else idx.size
            which = "passing the run's selection" if self.sample == SELECTED else "(whole population)"
            truth = (" Truth (dashed blue): the mock's catalogued galaxies."
                     if self.show_truth and self.reader is not None and self.reader.truth_path() else "")
            return (f"**{n:,}** samples of the learned population ({member}) {which} with "
                    f"{z_range[0]:.3f} ≤ z ≤ {z_range[1]:.3f}.{truth}")

        return pn.pane.Markdown(pn.bind(text, self.param.z_range, self.param.member, self.param.revision,
                                        self.param.sample, self.param.show_truth), margin=(0, 10))

    def controls(self):
        return pn.Column(
            pn.widgets.RangeSlider.from_param(self.param.z_range, **L("Redshift range"), step=0.005,
                                              format="0.000"),
            pn.widgets.Select.from_param(self.param.member, **L("Ensemble")),
            pn.widgets.RadioButtonGroup.from_param(self.param.sample, **L("Samples")),
            pn.widgets.Checkbox.from_param(self.param.show_truth, **L("Overlay truth (mocks)")),
        )

    def plots(self):
        """The population views without controls (the dashboard adds its own)."""
        grid = pn.GridBox(
            pn.pane.HoloViews(self.sfms(), linked_axes=False),
            pn.pane.HoloViews(self.mzr(), linked_axes=False),
            pn.pane.HoloViews(self.mass_hist(), linked_axes=False),
            pn.pane.HoloViews(self.z_hist(), linked_axes=False),
            ncols=2,
        )
        return pn.Column(self._message_pane(), self.count_text(), grid, sizing_mode="stretch_width")

    def corner_panel(self):
        """The corner plot with its parameter chooser (drawn when first shown)."""
        return pn.Column(
            pn.widgets.MultiChoice.from_param(self.param.corner_params, **L("Corner-plot parameters"),
                                              max_items=8, width=700),
            pn.pane.Markdown("Learned population (density, datashader) with the truth's 1-D distributions "
                             "(blue outlines) for mock runs; the redshift cut and member choice apply.",
                             margin=(0, 10)),
            pn.param.ParamMethod(self.corner, lazy=True),
            sizing_mode="stretch_width",
        )

    def panel(self, controls: bool = True):
        if not controls:
            return pn.Tabs(("Population", self.plots()), ("Corner", self.corner_panel()), dynamic=True)
        return pn.Row(pn.Column(self.controls(), width=300),
                      pn.Tabs(("Population", self.plots()), ("Corner", self.corner_panel()), dynamic=True))
