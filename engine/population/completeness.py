"""A survey's completeness curve fitted from a catalog's own magnitude histogram.

Near its limit a magnitude-limited catalog's counts per magnitude are modelled as a power law (the
galaxy number counts, e.g. Yasuda et al. 2001) times a logistic completeness (the usual form of a survey's
completeness near its limit, e.g. Rykoff et al. 2015)::

    n(m) = A * 10**(alpha * (m - m_ref)) * C(m),      C(m) = 1 / (1 + exp((m - m50) / w))

with ``m_ref`` the histogram's turnover.  The counts ``N_i`` in bins of ``BIN_MAG`` from ``FIT_BRIGHT``
mag brighter than the turnover to past the faintest galaxy are Poisson with mean ``mu_i`` = the integral of
``n`` over the bin (Simpson's rule on the bin's edges and centre), and ``(log A, alpha, m50, log w)``
maximise ``sum_i N_i log mu_i - mu_i`` (Cash 1979).  A width below ``MIN_WIDTH`` (half a bin) is not
resolved by the histogram: the fit gives ``w >= MIN_WIDTH`` (a hard cut comes back as about that).  A cut
``BAND>fit`` is fitted with the mirrored model (the magnitude negated).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy.optimize import minimize

from .noise import pogson_mag
from .selection import Cut, SelectionError

__all__ = ["fit_completeness", "resolve_cuts"]

#: Histogram bin [mag].
BIN_MAG = 0.02
#: The fit starts this many mag brighter than the turnover.
FIT_BRIGHT = 1.5
#: The narrowest width [mag] the fit returns (half a histogram bin).
MIN_WIDTH = 0.5 * BIN_MAG
#: Fewest rows for a fit.
MIN_ROWS = 200


def _nll(p: np.ndarray, edges: np.ndarray, counts: np.ndarray, m_ref: float) -> float:
    log_a, alpha, m50, log_w = p
    w = MIN_WIDTH + math.exp(log_w)
    pts = np.stack([edges[:-1], 0.5 * (edges[:-1] + edges[1:]), edges[1:]])
    with np.errstate(over="ignore"):
        dens = np.exp(log_a + alpha * math.log(10.0) * (pts - m_ref)) / (1.0 + np.exp((pts - m50) / w))
    mu = (dens[0] + 4.0 * dens[1] + dens[2]) / 6.0 * np.diff(edges) + 1e-300
    return float(np.sum(mu - counts * np.log(mu)))


def fit_completeness(mags: np.ndarray) -> tuple[float, float]:
    """``(m50, w)`` of the logistic completeness (module docstring) of the magnitudes ``mags`` of a
    catalog cut at their faint end (non-finite entries are ignored)."""
    m = np.asarray(mags, dtype=np.float64)
    m = m[np.isfinite(m)]
    if m.size < MIN_ROWS:
        raise SelectionError(f"fitting the completeness needs at least {MIN_ROWS} measured magnitudes, got "
                             f"{m.size}")
    lo = np.percentile(m, 0.5)
    edges = np.arange(lo, m.max() + 10 * BIN_MAG, BIN_MAG)
    counts, _ = np.histogram(m, bins=edges)
    smooth = np.convolve(counts, np.ones(9) / 9.0, mode="same")
    k = int(np.argmax(smooth))
    m_ref = float(0.5 * (edges[k] + edges[k + 1]))
    start = int(np.searchsorted(edges, m_ref - FIT_BRIGHT))
    edges, counts = edges[start:], counts[start:]
    below = np.flatnonzero(smooth[k:] <= 0.5 * smooth[k])
    half = k + int(below[0]) if below.size else len(smooth) - 1
    m50_0 = float(edges[0] + (half - start + 0.5) * BIN_MAG)
    x0 = np.array([math.log(max(smooth[k], 1.0) / BIN_MAG), 0.3, m50_0, math.log(0.1 - MIN_WIDTH)])
    res = minimize(_nll, x0, args=(edges, counts, m_ref), method="Nelder-Mead",
                   options={"xatol": 1e-5, "fatol": 1e-6, "maxiter": 20000, "maxfev": 20000})
    m50, w = float(res.x[2]), MIN_WIDTH + float(math.exp(res.x[3]))
    if not (np.isfinite(m50) and np.isfinite(w) and w > 0):
        raise SelectionError("the completeness fit to the catalog's magnitude histogram did not converge")
    return m50, w


def resolve_cuts(cuts: list[Cut], flux: np.ndarray | None, bands, notices: list[str]) -> list[Cut]:
    """``cuts`` with each pending cut (``BAND<fit``) replaced by the fitted one, and a notice for each;
    ``flux``: the catalog's fluxes (N, B) in nanomaggies, columns in the order of ``bands``."""
    out = []
    for c in cuts:
        if not c.fit:
            out.append(c)
            continue
        if flux is None:
            raise SelectionError(f"selection {c}: fitting the completeness needs the catalog in memory (it "
                                 "is streamed); give BAND<MAG~WIDTH instead")
        m = pogson_mag(np.asarray(flux)[:, list(bands).index(c.band)])
        sign = 1.0 if c.op in ("<", "<=") else -1.0
        m50, w = fit_completeness(sign * m)
        fitted = replace(c, value=sign * m50, width=w, fit=False)
        notices.append(f"selection: {fitted} (completeness fitted to the catalog's {c.band} histogram: 50 % "
                       f"at {fitted.value:.3f}, width {w:.3f} mag)")
        out.append(fitted)
    return out
