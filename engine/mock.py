"""Magnitude-limited mock catalogs: a survey whose truth is known, to test population recovery.

1. (z, log M*) from a stellar-mass function times the comoving volume: the double
   Schechter fit of Baldry et al. (2012, GAMA; h = 0.7),
   φ(M) dlog M = ln10 e^{−M/M*} [φ₁* (M/M*)^{α₁+1} + φ₂* (M/M*)^{α₂+1}] dlog M,
   log M* = 10.66, φ₁* = 3.96e-3, α₁ = −0.35, φ₂* = 0.79e-3, α₂ = −1.47 (Mpc⁻³),
   times dV/dz of the model's cosmology, sampled on a fine (z, log M*) grid.
2. The other parameters from the mock population of Li et al. (2023, arXiv:2309.16958, Table 2).
3. The SPS (:class:`engine.sps.SPSModel`) gives noiseless fluxes; :class:`NoiseModel` adds noise.
4. The selection (e.g. ``sdss2010-r < 19.8``) is applied to the *observed* magnitudes.

Efficiency without bias: at each z, galaxies lighter than the mass at which even the
brightest stellar population per unit mass in the grid of extreme templates
(youngest burst, no dust, lowest metallicity, …) falls short of the limit by
``MASS_MARGIN_DEX`` cannot be selected; they are not drawn.  Draws continue in chunks
until ``n`` galaxies pass the cut.

Outputs (``write_mock``): ``catalog.ecsv`` (per band ``flux_<band>``, ``flux_err_<band>``
[nanomaggies], ``mag_<band>``, ``mag_err_<band>`` [AB; NaN where the observed flux ≤ 0], and
``z_spec``), ``truth.ecsv`` (θ, derived quantities and noiseless ``mag_true_<band>``, same rows)
and ``mock.json`` (all settings, so the same command reproduces the files exactly).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import stats

from engine.errors import PopsedError
from engine.sps.params import KAPPA_NAMES

#: Baldry et al. (2012) double Schechter parameters (h = 0.7).
BALDRY12 = dict(log_mstar_char=10.66, phi1=3.96e-3, alpha1=-0.35, phi2=0.79e-3, alpha2=-1.47)

#: Mock population of Li et al. (2023), Table 2: truncated normals (mu, sigma, lo, hi), or uniform (lo, hi).
TABLE2 = {
    "kappa1": ("truncnorm", 0.5, 0.3, 0.0, 1.0),
    "kappa2": ("uniform", 0.0, 1.0),
    "kappa3": ("uniform", 0.0, 1.0),
    "t_burst": ("truncnorm", 12.0, 7.0, 0.01, 13.27),
    "f_burst": ("truncnorm", 0.1, 0.7, 0.0, 1.0),
    "log_zmet": ("truncnorm", -1.2, 0.9, -2.3, 0.3),
    "n_dust": ("truncnorm", 2.0, 2.0, -3.0, 1.0),
    "tau1": ("truncnorm", 1.0, 0.8, 0.0, 3.0),
    "tau2": ("truncnorm", 0.6, 0.8, 0.0, 3.0),
}

MASS_MARGIN_DEX = 0.3


@dataclass(frozen=True)
class BandNoise:
    """Per-band noise: σ_f = sqrt(sky² + gain·f + (floor·f)²) · exp(scatter · N(0,1)) [nanomaggies].

    sky: background-limited σ; gain: Poisson term of the source; floor: fractional
    (calibration) error; scatter: log-normal spread of σ at fixed flux (galaxy sizes).
    """

    sky: float
    gain: float
    floor: float
    scatter: float


#: SDSS-like noise, fitted (robust least squares in log σ) to the quoted model-magnitude errors of
#: 10 000 SDSS main-sample galaxies (``mlz_sdss_mgs``); the r-band sky term, unconstrained at
#: r < 17.77, is set to g's (the two have the same depth).  GALEX: sky from the MIS 5σ depth of
#: ~22.7 AB, 2 % floor.
NOISE_PRESETS: dict[str, BandNoise] = {
    "sdss2010-u": BandNoise(0.45, 0.035, 0.0, 0.25),
    "sdss2010-g": BandNoise(0.087, 0.0035, 0.0015, 0.17),
    "sdss2010-r": BandNoise(0.087, 0.0042, 0.0015, 0.17),
    "sdss2010-i": BandNoise(0.36, 0.0056, 0.0016, 0.20),
    "sdss2010-z": BandNoise(2.10, 0.033, 0.0018, 0.28),
    "galex-fuv": BandNoise(0.166, 0.02, 0.02, 0.2),
    "galex-nuv": BandNoise(0.166, 0.02, 0.02, 0.2),
}


class NoiseModel:
    """Photometric noise of a mock survey, band by band (see :class:`BandNoise`)."""

    def __init__(self, bands: Sequence[str], depths: dict[str, float] | None = None):
        self.bands = tuple(bands)
        self.params: dict[str, BandNoise] = {}
        depths = depths or {}
        for b in self.bands:
            if b in depths:  # generic band from a 5σ depth: sky = f_5σ / 5, 1 % floor
                f5 = 10.0 ** (-0.4 * (depths[b] - 22.5))
                self.params[b] = BandNoise(f5 / 5.0, 0.02 * f5 / 5.0, 0.01, 0.2)
            elif b in NOISE_PRESETS:
                self.params[b] = NOISE_PRESETS[b]
            else:
                raise PopsedError(
                    f"no noise preset for band '{b}'; give its 5-sigma depth with --depth {b}:MAG "
                    f"(presets: {', '.join(NOISE_PRESETS)})"
                )

    def sigma(self, flux: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw σ_f (N, B) for true fluxes (N, B) [nanomaggies]."""
        out = np.empty_like(flux)
        for j, b in enumerate(self.bands):
            p = self.params[b]
            f = np.clip(flux[:, j], 0.0, None)
            base = np.sqrt(p.sky**2 + p.gain * f + (p.floor * f) ** 2)
            out[:, j] = base * np.exp(p.scatter * rng.standard_normal(len(f)))
        return out

    def to_dict(self) -> dict:
        return {b: asdict(p) for b, p in self.params.items()}


def parse_mag_limits(spec: Sequence[str] | str | None) -> dict[str, float]:
    """``["sdss2010-r:19.8", ...]`` or ``"sdss2010-r:19.8,..."`` → {band: limit}."""
    if spec is None:
        return {}
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = {}
    for item in items:
        band, sep, val = item.strip().rpartition(":")
        try:
            out[band] = float(val)
        except ValueError:
            band = ""
        if not sep or not band:
            raise PopsedError(f"bad magnitude limit '{item}': expected BAND:MAG, e.g. sdss2010-r:19.8")
    return out


def draw_table2(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw the non-(z, M*) parameters from Li et al. (2023) Table 2."""
    out = {}
    for name, spec in TABLE2.items():
        if spec[0] == "uniform":
            out[name] = rng.uniform(spec[1], spec[2], n)
        else:
            _, mu, sig, lo, hi = spec
            out[name] = stats.truncnorm.rvs((lo - mu) / sig, (hi - mu) / sig, loc=mu, scale=sig, size=n,
                                            random_state=rng)
    return out


def smf_baldry12(log_m: np.ndarray) -> np.ndarray:
    """Baldry et al. (2012) stellar-mass function per dex [Mpc⁻³ dex⁻¹]."""
    p = BALDRY12
    x = 10.0 ** (log_m - p["log_mstar_char"])
    return (
        math.log(10) * np.exp(-x) * (p["phi1"] * x ** (p["alpha1"] + 1) + p["phi2"] * x ** (p["alpha2"] + 1))
    )


class MockSurvey:
    """Draws magnitude-limited mock galaxies through an SPS model.

    Parameters
    ----------
    model : SPSModel
    mag_limits : dict
        {band: faint limit}, applied to observed magnitudes.
    noise : NoiseModel
    z_min : float
        Lower redshift of the survey volume.
    """

    def __init__(self, model, mag_limits: dict[str, float], noise: NoiseModel, z_min: float = 0.002):
        for b in mag_limits:
            if b not in model.bands:
                raise PopsedError(
                    f"magnitude limit on band '{b}', which is not among the bands {list(model.bands)}"
                )
        self.model = model
        self.mag_limits = mag_limits
        self.noise = noise
        self.z_min = z_min
        self._build_grid()

    def _brightest_log_light_per_mass(self, z: np.ndarray) -> np.ndarray:
        """max over extreme templates of −0.4 m_band(log M* = 0) for each limit band, (Z, n_limits)."""
        names = self.model.param_names
        combos = []
        for t_b in (0.01, 0.02, 0.05, 0.2):
            for lz in (-2.3, -1.0, 0.3):
                for fb in (0.0, 1.0):
                    for kap in ((1.0, 1.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)):
                        combos.append((t_b, lz, fb) + kap)
        combos = np.array(combos)
        zz = np.repeat(z, len(combos))
        cc = np.tile(combos, (len(z), 1))
        theta = np.zeros((len(zz), len(names)))
        col = {n: i for i, n in enumerate(names)}
        theta[:, col["z"]] = zz
        theta[:, col["log_mstar"]] = 7.0
        theta[:, col["t_burst"]], theta[:, col["log_zmet"]], theta[:, col["f_burst"]] = (
            cc[:, 0],
            cc[:, 1],
            cc[:, 2],
        )
        theta[:, [col[k] for k in KAPPA_NAMES]] = cc[:, 3:]
        theta[:, col["n_dust"]] = 0.0
        with torch.no_grad():
            mag = self.model.magnitudes(torch.as_tensor(theta, dtype=self.model.dtype)).double().cpu().numpy()
        mag = mag - 2.5 * 7.0  # magnitude of 1 M☉
        idx = [self.model.bands.index(b) for b in self.mag_limits]
        return (-0.4 * mag[:, idx]).reshape(len(z), len(combos), len(idx)).max(axis=1)

    def _build_grid(self, nz: int = 400, nm: int = 600) -> None:
        z_edges = np.linspace(self.z_min, self.model.z_max, nz + 1)
        m_edges = np.linspace(7.0, 13.0, nm + 1)
        zc, mc = 0.5 * (z_edges[1:] + z_edges[:-1]), 0.5 * (m_edges[1:] + m_edges[:-1])
        cosmo = self.model.cosmo.cosmology
        dvdz = 4 * math.pi * cosmo.differential_comoving_volume(zc).to_value("Mpc3 / sr")  # full sky
        dens = dvdz[:, None] * smf_baldry12(mc)[None, :]
        if self.mag_limits:
            light = self._brightest_log_light_per_mass(zc)  # log10 of brightest flux per M☉ (in mag units)
            lim = np.array([-0.4 * v for v in self.mag_limits.values()])
            # log M* at which the brightest template reaches every limit (a galaxy must pass all cuts)
            self.log_mass_reach = np.max(lim[None, :] - light, axis=1)  # per z cell
            dens = dens * (m_edges[1:][None, :] >= self.log_mass_reach[:, None] - MASS_MARGIN_DEX)
        else:
            self.log_mass_reach = np.full(nz, -np.inf)
        self._z_edges, self._m_edges = z_edges, m_edges
        self._p = (dens / dens.sum()).ravel()

    def log_mass_reach_at(self, z: np.ndarray) -> np.ndarray:
        """Lowest log M* that the brightest template could bring above every limit at z."""
        iz = np.clip(np.searchsorted(self._z_edges, z) - 1, 0, len(self.log_mass_reach) - 1)
        return self.log_mass_reach[iz]

    def draw_population(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """θ of n galaxies of the underlying (pre-selection) population within the drawable region."""
        cells = rng.choice(self._p.size, size=n, p=self._p)
        iz, im = np.divmod(cells, len(self._m_edges) - 1)
        z = self._z_edges[iz] + rng.uniform(size=n) * np.diff(self._z_edges)[iz]
        m = self._m_edges[im] + rng.uniform(size=n) * np.diff(self._m_edges)[im]
        rest = draw_table2(n, rng)
        cols = {"z": z, "log_mstar": m, **rest}
        return np.stack([cols[name] for name in self.model.param_names], axis=1)

    def observe(self, theta: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Noiseless and noisy photometry of θ and the selection mask."""
        with torch.no_grad():
            f_true = self.model.fluxes(torch.as_tensor(theta, dtype=self.model.dtype)).double().cpu().numpy()
        sigma = self.noise.sigma(f_true, rng)
        f_obs = f_true + sigma * rng.standard_normal(f_true.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            mag_obs = np.where(f_obs > 0, 22.5 - 2.5 * np.log10(f_obs), np.nan)
        keep = np.ones(len(theta), dtype=bool)
        for b, lim in self.mag_limits.items():
            j = self.model.bands.index(b)
            keep &= np.nan_to_num(mag_obs[:, j], nan=np.inf) < lim
        return {"flux_true": f_true, "flux": f_obs, "flux_err": sigma, "mag": mag_obs, "selected": keep}

    def sample(self, n: int, seed: int, chunk: int = 20000, max_draws: int = 50_000_000):
        """Draw until n galaxies pass the selection; returns θ and photometry of those n."""
        rng = np.random.default_rng(seed)
        thetas, obs, got, drawn = [], [], 0, 0
        while got < n:
            if drawn >= max_draws:
                raise PopsedError(f"only {got} of {n} galaxies passed the selection after {drawn} draws")
            th = self.draw_population(chunk, rng)
            o = self.observe(th, rng)
            drawn += chunk
            sel = o["selected"]
            thetas.append(th[sel])
            obs.append({k: v[sel] for k, v in o.items()})
            got += int(sel.sum())
        theta = np.concatenate(thetas)[:n]
        phot = {k: np.concatenate([o[k] for o in obs])[:n] for k in obs[0]}
        return theta, phot, drawn


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write_table(table, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".ecsv")
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    try:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.chmod(tmp, _umask_mode())
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def make_mock(n: int, seed: int, bands: Sequence[str], mag_limits: dict[str, float], *, z_max: float = 0.65,
              depths: dict[str, float] | None = None, device="cpu"):
    """Build a mock; returns (catalog Table, truth Table, settings dict)."""
    from astropy.table import Table

    from engine import __version__
    from engine.sps import SPSModel

    if n < 1:
        raise PopsedError(f"--n must be positive, got {n}")
    try:
        model = SPSModel(list(bands), device=device, z_max=z_max)
    except ValueError as exc:
        raise PopsedError(str(exc)) from None
    noise = NoiseModel(model.bands, depths)
    survey = MockSurvey(model, mag_limits, noise)
    theta, phot, drawn = survey.sample(n, seed)
    with torch.no_grad():
        derived = model.derived(torch.as_tensor(theta, dtype=model.dtype))
    cat, truth = Table(), Table()
    for j, b in enumerate(model.bands):
        f, e, m = phot["flux"][:, j], phot["flux_err"][:, j], phot["mag"][:, j]
        cat[f"flux_{b}"] = f.astype(np.float32)
        cat[f"flux_{b}"].unit = "nanomaggy"
        cat[f"flux_err_{b}"] = e.astype(np.float32)
        cat[f"flux_err_{b}"].unit = "nanomaggy"
        with np.errstate(invalid="ignore", divide="ignore"):
            cat[f"mag_{b}"] = m.astype(np.float32)
            cat[f"mag_err_{b}"] = np.where(f > 0, 2.5 / math.log(10) * e / f, np.nan).astype(np.float32)
    cat["z_spec"] = theta[:, 0].astype(np.float32)
    # the survey's selection travels with the catalog: `popsed fit` applies it when given none
    cat.meta["selection"] = ",".join(f"{b}<{v:g}" for b, v in mag_limits.items())
    for i, name in enumerate(model.param_names):
        truth[name] = theta[:, i].astype(np.float32)
    for k, v in derived.items():
        truth[k] = v.cpu().numpy().astype(np.float32)
    with np.errstate(divide="ignore"):
        for j, b in enumerate(model.bands):
            truth[f"mag_true_{b}"] = (22.5 - 2.5 * np.log10(phot["flux_true"][:, j])).astype(np.float32)
    settings = {
        "popsed_version": __version__,
        "n": n,
        "seed": seed,
        "bands": list(model.bands),
        "mag_limits": mag_limits,
        "z_max": z_max,
        "cosmology": model.cosmo.cosmology.name,
        "stellar_mass_function": {"name": "Baldry et al. (2012) double Schechter", **BALDRY12},
        "population": {k: list(v) for k, v in TABLE2.items()},
        "noise": noise.to_dict(),
        "draws": drawn,
        "selected_fraction_of_drawable": n / drawn,
    }
    return cat, truth, settings


def write_mock(out_dir: str | Path, n: int, seed: int, bands: Sequence[str], mag_limits: dict[str, float],
               **kwargs) -> Path:
    """Make a mock and write catalog.ecsv, truth.ecsv and mock.json into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    cat, truth, settings = make_mock(n, seed, bands, mag_limits, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_table(truth, out / "truth.ecsv")
    _atomic_write_text(json.dumps(settings, indent=2) + "\n", out / "mock.json")
    _atomic_write_table(cat, out / "catalog.ecsv")
    return out


# ---------------------------------------------------------------- CLI
def add_subparser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mock",
        help="make a magnitude-limited mock catalog with known truth",
        description="Make a magnitude-limited mock catalog with known truth: catalog.ecsv, truth.ecsv, "
        "mock.json in OUT_DIR.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--n", type=int, required=True, help="number of galaxies passing the selection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bands", default="sdss2010-u,sdss2010-g,sdss2010-r,sdss2010-i,sdss2010-z",
                   help="comma-separated speclite band names")
    p.add_argument("--mag-limit", action="append", default=None, metavar="BAND:MAG",
                   help="faint limit on observed magnitudes, repeatable (default sdss2010-r:19.8)")
    p.add_argument("--depth", action="append", default=None, metavar="BAND:MAG",
                   help="5-sigma depth of a band without a noise preset")
    p.add_argument("--z-max", type=float, default=0.65)
    p.add_argument("--device", default="cpu", help="cpu (default, bit-reproducible) or cuda/auto")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    bands = [b.strip() for b in args.bands.split(",") if b.strip()]
    limits = parse_mag_limits(args.mag_limit or ["sdss2010-r:19.8"])
    depths = parse_mag_limits(args.depth) if args.depth else None
    out = write_mock(args.out_dir, args.n, args.seed, bands, limits, z_max=args.z_max, depths=depths,
                     device=None if args.device == "auto" else args.device)
    print(f"wrote {args.n} galaxies to {out}/catalog.ecsv (truth in truth.ecsv, settings in mock.json)")
    return 0
