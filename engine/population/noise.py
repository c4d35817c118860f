"""Photometric noise model fitted from a catalog's own errors, and asinh magnitudes.

Per band, the model is the median and scatter of ``log10 sigma_f`` (flux error in nanomaggies) in bins
of asinh magnitude (equal-count bins over the catalog's measured rows).  Applying it to predicted
(noise-free) fluxes ``f``:

    m      = asinh_mag(f)                             (the bin coordinate; fine for faint/negative f)
    log10 s = median(m) + scatter(m) * e1             (interpolated between bin centres, constant
                                                       outside the catalog's range)
    f_noisy = f + amplitude * s * e2                  (e1, e2 standard normal; NO clamping/re-drawing:
                                                       negative fluxes are legitimate measurements)

``amplitude`` is the noise anti-annealing factor (0 -> 1 during training).

Asinh magnitudes (Lupton, Gunn & Szalay 1999) with per-band softening ``b`` (nanomaggies)::

    mu = 22.5 - (2.5 / ln 10) * (asinh(f / (2 b)) + ln b)

which equals the AB magnitude ``22.5 - 2.5 log10 f`` for ``f >> b`` and stays finite for ``f <= 0``.
We use ``b = 1.042 * median(sigma_f)`` per band (Lupton's optimal softening is 1.042 sigma at the
detection limit; the catalog median error is the typical sky-dominated error of a magnitude-limited
catalog).

JSON format (``noise_model.json``)::

    {"format": "popsed-noise-model", "version": 1, "flux_unit": "nanomaggy", "zero_point": 22.5,
     "bands": [...],
     "per_band": {band: {"softening": b, "n_rows": n, "mag": [...], "log10_sigma_median": [...],
                         "log10_sigma_scatter": [...]}}}
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from engine.errors import CatalogError, ModelFileError

ZERO_POINT = 22.5  # nanomaggies -> AB magnitudes
_K = 2.5 / math.log(10.0)
SOFTENING_FACTOR = 1.042


def asinh_mag(flux, softening):
    """Asinh magnitude of ``flux`` (nanomaggies) with per-band ``softening`` (broadcast on the last axis).

    Works on torch tensors (differentiable) and numpy arrays.
    """
    if isinstance(flux, torch.Tensor):
        b = torch.as_tensor(softening, dtype=flux.dtype, device=flux.device)
        return ZERO_POINT - _K * (torch.asinh(flux / (2.0 * b)) + torch.log(b))
    b = np.asarray(softening, dtype=np.float64)
    return ZERO_POINT - _K * (np.arcsinh(np.asarray(flux, dtype=np.float64) / (2.0 * b)) + np.log(b))


def pogson_mag(flux):
    """AB magnitude ``22.5 - 2.5 log10 f`` (nanomaggies); +inf for f <= 0 (torch or numpy)."""
    if isinstance(flux, torch.Tensor):
        pos = flux > 0
        safe = torch.where(pos, flux, torch.ones_like(flux))
        return torch.where(pos, ZERO_POINT - 2.5 * torch.log10(safe), torch.full_like(flux, math.inf))
    f = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = ZERO_POINT - 2.5 * np.log10(np.where(f > 0, f, 1.0))
    return np.where(f > 0, m, np.where(np.isnan(f), np.nan, np.inf))


@dataclass
class BandNoise:
    softening: float
    n_rows: int
    mag: list[float]
    log10_sigma_median: list[float]
    log10_sigma_scatter: list[float]


@dataclass
class NoiseModel:
    """Per-band noise model; see the module docstring."""

    bands: tuple[str, ...]
    per_band: dict[str, BandNoise] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, flux: np.ndarray, flux_err: np.ndarray, bands, n_bins: int = 20,
            min_per_bin: int = 20) -> "NoiseModel":
        """Fit from catalog fluxes and errors (nanomaggies, (N, B); NaN = no measurement)."""
        flux = np.asarray(flux, dtype=np.float64)
        flux_err = np.asarray(flux_err, dtype=np.float64)
        bands = tuple(bands)
        if flux.shape != flux_err.shape or flux.ndim != 2 or flux.shape[1] != len(bands):
            raise CatalogError(f"noise model: flux {flux.shape} and flux_err {flux_err.shape} must both be "
                               f"(N, {len(bands)})")
        per_band = {}
        for j, band in enumerate(bands):
            f, e = flux[:, j], flux_err[:, j]
            ok = np.isfinite(f) & np.isfinite(e) & (e > 0)
            n = int(ok.sum())
            if n < 10:
                raise CatalogError(f"noise model: band {band} has only {n} rows with a finite flux and a "
                                   "positive error (need >= 10)")
            f, e = f[ok], e[ok]
            b = SOFTENING_FACTOR * float(np.median(e))
            m = asinh_mag(f, b)
            le = np.log10(e)
            k = int(max(1, min(n_bins, n // min_per_bin)))
            order = np.argsort(m, kind="stable")
            chunks = np.array_split(order, k)
            centres, med, scat = [], [], []
            for c in chunks:
                centres.append(float(np.median(m[c])))
                med.append(float(np.median(le[c])))
                q25, q75 = np.percentile(le[c], [25, 75])
                scat.append(float((q75 - q25) / 1.349))
            # enforce strictly increasing knots (ties when many identical magnitudes)
            centres = np.maximum.accumulate(np.asarray(centres))
            for i in range(1, len(centres)):
                if centres[i] <= centres[i - 1]:
                    centres[i] = centres[i - 1] + 1e-6
            per_band[band] = BandNoise(b, n, [float(c) for c in centres], med, scat)
        return cls(bands, per_band)

    @classmethod
    def fit_stream(cls, chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], bands,
                   n_bins: int = 20, min_per_bin: int = 20) -> "NoiseModel":
        """:meth:`fit` from a catalog too large for memory: two streaming passes.

        ``chunks()`` must return a fresh iterable of ``(flux, flux_err)`` pairs ((n, B) arrays, nanomaggies,
        NaN = no measurement) covering the catalog each time it is called.  See :class:`NoiseAccumulator`
        for how (and how closely) this reproduces :meth:`fit`.
        """
        acc = NoiseAccumulator(bands, n_bins=n_bins, min_per_bin=min_per_bin)
        for f, e in chunks():
            acc.add(f, e)
        acc.next_pass()
        for f, e in chunks():
            acc.add(f, e)
        return acc.result()

    # ------------------------------------------------------------------ accessors
    @property
    def softening(self) -> np.ndarray:
        return np.array([self.per_band[b].softening for b in self.bands])

    def softening_tensor(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.tensor(self.softening, device=device, dtype=dtype)

    def subset(self, bands) -> "NoiseModel":
        missing = [b for b in bands if b not in self.per_band]
        if missing:
            raise ModelFileError(f"noise model has no band(s) {missing}")
        return NoiseModel(tuple(bands), {b: self.per_band[b] for b in bands})

    def _knots(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._cache:
            k = max(len(self.per_band[b].mag) for b in self.bands)

            def pad(v):
                v = list(v)
                return v + [v[-1]] * (k - len(v))

            def pad_x(v):  # keep strictly increasing after padding
                v = list(v)
                return v + [v[-1] + 1e-3 * (i + 1) for i in range(k - len(v))]

            x = torch.tensor([pad_x(self.per_band[b].mag) for b in self.bands], device=device, dtype=dtype)
            med = torch.tensor([pad(self.per_band[b].log10_sigma_median) for b in self.bands], device=device,
                               dtype=dtype)
            sc = torch.tensor([pad(self.per_band[b].log10_sigma_scatter) for b in self.bands], device=device,
                              dtype=dtype)
            self._cache[key] = (x, med, sc, self.softening_tensor(device, dtype))
        return self._cache[key]

    # ------------------------------------------------------------------ applying
    def sigma_params(self, flux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(median, scatter) of log10 sigma for each entry of ``flux`` (N, B)."""
        x, med, sc, b = self._knots(flux.device, flux.dtype)
        m = asinh_mag(flux.detach(), b).T.contiguous()  # (B, N)
        k = x.shape[1]
        if k == 1:
            return med[:, :1].expand(-1, m.shape[1]).T, sc[:, :1].expand(-1, m.shape[1]).T
        idx = torch.searchsorted(x, m).clamp(1, k - 1)  # (B, N)
        x0, x1 = x.gather(1, idx - 1), x.gather(1, idx)
        w = ((m - x0) / (x1 - x0)).clamp(0.0, 1.0)
        mu = med.gather(1, idx - 1) * (1 - w) + med.gather(1, idx) * w
        s = sc.gather(1, idx - 1) * (1 - w) + sc.gather(1, idx) * w
        return mu.T, s.T

    def draw_sigma(self, flux: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mu, s = self.sigma_params(flux)
        e1 = torch.randn(flux.shape, generator=generator, device=flux.device, dtype=flux.dtype)
        return torch.pow(10.0, mu + s * e1)

    def draw(self, flux: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One noise realisation ``sigma * N(0, 1)`` for noise-free fluxes ``flux`` (N, B) (no gradient)."""
        if flux.shape[-1] != len(self.bands):
            raise ValueError(f"noise model has {len(self.bands)} bands, flux has {flux.shape[-1]}")
        flux = flux.detach()
        sigma = self.draw_sigma(flux, generator)
        e2 = torch.randn(flux.shape, generator=generator, device=flux.device, dtype=flux.dtype)
        return sigma * e2

    def apply(self, flux: torch.Tensor, amplitude: float = 1.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy fluxes: ``flux + amplitude * sigma * N(0, 1)`` (no clamping).  Differentiable in ``flux``."""
        return flux + float(amplitude) * self.draw(flux, generator)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {
            "format": "popsed-noise-model",
            "version": 1,
            "flux_unit": "nanomaggy",
            "zero_point": ZERO_POINT,
            "softening_factor": SOFTENING_FACTOR,
            "bands": list(self.bands),
            "per_band": {
                b: {
                    "softening": nb.softening,
                    "n_rows": nb.n_rows,
                    "mag": nb.mag,
                    "log10_sigma_median": nb.log10_sigma_median,
                    "log10_sigma_scatter": nb.log10_sigma_scatter,
                }
                for b, nb in self.per_band.items()
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseModel":
        if not isinstance(d, dict) or d.get("format") != "popsed-noise-model":
            raise ModelFileError("not a popsed noise model (missing format 'popsed-noise-model')")
        if d.get("version") != 1:
            raise ModelFileError(f"noise model version {d.get('version')!r} is not supported (expected 1)")
        try:
            bands = tuple(d["bands"])
            per = {}
            for b in bands:
                e = d["per_band"][b]
                nb = BandNoise(float(e["softening"]), int(e["n_rows"]), [float(v) for v in e["mag"]],
                               [float(v) for v in e["log10_sigma_median"]],
                               [float(v) for v in e["log10_sigma_scatter"]])
                if (not (len(nb.mag) == len(nb.log10_sigma_median) == len(nb.log10_sigma_scatter) >= 1)
                        or nb.softening <= 0):
                    raise ModelFileError(f"noise model: band {b} has inconsistent knots")
                per[b] = nb
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"noise model is malformed: {exc!r}") from None
        return cls(bands, per)

    @classmethod
    def from_json(cls, text: str) -> "NoiseModel":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"noise model is not valid JSON: {exc}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path) -> "NoiseModel":
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(fh.read())


# ---------------------------------------------------------------------------------------------- streaming fit
def _rank_values(counts: np.ndarray, lo: float, width: float, ranks: np.ndarray) -> np.ndarray:
    """Values at (fractional, 0-based) ``ranks`` of a sample known through a histogram (bins of equal
    ``width`` from ``lo``; ``counts`` may be fractional), each bin's members spread evenly over it, with
    linear interpolation between neighbouring ranks (numpy's ``percentile`` convention)."""
    cum = np.cumsum(counts, dtype=np.float64)
    prev = cum - counts

    def at(r):
        i = np.clip(np.searchsorted(cum, r + 0.5, side="right"), 0, counts.size - 1)
        c = np.maximum(counts[i], 1e-300)
        t = np.clip((r + 0.5 - prev[i]) / c, 0.0, 1.0)
        return lo + (i + t) * width

    ranks = np.asarray(ranks, dtype=np.float64)
    r0 = np.floor(ranks)
    v0, v1 = at(r0), at(np.minimum(r0 + 1, max(cum[-1] - 1, 0)))
    return v0 + (v1 - v0) * (ranks - r0)


class NoiseAccumulator:
    """Streaming version of :meth:`NoiseModel.fit` for catalogs that do not fit in memory.

    Pass 1 (:meth:`add`, then :meth:`next_pass`): per band the number of usable rows (finite flux, finite
    error > 0), the range of the fluxes and a fine histogram of ``log10 sigma`` (``1e-3`` dex) -> the
    softening ``1.042 * median(sigma)``.  Pass 2 (:meth:`add` again over the same rows): a 2-d histogram
    of (asinh magnitude with that softening, ``log10 sigma``) on ``m_bins`` x ``le_bins`` cells spanning
    the exact ranges found in pass 1.  :meth:`result` then forms the same equal-count magnitude bins as
    :meth:`NoiseModel.fit` (same count, same sizes) and takes each bin's median magnitude and the median
    and inter-quartile scatter of ``log10 sigma`` from the histogram, rows spread evenly within a cell
    (a cell straddling two equal-count bins is shared in proportion).  The result agrees with the
    in-memory fit to a small fraction of a cell (tested: ``tests/test_distributed.py``).  Memory:
    ``m_bins * le_bins * 8`` bytes per band (16 MB by default), whatever the catalog size.
    """

    LE_LO, LE_HI, LE_STEP = -12.0, 12.0, 1e-3

    def __init__(self, bands, n_bins: int = 20, min_per_bin: int = 20, m_bins: int = 2048,
                 le_bins: int = 1024):
        self.bands = tuple(bands)
        self.n_bins, self.min_per_bin = int(n_bins), int(min_per_bin)
        self.m_bins, self.le_bins = int(m_bins), int(le_bins)
        nb = len(self.bands)
        self.pass_ = 1
        self.n = np.zeros(nb, dtype=np.int64)
        self.f_min = np.full(nb, np.inf)
        self.f_max = np.full(nb, -np.inf)
        self.le_min = np.full(nb, np.inf)
        self.le_max = np.full(nb, -np.inf)
        k = int(round((self.LE_HI - self.LE_LO) / self.LE_STEP))
        self._le_hist = np.zeros((nb, k), dtype=np.int64)
        self.softening: np.ndarray | None = None
        self._h2: np.ndarray | None = None
        self._n2 = np.zeros(nb, dtype=np.int64)

    def _check(self, flux, flux_err):
        flux = np.asarray(flux, dtype=np.float64)
        flux_err = np.asarray(flux_err, dtype=np.float64)
        if flux.shape != flux_err.shape or flux.ndim != 2 or flux.shape[1] != len(self.bands):
            raise CatalogError(f"noise model: flux {flux.shape} and flux_err {flux_err.shape} must both be "
                               f"(N, {len(self.bands)})")
        return flux, flux_err

    def add(self, flux: np.ndarray, flux_err: np.ndarray) -> None:
        """Accumulate one chunk of rows (in the current pass)."""
        flux, flux_err = self._check(flux, flux_err)
        kle = self._le_hist.shape[1] if self._le_hist is not None else 0
        for j in range(len(self.bands)):
            f, e = flux[:, j], flux_err[:, j]
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(f) & np.isfinite(e) & (e > 0)
            if not ok.any():
                continue
            f, le = f[ok], np.log10(e[ok])
            if self.pass_ == 1:
                self.n[j] += f.size
                self.f_min[j] = min(self.f_min[j], float(f.min()))
                self.f_max[j] = max(self.f_max[j], float(f.max()))
                self.le_min[j] = min(self.le_min[j], float(le.min()))
                self.le_max[j] = max(self.le_max[j], float(le.max()))
                i = np.clip(((le - self.LE_LO) / self.LE_STEP).astype(np.int64), 0, kle - 1)
                self._le_hist[j] += np.bincount(i, minlength=kle)
            else:
                m_lo, m_w, l_lo, l_w = self._grid[j]
                m = asinh_mag(f, self.softening[j])
                im = np.clip(((m - m_lo) / m_w).astype(np.int64), 0, self.m_bins - 1)
                il = np.clip(((le - l_lo) / l_w).astype(np.int64), 0, self.le_bins - 1)
                self._h2[j] += np.bincount(im * self.le_bins + il,
                                           minlength=self.m_bins * self.le_bins).reshape(
                    self.m_bins, self.le_bins)
                self._n2[j] += f.size

    def next_pass(self) -> None:
        """End pass 1: fix the softening and the 2-d grid; :meth:`add` then feeds pass 2."""
        if self.pass_ != 1:
            raise RuntimeError("NoiseAccumulator.next_pass() called twice")
        for j, band in enumerate(self.bands):
            if self.n[j] < 10:
                raise CatalogError(f"noise model: band {band} has only {int(self.n[j])} rows with a finite "
                                   "flux and a positive error (need >= 10)")
        nb = len(self.bands)
        self.softening = np.empty(nb)
        self._grid = []
        for j in range(nb):
            med_le = float(_rank_values(self._le_hist[j].astype(np.float64), self.LE_LO, self.LE_STEP,
                                        np.array([(self.n[j] - 1) / 2.0]))[0])
            med_le = min(max(med_le, self.le_min[j]), self.le_max[j])
            b = SOFTENING_FACTOR * 10.0 ** med_le
            self.softening[j] = b
            m_lo = float(asinh_mag(self.f_max[j], b))
            m_hi = float(asinh_mag(self.f_min[j], b))
            m_w = max(m_hi - m_lo, 1e-6) * (1 + 1e-9) / self.m_bins
            l_w = max(self.le_max[j] - self.le_min[j], 1e-6) * (1 + 1e-9) / self.le_bins
            self._grid.append((m_lo, m_w, float(self.le_min[j]), l_w))
        self._le_hist = None
        self._h2 = np.zeros((nb, self.m_bins, self.le_bins), dtype=np.int64)
        self.pass_ = 2

    def result(self) -> "NoiseModel":
        """The fitted :class:`NoiseModel` (after both passes)."""
        if self.pass_ != 2:
            raise RuntimeError("NoiseAccumulator.result() needs both passes (call next_pass() between them)")
        per_band = {}
        for j, band in enumerate(self.bands):
            n = int(self.n[j])
            if int(self._n2[j]) != n:
                raise CatalogError(f"noise model: pass 2 saw {int(self._n2[j])} rows of band {band}, pass 1 "
                                   f"saw {n}; the chunks must cover the same rows twice")
            m_lo, m_w, l_lo, l_w = self._grid[j]
            h = self._h2[j].astype(np.float64)
            cm = h.sum(1)
            cum = np.concatenate([[0.0], np.cumsum(cm)])
            k = int(max(1, min(self.n_bins, n // self.min_per_bin)))
            sizes = np.full(k, n // k, dtype=np.int64)
            sizes[: n % k] += 1
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            centres, med, scat = [], [], []
            for a, b_ in zip(bounds[:-1], bounds[1:], strict=True):
                c = float(b_ - a)
                centres.append(float(np.mean(_rank_values(cm, m_lo, m_w, np.array(
                    [a + math.floor((c - 1) / 2), a + math.ceil((c - 1) / 2)], dtype=np.float64)))))
                w = np.clip(np.minimum(cum[1:], b_) - np.maximum(cum[:-1], a), 0.0, None)
                frac = np.divide(w, cm, out=np.zeros_like(w), where=cm > 0)
                lh = frac @ h
                q = _rank_values(lh, l_lo, l_w, np.array([0.5, 0.25, 0.75]) * (c - 1))
                med.append(float(q[0]))
                scat.append(float((q[2] - q[1]) / 1.349))
            centres = np.maximum.accumulate(np.asarray(centres))
            for i in range(1, len(centres)):
                if centres[i] <= centres[i - 1]:
                    centres[i] = centres[i - 1] + 1e-6
            per_band[band] = BandNoise(float(self.softening[j]), n, [float(x) for x in centres], med, scat)
        return NoiseModel(self.bands, per_band)
