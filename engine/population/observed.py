"""The catalog as the fit sees it: reading it (:func:`load_catalog`, or streamed, :func:`want_stream`), the
rows a fit uses (:func:`usable_rows`) and their train / validation split (:func:`prepare_observed`).

Rows of the observed catalog without a measurement (NaN) in any fitted band are not used (counted in the
report): the loss compares complete rows only.  Observed rows failing the selection cuts are dropped too
(counted), so the observed and predicted samples obey the same selection.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# through the module, not its names: a test replaces read_catalog to prove a streamed fit never reads the
# whole file
import engine.catalog as catalog_io
from engine.errors import PopsedError

from .selection import Cut, hard_cuts, selection_mask

__all__ = ["CatalogSubset", "Observed", "load_catalog", "prepare_observed", "usable_rows", "want_stream"]


@dataclass
class Observed:
    """The catalog as the fit sees it."""

    bands: tuple[str, ...]
    flux: np.ndarray  # (N, B) all catalog rows
    flux_err: np.ndarray
    z_spec: np.ndarray | None
    split: np.ndarray  # (N,) "train" | "val" | "" (not used)
    report: dict

    @property
    def train(self) -> np.ndarray:
        return self.split == "train"

    @property
    def val(self) -> np.ndarray:
        return self.split == "val"


def usable_rows(flux: np.ndarray, z_spec: np.ndarray | None, bands, cuts: list[Cut], redshift: str,
                z_range: tuple[float, float] | None = None) -> tuple[np.ndarray, dict]:
    """The rows a fit uses -- complete in every band, with a spec-z in ``z_range`` when the redshift is
    observed, passing the hard cuts (a soft cut describes how the catalog was selected: its rows are not cut
    by it) -- and the counts of those left out for each reason."""
    complete = np.all(np.isfinite(flux), axis=1)
    counts = {"n_incomplete": int((~complete).sum())}
    use = complete.copy()
    if redshift == "observed":
        if z_spec is None:
            raise PopsedError("--redshift observed needs a spec-z column in the catalog")
        zs = np.asarray(z_spec, dtype=np.float64)
        okz = np.isfinite(zs)
        if z_range is not None:
            okz &= (zs >= z_range[0]) & (zs <= z_range[1])
        counts["n_no_or_bad_zspec"] = int((use & ~okz).sum())
        use &= okz
    if cuts:
        sel = selection_mask(np.where(np.isfinite(flux), flux, np.nan), tuple(bands), hard_cuts(cuts))
        counts["n_fail_selection"] = int((use & ~sel).sum())
        use &= sel
    return use, counts


def prepare_observed(flux, flux_err, bands, z_spec=None, cuts: list[Cut] | None = None,
                     redshift: str = "free", val_fraction: float = 0.15, seed: int = 0,
                     z_range: tuple[float, float] | None = None) -> Observed:
    """Choose the usable rows (complete, passing the cuts) and split them into train / validation."""
    flux = np.asarray(flux, dtype=np.float64)
    flux_err = np.asarray(flux_err, dtype=np.float64)
    n = flux.shape[0]
    cuts = list(cuts or [])
    use, counts = usable_rows(flux, z_spec, bands, cuts, redshift, z_range)
    report = {"n_rows": int(n), **counts}
    idx = np.flatnonzero(use)
    n_use = idx.size
    n_val = int(round(val_fraction * n_use))
    if n_use - n_val < 20 or n_val < 5:
        raise PopsedError(
            f"only {n_use} catalog rows are usable (complete in all bands"
            f"{', with spec-z' if redshift == 'observed' else ''}"
            f"{', passing the selection' if cuts else ''}); need at least 25"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    perm = rng.permutation(idx)
    split = np.full(n, "", dtype=object)
    split[perm[n_val:]] = "train"
    split[perm[:n_val]] = "val"
    report.update({"n_used": int(n_use), "n_train": int(n_use - n_val), "n_val": int(n_val)})
    return Observed(tuple(bands), flux, flux_err,
                    None if z_spec is None else np.asarray(z_spec, dtype=np.float64), split.astype(str),
                    report)


def load_catalog(catalog, bands="auto", read_options: dict | None = None):
    """A catalog object (``engine.catalog.Catalog`` or anything with bands/flux/flux_err/z_spec/sha256);
    ``read_options``: keywords of :func:`engine.catalog.read_catalog` (column map, flux unit, extinction,
    format) for a file."""
    if hasattr(catalog, "flux") and hasattr(catalog, "bands"):
        cat = catalog
    else:
        b = None if bands in (None, "auto") else bands
        cat = catalog_io.read_catalog(str(catalog), bands=b, **(read_options or {}))
    if bands not in (None, "auto"):
        want = [s.strip() for s in bands.split(",")] if isinstance(bands, str) else list(bands)
        missing = [b for b in want if b not in cat.bands]
        if missing:
            raise PopsedError(f"band(s) {', '.join(missing)} not in the catalog (it has "
                              f"{', '.join(cat.bands)})")
        idx = [list(cat.bands).index(b) for b in want]
        cat = CatalogSubset(cat, want, idx)
    return cat


class CatalogSubset:
    """The columns ``idx`` (bands ``bands``) of a catalog."""

    def __init__(self, cat, bands, idx):
        self.bands = tuple(bands)
        self.flux = np.asarray(cat.flux)[:, idx]
        self.flux_err = np.asarray(cat.flux_err)[:, idx]
        self.z_spec = cat.z_spec
        self.sha256 = cat.sha256
        self.path = getattr(cat, "path", None)
        self.report = getattr(cat, "report", ())
        self.meta = getattr(cat, "meta", {})
        filters = tuple(getattr(cat, "filters", ()) or ())
        self.filters = tuple(filters[i] for i in idx) if len(filters) == len(cat.bands) else self.bands


def want_stream(catalog, stream) -> bool:
    """Whether to stream the catalog from its Parquet file (see :func:`iter_fit`)."""
    if stream in (False, "off", "no", "never"):
        return False
    if hasattr(catalog, "flux") or catalog is None:
        if stream in (True, "on", "yes", "always"):
            raise PopsedError("streaming needs a Parquet catalog file, not an in-memory catalog")
        return False
    if stream in (True, "on", "yes", "always"):
        return True
    if stream not in ("auto", None):
        raise PopsedError(f"--stream must be auto, on or off, got {stream!r}")
    n = catalog_io.parquet_num_rows(catalog)
    return n is not None and n > catalog_io.STREAM_MIN_ROWS
