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
    def fit(cls, flux: np.ndarray, flux_err: np.ndarray, bands, n_bins: int = 20, min_per_bin: int = 20) -> "NoiseModel":
        """Fit from catalog fluxes and errors (nanomaggies, (N, B); NaN = no measurement)."""
        flux = np.asarray(flux, dtype=np.float64)
        flux_err = np.asarray(flux_err, dtype=np.float64)
        bands = tuple(bands)
        if flux.shape != flux_err.shape or flux.ndim != 2 or flux.shape[1] != len(bands):
            raise CatalogError(f"noise model: flux {flux.shape} and flux_err {flux_err.shape} must both be (N, {len(bands)})")
        per_band = {}
        for j, band in enumerate(bands):
            f, e = flux[:, j], flux_err[:, j]
            ok = np.isfinite(f) & np.isfinite(e) & (e > 0)
            n = int(ok.sum())
            if n < 10:
                raise CatalogError(f"noise model: band {band} has only {n} rows with a finite flux and a positive error (need >= 10)")
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
            med = torch.tensor([pad(self.per_band[b].log10_sigma_median) for b in self.bands], device=device, dtype=dtype)
            sc = torch.tensor([pad(self.per_band[b].log10_sigma_scatter) for b in self.bands], device=device, dtype=dtype)
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

    def apply(self, flux: torch.Tensor, amplitude: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
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
                               [float(v) for v in e["log10_sigma_median"]], [float(v) for v in e["log10_sigma_scatter"]])
                if not (len(nb.mag) == len(nb.log10_sigma_median) == len(nb.log10_sigma_scatter) >= 1) or nb.softening <= 0:
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
