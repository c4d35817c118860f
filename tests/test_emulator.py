"""engine.emulator: the shipped model against the SPS, gradients, files and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SDSS_BANDS, uniform_theta
from engine.emulator import default_emulator_path, load, save
from engine.emulator.network import SpeculatorActivation, SpeculatorMLP
from engine.errors import ModelFileError

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
    path = save(tmp_path / "copy.pt", emu.net, emu.metadata, emu._y_mean, emu._y_std)
    again = load(path, device="cpu")
    theta = uniform_theta(emu, 200, seed=5)
    assert torch.equal(emu.magnitudes(theta), again.magnitudes(theta))
    assert again.metadata == emu.metadata


def test_band_selection(emu):
    sub = emu.select_bands(["sdss2010-r", "sdss2010-u"])
    theta = uniform_theta(emu, 50, seed=2)
    full = emu.magnitudes(theta)
    bands = list(emu.bands)
    assert torch.equal(sub.magnitudes(theta), full[:, [bands.index("sdss2010-r"), bands.index("sdss2010-u")]])
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
    net = SpeculatorMLP(2, 1, (4,))
    old = tmp_path / "old.pt"
    save(old, net, emu.metadata, torch.zeros(1), torch.ones(1))
    payload = torch.load(old, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, old)
    with pytest.raises(ModelFileError, match="format version 99"):
        load(old)
    bad_shape = tmp_path / "shape.pt"
    save(bad_shape, net, emu.metadata, torch.zeros(1), torch.ones(1))
    with pytest.raises(ModelFileError, match="damaged or incompatible"):
        load(bad_shape)
