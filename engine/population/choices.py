"""Choices a fit makes from the catalog when the user leaves them open, each with a one-line notice.

- :func:`resolve_redshift`: ``--redshift auto`` fits the spec-z (``observed``) when every row of the catalog
  has a usable one, photometric redshifts (``free``) otherwise.
- :func:`catalog_selection`: the selection a catalog carries in its metadata (``popsed mock`` writes it).
- :func:`estimate_selection`: where a magnitude-limited catalog's counts are cut, from its own histogram,
  suggested to the user (never applied without being asked).

Galaxy counts rise towards faint magnitudes (N(<m) ∝ 10^{0.6 m} for a Euclidean volume, flatter in practice;
e.g. Yasuda et al. 2001 for SDSS), so in a flux-limited catalog the selection band's histogram peaks at the
limit and falls to nothing within the photometric errors, while the other bands turn over gradually.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MagnitudeLimit", "catalog_selection", "estimate_selection", "resolve_redshift"]

#: Histogram bin [mag] of the turnover search.
BIN_MAG = 0.05
#: A band is "cut" when its counts fall from half their peak to ``DROP`` of it within ``MAX_FALLOFF_MAG``.
DROP = 0.1
MAX_FALLOFF_MAG = 0.2
#: Fewest detected rows for an estimate.
MIN_ROWS = 200


@dataclass(frozen=True)
class MagnitudeLimit:
    """A magnitude limit read off a catalog's histogram: ``band`` is cut near ``mag`` (99.9th percentile
    of the band's magnitudes); the counts fall from half their peak to 10 % of it over ``falloff`` mag."""

    band: str
    mag: float
    falloff: float

    @property
    def selection(self) -> str:
        return f"{self.band}<{self.mag:.2f}"

    def notice(self) -> str:
        return (f"no --selection given, but the catalog looks magnitude-limited in {self.band}: its counts "
                f"fall from half their peak to {DROP:.0%} of it within {self.falloff:.2f} mag, near "
                f"{self.mag:.2f}; the fit models no selection -- pass --selection '{self.selection}' if that "
                "is the survey's cut")


def resolve_redshift(requested: str, z_spec: np.ndarray | None, z_range: tuple[float, float],
                     streamed: bool = False) -> tuple[str, str | None]:
    """The redshift mode of a fit and the notice that explains an automatic choice.

    ``requested``: ``auto``, ``observed`` or ``free``; ``z_spec``: the catalog's spec-z (NaN where missing) or
    None; ``z_range``: the forward model's redshift range.  ``auto`` is ``observed`` when every row has a
    finite spec-z inside ``z_range`` and ``free`` otherwise (a streamed catalog is not scanned beforehand:
    ``free`` unless asked).
    """
    if requested != "auto":
        return requested, None
    if streamed:
        return "free", ("redshift: free (photometric redshifts; the streamed catalog's spec-z are not "
                        "scanned beforehand) -- pass --redshift observed to fit its spec-z")
    if z_spec is None:
        return "free", "redshift: free (photometric redshifts: the catalog has no spec-z column)"
    zs = np.asarray(z_spec, dtype=np.float64)
    usable = np.isfinite(zs) & (zs >= z_range[0]) & (zs <= z_range[1])
    if usable.size and usable.all():
        return "observed", (f"redshift: observed (every one of the {zs.size} rows has a spec-z in "
                            f"[{z_range[0]:g}, {z_range[1]:g}]) -- pass --redshift free to fit photometric "
                            f"redshifts")
    bad = int((~usable).sum())
    return "free", (f"redshift: free (photometric redshifts: {bad} of {zs.size} rows have no spec-z in "
                    f"[{z_range[0]:g}, {z_range[1]:g}]) -- pass --redshift observed to fit the spec-z of the "
                    f"rest only")


def catalog_selection(meta: dict | None) -> str | None:
    """The selection recorded in a catalog's metadata (``selection``: e.g. ``"sdss2010-r<19.8"``), if any."""
    sel = (meta or {}).get("selection")
    return sel if isinstance(sel, str) and sel.strip() else None


def _falloff(mags: np.ndarray) -> float | None:
    """The faint edge's width: magnitudes from the last (smoothed) histogram bin at half the peak's
    counts to the first after it at ``DROP`` of them."""
    lo, hi = np.percentile(mags, 1.0), mags.max() + 5 * BIN_MAG  # empty bins after the last galaxy
    counts, _ = np.histogram(mags, bins=np.arange(lo, hi + BIN_MAG, BIN_MAG))
    if counts.size < 5:
        return None
    smooth = np.convolve(counts, np.ones(3) / 3.0, mode="same")
    k = int(np.argmax(smooth))
    tail = smooth[k:]
    half = np.flatnonzero(tail >= 0.5 * smooth[k])
    gone = np.flatnonzero(tail <= DROP * smooth[k])
    if gone.size == 0:
        return None
    last_half = half[half < gone[0]].max()
    return float((gone[0] - last_half) * BIN_MAG)


def estimate_selection(flux: np.ndarray, bands) -> MagnitudeLimit | None:
    """The band whose magnitude histogram ends most abruptly, if it ends within ``MAX_FALLOFF_MAG`` of
    its peak; ``flux``: (N, B) in nanomaggies (NaN: no measurement)."""
    best = None
    for j, band in enumerate(bands):
        f = np.asarray(flux[:, j], dtype=np.float64)
        f = f[np.isfinite(f) & (f > 0)]
        if f.size < MIN_ROWS:
            continue
        mags = 22.5 - 2.5 * np.log10(f)
        width = _falloff(mags)
        if width is None or width > MAX_FALLOFF_MAG:
            continue
        if best is None or width < best.falloff:
            best = MagnitudeLimit(str(band), float(np.percentile(mags, 99.9)), width)
    return best
