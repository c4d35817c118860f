"""Integration with the real SPS forward model (small N)."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

sps = pytest.importorskip("engine.sps")

BANDS = ["sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fit_through_sps_writes_param_and_derived_columns(tmp_path):
    from engine.catalog import catalog_from_arrays
    from engine.population import fit
    from engine.population.flow import FlowConfig

    model = sps.SPSModel(BANDS, device="cpu")
    g = torch.Generator().manual_seed(0)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    theta = lo + (hi - lo) * (0.1 + 0.8 * torch.rand(400, len(lo), generator=g))
    theta[:, 0] = 0.05 + 0.1 * torch.rand(400, generator=g)
    theta[:, 1] = 10.5 + 0.5 * torch.rand(400, generator=g)
    with torch.no_grad():
        f = model.fluxes(theta).double().numpy()
    rng = np.random.default_rng(1)
    err = np.sqrt(0.1**2 + 0.01 * np.abs(f))
    cat = catalog_from_arrays(BANDS, f + err * rng.normal(size=f.shape), err, theta[:, 0].numpy())
    run = fit(cat, tmp_path / "run", forward="sps", members=1, steps=4, batch=128, device="cpu",
              redshift="observed", selection="sdss2010-r<21", flow=FlowConfig(layers=2, hidden=16),
              population_samples=200, val_every=2)
    cols = pq.read_table(run.path / "population.parquet").column_names
    for name in model.param_names:
        assert name in cols
    for name in ("log_sfr_10myr", "log_sfr_100myr", "log_ssfr_100myr", "log_mformed", "mwage_gyr"):
        assert name in cols
    for b in BANDS:
        assert f"mag_{b}" in cols
    cfg = run.config
    assert cfg["forward"]["kind"] == "sps" and cfg["param_names"] == list(model.param_names)
    notes = run.summary()["notes"]
    assert any(
        "tell tau2 from log_mstar only by colour changes" in n for n in notes
    )  # ugriz: no band bluer than 3000 A
    assert cfg["redshift"] == "observed" and cfg["features"][-1] == "z"
    th = pq.read_table(run.path / "population.parquet").to_pydict()
    z = np.asarray(th["z"])
    assert z.min() > 0 and z.max() < 0.65
