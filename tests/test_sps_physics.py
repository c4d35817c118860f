"""Physics checks of engine.sps against published values and exact identities."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from engine.sps import sfh as sfh_mod
from engine.sps.dust import DustCurves, calzetti_k

from conftest import SDSS_BANDS, uniform_theta


# ---------------------------------------------------------------- dust
@pytest.mark.parametrize(
    "wave_aa, k_published",
    [
        (6563.0, 3.33),  # Hα: Calzetti (2000), A(Hα) = 3.33 E(B−V)
        (4861.0, 4.60),  # Hβ: 4.60
        (1600.0, 9.97),  # Meurer et al. (1999) / Calzetti (2000): A_1600 = 9.97 E(B−V)
        (5500.0, 4.05),  # V: R_V = 4.05
    ],
)
def test_calzetti_curve_matches_published_values(wave_aa, k_published):
    assert calzetti_k(np.array([wave_aa]))[0] == pytest.approx(k_published, abs=0.01)


def test_calzetti_k_b_minus_k_v_is_one():
    # E(B−V) normalisation: k(B) − k(V) = 1 (Calzetti 2000, B = 4400 Å, V = 5500 Å)
    kb, kv = calzetti_k(np.array([4400.0, 5500.0]))
    assert kb - kv == pytest.approx(1.0, abs=0.02)


def test_calzetti_is_monotonic_and_vanishes_in_the_mid_ir():
    w = np.geomspace(200, 5e4, 2000)
    k = calzetti_k(w)
    # decreasing within each published piece; at 0.63 µm the two pieces of Calzetti's Eq. 4
    # differ by 0.025 (3.477 vs 3.502), a step kept as published
    blue, red = w < 6300, w >= 6300
    assert np.all(np.diff(k[blue]) <= 1e-12) and np.all(np.diff(k[red]) <= 1e-12)
    step = calzetti_k(np.array([6300.0 * (1 + 1e-9)]))[0] - calzetti_k(np.array([6300.0 * (1 - 1e-9)]))[0]
    assert step == pytest.approx(0.0252, abs=0.001)
    assert k[w > 3.2e4].max() == 0.0
    assert k[0] > 10


def test_per_galaxy_dust_is_the_tabulated_dust():
    """tau_ism_at (torch, per-galaxy wavelengths: the emulator's inputs) and DustCurves.tau_ism (numpy
    formula tabulated on a grid: the SPS) are one curve, in every branch of Calzetti's k and with the bump."""
    from engine.sps.dust import tau_ism_at

    w = np.geomspace(500, 4e4, 3001)  # through the 0.12 µm, 0.63 µm and zero-crossing branch points
    tau2 = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    n = torch.tensor([-2.5, 0.0, 0.7], dtype=torch.float64)
    tab = DustCurves(w, torch.device("cpu"), torch.float64, uv_bump=True).tau_ism(tau2, n)
    per = tau_ism_at(torch.as_tensor(w).unsqueeze(0), tau2.unsqueeze(1), n.unsqueeze(1))
    assert torch.allclose(per, tab, rtol=1e-12, atol=1e-14)
    assert torch.allclose(
        calzetti_k(torch.as_tensor(w)), torch.as_tensor(calzetti_k(w)), rtol=1e-12, atol=1e-14
    )


def test_kriek_conroy_bump_and_slope():
    w = np.array([2175.0, 3000.0, 5500.0, 1e4])
    d = DustCurves(w, torch.device("cpu"), torch.float64, uv_bump=True)
    flat = DustCurves(w, torch.device("cpu"), torch.float64, uv_bump=False)
    tau2 = torch.tensor([1.0, 1.0])
    n = torch.tensor([0.0, -0.5])
    t_bump = d.tau_ism(tau2, n).numpy()
    t_flat = flat.tau_ism(tau2, n).numpy()
    k = calzetti_k(w)
    # at n = 0 the bump has E_b = 0.85 at 2175 Å (Kriek & Conroy 2013), nothing at 1 µm
    assert t_bump[0, 0] - t_flat[0, 0] == pytest.approx(0.85 / 4.05, rel=1e-6)
    assert t_bump[0, 3] == pytest.approx(t_flat[0, 3], rel=1e-3)
    # E_b = 0.85 − 1.9 n; slope multiplies by (λ/5500)^n
    assert t_bump[1, 0] - t_flat[1, 0] == pytest.approx(
        (0.85 + 0.95) / 4.05 * (2175 / 5500) ** -0.5, rel=1e-6
    )
    assert t_flat[1, 1] == pytest.approx(k[1] / 4.05 * (3000 / 5500) ** -0.5, rel=1e-9)
    # τ at 5500 Å is τ2 whatever the slope
    assert np.allclose(t_flat[:, 2], k[2] / 4.05)


def test_birth_cloud_attenuates_only_young_stars(sdss_model):
    theta = uniform_theta(sdss_model, 200, seed=3)
    names = sdss_model.param_names
    theta[:, names.index("tau2")] = 0.0
    theta[:, names.index("f_burst")] = 1.0  # all mass in a burst >= 10 Myr old: no young stars
    theta[:, names.index("t_burst")] = 0.5
    a = sdss_model.magnitudes(theta)
    theta[:, names.index("tau1")] = 2.5
    b = sdss_model.magnitudes(theta)
    assert torch.allclose(a, b, atol=1e-4)
    theta[:, names.index("f_burst")] = 0.0  # smooth SFHs always form some young stars
    c = sdss_model.magnitudes(theta)
    theta[:, names.index("tau1")] = 0.0
    d = sdss_model.magnitudes(theta)
    assert bool((c[:, 0] > d[:, 0] + 1e-4).all())  # u band dimmer with birth clouds


# ---------------------------------------------------------------- SFH
def test_stick_breaking_gives_uniform_dirichlet():
    g = torch.Generator().manual_seed(0)
    kappa = torch.rand(40000, 3, generator=g, dtype=torch.float64)
    beta = sfh_mod.stick_breaking(kappa).numpy()
    assert np.allclose(beta.sum(1), 1.0)
    assert beta.min() >= 0
    for i in range(4):  # each marginal of Dirichlet(1,1,1,1) is Beta(1, 3)
        p = stats.kstest(beta[:, i], stats.beta(1, 3).cdf).pvalue
        assert p > 1e-3, (i, p)
    # E[βi βj] = 1/20 for i != j
    assert np.mean(beta[:, 0] * beta[:, 3]) == pytest.approx(1 / 20, abs=2e-3)
    # and a non-uniform κ gives a different distribution (the test can fail)
    skewed = sfh_mod.stick_breaking(kappa**2).numpy()
    assert stats.kstest(skewed[:, 0], stats.beta(1, 3).cdf).pvalue < 1e-6


def test_bases_integrate_to_one():
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)
    pdf = sfh_mod.basis_pdf(x)
    integ = torch.trapezoid(pdf, x, dim=0)
    assert torch.allclose(integ, torch.ones(4, dtype=torch.float64), atol=1e-6)
    cdf = sfh_mod.basis_cdf(x)
    assert torch.allclose(cdf[0], torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(cdf[-1], torch.ones(4, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("z", [0.0, 0.1, 0.4, 0.65])
def test_no_stars_before_the_big_bang(sdss_model, z):
    theta = uniform_theta(sdss_model, 500, seed=int(z * 100))
    theta[:, 0] = z
    t_age = float(sdss_model.cosmo.age_gyr(torch.tensor([z]))[0])
    t = torch.linspace(0, 14.0, 300)
    sfr = sdss_model.sfh(theta, t)
    assert float(sfr[:, t > t_age].abs().max()) == 0.0
    assert float(sfr[:, t < t_age * 0.99].min()) >= 0.0
    comp = sdss_model._components(sdss_model._prep(theta))
    edges = sdss_model.age_edges_gyr
    assert float(comp["w_age"][:, edges[:-1] >= t_age].abs().sum()) == 0.0
    old_burst = theta[:, sdss_model.param_names.index("t_burst")] >= t_age
    assert float(comp["f_eff"][old_burst].abs().sum()) == 0.0
    assert float(sdss_model.derived(theta)["mwage_gyr"].max()) <= t_age + 1e-4


def test_sfr_of_a_constant_history(sdss_model):
    # κ1 = 1, κ2 = 1, κ3 = 0 → β = (0, 0, 1, 0): constant SFR = M_formed / t_age
    theta = uniform_theta(sdss_model, 50, seed=5)
    names = sdss_model.param_names
    theta[:, names.index("kappa1")] = 1.0
    theta[:, names.index("kappa2")] = 1.0
    theta[:, names.index("kappa3")] = 0.0
    theta[:, names.index("f_burst")] = 0.0
    d = sdss_model.derived(theta)
    t_age = sdss_model.cosmo.age_gyr(theta[:, 0])
    expected = d["log_mformed"] - torch.log10(t_age * 1e9)
    assert torch.allclose(d["log_sfr_100myr"], expected, atol=2e-3)
    assert torch.allclose(d["log_sfr_10myr"], expected, atol=2e-3)
    assert torch.allclose(d["mwage_gyr"], t_age / 2, rtol=2e-3)
    sfr = sdss_model.sfh(theta, torch.tensor([0.05, 1.0]))
    assert torch.allclose(torch.log10(sfr), expected.unsqueeze(1).expand(-1, 2), atol=2e-3)


# ---------------------------------------------------------------- photometry
def test_flux_scales_with_mass_and_matches_spectrum_integration(sdss_model):
    theta = uniform_theta(sdss_model, 20, seed=7).double()
    from engine.sps import SPSModel

    m64 = SPSModel(SDSS_BANDS, device="cpu", dtype=torch.float64)
    f = m64.fluxes(theta).numpy()
    theta2 = theta.clone()
    theta2[:, 1] = torch.where(theta2[:, 1] > 8.0, theta2[:, 1] - 1.0, theta2[:, 1] + 1.0)
    f2 = m64.fluxes(theta2).numpy()
    assert np.allclose(f2 / f, 10.0 ** (theta2[:, 1] - theta[:, 1]).numpy()[:, None], rtol=1e-9)
    # integrate the rest-frame spectrum through the filter with numpy: the fluxes agree
    wave, lnu = m64.spectrum(theta)
    w, lnu_np = wave.numpy(), lnu.numpy()
    z = theta[:, 0].numpy()
    dl_cm = m64.cosmo.cosmology.luminosity_distance(z).to_value("cm")
    for b, filt in enumerate(m64.filters):
        for i in range(len(z)):
            lo = w * (1 + z[i])
            r = np.interp(lo, filt.wave, filt.response, left=0, right=0)
            fnu = (
                (1 + z[i])
                * np.trapezoid(lnu_np[i] * r / w, w)
                / np.trapezoid(filt.response / filt.wave, filt.wave)
            )
            fnu /= 4 * math.pi * dl_cm[i] ** 2
            nmgy = fnu / 3.631e-29
            assert nmgy == pytest.approx(f[i, b], rel=0.01), (filt.name, z[i])


def test_float32_matches_float64_and_chunking_is_invisible(sdss_model):
    from engine.sps import SPSModel

    theta = uniform_theta(sdss_model, 300, seed=11)
    m64 = SPSModel(SDSS_BANDS, device="cpu", dtype=torch.float64, batch_size=64)
    a = sdss_model.magnitudes(theta)
    b = m64.magnitudes(theta.double())
    finite = torch.isfinite(b)
    assert torch.allclose(a.double()[finite], b[finite], atol=2e-3)


def test_gradients_reach_every_parameter(sdss_model):
    theta = uniform_theta(sdss_model, 64, seed=13)
    # keep away from the edges where some parameters have no effect
    theta[:, sdss_model.param_names.index("f_burst")] = 0.3
    theta[:, sdss_model.param_names.index("t_burst")] = 0.8
    theta[:, sdss_model.param_names.index("tau1")] = 0.5
    theta[:, sdss_model.param_names.index("tau2")] = 0.5
    theta[:, sdss_model.param_names.index("n_dust")] = -0.5
    theta[:, 0] = theta[:, 0].clamp(min=0.05)
    theta.requires_grad_(True)
    m = sdss_model.magnitudes(theta)
    m.sum().backward()
    g = theta.grad.abs().mean(0)
    assert torch.isfinite(theta.grad).all()
    assert bool((g > 0).all()), dict(zip(sdss_model.param_names, g.tolist(), strict=True))
    # d mag / d log_mstar = -2.5 exactly
    assert torch.allclose(theta.grad[:, 1], torch.full((64,), -2.5 * 5), atol=1e-3)


def test_redshift_dims_galaxies(sdss_model):
    theta = uniform_theta(sdss_model, 10, seed=17)
    theta[:, 0] = 0.05
    a = sdss_model.magnitudes(theta)
    theta[:, 0] = 0.3
    b = sdss_model.magnitudes(theta)
    assert bool((b[:, 2] > a[:, 2] + 2.0).all())  # r band: ~ 3.8 mag of distance modulus


def test_linear_decomposition_reproduces_the_fluxes():
    """Fluxes rebuilt from the per-basis / per-metallicity-node / burst band luminosities and the exact
    weights (stick-breaking β, linear-in-Z node weights, effective burst fraction) equal SPSModel.fluxes: the
    decomposition the emulator is built on is an identity, not an approximation."""
    from engine.sps import SPSModel
    from engine.sps.params import IDX

    m = SPSModel(list(SDSS_BANDS) + ["galex-fuv"], dtype=torch.float64)
    th = uniform_theta(m, 300, seed=3, dtype=torch.float64)
    c = {k: th[:, i] for k, i in IDX.items()}
    lum = m.basis_band_luminosities(c["z"], c["tau1"], c["tau2"], c["n_dust"])
    lum_b = m.burst_band_luminosities(c["z"], c["tau2"], c["n_dust"], c["t_burst"])
    s_basis, s_burst = m.component_survival(c["z"], c["t_burst"])
    comp = m._components(th)
    beta, f, wz = comp["beta"], comp["f_eff"], comp["w_z"]
    band = (1 - f)[:, None] * torch.einsum("nk,nkib,ni->nb", wz, lum, beta) + f[:, None] * torch.einsum(
        "nk,nkb->nb", wz, lum_b
    )
    surv = (1 - f) * torch.einsum("nk,nki,ni->n", wz, s_basis, beta) + f * torch.einsum(
        "nk,nk->n", wz, s_burst
    )
    log_mformed = c["log_mstar"] - torch.log10(surv)
    flux = band * torch.exp(math.log(10.0) * log_mformed + m.ln_flux_scale(c["z"]))[:, None]
    ref = m.fluxes(th)
    assert torch.allclose(log_mformed, comp["log_mformed"], rtol=0, atol=1e-12)
    assert float(((flux - ref).abs() / ref).max()) < 1e-10
    # and the pieces are not trivially proportional to each other: the bases differ
    assert float((lum[:, :, 0] / lum[:, :, 3]).log().std()) > 0.1
