"""Unit tests of engine.population building blocks (fast)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.errors import ModelFileError, PopsedError
from engine.population.bounds import BoxBijection
from engine.population.config import TrainConfig
from engine.population.convergence import ensemble_report, plateau
from engine.population.flow import FlowConfig, PopulationFlow
from engine.population.losses import BlurSchedule, SinkhornLoss, sliced_wasserstein
from engine.population.noise import NoiseModel, asinh_mag, pogson_mag
from engine.population.objective import whitening_matrix
from engine.population.selection import SelectionError, check_cuts, parse_selection, selection_mask

SPS_BOUNDS = torch.tensor([[0, 0.65], [7, 13], [0, 1], [0, 1], [0, 1], [0.01, 13.27], [0, 1], [-2.3, 0.4],
                           [-3, 1], [0, 3], [0, 3]], dtype=torch.float32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ bijection
def test_bijection_strictly_inside_even_when_saturated():
    b = BoxBijection(SPS_BOUNDS)
    u = torch.tensor([[-1e30] * 11, [1e30] * 11, [-50.0] * 11, [50.0] * 11, [0.0] * 11])
    th = b(u)
    assert torch.all(th > SPS_BOUNDS[:, 0]) and torch.all(th < SPS_BOUNDS[:, 1])
    assert torch.isfinite(th).all()


def test_bijection_roundtrip_and_gradient():
    b = BoxBijection(SPS_BOUNDS)
    u = torch.randn(1000, 11, generator=torch.Generator().manual_seed(0)) * 2
    u.requires_grad_(True)
    th = b(u)
    ud = u.detach().double()
    assert torch.allclose(b.inverse(b(ud)), ud, atol=1e-6)  # float64 round trip
    assert torch.allclose(
        b.inverse(th.detach())[u.detach().abs() < 2], u.detach()[u.detach().abs() < 2], atol=2e-2
    )
    th.sum().backward()
    assert torch.all(u.grad > 0)  # monotone increasing, never flat in the bulk


def test_standard_normal_maps_to_nearly_uniform():
    b = BoxBijection(torch.tensor([[7.0, 13.0], [0.0, 1.0]]))
    th = b(torch.randn(200000, 2, generator=torch.Generator().manual_seed(1)))
    frac = ((th[:, 0] - 7) / 6).numpy()
    hist = np.histogram(frac, bins=10, range=(0, 1))[0] / frac.size
    assert np.all(np.abs(hist - 0.1) < 0.02), hist


def test_bijection_rejects_bad_bounds():
    with pytest.raises(ValueError):
        BoxBijection(torch.tensor([[1.0, 0.0]]))


# ------------------------------------------------------------------ flow
def test_flow_initial_population_is_broad_and_inside():
    flow = PopulationFlow(SPS_BOUNDS, FlowConfig(layers=2, hidden=16))
    th = flow.sample(20000, torch.Generator().manual_seed(0))
    lo, hi = SPS_BOUNDS[:, 0], SPS_BOUNDS[:, 1]
    assert torch.all(th > lo) and torch.all(th < hi)
    span = (th.quantile(0.95, dim=0) - th.quantile(0.05, dim=0)) / (hi - lo)
    assert torch.all(span > 0.8), span


def test_flow_sampling_is_reproducible_and_differentiable():
    torch.manual_seed(0)
    flow = PopulationFlow(SPS_BOUNDS, FlowConfig(layers=2, hidden=16))
    a = flow.sample(100, torch.Generator().manual_seed(5))
    b = flow.sample(100, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    a.pow(2).sum().backward()
    grads = [p.grad for p in flow.parameters() if p.requires_grad]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_fast_lu_linear_is_nflows_lu_linear():
    """Same state dict, same map both ways (inverse through W⁻¹ instead of triangular solves), gradients
    included, and no deprecated torch.triangular_solve on the sampling path."""
    import warnings

    from nflows.transforms import LULinear

    from engine.population.flow import FastLULinear

    torch.manual_seed(3)
    ref = LULinear(11, identity_init=False).double()
    fast = FastLULinear(11, identity_init=False).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(500, 11, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, ld = fast.inverse(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nflows' own layer uses the deprecated torch.triangular_solve
        y_ref, ld_ref = ref.inverse(x)
    assert torch.allclose(y, y_ref, atol=1e-10) and torch.allclose(ld, ld_ref, atol=1e-12)
    assert torch.allclose(fast.forward(y)[0], x, atol=1e-10)
    assert torch.allclose(
        fast.weight_inverse() @ fast.weight(), torch.eye(11, dtype=torch.float64), atol=1e-10
    )
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), list(fast.parameters()))
    grads_ref = torch.autograd.grad((y_ref * g).sum(), list(ref.parameters()))
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(grads, grads_ref, strict=True))
    assert isinstance(PopulationFlow(SPS_BOUNDS).transform._transforms[1], FastLULinear)


def test_reference_flow_config():
    from nflows import transforms

    from engine.population.flow import REFERENCE_FLOW, build_reference_transform

    t = build_reference_transform(11)
    kinds = [type(x).__name__ for x in t._transforms]
    assert kinds.count("PiecewiseRationalQuadraticCouplingTransform") == 20
    assert kinds.count("LULinear") == 20
    c = t._transforms[0]
    assert c.num_bins == 60 and c.tail_bound == 3.0 and REFERENCE_FLOW.hidden == 100
    assert isinstance(t, transforms.CompositeTransform)


# ------------------------------------------------------------------ losses
def test_sliced_wasserstein_shift_and_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, generator=g)
    assert float(sliced_wasserstein(x, x, n_proj=8, p=1, generator=g)) == pytest.approx(0.0, abs=1e-6)
    # 1-D: W1 of a shift is the shift (directions are +-1)
    assert float(sliced_wasserstein(x, x + 0.7, n_proj=8, p=1, generator=g)) == pytest.approx(0.7, rel=1e-4)
    assert float(sliced_wasserstein(x, x + 0.7, n_proj=8, p=2, generator=g)) == pytest.approx(0.7, rel=1e-4)


def test_sliced_wasserstein_unequal_sizes_and_weights():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 4, generator=g)
    y = torch.randn(1000, 4, generator=g) + 1.0
    d = torch.randn(4, 64, generator=g)
    d = d / d.norm(dim=0)
    a = sliced_wasserstein(x, y, directions=d)
    w = torch.ones(3000)
    b = sliced_wasserstein(x, y, directions=d, x_weights=w)
    assert float(a) == pytest.approx(float(b), rel=0.02)
    # zero weights remove points exactly
    w2 = torch.ones(3000)
    w2[::2] = 0
    c = sliced_wasserstein(x, y, directions=d, x_weights=w2)
    e = sliced_wasserstein(x[1::2], y, directions=d, x_weights=torch.ones(1500))
    assert float(c) == pytest.approx(float(e), rel=1e-5)


def test_sliced_wasserstein_gradient_moves_toward_target():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 3, generator=g).requires_grad_(True)
    y = torch.randn(500, 3, generator=g) + torch.tensor([2.0, 0.0, 0.0])
    sliced_wasserstein(x, y, n_proj=100, generator=g).backward()
    assert float(x.grad[:, 0].mean()) < 0  # descent direction increases x_0
    w = torch.full((500,), 1.0, requires_grad=True)
    sliced_wasserstein(x.detach(), y, n_proj=50, generator=g, x_weights=w).backward()
    assert torch.isfinite(w.grad).all() and float(w.grad.abs().sum()) > 0


def test_sort_rows_matches_torch_sort_with_gradients():
    from engine.population.losses import sort_rows

    t = torch.randn(7, 501, generator=torch.Generator().manual_seed(3))
    v0, o0 = torch.sort(t, dim=-1)
    v1, o1 = sort_rows(t)
    assert o1 is None and torch.equal(v1, v0)
    v2, o2 = sort_rows(t, with_order=True)
    assert torch.equal(v2, v0) and torch.equal(o2, o0)
    tg = t.clone().requires_grad_(True)
    v3, _ = sort_rows(tg)
    (v3 * torch.arange(501.0)).sum().backward()  # d/dt of sum_j j * sorted_j is each value's rank
    assert torch.equal(tg.grad, torch.argsort(o0, dim=-1).float())


def test_weighted_quantile_counts_equal_searchsorted():
    from engine.population.losses import _count_below_uniform_levels

    g = torch.Generator().manual_seed(4)
    for p, n, m in [(64, 900, 700), (3, 10, 7), (8, 50, 4000)]:
        w = torch.rand(p, n, generator=g, dtype=torch.float64)
        w[:, ::3] = 0  # zero weights: repeated mid-points
        w = w / w.sum(1, keepdim=True)
        mid = torch.cumsum(w, 1) - 0.5 * w
        levels = ((torch.arange(m, dtype=torch.float64) + 0.5) / m).expand(p, -1).contiguous()
        assert torch.equal(_count_below_uniform_levels(mid, m), torch.searchsorted(mid.contiguous(), levels))


def test_sliced_fresh_directions_each_call():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 5, generator=g)
    y = torch.randn(300, 5, generator=g) * 1.5
    assert float(sliced_wasserstein(x, y, n_proj=10, generator=g)) != float(
        sliced_wasserstein(x, y, n_proj=10, generator=g)
    )


def test_sinkhorn_loss_small():
    loss = SinkhornLoss(p=1, scaling=0.8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    y = x + torch.tensor([1.0, 0.0, 0.0])
    near = float(loss(x, x.clone(), 0.05))
    far = float(loss(x, y, 0.05))
    assert near == pytest.approx(0.0, abs=1e-3)
    assert 0.7 < far < 1.05  # ~ W1 of a unit shift (entropic smoothing lowers it)
    xw = x.clone().requires_grad_(True)
    loss(xw, y, 0.05, torch.ones(200)).backward()
    assert float(xw.grad[:, 0].mean()) < 0


def test_blur_schedule():
    s = BlurSchedule()
    assert [s(i, 160) for i in (0, 10, 20, 30, 39, 40, 159)] == [0.3, 0.2, 0.1, 0.05, 0.05, 0.002, 0.002]


# ------------------------------------------------------------------ noise
def _synthetic_noise_catalog(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    mag = rng.uniform(15, 22, size=(n, 2))
    f = 10 ** (-0.4 * (mag - 22.5))
    sig = np.sqrt(0.3**2 + 0.01 * f) * 10 ** (0.05 * rng.normal(size=f.shape))
    return f + sig * rng.normal(size=f.shape), sig, f


def test_noise_model_fit_recovers_sigma_and_roundtrips():
    obs, sig, f = _synthetic_noise_catalog()
    nm = NoiseModel.fit(obs, sig, ("a", "b"))
    mu, sc = nm.sigma_params(torch.tensor(f[:2000], dtype=torch.float32))
    expect = np.log10(np.sqrt(0.3**2 + 0.01 * f[:2000]))
    assert np.median(np.abs(mu.numpy() - expect)) < 0.03
    assert np.median(sc.numpy()) == pytest.approx(0.05, abs=0.02)
    assert nm.per_band["a"].softening == pytest.approx(1.042 * np.median(sig[:, 0]))
    nm2 = NoiseModel.from_json(nm.to_json())
    assert nm2.to_dict() == json.loads(nm.to_json())
    with pytest.raises(ModelFileError):
        NoiseModel.from_json('{"format": "something-else"}')
    with pytest.raises(ModelFileError):
        NoiseModel.from_json("{not json")


def test_noise_apply_scatter_negative_fluxes_and_amplitude():
    obs, sig, f = _synthetic_noise_catalog()
    nm = NoiseModel.fit(obs, sig, ("a", "b"))
    faint = torch.full((50000, 2), 0.2)
    g = torch.Generator().manual_seed(0)
    noisy = nm.apply(faint, 1.0, g)
    assert float((noisy < 0).float().mean()) > 0.2  # negative fluxes kept, not clamped or re-drawn
    mu, sc = nm.sigma_params(faint[:1])
    expect = float(torch.sqrt(10 ** (2 * mu[0, 0]) * torch.exp(2 * (sc[0, 0] * math.log(10)) ** 2)))
    assert 0.28 < expect < 0.36  # sky-limited sigma 0.3 plus the faintest bin's Poisson term
    assert float((noisy - faint)[:, 0].std()) == pytest.approx(expect, rel=0.03)
    assert torch.equal(nm.apply(faint, 0.0, g), faint)
    half = nm.apply(faint, 0.5, g)
    assert float((half - faint)[:, 0].std()) == pytest.approx(expect / 2, rel=0.03)
    x = faint.clone().requires_grad_(True)
    nm.apply(x, 1.0, g).sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x))


def test_noise_fit_refuses_bands_without_errors():
    from engine.errors import CatalogError

    with pytest.raises(CatalogError, match="band b"):
        NoiseModel.fit(np.ones((100, 2)), np.c_[np.ones(100), np.full(100, np.nan)], ("a", "b"))


def test_asinh_magnitudes():
    f = np.array([1e4, 100.0, 1.0, 0.0, -1.0])
    m = asinh_mag(f, 0.5)
    assert m[0] == pytest.approx(22.5 - 2.5 * 4, abs=1e-6)
    assert m[1] == pytest.approx(22.5 - 2.5 * 2, abs=1e-4)
    assert np.all(np.isfinite(m)) and np.all(np.diff(m) > 0)
    mt = asinh_mag(torch.tensor(f), 0.5)
    assert np.allclose(mt.numpy(), m)
    assert np.isinf(pogson_mag(np.array([-1.0]))[0])


def test_whitening_matrix():
    rng = np.random.default_rng(3)
    n = 4000
    bright = rng.normal(0, 1.0, (n, 1))  # one common brightness: five nearly collinear "magnitudes"
    mags = bright + rng.normal(0, 0.05, (n, 5)) * np.arange(1, 6)
    x = np.c_[mags, mags[:, :-1] - mags[:, 1:]]
    x = (x - x.mean(0)) / x.std(0)
    lam = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    assert lam[-1] > 0.5 * lam.sum()  # standardised columns: brightness holds most of the variance
    w = whitening_matrix(x)
    assert np.allclose(w, w.T)
    lam_w = np.linalg.eigvalsh(np.cov(x @ w, rowvar=False))
    # the 5 independent directions (colours are differences of the magnitudes) weigh alike, total variance 9
    assert np.allclose(lam_w[-5:], 9 / 5, rtol=1e-6) and np.all(np.abs(lam_w[:4]) < 1e-6)
    a = np.c_[rng.normal(size=n), 2 * rng.normal(size=n)]
    assert np.allclose(np.diag(whitening_matrix(a)), [1, 0.5], rtol=0.05)


def test_train_config_from_an_older_run_keeps_its_behaviour():
    old = TrainConfig().to_dict()
    for key in ("whiten", "best_from", "ema", "z_weight"):
        del old[
            key
        ]  # config.json written before the options existed (the bundled sample run's lacks all four)
    cfg = TrainConfig.from_dict(old)
    assert (cfg.whiten, cfg.best_from, cfg.ema, cfg.z_weight) == (0.0, 0.0, 0.0, 1.0)  # the defaults then
    assert (TrainConfig().whiten, TrainConfig().best_from, TrainConfig().ema, TrainConfig().z_weight) == (
        0.5,
        1.0,
        0.98,
        3.0,
    )
    assert TrainConfig.from_dict({**old, "whiten": 1}).whiten == 1.0
    with pytest.raises(PopsedError, match="whiten"):
        TrainConfig(whiten=2.0)
    with pytest.raises(PopsedError, match="best_from"):
        TrainConfig(best_from=-0.1)


# ------------------------------------------------------------------ selection
def test_parse_selection_forms_and_errors():
    cuts = parse_selection(["sdss2010-r<19.8,sdss2010-g >= 15", "galex-nuv<=23.1"])
    assert [(c.band, c.op, c.value) for c in cuts] == [("sdss2010-r", "<", 19.8), ("sdss2010-g", ">=", 15.0),
                                                       ("galex-nuv", "<=", 23.1)]
    assert str(cuts[0]) == "sdss2010-r<19.8"
    for bad in ["sdss2010-r", "r<<19", "r<abc", "<19"]:
        with pytest.raises(SelectionError):
            parse_selection(bad)
    with pytest.raises(SelectionError, match="not among the fitted bands"):
        check_cuts(parse_selection("sdss2010-i<19"), ("sdss2010-r",))
    assert isinstance(SelectionError("x"), PopsedError)


def test_selection_mask_semantics():
    r19_8 = 10 ** (-0.4 * (19.8 - 22.5))
    flux = np.array([[r19_8 * 1.01], [r19_8 * 0.99], [-1.0], [np.nan]])
    cuts = parse_selection("r<19.8")
    assert selection_mask(flux, ["r"], cuts).tolist() == [True, False, False, False]
    assert selection_mask(torch.tensor(flux), ["r"], cuts).tolist() == [True, False, False, False]
    assert selection_mask(flux, ["r"], parse_selection("r>19.8")).tolist() == [False, True, True, False]


# ------------------------------------------------------------------ schedules, report
def test_schedules():
    cfg = TrainConfig(steps=101, lr=1e-3, pct_start=0.1, noise_ramp=0.5)
    lrs = [cfg.lr_at(i) for i in range(101)]
    assert max(lrs) == pytest.approx(1e-3) and int(np.argmax(lrs)) == 10
    assert lrs[0] == pytest.approx(1e-3 / 25) and lrs[-1] < 1e-6
    assert cfg.noise_at(0) == 0.0 and cfg.noise_at(25) == pytest.approx(25 / 50.5) and cfg.noise_at(60) == 1.0
    ref = TrainConfig(steps=100, noise_shape="reference", noise_ramp=1.0)
    assert ref.noise_at(0) == pytest.approx(1 / 31)
    assert cfg.blur_at(0) is None and TrainConfig(loss="sinkhorn").blur_at(0) == 0.3
    with pytest.raises(PopsedError):
        TrainConfig(loss="energy")
    assert TrainConfig(members=3, seed=1).member_seeds() == TrainConfig(members=3, seed=1).member_seeds()
    assert len(set(TrainConfig(members=3, seed=1).member_seeds())) == 3


def test_optical_only_note():
    from engine.population.rundir import optical_only_note

    ugriz = ["sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z"]
    note = optical_only_note(ugriz)
    assert note and "bluest 3589 A" in note and "tau2" in note
    assert optical_only_note(ugriz + ["galex-nuv"]) is None
    assert optical_only_note(["toy-r", "toy-g"]) is None and optical_only_note([]) is None


def test_ensemble_report():
    # which members are pooled: the ensemble-relative rule (1.5x the best member's loss, no divergence)
    rows = [{"member": 0, "status": "converged", "best_val_loss": 0.10},
            {"member": 1, "status": "converged", "best_val_loss": 0.12},
            {"member": 2, "status": "converged", "best_val_loss": 0.50},
            {"member": 3, "status": "converged", "best_val_loss": None},
            {"member": 4, "status": "diverged", "best_val_loss": 0.09}]
    rep = ensemble_report(rows, 1.5, 0.08)
    assert rep["kept"] == [0, 1] and rep["dropped"] == [2, 3, 4]
    assert [m["kept"] for m in rep["members"]] == [True, True, False, False, False]
    # without validation histories no plateau can be judged: none converged
    assert rep["converged"] == []
    assert [m["status"] for m in rep["members"]] == [
        "not_converged",
        "not_converged",
        "not_converged",
        "diverged",
        "diverged",
    ]
    assert all("note" in m for m in rep["members"] if m["status"] != "converged")
    assert "not pooled" in rep["members"][2]["note"] and "not pooled" not in rep["members"][0]["note"]


def _history(curve, steps=300, every=10):
    return [(i, curve(i)) for i in range(0, steps, every)] + [(steps - 1, curve(steps - 1))]


def test_plateau_at_the_noise_floor_is_converged():
    floor = 0.2
    rng = np.random.default_rng(0)
    noise = {i: 0.01 * rng.standard_normal() for i in range(300)}
    flat = _history(lambda i: floor * (1.15 + 3.0 * np.exp(-i / 30.0)) * (1 + noise[i]))
    rows = [{"member": 0, "status": "converged", "best_val_loss": flat[-1][1]}]
    rep = ensemble_report(rows, 1.5, floor, histories={0: flat}, steps=300)
    m = rep["members"][0]
    assert m["status"] == "converged" and m["kept"] and rep["converged"] == [0], m
    assert m["floor_ratio"] <= 1.2 and abs(m["plateau"]) < 0.02 and "note" not in m


def test_high_or_still_falling_loss_is_not_converged():
    floor = 0.24
    # flat but far above the floor
    high = _history(lambda i: 125.0)
    # at the floor's level but still falling fast over the last third
    falling = _history(lambda i: floor * (1.0 + 8.0 * np.exp(-i / 150.0)))
    rows = [{"member": 0, "status": "converged", "best_val_loss": 125.0},
            {"member": 1, "status": "converged", "best_val_loss": falling[-1][1]}]
    rep = ensemble_report(rows, 1e6, floor, histories={0: high, 1: falling}, steps=300)
    m0, m1 = rep["members"]
    assert (m0["status"] == m1["status"] == "not_converged" and rep["kept"] == [0, 1]
            and rep["converged"] == [])
    assert "x the noise floor" in m0["note"] and "still decreasing" not in m0["note"]
    assert "still decreasing by" in m1["note"] and m1["plateau"] > 0.02


def test_plateau_needs_eight_validations_in_the_last_third():
    # the last third of 30 steps: steps 20..29; medians of the earlier and the later four validations
    hist = [(0, 9.0), (10, 5.0)] + [(s, 2.0) for s in range(20, 24)] + [(s, 1.0) for s in range(26, 30)]
    assert plateau(hist, 30) == pytest.approx(0.5)
    assert plateau(hist[:-1], 30) is None
    assert plateau([(0, 3.0), (20, 2.0), (25, 1.9), (29, 1.0)], 30) is None


def test_summary_of_a_run_written_before_kept_and_the_floor_ratio():
    from engine.population.cli import complete_line, format_summary

    old = {"format_version": 1, "status": "complete", "noise_floor": 0.24, "converged": [0], "dropped": [1],
           "members": [{"member": 0, "status": "converged", "best_val_loss": 0.3, "best_step": 29},
                       {"member": 1, "status": "not_converged", "best_val_loss": 0.9, "note": "above 1.5x"}],
           "notes": [], "percentiles": {"z": {"p16": 0.1, "p50": 0.2, "p84": 0.3}}, "n_population": 10}
    text = format_summary(old)
    assert "noise floor (val vs train): 0.24" in text and "0: converged" in text and "(above 1.5x)" in text
    assert "  pooled" not in text and "x floor" not in text
    new = dict(old, converged=[], kept=[0], converge_floor=2.0, plateau_tol=0.02,
               members=[dict(old["members"][0], status="not_converged", kept=True, floor_ratio=1.25,
                             plateau=0.12,
                             note="still decreasing by 12% over the last third of training (plateau: < 2%)"),
                        dict(old["members"][1], kept=False, floor_ratio=3.75, plateau=0.0)])
    text = format_summary(new)
    assert ("0: not_converged  pooled" in text and "1.25x floor" in text
            and "last-third decrease 12.0%" in text)
    assert "1: not_converged  not pooled" in text and "<= 2x the noise floor" in text
    assert complete_line("R", new) == ("run complete: R (2 members: 0 converged, 2 not converged; 1 left out "
                                       "of the population — see popsed summary R)")
