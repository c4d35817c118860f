"""A tiny analytic forward model with the SPS protocol, for tests, demos and benchmarks of the trainer.

Parameters ``z`` in [0.01, 0.5], ``log_mstar`` in [8, 12], ``tau2`` in [0, 2]; bands are arbitrary names
(default ``toy-g, toy-r, toy-i``).  AB magnitudes::

    m_b = 19 - 2.5 (log_mstar - 10.5) + 5 log10(z / 0.1) + c_b z + a_b tau2

with per-band colour terms ``c_b`` (redshift) and ``a_b`` (dust), so all three parameters are
identifiable from three bands.  Fluxes are in nanomaggies; ``derived`` returns the SPS derived names
(simple closed-form stand-ins).  Use it through ``forward_model=ToyForwardModel(...)`` or
``--forward engine.population.toy:ToyForwardModel``.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

TOY_BANDS = ("toy-g", "toy-r", "toy-i")


class ToyForwardModel:
    param_names = ("z", "log_mstar", "tau2")
    derived_names = ("log_sfr_10myr", "log_sfr_100myr", "log_ssfr_100myr", "log_mformed", "mwage_gyr")

    def __init__(self, bands=TOY_BANDS, cosmology=None, device=None, dtype=torch.float32, z_max: float = 0.5):
        self.bands = tuple(bands)
        dev = torch.device("cpu" if device in (None, "auto") else device)
        self.device = dev
        self.dtype = dtype
        self.bounds = torch.tensor([[0.01, z_max], [8.0, 12.0], [0.0, 2.0]], device=dev, dtype=dtype)
        nb = len(self.bands)
        # redshift and dust colour terms, not collinear: g-r ~ 4 z + 0.9 tau2, r-i ~ 2 z + 0.1 tau2
        c, a = [6.0, 2.0, 0.0], [1.5, 0.6, 0.5]
        idx = [min(i, 2) for i in range(nb)]
        self._c = torch.tensor([c[i] for i in idx], device=dev, dtype=dtype)
        self._a = torch.tensor([a[i] for i in idx], device=dev, dtype=dtype)

    def validate_theta(self, theta: torch.Tensor) -> None:
        if theta.ndim != 2 or theta.shape[1] != 3:
            raise ValueError("theta must be (N, 3)")
        for j, name in enumerate(self.param_names):
            lo, hi = self.bounds[j]
            if bool(((theta[:, j] < lo) | (theta[:, j] > hi)).any()):
                raise ValueError(f"parameter {name} outside [{float(lo)}, {float(hi)}]")

    def magnitudes(self, theta: torch.Tensor) -> torch.Tensor:
        z, lm, t2 = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
        return 19.0 - 2.5 * (lm - 10.5) + 5.0 * torch.log10(z / 0.1) + self._c * z + self._a * t2

    def fluxes(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.pow(10.0, -0.4 * (self.magnitudes(theta) - 22.5))

    def derived(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        lm = theta[:, 1]
        sfr = lm - 10.0 - 0.5 * theta[:, 2]
        return {
            "log_sfr_10myr": sfr,
            "log_sfr_100myr": sfr,
            "log_ssfr_100myr": sfr - lm,
            "log_mformed": lm + math.log10(1.6),
            "mwage_gyr": 5.0 + 10.0 * theta[:, 0],
        }


class ToyCatalog:
    """An in-memory catalog with the fields of ``engine.catalog.Catalog`` that the fit uses."""

    def __init__(self, bands, flux, flux_err, z_spec=None, truth=None):
        self.bands = tuple(bands)
        self.flux = np.asarray(flux, dtype=np.float64)
        self.flux_err = np.asarray(flux_err, dtype=np.float64)
        self.z_spec = None if z_spec is None else np.asarray(z_spec, dtype=np.float64)
        self.truth = truth
        h = hashlib.sha256(self.flux.tobytes() + self.flux_err.tobytes())
        if self.z_spec is not None:
            h.update(self.z_spec.tobytes())
        self.sha256 = h.hexdigest()
        self.path = None
        self.report = {"n_rows": int(self.flux.shape[0])}


def toy_truth(n: int, seed: int = 0):
    """Truth parameters (n, 3) of the toy population: z ~ N(0.2, 0.08), log M* ~ N(10.3, 0.35),
    tau2 ~ N(0.6, 0.3), each clipped into the toy bounds."""
    rng = np.random.default_rng(seed)
    z = np.clip(rng.normal(0.2, 0.08, n), 0.03, 0.49)
    lm = np.clip(rng.normal(10.3, 0.35, n), 8.05, 11.95)
    t2 = np.clip(rng.normal(0.6, 0.3, n), 0.01, 1.99)
    return np.stack([z, lm, t2], axis=1)


def make_toy_catalog(n: int = 2000, seed: int = 0, sky_sigma: float = 0.3, mag_limit: float | None = 20.5,
                     cut_band: str = "toy-r", bands=TOY_BANDS, oversample: int = 4):
    """A noisy, magnitude-limited toy catalog of (about) ``n`` rows and the truth of *all* drawn galaxies.

    Noise: sigma_f^2 = sky_sigma^2 + 0.02 f (sky + Poisson-like), drawn per galaxy.  Returns
    ``(catalog, truth_all, selected_mask)``.
    """
    model = ToyForwardModel(bands)
    m_total = n * (oversample if mag_limit is not None else 1)
    theta = toy_truth(m_total, seed)
    with torch.no_grad():
        f = model.fluxes(torch.tensor(theta, dtype=torch.float32)).double().numpy()
    rng = np.random.default_rng(seed + 1)
    err = np.sqrt(sky_sigma**2 + 0.02 * np.clip(f, 0, None)) * np.exp(0.1 * rng.normal(size=f.shape))
    obs = f + err * rng.normal(size=f.shape)
    if mag_limit is not None:
        j = model.bands.index(cut_band)
        with np.errstate(invalid="ignore", divide="ignore"):
            sel = (obs[:, j] > 0) & (22.5 - 2.5 * np.log10(np.where(obs[:, j] > 0, obs[:, j], 1.0))
                                     < mag_limit)
    else:
        sel = np.ones(m_total, dtype=bool)
    idx = np.flatnonzero(sel)[:n]
    keep = np.zeros(m_total, dtype=bool)
    keep[idx] = True
    # truth of the population behind the catalog: the first galaxies up to the last one selected
    last = idx[-1] + 1 if idx.size else 0
    cat = ToyCatalog(model.bands, obs[idx], err[idx], z_spec=theta[idx, 0], truth=theta[idx])
    return cat, theta[:last], keep[:last]
