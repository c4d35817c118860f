"""Agreement of engine.sps with nebular emission and IGM absorption with bagpipes (Carnall et al. 2018).

The galaxies are built in bagpipes as in ``test_sps_bagpipes.py`` (custom SFH + burst, Calzetti dust
A_V = 1.086 τ2, τ1 = 0, n_dust = 0, FlatLambdaCDM(70, 0.3)), plus its ``nebular`` component with the
same log U.  bagpipes' Cloudy grids are tabulated on its default 0.1 dex age bins, so its nebular
model only runs at that age sampling (at 0.01 dex it indexes the grid out of range), where bursts get
the spectrum averaged over a 0.1 dex bin (differences up to 0.1 mag for young bursts).  The
reference flux is therefore bagpipes' stellar flux at 0.01 dex (as in ``test_sps_bagpipes.py``) plus
its nebular increment (nebular on minus off) at 0.1 dex; both at R_phot = 1000; bagpipes always
applies its IGM absorption.

Measured (seed 3, 24 galaxies at z ≤ 0.5: 12 from the whole parameter box, 12 young star-forming
ones with bursts 15–215 Myr old; log U uniform in [−4, −1]): over ugriz, NUV and 2MASS JHKs
|Δmag| ≤ 0.027 except for the 9 galaxies with a young dominant burst (≥ 30 % of the mass, < 300 Myr),
which reach 0.039 in the NUV and 0.155 in Ks; median 0.003–0.006 per band in ugriz + NUV, 0.006 / 0.014
/ 0.018 in J / H / Ks; FUV (with IGM) ≤ 0.047.  Those excesses are the stars of young bursts
(bagpipes takes the nearest raw BC03 age, we interpolate in log age; red supergiants make the
near-IR change fast with age): the nebular increments, up to 0.24 mag in the optical and 0.58 in the
FUV, agree to ≤ 0.006 mag in ugriz, NUV and JHKs (median 0.0003) and 0.025 in the FUV, and Hα fluxes
to 0.2–0.8 %.  u and g at 2.5 ≤ z ≤ 3 (IGM absorption of the whole band): ≤ 0.040 mag, median 0.007.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("bagpipes")

from bagpipes_reference import (
    BAGPIPES_COSMO,
    bagpipes_components,
    random_comparison_theta,
    write_filter_files,
)

pytestmark = pytest.mark.bagpipes

OPTICAL_NIR = ("sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z", "galex-nuv",
               "twomass-J", "twomass-H", "twomass-Ks")
BANDS = OPTICAL_NIR + ("galex-fuv",)
HALPHA = "H  1  6562.80A"


def _set_age_sampling(dlog: float):
    """bagpipes with ages every ``dlog`` dex and R_phot = 1000 (its documented config variables)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import bagpipes
        from bagpipes import config, utils
    log_age = np.arange(6.0, np.log10(utils.cosmo.age(0.0).value) + 9.0, dlog)
    bins = 10 ** utils.make_bins(log_age, make_rhs=True)[0]
    bins[0] = 0.0
    bins[-1] = 1e9 * utils.cosmo.age(0.0).value
    config.age_bins, config.age_widths, config.age_sampling = bins, bins[1:] - bins[:-1], 10**log_age
    config.R_phot = 1000.0
    return bagpipes


def _run(model, theta, folder: Path, nebular: bool, dlog: float) -> tuple[np.ndarray, np.ndarray]:
    """bagpipes fluxes [µJy] (N, B) and Hα fluxes [erg/s/cm²] (N,) of each θ."""
    pipes = _set_age_sampling(dlog)
    filt = write_filter_files(model, folder)
    flux, ha, g = [], [], None
    for row in theta:
        comps = bagpipes_components(model, row)
        if nebular:
            comps["nebular"] = {"logU": float(row[-1])}
        with contextlib.redirect_stdout(io.StringIO()):
            if g is None:
                g = pipes.model_galaxy(comps, filt_list=filt, phot_units="mujy")
            else:
                g.update(comps)
        flux.append(np.asarray(g.photometry, dtype=float))
        ha.append(g.line_fluxes[HALPHA] if nebular else 0.0)
    return np.array(flux), np.array(ha)


def _reference(model, theta, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference magnitudes (module docstring), bagpipes' nebular increments [mag] and Hα fluxes."""
    try:
        neb, ha = _run(model, theta, folder, True, 0.1)
        bare, _ = _run(model, theta, folder, False, 0.1)
        fine, _ = _run(model, theta, folder, False, 0.01)
    finally:
        _set_age_sampling(0.01)

    def mag(f):
        return -2.5 * np.log10(f * 1e-6 / 3631.0)

    return mag(fine + neb - bare), mag(neb) - mag(bare), ha


def _young_star_forming(theta: torch.Tensor, names: list[str], n: int, seed: int) -> None:
    """Make the first n rows young and star-forming: rising/constant SFH, bursts 15–215 Myr old."""
    g = torch.Generator().manual_seed(seed)
    theta[:n, names.index("kappa1")] = 1.0
    theta[:n, names.index("kappa2")] = 1.0
    theta[:n, names.index("kappa3")] = 0.3 * torch.rand(n, generator=g, dtype=theta.dtype)
    theta[:n, names.index("t_burst")] = 0.015 + 0.2 * torch.rand(n, generator=g, dtype=theta.dtype)


@pytest.fixture(scope="module")
def low_z(tmp_path_factory):
    from astropy.cosmology import FlatLambdaCDM

    from engine.sps import SPSModel

    kw = dict(cosmology=FlatLambdaCDM(**BAGPIPES_COSMO), uv_bump=False, dtype=torch.float64, device="cpu",
              igm=True)
    model = SPSModel(BANDS, nebular=True, **kw)
    bare = SPSModel(BANDS, **kw)
    n = 24
    theta = random_comparison_theta(model, n, seed=3)
    names = list(model.param_names)
    g = torch.Generator().manual_seed(4)
    theta[:, 0] = 0.005 + 0.495 * torch.rand(n, generator=g, dtype=torch.float64)
    theta[:, -1] = -4.0 + 3.0 * torch.rand(n, generator=g, dtype=torch.float64)
    _young_star_forming(theta, names, n // 2, seed=5)
    ours = model.magnitudes(theta).numpy()
    increment = ours - bare.magnitudes(theta[:, :-1]).numpy()
    ha = model.line_fluxes(theta, ["Halpha"]).numpy()[:, 0]
    ref, ref_increment, ref_ha = _reference(model, theta, tmp_path_factory.mktemp("filters"))
    return theta, ours, ref, increment, ref_increment, ha, ref_ha


def test_magnitudes_with_nebular_emission_agree_with_bagpipes(low_z):
    theta, ours, ref, *_ = low_z
    diff = np.abs(ours - ref)
    print("\nmax |dmag|:", dict(zip(BANDS, diff.max(0).round(4), strict=True)))
    print("median |dmag|:", dict(zip(BANDS, np.median(diff, 0).round(4), strict=True)))
    cols = [BANDS.index(b) for b in OPTICAL_NIR]
    # ≥ 30 % of the mass, < 300 Myr old
    young_burst = (theta[:, 6].numpy() >= 0.3) & (theta[:, 5].numpy() < 0.3)
    print("max |dmag| without young dominant bursts:", diff[~young_burst][:, cols].max().round(4),
          "with:", diff[young_burst][:, cols].max().round(4), f"({young_burst.sum()} galaxies)")
    assert diff[~young_burst][:, cols].max() <= 0.035
    assert np.median(diff[:, cols[:6]]) <= 0.005  # ugriz + NUV
    assert np.median(diff[:, cols[6:]], axis=0).max() <= 0.02  # JHKs: stellar near-IR of young populations
    assert diff[:, BANDS.index("galex-fuv")].max() <= 0.05
    # the stars of young dominant bursts differ between the codes (module docstring), most in the near-IR
    assert diff[young_burst][:, cols[:6]].max() <= 0.05
    assert diff[young_burst][:, cols].max() <= 0.2


def test_nebular_increments_and_halpha_agree_with_bagpipes(low_z):
    _, _, _, inc, ref_inc, ha, ref_ha = low_z
    d = np.abs(inc - ref_inc)
    print("\nnebular increment: bagpipes max", dict(zip(BANDS, np.abs(ref_inc).max(0).round(3), strict=True)))
    print("|d increment| max", dict(zip(BANDS, d.max(0).round(4), strict=True)), "median",
          np.median(d).round(5))
    print("Halpha ratio ours/bagpipes: min %.4f max %.4f" % ((ha / ref_ha).min(), (ha / ref_ha).max()))
    assert np.abs(ref_inc).max() > 0.1  # the comparison is not empty
    assert d[:, :len(OPTICAL_NIR)].max() <= 0.01
    assert d[:, -1].max() <= 0.03
    assert np.abs(ha / ref_ha - 1.0).max() <= 0.02


def test_u_and_g_with_igm_at_redshift_three_agree_with_bagpipes(tmp_path):
    from astropy.cosmology import FlatLambdaCDM

    from engine.sps import SPSModel

    model = SPSModel(["sdss2010-u", "sdss2010-g"], cosmology=FlatLambdaCDM(**BAGPIPES_COSMO), uv_bump=False,
                     z_max=3.0, dtype=torch.float64, device="cpu", igm=True, nebular=True)
    n = 8
    theta = random_comparison_theta(model, n, seed=6)
    g = torch.Generator().manual_seed(7)
    theta[:, 0] = 2.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    theta[:, -1] = -4.0 + 3.0 * torch.rand(n, generator=g, dtype=torch.float64)
    _young_star_forming(theta, list(model.param_names), n // 2, seed=8)
    ours = model.magnitudes(theta).numpy()
    ref, _, _ = _reference(model, theta, tmp_path)
    diff = np.abs(ours - ref)
    print("\nu, g at 2.5 <= z <= 3 with IGM: max |dmag|", diff.max(0).round(4), "median",
          np.median(diff, 0).round(4))
    assert diff.max() <= 0.05
