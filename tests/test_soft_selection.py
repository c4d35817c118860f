"""Soft selections (a logistic completeness ``BAND<MAG~WIDTH``, or one fitted from the catalog's histogram
with ``BAND<fit``): parsing and the run's config, the fit of the completeness, the Bernoulli selection of
predicted galaxies and its smooth weight, and the observed catalog left uncut."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.table import Table

from engine.population.completeness import fit_completeness, resolve_cuts
from engine.population.config import TrainConfig
from engine.population.objective import Objective
from engine.population.observed import usable_rows
from engine.population.selection import Cut, SelectionError, hard_cuts, parse_selection, selection_mask

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "mock_sdss" / "catalog.ecsv"


def popsed(*args):
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def logistic(m, m50, w):
    return 1.0 / (1.0 + np.exp((m - m50) / w))


def test_soft_cut_parses_and_round_trips():
    (c,) = parse_selection("sdss2010-r<17.77~0.1")
    assert c == Cut("sdss2010-r", "<", 17.77, 0.1) and c.soft
    assert c.to_dict() == {"band": "sdss2010-r", "op": "<", "value": 17.77, "width": 0.1}
    assert Cut.from_dict(c.to_dict()) == c and parse_selection(str(c)) == [c]
    hard = Cut("sdss2010-r", "<", 19.8)
    assert hard.to_dict() == {"band": "sdss2010-r", "op": "<", "value": 19.8}  # as before soft cuts
    assert Cut.from_dict({"band": "sdss2010-r", "op": "<", "value": 19.8}) == hard and not hard.soft
    for spec in ("sdss2010-r<fit", "sdss2010-r<~fit", "sdss2010-r<17.8~fit"):
        (p,) = parse_selection(spec)
        assert p.fit and p.soft
        with pytest.raises(SelectionError, match="not been fitted"):
            p.to_dict()
    assert hard_cuts(parse_selection("a<1~0.1,b<2")) == [Cut("b", "<", 2.0)]
    for bad, msg in (("a<17.7~0", "completeness width must be > 0"), ("a<17.7~-0.1", "width must be > 0"),
                     ("a<17.7~x", "cannot parse"), ("a<~", "cannot parse")):
        with pytest.raises(SelectionError, match=msg):
            parse_selection(bad)


def _limited_sample(seed: int, m50: float = 19.5, w: float = 0.1, n: int = 60000) -> np.ndarray:
    """Magnitudes with counts dN/dm ∝ 10^{0.4 m} on [15, 21] kept with the logistic completeness."""
    rng = np.random.default_rng(seed)
    a = 0.4 * math.log(10.0)
    m = 15 + np.log1p(rng.random(n) * (math.exp(a * 6) - 1)) / a
    return m[rng.random(n) < logistic(m, m50, w)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_completeness_fit_recovers_position_and_width(seed):
    m50, w = fit_completeness(_limited_sample(seed))
    assert abs(m50 - 19.5) < 0.03 and abs(w / 0.1 - 1) < 0.3


def test_pending_cut_is_fitted_on_the_catalog_band_with_a_notice():
    m = _limited_sample(3)
    flux = np.stack([10 ** (-0.4 * (m + 0.7 - 22.5)), 10 ** (-0.4 * (m - 22.5))], 1)
    notices: list[str] = []
    cuts = resolve_cuts(parse_selection("g<21,r<fit"), flux, ["g", "r"], notices)
    assert cuts[0] == Cut("g", "<", 21.0)
    assert not cuts[1].fit and abs(cuts[1].value - 19.5) < 0.03 and 0.07 < cuts[1].width < 0.13
    assert len(notices) == 1 and "completeness fitted to the catalog's r histogram" in notices[0]
    with pytest.raises(SelectionError, match="streamed"):
        resolve_cuts(parse_selection("r<fit"), None, ["g", "r"], [])


def test_predicted_galaxies_are_kept_with_probability_c_of_m():
    cut = Cut("r", "<", 19.5, 0.1)
    m = torch.linspace(19.0, 20.0, 200000, dtype=torch.float64)
    flux = 10 ** (-0.4 * (m - 22.5))[:, None]
    mask = selection_mask(flux, ("r",), [cut], torch.Generator().manual_seed(5))
    again = selection_mask(flux, ("r",), [cut], torch.Generator().manual_seed(5))
    assert torch.equal(mask, again)  # reproducible from the generator
    edges = np.linspace(19.0, 20.0, 21)
    mm, kept = m.numpy(), mask.numpy()
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inb = (mm >= lo) & (mm < hi)
        expect = logistic(mm[inb], 19.5, 0.1).mean()
        tol = 4 * math.sqrt(max(expect * (1 - expect), 1e-4) / inb.sum())
        assert abs(kept[inb].mean() - expect) < tol
    # numpy fluxes too, and a '>' cut mirrors the curve
    kept_np = selection_mask(flux.numpy(), ("r",), [Cut("r", ">", 19.5, 0.1)], np.random.default_rng(0))
    assert abs(kept_np[mm > 19.8].mean() - logistic(-mm[mm > 19.8], -19.5, 0.1).mean()) < 0.01


def test_the_smooth_weight_of_a_soft_cut_is_c_of_m():
    cuts = [Cut("g", "<", 21.0, 0.0), Cut("r", "<", 19.5, 0.1)]
    obj = Objective(TrainConfig(members=1, steps=2, batch=8), None, torch.randn(64, 2), False, "cpu", cuts,
                    ("g", "r"))
    mags = torch.tensor([[18.0, 19.3], [18.0, 19.5], [18.0, 19.8]], dtype=torch.float64)
    noisy = (10 ** (-0.4 * (mags - 22.5))).requires_grad_(True)
    sigma = torch.full_like(noisy, 1e-6)
    p = obj.selection_probability(noisy.detach(), sigma, 1.0, noisy)
    want = torch.tensor(logistic(mags[:, 1].numpy(), 19.5, 0.1), dtype=p.dtype)
    assert torch.allclose(p, want, atol=1e-6)  # the hard g cut is passed with certainty
    p.sum().backward()
    assert (noisy.grad[:, 1] > 0).all()  # brighter -> more complete
    near = obj.near_cut(noisy.detach(), sigma, 1.0, noisy.detach())
    assert near.tolist() == [True, True, True]
    far = 10 ** (-0.4 * (torch.tensor([[18.0, 17.0]], dtype=torch.float64) - 22.5))
    assert not obj.near_cut(far, sigma[:1], 1.0, far).any()


def test_the_observed_catalog_is_cut_by_hard_cuts_only():
    r = np.array([18.0, 19.4, 19.6, 20.5])
    flux = 10 ** (-0.4 * (r[:, None] - 22.5))
    use, counts = usable_rows(flux, None, ("r",), parse_selection("r<19.5~0.1"), "free")
    assert use.all() and counts["n_fail_selection"] == 0
    use, counts = usable_rows(flux, None, ("r",), parse_selection("r<19.5"), "free")
    assert use.tolist() == [True, True, False, False] and counts["n_fail_selection"] == 2


def test_fit_with_a_fitted_completeness_and_an_error_floor_records_both(tmp_path):
    Table.read(SAMPLE)[:600].write(tmp_path / "cat.ecsv")
    res = popsed("fit", tmp_path / "cat.ecsv", "--out", tmp_path / "run", "--members", 1, "--steps", 3,
                 "--batch", 256, "--no-progress", "--selection", "sdss2010-r<fit", "--error-floor", "0.02")
    assert res.returncode == 0, res.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    (sel,) = cfg["selection"]
    assert sel["band"] == "sdss2010-r" and sel["op"] == "<" and sel["width"] > 0
    assert abs(sel["value"] - 19.8) < 0.3  # the mock's own cut is at 19.8 (noisy magnitudes)
    assert "completeness fitted to the catalog's sdss2010-r histogram" in res.stderr
    assert cfg["error_floor"] == {b: 0.02 for b in cfg["bands"]}
    assert cfg["observed"]["n_fail_selection"] == 0 and cfg["observed"]["n_used"] == 600  # not cut
    noise = json.loads((tmp_path / "run" / "noise_model.json").read_text())
    for band in cfg["bands"]:  # the brightest bin's error is at least the floor (relative flux error)
        nb = noise["per_band"][band]
        f = 10 ** (-0.4 * (nb["mag"][0] - 22.5))
        assert 10 ** nb["log10_sigma_median"][0] / f > 0.9 * 0.4 * math.log(10) * 0.02
    summ = popsed("summary", tmp_path / "run")
    assert summ.returncode == 0, summ.stderr
    assert "error floor (mag, in quadrature with the catalog's errors): sdss2010-u 0.02" in summ.stdout


@pytest.mark.parametrize("bad, msg", [
    (("--selection", "sdss2010-r<19.8~0"), "completeness width must be > 0"),
    (("--selection", "sdss2010-r<19.8~-0.1"), "completeness width must be > 0"),
    (("--selection", "sdss2010-r<19.8~wide"), "cannot parse selection"),
    (("--selection", "sdss2010-y<fit"), "not among the fitted bands"),
    (("--error-floor", "-0.01"), "--error-floor must be >= 0"),
    (("--error-floor", "sdss2010-y=0.02"), "--error-floor names band 'sdss2010-y'"),
    (("--error-floor", "two"), "--error-floor: cannot parse"),
])
def test_bad_selection_or_error_floor_is_one_line_and_writes_nothing(tmp_path, bad, msg):
    res = popsed("fit", SAMPLE, "--out", tmp_path / "run", "--steps", 2, "--no-progress", *bad)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], res.stderr
    assert not (tmp_path / "run").exists()
