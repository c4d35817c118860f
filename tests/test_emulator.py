"""engine.emulator: the shipped model against the SPS, gradients, files and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.emulator import default_emulator_path, load, save
from engine.emulator.network import SpeculatorActivation
from engine.errors import ModelFileError

from conftest import SDSS_BANDS, uniform_theta

SHIPPED = default_emulator_path()


@pytest.fixture(scope="module")
def emu():
    assert SHIPPED.is_file(), f"the shipped emulator {SHIPPED} is missing"
    return load(SHIPPED, device="cpu")


def test_speculator_activation_limits():
    a = SpeculatorActivation(3)
    with torch.no_grad():
        a.gamma.fill_(0.2)
        a.beta.fill_(0.0)  # sigmoid(0) = 1/2: a linear unit of slope (γ + 1)/2
    x = torch.linspace(-2, 2, 5).unsqueeze(1).expand(-1, 3)
    assert torch.allclose(a(x), 0.6 * x)
    with torch.no_grad():
        a.beta.fill_(1e4)  # ReLU-like with leak γ
    assert torch.allclose(a(x), torch.where(x > 0, x, 0.2 * x))


@pytest.mark.parametrize("degenerate", [None, "beta", "gamma"])
def test_inference_form_is_the_trained_network(degenerate):
    """β and (1 − γ) folded into the layers (and, with a β of 0 or a γ of 1, the unfolded fallback), rows
    selected and an affine output map folded in: the same function as the training form, values and input
    gradients."""
    from engine.emulator.network import InferenceMLP, SpeculatorMLP

    torch.manual_seed(0)
    net = SpeculatorMLP(6, 10, (16, 16)).double()
    with torch.no_grad():
        for m in net.net:
            if isinstance(m, SpeculatorActivation):
                m.beta.copy_(torch.randn(16) * 3)
                m.gamma.copy_(torch.rand(16) * 1.4 - 0.8)
        if degenerate == "beta":
            net.net[1].beta[3] = 0.0
        elif degenerate == "gamma":
            net.net[1].gamma[5] = 1.0
    rows, scale, shift = (
        [7, 2, 9],
        torch.rand(10, dtype=torch.float64) + 0.5,
        torch.randn(10, dtype=torch.float64),
    )
    inf = InferenceMLP(net, rows, scale, shift)
    assert (inf.c0 is None) == (degenerate is not None) and inf.c1 is not None
    x1 = torch.randn(200, 6, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    ref = net(x1)[:, rows] * scale[rows] + shift[rows]
    out = inf(x2)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    (ref ** 2).sum().backward()
    (out ** 2).sum().backward()
    assert torch.allclose(x2.grad, x1.grad, rtol=1e-10, atol=1e-12)


def test_node_pair_head_is_the_full_layer_at_the_two_bracketing_nodes():
    from engine.emulator.model import NodePairHead
    from engine.emulator.network import InferenceMLP, SpeculatorMLP

    torch.manual_seed(1)
    n_z, per_node = 5, 6
    inf = InferenceMLP(SpeculatorMLP(4, n_z * per_node, (8,)).double())
    head = NodePairHead(inf, n_z)
    k = torch.tensor([3, 0, 2, 3, 1, 0, 3])  # unsorted, repeated, one group (k = 2) of size 1
    h1 = torch.randn(len(k), 8, dtype=torch.float64, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_(True)
    full = torch.addmm(inf.b_out, h1, inf.w_out.t()).view(len(k), n_z, per_node)
    ref = torch.stack([full[torch.arange(len(k)), k], full[torch.arange(len(k)), k + 1]], 1).reshape(
        len(k), -1
    )
    out = head(h2, k)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    w = torch.randn_like(ref)
    (ref * w).sum().backward()
    (out * w).sum().backward()
    assert torch.allclose(h2.grad, h1.grad, rtol=0, atol=1e-12)


def test_weighted_exp_sum_values_and_gradients():
    """The hand-written backward of the light combination Σ_k w exp(ln L) against finite differences, and its
    value against the plain expression; an empty batch gives an empty result."""
    from engine.emulator.model import weighted_exp_sum

    torch.manual_seed(2)
    ln_l = torch.randn(9, 8, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(9, 8, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(weighted_exp_sum(ln_l, w), (w.unsqueeze(2) * ln_l.exp()).sum(1), rtol=1e-14, atol=0)
    assert torch.autograd.gradcheck(weighted_exp_sum, (ln_l, w))
    assert weighted_exp_sum(ln_l[:0], w[:0]).shape == (0, 3)


def test_redshift_table_dust_is_the_direct_dust_curve(emu):
    """The dust inputs interpolated from the per-band z table equal the direct per-galaxy curve (to 1e-5 of
    log(1+τ)) across the box, NUV's crossing of the 2175 Å bump included, except within the one grid cell
    around each of Calzetti's branch points (0.12 and 0.63 µm; the published curve jumps slightly at 0.63 µm),
    where they are within 3e-3; the gradient in z agrees too."""
    th = uniform_theta(emu, 4000, seed=5).double()
    e = emu.to(dtype=torch.float64)
    z = th[:, 0].clone().requires_grad_(True)
    tau2, n_dust = th[:, emu.param_names.index("tau2")], th[:, emu.param_names.index("n_dust")]
    k, a = e.cosmo.interp_index(z)
    zt = torch.lerp(e._z_table[k], e._z_table[k + 1], a.unsqueeze(1))
    got = e._dust_columns(zt, tau2, n_dust)
    ref = e.inputs.dust(z, tau2, n_dust)
    assert got.shape == (4000, len(emu.metadata["bands"]))
    d = (got - ref).detach().abs() * 3.0  # in log(1 + τ)
    assert float(d.max()) < 3e-3
    lam = torch.tensor(emu.metadata["lambda_eff"], dtype=torch.float64) / (1.0 + z.detach().unsqueeze(1))
    dz = (lam / 1200.0).log().abs().minimum((lam / 6300.0).log().abs())  # ≈ distance in z to a branch point
    far = dz > 2 * e.cosmo.dz
    assert float(far.double().mean()) > 0.99 and float(d[far].max()) < 1e-5
    rows = far.all(1)
    (g_got,) = torch.autograd.grad(got[rows].sum(), z, retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref[rows].sum(), z)
    err = (g_got - g_ref).abs()[rows] / g_ref.abs()[rows].clamp(min=1e-3)
    assert float(err.median()) < 1e-3 and float(err.max()) < 0.05, (float(err.median()), float(err.max()))
    assert torch.allclose(zt[:, 0], e.cosmo.age_gyr(z), rtol=1e-12, atol=0)


def test_shipped_emulator_reproduces_the_sps(emu):
    theta = uniform_theta(emu, 3000, seed=321)
    with torch.no_grad():
        m_emu = emu.magnitudes(theta).numpy()
        m_sps = emu.sps.magnitudes(theta).numpy()
    bands = list(emu.bands)
    for b in SDSS_BANDS:
        j = bands.index(b)
        ok = m_sps[:, j] < 25
        d = np.abs(m_emu[ok, j] - m_sps[ok, j])
        # loose bounds that a broken or untrained model fails by far (an untrained net is off by magnitudes)
        assert np.median(d) < 0.05, (b, np.median(d))
        assert np.percentile(d, 99) < 0.5, (b, np.percentile(d, 99))


def test_gradients_agree_with_the_sps(emu):
    theta = uniform_theta(emu, 400, seed=11)
    names = emu.param_names
    theta[:, names.index("z")] = theta[:, 0].clamp(min=0.05)
    theta[:, names.index("tau2")] = theta[:, names.index("tau2")].clamp(max=1.0)
    theta[:, names.index("f_burst")] = 0.2
    t1 = theta.clone().requires_grad_(True)
    t2 = theta.clone().requires_grad_(True)
    j = list(emu.bands).index("sdss2010-r")
    emu.magnitudes(t1)[:, j].sum().backward()
    emu.sps.magnitudes(t2)[:, j].sum().backward()
    g1, g2 = t1.grad, t2.grad
    for p in ("z", "log_mstar", "tau2", "log_zmet"):
        i = names.index(p)
        agree = np.mean(np.sign(g1[:, i].numpy()) == np.sign(g2[:, i].numpy()))
        assert agree > 0.8, (p, agree)
        ratio = float(g1[:, i].abs().mean() / g2[:, i].abs().mean())
        assert 0.5 < ratio < 2.0, (p, ratio)


def test_save_load_round_trip_is_exact(emu, tmp_path):
    path = save(tmp_path / "copy.pt", emu)
    again = load(path, device="cpu")
    theta = uniform_theta(emu, 200, seed=5)
    assert torch.equal(emu.magnitudes(theta), again.magnitudes(theta))
    assert again.metadata == emu.metadata


def test_a_copy_on_another_dtype_leaves_the_original_alone(emu):
    theta = uniform_theta(emu, 100, seed=6)
    before = emu.magnitudes(theta)
    double = emu.to(dtype=torch.float64)
    bright = before < 40  # fainter ones hit the float32 flux floor
    torch.testing.assert_close(
        double.magnitudes(theta.double()).float()[bright], before[bright], rtol=0, atol=1e-3
    )
    assert torch.equal(emu.magnitudes(theta), before)
    assert all(p.dtype == torch.float32 for net in emu.nets.values() for p in net.parameters())


def test_band_selection(emu):
    sub = emu.select_bands(["sdss2010-r", "sdss2010-u"])
    theta = uniform_theta(emu, 50, seed=2)
    full = emu.magnitudes(theta)
    bands = list(emu.bands)
    # same networks, fewer output rows: equal up to float32 summation order
    torch.testing.assert_close(
        sub.magnitudes(theta),
        full[:, [bands.index("sdss2010-r"), bands.index("sdss2010-u")]],
        rtol=0,
        atol=1e-4,
    )
    with pytest.raises(ModelFileError, match=r"not trained on band\(s\) lsst2023-y"):
        emu.select_bands(["sdss2010-r", "lsst2023-y"])
    with pytest.raises(ModelFileError, match=r"not trained on band\(s\) hsc2017-g"):
        load(SHIPPED, bands=["hsc2017-g"], device="cpu")


def test_theta_outside_the_training_box(emu):
    theta = uniform_theta(emu, 10, seed=1)
    theta[2, 0] = 0.9
    with pytest.raises(ValueError, match=r"parameter 'z' outside its range \[0, 0.65\]"):
        emu.fluxes(theta)


def test_bad_files(tmp_path, emu):
    with pytest.raises(ModelFileError, match="does not exist"):
        load(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(ModelFileError, match="not a readable popsed emulator file"):
        load(junk)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(SHIPPED.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a readable popsed emulator file"):
        load(trunc)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="not a popsed emulator file"):
        load(foreign)
    old = tmp_path / "old.pt"
    save(old, emu)
    payload = torch.load(old, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, old)
    with pytest.raises(ModelFileError, match="format version 99"):
        load(old)
    bad_shape = tmp_path / "shape.pt"
    payload = emu.state()
    payload["nets"]["basis"]["n_out"] = 3
    torch.save(payload, bad_shape)
    with pytest.raises(ModelFileError, match="damaged or incompatible"):
        load(bad_shape)
    missing = tmp_path / "missing.pt"
    payload = emu.state()
    del payload["constants"]["live_frac"]
    torch.save(payload, missing)
    with pytest.raises(ModelFileError, match="damaged or incompatible"):
        load(missing)


def test_rows_are_independent_of_their_batch(emu):
    """The emulator groups rows by metallicity node internally: every row of a batch must equal the same
    θ evaluated alone, gradients included."""
    theta = uniform_theta(emu, 64, seed=5)
    t_all = theta.clone().requires_grad_(True)
    f_all = emu.magnitudes(t_all).clamp(max=40)
    (f_all * torch.arange(1, 1 + f_all.shape[1])).sum().backward()
    for i in (0, 7, 31, 63):
        t_i = theta[i:i + 1].clone().requires_grad_(True)
        f_i = emu.magnitudes(t_i).clamp(max=40)
        (f_i * torch.arange(1, 1 + f_i.shape[1])).sum().backward()
        assert torch.allclose(f_all[i], f_i[0], rtol=0, atol=1e-4), i
        assert torch.allclose(t_all.grad[i], t_i.grad[0], rtol=1e-4, atol=1e-5), i
    # an empty batch (no galaxy selected): an empty result, from the emulator and the SPS alike
    assert emu.fluxes(theta[:0]).shape == emu.sps.fluxes(theta[:0]).shape == (0, len(emu.bands))
    assert all(v.shape == (0,) for v in emu.derived(theta[:0]).values())


def test_exact_part_with_the_true_component_luminosities_is_the_sps(emu):
    """Feeding the emulator's exact combination the SPS's own component luminosities gives the SPS fluxes:
    every error of the emulator is in its networks, none in the bookkeeping around them."""
    from engine.sps.model import metallicity_weights

    theta = uniform_theta(emu, 300, seed=8)
    sps = emu.sps

    def true_components(z, tau1, tau2, n_dust, t_burst, log_zmet, nodes=None, dust=None):
        k, _, w_z = metallicity_weights(log_zmet, sps.zmet_grid)
        burst = torch.einsum("nk,nkb->nb", w_z, sps.burst_band_luminosities(z, tau2, n_dust, t_burst))
        basis = sps.basis_band_luminosities(z, tau1, tau2, n_dust)  # (N, n_Z, 4, B): the pair k, k+1 is used
        pair = torch.stack([basis[torch.arange(len(k)), k], basis[torch.arange(len(k)), k + 1]], 1)
        return torch.log(pair), torch.log(burst)

    exact = emu.to()
    exact.component_ln_luminosities = true_components
    with torch.no_grad():
        f_exact, f_sps = exact.fluxes(theta), sps.fluxes(theta)
    # magnitudes brighter than 40 (fainter fluxes -- far-UV behind τ ~ 100 of dust -- reach float32 denormals)
    pos = f_sps > 1e-7
    assert float(((f_exact - f_sps).abs()[pos] / f_sps[pos]).max()) < 1e-4


def test_training_a_small_emulator_from_scratch(tmp_path):
    """``train_emulator`` end to end on a small set: a file that loads, with metadata, and that beats a
    constant-h model by far (an untrained or mis-wired model does not)."""
    from engine.emulator.train import train_emulator

    res = train_emulator(
        ["sdss2010-g", "sdss2010-r"], 3000, seed=1, hidden=(32, 32), epochs=30, progress=False, log=None
    )
    path = save(tmp_path / "small.pt", res.emulator)
    emu2 = load(path, device="cpu")
    assert emu2.metadata["n_train"] == 3000 and emu2.bands == ("sdss2010-g", "sdss2010-r")
    theta = uniform_theta(emu2, 500, seed=4)
    with torch.no_grad():
        d = (emu2.magnitudes(theta) - emu2.sps.magnitudes(theta)).abs()
    # the same emulator with its networks' last layers zeroed predicts the training mean of every h
    const = load(path, device="cpu")
    for net in const.nets.values():
        last = net.net[-1]
        last.weight = torch.nn.Parameter(torch.zeros_like(last.weight), requires_grad=False)
        last.bias = torch.nn.Parameter(torch.zeros_like(last.bias), requires_grad=False)
    const = const.to()  # evaluation networks are built from .nets on construction
    with torch.no_grad():
        d0 = (const.magnitudes(theta) - emu2.sps.magnitudes(theta)).abs()
    assert float(d.median()) < 0.4, float(d.median())
    assert float(d0.median()) > 4 * float(d.median()), (float(d0.median()), float(d.median()))
    assert res.val_rmse_mag["basis"] < 0.6 and res.val_rmse_mag["burst"] < 0.8, res.val_rmse_mag


def test_learning_rate_reaches_its_floor_when_the_epoch_cap_ends_training():
    """A time budget longer than the epoch cap must not stop training with the learning rate still high."""
    from engine.emulator.train import train_network

    g = torch.Generator().manual_seed(0)
    x = torch.rand(600, 3, generator=g, dtype=torch.float64)
    y = torch.sin(3 * x) @ torch.ones(3, 2, dtype=torch.float64)
    _, _, _, hist, _ = train_network(x, y, hidden=(8,), seed=0, device="cpu", epochs=4, batch=100, lr=2e-3,
                                     max_minutes=60.0, log=None)
    assert len(hist) == 4
    assert hist[-1]["lr"] < 2e-3 * 0.05, hist[-1]["lr"]
