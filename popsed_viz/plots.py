"""Small HoloViews building blocks shared by the views (no physics here).

Densities of many points go through datashader (:func:`raster`), so 10⁶
samples stay interactive; comparison overlays are drawn as contour lines of a
2-D histogram enclosing given fractions of the points (:func:`contour_path`),
and 1-D distributions as normalised histograms (:func:`histogram`).
"""
from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh backend and its options)
import numpy as np
from holoviews.operation.datashader import rasterize

from engine.sps.params import KAPPA_NAMES

hv.renderer("bokeh")
hv.Store.set_current_backend("bokeh")  # also builds hv.opts.<Element> for the bokeh backend

__all__ = ["raster", "contour_path", "histogram", "robust_range", "empty_points", "PALETTE", "LABELS"]

#: Member / series colours (Category10).
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
OBS_COLOR = "#222222"
PRED_COLOR = "#d62728"
TRUTH_COLOR = "#1f77b4"

#: Axis labels for the public parameter / derived-quantity names.
LABELS = {
    "z": "redshift z",
    "log_mstar": "log M* [M☉]",
    **{k: f"κ{i}" for i, k in enumerate(KAPPA_NAMES, start=1)},
    "t_burst": "t_burst [Gyr]",
    "f_burst": "f_burst",
    "log_zmet": "log Z/Z☉",
    "n_dust": "n_dust",
    "tau1": "τ1 (birth cloud)",
    "tau2": "τ2 (diffuse)",
    "log_sfr_10myr": "log SFR₁₀ [M☉/yr]",
    "log_sfr_100myr": "log SFR₁₀₀ [M☉/yr]",
    "log_ssfr_100myr": "log sSFR₁₀₀ [1/yr]",
    "log_mformed": "log M_formed [M☉]",
    "mwage_gyr": "mass-weighted age [Gyr]",
    "z_spec": "spec-z",
}


def label(name: str) -> str:
    return LABELS.get(name, name)


def dim(name: str, rng: tuple[float, float] | None = None) -> hv.Dimension:
    """A HoloViews dimension with a safe internal name and a readable label."""
    safe = name.replace("-", "_").replace(" ", "_")
    kw = {"label": label(name)}
    if rng is not None:
        kw["range"] = tuple(float(v) for v in rng)
    return hv.Dimension(safe, **kw)


def xy_dims(xname: str, yname: str, xr=None, yr=None) -> tuple[hv.Dimension, hv.Dimension]:
    """Dimensions named ``x``/``y`` (labelled with the quantities).

    datashader compiles (numba) one aggregation kernel per column schema, so
    every rasterised plot uses the same column names: the kernel compiled at
    server start (:func:`warm_up`) then serves every plot and corner panel.
    """
    kx = {"label": label(xname)}
    ky = {"label": label(yname)}
    if xr is not None:
        kx["range"] = tuple(float(v) for v in xr)
    if yr is not None:
        ky["range"] = tuple(float(v) for v in yr)
    return hv.Dimension("x", **kx), hv.Dimension("y", **ky)


def finite_xy(x, y):
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def robust_range(
    values, lo: float = 0.5, hi: float = 99.5, pad: float = 0.05, fallback=(0.0, 1.0)
) -> tuple[float, float]:
    """Percentile range with padding; ``fallback`` when there is no finite value."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return tuple(fallback)
    a, b = np.percentile(v, [lo, hi])
    if not np.isfinite(a) or not np.isfinite(b):
        return tuple(fallback)
    if b <= a:
        a, b = a - 0.5, b + 0.5
    w = b - a
    return float(a - pad * w), float(b + pad * w)


def empty_points(xd: hv.Dimension, yd: hv.Dimension) -> hv.Points:
    return hv.Points((np.zeros(0), np.zeros(0)), kdims=[xd, yd])


def points(x, y, xd: hv.Dimension, yd: hv.Dimension) -> hv.Points:
    x, y = finite_xy(x, y)
    return hv.Points((x, y), kdims=[xd, yd])


def raster(dmap, cmap="fire", width=320, height=300, **opts):
    """datashader-rasterised density of a Points element or DynamicMap of Points."""
    r = rasterize(dmap, width=width, height=height, dynamic=True)
    return r.opts(
        hv.opts.Image(cmap=cmap, cnorm="eq_hist", colorbar=False, tools=["hover"], **opts)
    )


def contour_levels(h: np.ndarray, fractions=(0.68, 0.95)) -> list[float]:
    """Density thresholds enclosing the given fractions of a histogram's mass."""
    flat = np.sort(h.ravel())[::-1]
    tot = flat.sum()
    if tot <= 0:
        return []
    cum = np.cumsum(flat) / tot
    levels = []
    for f in sorted(fractions, reverse=True):
        i = int(np.searchsorted(cum, f))
        levels.append(float(flat[min(i, flat.size - 1)]))
    # contour levels must be strictly increasing and positive
    out = []
    for lv in sorted(set(levels)):
        if lv > 0:
            out.append(lv)
    return out


def _smooth(h: np.ndarray, passes: int = 1) -> np.ndarray:
    """Light 3×3 binomial smoothing (keeps contours of sparse samples legible)."""
    k = np.array([1.0, 2.0, 1.0]) / 4.0
    for _ in range(passes):
        p = np.pad(h, 1, mode="constant")
        h = k[0] * p[:-2, 1:-1] + k[1] * p[1:-1, 1:-1] + k[2] * p[2:, 1:-1]
        p = np.pad(h, 1, mode="constant")
        h = k[0] * p[1:-1, :-2] + k[1] * p[1:-1, 1:-1] + k[2] * p[1:-1, 2:]
    return h


def contour_path(x, y, xd, yd, xr, yr, fractions=(0.68, 0.95), bins=60, color=PRED_COLOR,
                 line_dash="solid", label_=None) -> hv.Path:
    """Contours enclosing ``fractions`` of the points (x, y) within ranges xr, yr."""
    x, y = finite_xy(x, y)
    empty = hv.Path([], kdims=[xd, yd], label=label_ or "").opts(color=color, line_dash=line_dash)
    if x.size < 10:
        return empty
    h, xe, ye = np.histogram2d(x, y, bins=bins, range=[list(xr), list(yr)])
    h = _smooth(h, 1)
    levels = contour_levels(h, fractions)
    if not levels:
        return empty
    import contourpy

    xc = 0.5 * (xe[1:] + xe[:-1])
    yc = 0.5 * (ye[1:] + ye[:-1])
    gen = contourpy.contour_generator(x=xc, y=yc, z=h.T)
    paths = []
    for lv in levels:
        for seg in gen.lines(lv):
            if len(seg) > 2:
                paths.append(np.asarray(seg))
    return hv.Path(paths, kdims=[xd, yd], label=label_ or "").opts(
        color=color, line_dash=line_dash, line_width=2
    )


def histogram(values, xd: hv.Dimension, edges: np.ndarray, color=PRED_COLOR, filled=True,
              label_=None, weights=None) -> hv.Element:
    """Normalised (density) histogram; ``filled=False`` draws an outline."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    v = v[ok]
    if weights is not None:
        weights = np.asarray(weights)[ok]
    if v.size:
        counts, _ = np.histogram(v, bins=edges, weights=weights)
        area = counts.sum() * np.diff(edges)
        dens = np.divide(counts, area, out=np.zeros_like(counts, dtype=float), where=area > 0)
    else:
        dens = np.zeros(len(edges) - 1)
    yd = hv.Dimension("density")
    if filled:
        h = hv.Histogram((edges, dens), kdims=[xd], vdims=[yd], label=label_ or "")
        return h.opts(fill_color=color, fill_alpha=0.35, line_color=color, line_alpha=0.0)
    # an outline: a step curve closed down to zero at both ends
    xs = np.repeat(edges, 2)
    ys = np.concatenate([[0.0], np.repeat(dens, 2), [0.0]])
    return hv.Curve((xs, ys), kdims=[xd], vdims=[yd], label=label_ or "").opts(color=color, line_width=2)


def warm_up() -> float:
    """JIT-compile datashader's point aggregation once (numba) so the first
    browser session does not pay for it; returns the seconds it took."""
    import time

    t = time.perf_counter()
    rng = np.random.default_rng(0)
    for n in (10, 1000):
        pts = hv.Points((rng.normal(size=n), rng.normal(size=n)), kdims=["x", "y"])
        rasterize(pts, dynamic=False, width=50, height=50, x_range=(-3, 3), y_range=(-3, 3))
    return time.perf_counter() - t
