"""Synthetic run directories for the viewer's own tests (format only: random numbers, no physics).

The layout is the one documented in ``docs/run_format.md``; real checks use a run made by ``popsed fit``.
"""
from __future__ import annotations

from pathlib import Path

from engine.sps.params import PARAM_NAMES

__all__ = ["SYNTH_BANDS", "SYNTH_PARAMS", "SYNTH_DERIVED", "write_synthetic_run"]

SYNTH_BANDS = ["sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z"]
SYNTH_PARAMS = list(PARAM_NAMES)
SYNTH_DERIVED = ["log_sfr_10myr", "log_sfr_100myr", "log_ssfr_100myr", "log_mformed", "mwage_gyr"]


def _synthetic_table(n: int, seed: int):
    """Random columns with the run format's names (Gaussian blobs; not a galaxy model)."""
    import numpy as np
    import pandas as pd

    r = np.random.default_rng(seed)
    d = {p: r.uniform(0.0, 1.0, n) for p in SYNTH_PARAMS}
    d["z"] = r.uniform(0.01, 0.6, n)
    d["log_mstar"] = r.normal(10.3, 0.6, n)
    d["log_zmet"] = r.normal(-0.5, 0.4, n)
    for k in SYNTH_DERIVED:
        d[k] = r.normal(0.0, 1.0, n)
    for i, b in enumerate(SYNTH_BANDS):
        d[f"mag_{b}"] = r.normal(18.5 - 0.3 * i, 1.0, n)
    return pd.DataFrame(d)


def write_synthetic_run(
    path,
    n_population: int = 3000,
    members: int = 2,
    steps: int = 30,
    complete: bool = True,
    lock: bool = False,
    truth: bool = True,
):
    """Write a run directory in the documented layout (docs/run_format.md) from random numbers.

    For tests of the *viewer* only (file handling, bad input, widgets): the
    values mean nothing.  Real checks use a run made by ``popsed fit``.
    """
    import json
    import time as _time

    import numpy as np

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"format_version": 1, "popsed_version": "synthetic", "catalog": {"path": str(path / "catalog.ecsv"),
           "sha256": "", "n_rows": 500}, "bands": SYNTH_BANDS, "forward": "none", "loss": "sliced",
           "members": members, "steps": steps, "batch": 100, "seed": 0, "seeds": list(range(members)),
           "selection": [{"band": "sdss2010-r", "op": "<", "value": 19.8}], "redshift": "free", "z_max": 0.65,
           "param_names": SYNTH_PARAMS, "bounds": {p: [0.0, 1.0] for p in SYNTH_PARAMS}, "device": "cpu"}
    (path / "config.json").write_text(json.dumps(cfg))
    obs = _synthetic_table(500, 99)[[f"mag_{b}" for b in SYNTH_BANDS]]
    obs["z_spec"] = np.random.default_rng(5).uniform(0.01, 0.6, len(obs))
    obs["split"] = np.where(np.arange(len(obs)) % 5 == 0, "val", "train")
    obs.to_parquet(path / "observed.parquet")
    if lock:
        (path / "run.lock").write_text("synthetic")
    t0 = _time.time()
    lines = [{"event": "start", "members": members, "steps": steps, "time": 0.0, "wall": t0}]
    for k in range(members):
        for i in range(steps):
            lines.append({"event": "step", "member": k, "step": i, "train_loss": 1.0 / (1 + i) + 0.01,
                          "val_loss": (1.0 / (1 + i) + 0.02) if i % 10 == 0 else None,
                          "noise": min(1.0, i / max(1, steps - 1)), "blur": None, "lr": 1e-3, "seconds": 0.01,
                          "time": 0.01 * (k * steps + i), "wall": t0 + 0.01 * (k * steps + i)})
        if complete:
            lines.append({"event": "member_done", "member": k, "status": "converged", "best_val_loss": 0.03,
                          "best_step": steps - 1, "time": 0.01 * (k + 1) * steps, "wall": t0})
    pv = _synthetic_table(300, 7)[[f"mag_{b}" for b in SYNTH_BANDS]]
    pv.insert(0, "step", steps - 1)
    pv.insert(0, "member", np.arange(len(pv)) % members)
    pv.to_parquet(path / "preview.parquet")
    if complete:
        pop = _synthetic_table(n_population, 11)
        pop.insert(0, "member", np.arange(n_population) % members)
        pop["selected"] = pop["mag_sdss2010-r"] < 19.8
        pop.to_parquet(path / "population.parquet")
        (path / "summary.json").write_text(json.dumps({"members": [
            {"member": k, "status": "converged", "best_val_loss": 0.03} for k in range(members)]}))
        lines.append({"event": "done", "status": "complete", "time": 1.0, "wall": t0 + 1})
    with open(path / "history.jsonl", "w") as fh:
        for ev in lines:
            fh.write(json.dumps(ev) + "\n")
    if truth:
        from astropy.table import Table

        Table.from_pandas(_synthetic_table(1000, 13)[SYNTH_PARAMS + SYNTH_DERIVED]).write(
            path / "truth.ecsv", overwrite=True)
    return path
