"""How far apart can two populations be that the catalog's photometry cannot tell apart?

The recovery benchmark scores a fit by W1(fitted, true) / sd(true) per parameter.  A score is only
attainable if the photometry identifies the parameter.  This script measures that for one degeneracy, the
dust-mass one, by building a *twin* of a mock's true population:

1. every true galaxy (``truth.ecsv`` of ``popsed mock``) whose attenuation curve is grey
   (``n_dust > --grey``, default 0.5: for n_dust -> 1 the Calzetti (2000) curve times (lambda/5500 A)^n_dust
   is flat to a few per cent across ugriz, Kriek & Conroy 2013 form) gets a new tau2 drawn uniformly on the
   box [0, 3] -- what a fit with no information along this direction keeps from its initial flow;
2. its stellar mass is rescaled so that its noise-free r-band flux is unchanged (flux is proportional to
   mass at fixed everything else); a draw that would push log M* out of the box keeps its tau2;
3. truth and twin go through the same forward model (the direct SPS by default), the catalog's own noise
   model (``NoiseModel.fit`` on its fluxes and errors) and the same selection, ``--realisations`` times;
4. reported: the photometric distance of each to the catalog (the recovery benchmark's metric: sliced
   Wasserstein, p = 2, 512 fixed directions, standardised asinh magnitudes + colours), and how far apart the
   two populations are: W1/sd of log_mstar and tau2 (selected galaxies), plus the largest noise-free colour
   change the twin makes, against the catalog's median errors.

If the twin sits as close to the catalog as the truth does, the photometry cannot tell them apart, and an
estimator that only sees it must err by at least half their log_mstar distance on one of the two: a target
below that half is not a property any fitting method can have on this catalog.

    python bench/identifiability.py MOCK_DIR [--bands ugriz] [--grey 0.5] [--realisations 5] [--seed 0]
                                    [--forward sps] [--json]

``MOCK_DIR`` is a ``popsed mock`` directory (catalog.ecsv + truth.ecsv), e.g. the recovery benchmark's
``--workdir``/mock.  Runs in ~20 s on 2 CPU cores for 10^4 galaxies.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recovery import w1_over_sd  # noqa: E402  (bench/ is on the path when this script runs)


def make_twin(
    theta: np.ndarray,
    f0: np.ndarray,
    names: list[str],
    bounds: dict,
    flux_at,
    r_index: int,
    grey: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dust-mass twin of ``theta`` (N, P): new tau2 for grey galaxies, mass rescaled to keep r's flux.

    ``f0``: the noise-free fluxes (N, B) of ``theta``; ``bounds``: the parameter box
    (:func:`engine.sps.params.param_bounds`); ``flux_at(theta) -> (N, B)`` noise-free fluxes.  Returns
    ``(theta_twin, flux_twin, moved)`` where ``moved`` marks the galaxies that were changed."""
    j_tau, j_m, j_n = names.index("tau2"), names.index("log_mstar"), names.index("n_dust")
    th = theta.copy()
    moved = th[:, j_n] > grey
    th[moved, j_tau] = rng.uniform(*bounds["tau2"], size=int(moved.sum()))
    f1 = flux_at(th)
    dlogm = np.log10(f0[:, r_index] / f1[:, r_index])
    new_m = th[:, j_m] + dlogm
    lo, hi = bounds["log_mstar"]
    keep = moved & (new_m >= lo) & (new_m <= hi)
    out = theta.copy()
    out[keep, j_tau] = th[keep, j_tau]
    out[keep, j_m] = new_m[keep]
    flux = np.where(keep[:, None], f1 * 10.0 ** dlogm[:, None], f0)
    return out, flux, keep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mock", help="a `popsed mock` directory (catalog.ecsv + truth.ecsv)")
    ap.add_argument("--grey", type=float, default=0.5, help="n_dust above which a galaxy's tau2 is redrawn")
    ap.add_argument("--realisations", type=int, default=5, help="noise realisations averaged per distance")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forward", default="sps", help="forward model: sps (default), emulator or auto")
    ap.add_argument("--selection", default="sdss2010-r<19.8")
    ap.add_argument(
        "--independent",
        default=None,
        help="another `popsed mock` of the same population (other seed): the truth and twin are then built "
        "from its galaxies, so their distances to the catalog include the catalog's finite-sample "
        "scatter, as the recovery benchmark's noise floor does",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    import torch
    from astropy.table import Table

    from engine.population.forward import make_forward_model
    from engine.population.losses import random_directions, sliced_wasserstein
    from engine.population.noise import NoiseModel, pogson_mag
    from engine.population.objective import Featurizer
    from engine.population.selection import parse_selection, selection_mask
    from engine.sps import SPSModel
    from engine.sps.params import param_bounds

    mock = Path(a.mock)
    meta = json.loads((mock / "mock.json").read_text())
    bands = list(meta["bands"])
    cat = Table.read(mock / "catalog.ecsv")
    truth = Table.read(Path(a.independent or mock) / "truth.ecsv")
    names = list(SPSModel.param_names)
    theta = np.stack([np.asarray(truth[n], np.float64) for n in names], 1)
    f_obs = np.stack([np.asarray(cat[f"flux_{b}"], np.float64) for b in bands], 1)
    e_obs = np.stack([np.asarray(cat[f"flux_err_{b}"], np.float64) for b in bands], 1)
    ok = np.all(np.isfinite(f_obs), 1)
    f_obs, e_obs = f_obs[ok], e_obs[ok]
    nm = NoiseModel.fit(f_obs, e_obs, bands)
    cuts = parse_selection(a.selection)
    z_max = meta.get("z_max", 0.65)
    model, desc = make_forward_model(a.forward, bands, torch.device("cpu"), z_max)

    def flux_at(th: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.fluxes(torch.tensor(th, dtype=torch.float32)).double().numpy()

    rng = np.random.default_rng(a.seed)
    r_index = next(i for i, b in enumerate(bands) if b.endswith("-r"))
    f_true = flux_at(theta)
    theta_twin, f_twin, moved = make_twin(
        theta, f_true, names, param_bounds(z_max), flux_at, r_index, a.grey, rng
    )

    feat = Featurizer.fit(f_obs, nm.softening, True)
    dirs = random_directions(feat.numpy(f_obs[:2]).shape[1], 512, torch.Generator().manual_seed(123), "cpu")
    g = torch.Generator().manual_seed(a.seed)

    def realise(flux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        noisy = nm.apply(torch.tensor(flux, dtype=torch.float32), 1.0, g)
        sel = selection_mask(noisy, bands, cuts)
        return noisy[sel].double().numpy(), sel.numpy()

    x_obs = torch.tensor(feat.numpy(f_obs), dtype=torch.float32)

    def distance(flux: np.ndarray) -> float:
        return float(
            sliced_wasserstein(torch.tensor(feat.numpy(flux), dtype=torch.float32), x_obs, directions=dirs)
        )

    d = {"truth": [], "twin": []}
    w = {"log_mstar": [], "tau2": []}
    for _ in range(a.realisations):
        nt, st = realise(f_true)
        nw, sw = realise(f_twin)
        d["truth"].append(distance(nt))
        d["twin"].append(distance(nw))
        for p in w:
            j = names.index(p)
            w[p].append(w1_over_sd(theta_twin[sw, j], theta[st, j]))
    # the twin's noise-free colour changes against the catalog's median errors (magnitudes)
    dm = (pogson_mag(f_twin) - pogson_mag(f_true))[moved]
    dcol = dm[:, :-1] - dm[:, 1:]
    mag_err = np.median(1.0857 * e_obs / np.abs(f_obs), 0)
    res = {
        "mock": str(mock),
        "bands": bands,
        "forward": desc["kind"],
        "n_galaxies": int(theta.shape[0]),
        "grey_threshold": a.grey,
        "moved_fraction": float(moved.mean()),
        "realisations": a.realisations,
        "distance_to_catalog": {k: {"mean": float(np.mean(v)), "sd": float(np.std(v))} for k, v in d.items()},
        "twin_over_truth": float(np.mean(d["twin"]) / np.mean(d["truth"])),
        "twin_vs_truth_w1_over_sd": {p: float(np.mean(v)) for p, v in w.items()},
        "twin_colour_change_mag": {
            f"{a_}-{b_}": {
                "median_abs": float(np.median(np.abs(dcol[:, i]))),
                "p99_abs": float(np.percentile(np.abs(dcol[:, i]), 99)),
            }
            for i, (a_, b_) in enumerate(zip(bands[:-1], bands[1:], strict=True))
        },
        "catalog_median_mag_err": {b: float(mag_err[i]) for i, b in enumerate(bands)},
        "log_mstar_shift_of_moved": {
            "median": float(np.median((theta_twin - theta)[moved, names.index("log_mstar")])),
            "p95": float(np.percentile((theta_twin - theta)[moved, names.index("log_mstar")], 95)),
        },
    }
    res["lower_bound_log_mstar"] = res["twin_vs_truth_w1_over_sd"]["log_mstar"] / 2
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        dt, dw = res["distance_to_catalog"]["truth"], res["distance_to_catalog"]["twin"]
        print(f"{mock}: {res['n_galaxies']} galaxies, bands {','.join(bands)}, forward {desc['kind']}")
        print(
            f"moved (n_dust > {a.grey}, tau2 redrawn on [0, 3], mass rescaled at fixed r flux): "
            f"{res['moved_fraction']:.1%}; their log M* shift median "
            f"{res['log_mstar_shift_of_moved']['median']:+.2f}, "
            f"95th percentile {res['log_mstar_shift_of_moved']['p95']:+.2f} dex"
        )
        print(
            f"distance to the catalog ({a.realisations} noise realisations): truth {dt['mean']:.4f} +- "
            f"{dt['sd']:.4f}, "
            f"twin {dw['mean']:.4f} +- {dw['sd']:.4f} (twin/truth {res['twin_over_truth']:.2f})"
        )
        print(
            "twin vs truth, W1/sd: "
            + ", ".join(f"{p} {v:.3f}" for p, v in res["twin_vs_truth_w1_over_sd"].items())
        )
        print(
            "largest colour changes (median / 99th percentile |d colour|, mag): "
            + ", ".join(
                f"{k} {v['median_abs']:.3f}/{v['p99_abs']:.3f}"
                for k, v in res["twin_colour_change_mag"].items()
            )
        )
        print(
            "catalog median errors (mag): "
            + ", ".join(f"{b} {v:.3f}" for b, v in res["catalog_median_mag_err"].items())
        )
        print(
            "=> if twin/truth is near 1 (the photometry cannot tell them apart), an estimator seeing only "
            "it errs "
            f"on log_mstar by >= {res['lower_bound_log_mstar']:.3f} (W1/sd) on the truth or on the twin"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
