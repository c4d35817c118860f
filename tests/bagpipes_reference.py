"""Build the same galaxies in bagpipes (Carnall et al. 2018), the independent reference SPS.

Used by ``tests/test_sps_bagpipes.py`` and ``bench/sps_throughput.py``.  bagpipes is
imported lazily (its import takes seconds and writes an IGM grid into its package on
first use).  Only used for checks, never by the product at run time.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch

BAGPIPES_COSMO = dict(H0=70.0, Om0=0.3)  # the cosmology hard-wired in bagpipes.utils


def import_bagpipes(high_resolution: bool = True):
    """Import bagpipes quietly; optionally switch it to fine age and wavelength sampling.

    bagpipes' defaults (0.1 dex age bins, R = 100 photometric sampling) are, in its own
    words, "a trade-off between speed and accuracy": a burst inside a 0.1 dex bin gets the
    bin-averaged spectrum.  ``high_resolution`` sets its documented config variables to
    0.01 dex age bins and R_phot = 1000, making it a sharper reference.  Must be called
    before any ``model_galaxy`` is built.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        import bagpipes
        from bagpipes import config, utils
    if high_resolution:
        log_age = np.arange(6.0, np.log10(utils.cosmo.age(0.0).value) + 9.0, 0.01)
        bins = 10 ** utils.make_bins(log_age, make_rhs=True)[0]
        bins[0] = 0.0
        bins[-1] = 1e9 * utils.cosmo.age(0.0).value
        config.age_bins = bins
        config.age_widths = bins[1:] - bins[:-1]
        config.age_sampling = 10**log_age
        config.R_phot = 1000.0
    return bagpipes


def write_filter_files(model, folder: Path) -> list[str]:
    """Write the model's filter curves as two-column text files bagpipes can read.

    The curves are linearly resampled to 1 Å: bagpipes gives the end points of a curve a
    full bin width in its effective-wavelength integral, which for a curve that stops at a
    high response (speclite's ``galex-fuv`` ends at 0.69 at 1750 Å) biases its µJy
    conversion by up to 0.2 mag on coarse sampling; at 1 Å the bias is < 0.001 mag.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in model.filters:
        p = folder / f"{f.name}.dat"
        wave = np.arange(f.wave[0], f.wave[-1], 1.0)
        wave = np.append(wave, f.wave[-1]) if wave[-1] < f.wave[-1] else wave
        np.savetxt(p, np.c_[wave, np.interp(wave, f.wave, f.response)])
        paths.append(str(p))
    return paths


NEGLIGIBLE_LOG_MASS = -10.0  # a component bagpipes must keep but that carries no light


def bagpipes_components(model, theta_row: torch.Tensor) -> dict:
    """bagpipes ``model_components`` equivalent to one θ of an :class:`SPSModel` with τ1 = 0, n_dust = 0.

    SFH: the smooth part as a ``custom`` history sampled from ``SPSModel.sfh``; the burst as a
    bagpipes ``burst`` component; the same constant metallicity; ``Calzetti`` dust with
    A_V = 1.086 τ2 (A = 2.5 log10(e) τ).
    """
    theta = theta_row.reshape(1, -1)
    names = model.param_names
    p = {n: float(theta[0, i]) for i, n in enumerate(names)}
    assert p["tau1"] == 0.0 and p["n_dust"] == 0.0, "bagpipes comparison needs tau1 = 0 and n_dust = 0"
    t_age = float(model.cosmo.age_gyr(theta[:, 0].to(model.device, model.dtype))[0])
    t = np.concatenate([[0.0], np.geomspace(1e-5, t_age * 0.999999, 4000), [t_age]])
    sfr = model.sfh(theta, t).detach().cpu().double().numpy()[0]
    sfr[-1] = 0.0
    log_mf = float(model.derived(theta)["log_mformed"][0])
    f_eff = p["f_burst"] * (p["t_burst"] < t_age)
    zmet = 10.0 ** p["log_zmet"]
    comps: dict = {"redshift": p["z"], "dust": {"type": "Calzetti", "Av": 1.086 * p["tau2"]}}
    if f_eff >= 1.0:
        sfr = np.ones_like(sfr)
    comps["custom"] = {"history": np.c_[t * 1e9, sfr], "metallicity": zmet,
                       "massformed": log_mf + np.log10(1.0 - f_eff) if f_eff < 1.0 else NEGLIGIBLE_LOG_MASS}
    comps["burst"] = {"age": p["t_burst"] if f_eff > 0.0 else 0.1, "metallicity": zmet,
                      "massformed": log_mf + np.log10(f_eff) if f_eff > 0.0 else NEGLIGIBLE_LOG_MASS}
    return comps


def bagpipes_magnitudes(model, theta: torch.Tensor, filter_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """AB magnitudes (N, B) and log10 surviving masses (N,) from bagpipes for each θ."""
    pipes = import_bagpipes()
    filt_list = write_filter_files(model, filter_dir)
    mags, logm = [], []
    g = None
    for row in theta:
        comps = bagpipes_components(model, row)
        with contextlib.redirect_stdout(io.StringIO()):
            if g is None:
                g = pipes.model_galaxy(comps, filt_list=filt_list, phot_units="mujy")
            else:
                g.update(comps)
        fnu_ujy = np.asarray(g.photometry, dtype=float)
        with np.errstate(divide="ignore"):
            mags.append(-2.5 * np.log10(fnu_ujy * 1e-6 / 3631.0))
        logm.append(g.sfh.stellar_mass)
    return np.array(mags), np.array(logm)


def random_comparison_theta(model, n: int, seed: int) -> torch.Tensor:
    """Random θ across the ranges, with τ1 = 0 and n_dust = 0 (bagpipes' Calzetti has no slope or birth
    clouds)."""
    g = torch.Generator().manual_seed(seed)
    b = model.bounds.cpu().double()
    th = b[:, 0] + (b[:, 1] - b[:, 0]) * torch.rand(n, b.shape[0], generator=g, dtype=torch.float64)
    names = list(model.param_names)
    th[:, names.index("z")] = 0.02 + (float(b[0, 1]) - 0.02) * torch.rand(n, generator=g, dtype=torch.float64)
    th[:, names.index("tau1")] = 0.0
    th[:, names.index("n_dust")] = 0.0
    return th
