"""Agreement of engine.sps with bagpipes (Carnall et al. 2018), an independent SPS code.

The same galaxies are built in bagpipes: a ``custom`` SFH sampled from ``SPSModel.sfh`` plus a
``burst`` component, the same constant metallicity, ``Calzetti`` dust with A_V = 1.086 τ2, τ1 = 0,
n_dust = 0, the same cosmology (bagpipes' FlatLambdaCDM(70, 0.3)) and ``phot_units="mujy"``.
bagpipes is run at 0.01 dex age sampling and R_phot = 1000 (see ``bagpipes_reference``).

Measured (60 random θ, seed 1): smooth SFHs agree to ≤ 0.008 mag in ugriz and NUV; galaxies
whose light is dominated by the burst differ by up to ~0.03 mag because bagpipes gives a burst the
spectrum of the nearest raw BC03 age while we interpolate linearly in log age (so that fluxes are
differentiable in t_burst); GALEX FUV at z ≳ 0.3 is up to 0.05 mag brighter here because bagpipes
applies Inoue et al. (2014) IGM absorption, which this model does not include yet.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("bagpipes")

from bagpipes_reference import BAGPIPES_COSMO, bagpipes_magnitudes, random_comparison_theta  # noqa: E402
from conftest import GALEX_BANDS, SDSS_BANDS  # noqa: E402

pytestmark = pytest.mark.bagpipes

N_GALAXIES = 60


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    from astropy.cosmology import FlatLambdaCDM

    from engine.sps import SPSModel

    model = SPSModel(SDSS_BANDS + GALEX_BANDS, cosmology=FlatLambdaCDM(**BAGPIPES_COSMO), uv_bump=False,
                     dtype=torch.float64, device="cpu")
    theta = random_comparison_theta(model, N_GALAXIES, seed=1)
    ours = model.magnitudes(theta).numpy()
    ref, ref_logm = bagpipes_magnitudes(model, theta, tmp_path_factory.mktemp("filters"))
    return model, theta, ours, ref, ref_logm


def test_magnitudes_agree_with_bagpipes(comparison):
    model, theta, ours, ref, _ = comparison
    diff = np.abs(ours - ref)
    bands = list(model.bands)
    print("\nmax |dmag| per band:", dict(zip(bands, diff.max(0).round(4), strict=True)))
    print("median |dmag| per band:", dict(zip(bands, np.median(diff, 0).round(4), strict=True)))
    assert np.all(np.isfinite(diff))
    optical_nuv = [bands.index(b) for b in SDSS_BANDS + ("galex-nuv",)]
    # the bar of the issue is 0.03; burst-dominated galaxies reach it (see module docstring)
    assert diff[:, optical_nuv].max() <= 0.035
    assert np.median(diff[:, optical_nuv]) <= 0.006
    fuv = bands.index("galex-fuv")
    assert diff[:, fuv].max() <= 0.06  # IGM absorption in bagpipes only
    low_z = theta[:, 0].numpy() < 0.2
    assert diff[low_z, fuv].max() <= 0.035  # below z=0.2 the IGM barely touches the FUV band


def test_smooth_histories_agree_to_a_hundredth(comparison, tmp_path):
    model, theta, _, _, _ = comparison
    theta = theta[:20].clone()
    theta[:, model.param_names.index("f_burst")] = 0.0
    ours = model.magnitudes(theta).numpy()
    ref, _ = bagpipes_magnitudes(model, theta, tmp_path)
    bands = list(model.bands)
    cols = [bands.index(b) for b in SDSS_BANDS + ("galex-nuv",)]
    assert np.abs(ours - ref)[:, cols].max() <= 0.012


def test_surviving_masses_agree_within_one_percent(comparison):
    model, theta, _, _, ref_logm = comparison
    rel = np.abs(10 ** (ref_logm - theta[:, 1].numpy()) - 1.0)
    print("\nmax relative surviving-mass difference:", rel.max())
    assert rel.max() < 0.01
