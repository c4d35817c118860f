"""Catalogs larger than memory: CatalogStream, the streaming noise-model fit, streamed fits."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from engine.catalog import catalog_from_arrays, open_catalog_stream, read_catalog
from engine.errors import CatalogError
from engine.population import fit, iter_fit
from engine.population.flow import FlowConfig
from engine.population.noise import NoiseModel
from engine.population.run import read_history
from engine.population.toy import make_toy_catalog

BANDS = ("sdss2010-g", "sdss2010-r", "sdss2010-i")
TOY = "engine.population.toy:ToyForwardModel"
SMALL = dict(
    members=2,
    steps=25,
    batch=128,
    selection="sdss2010-r<20.5",
    flow=FlowConfig(layers=2, hidden=16),
    val_every=5,
    population_samples=300,
    checkpoint_every=7,
    obs_cap=300,
)
STREAM = dict(chunk_rows=700, pool_chunks=3, val_cap=400, train_cap=500)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parquet_cat(tmp_path_factory):
    """A ~3500-row toy catalog as Parquet with row groups of 500 rows (40 rows without g)."""
    toy, _, _ = make_toy_catalog(4000, seed=9, bands=BANDS, cut_band="sdss2010-r")
    cat = catalog_from_arrays(list(BANDS), toy.flux, toy.flux_err, toy.z_spec)
    t = cat.to_table()
    t["mag_sdss2010-g"][:40] = 99.0
    t["flux_sdss2010-g"][:40] = np.nan
    path = tmp_path_factory.mktemp("cat") / "cat.parquet"
    t.write(path, format="parquet")
    pq.write_table(pq.read_table(path), path, row_group_size=500)
    return path


def test_stream_reads_what_read_catalog_reads(parquet_cat):
    whole = read_catalog(parquet_cat)
    n = len(whole)
    assert 3000 < n < 4000
    st = open_catalog_stream(parquet_cat, chunk_rows=700)
    assert st.chunk_sizes[:3] == [1000, 1000, 1000] and st.n_chunks == 4  # row groups of 500 merged
    rep = st.scan()
    assert rep[0].startswith(f"sdss2010-g: {n} rows, ") and "NaN/inf ×40" in rep[0]
    chunks = list(st.iter_chunks())
    flux = np.concatenate([c.flux for c in chunks])
    assert np.array_equal(flux, whole.flux, equal_nan=True)
    assert np.array_equal(np.concatenate([c.flux_err for c in chunks]), whole.flux_err, equal_nan=True)
    assert np.array_equal(np.concatenate([c.z_spec for c in chunks]), whole.z_spec, equal_nan=True)
    assert np.array_equal(np.concatenate([c.row_index for c in chunks]), whole.row_index)
    assert st.sha256 == whole.sha256 and st.bands == whole.bands


def test_stream_bad_input_is_one_line(tmp_path, parquet_cat):
    with pytest.raises(CatalogError, match=r"only Parquet catalogs can be streamed"):
        p = tmp_path / "c.ecsv"
        p.write_text("x\n1\n")
        open_catalog_stream(p)
    with pytest.raises(CatalogError, match=r"cat.parquet: no columns for band\(s\) sdss2010-z"):
        open_catalog_stream(parquet_cat, bands="sdss2010-g,sdss2010-z")
    t = pq.read_table(parquet_cat)
    e = t.column("flux_err_sdss2010-r").to_numpy().copy()
    e[2600] = -0.5  # in the third chunk
    bad = tmp_path / "neg.parquet"
    pq.write_table(t.set_column(t.column_names.index("flux_err_sdss2010-r"), "flux_err_sdss2010-r", [e]), bad,
                   row_group_size=500)
    st = open_catalog_stream(bad, chunk_rows=700)
    with pytest.raises(
        CatalogError, match=r"neg.parquet: column flux_err_sdss2010-r has 1 negative errors"
    ) as ei:
        st.scan()
    assert "\n" not in str(ei.value)
    # a band that keeps < 50 % over the whole file (but > 50 % in the first chunk)
    f = t.column("flux_sdss2010-i").to_numpy().copy()
    f[1000:] = np.nan
    half = tmp_path / "half.parquet"
    t2 = t.set_column(t.column_names.index("flux_sdss2010-i"), "flux_sdss2010-i", [f])
    t2 = t2.set_column(
        t2.column_names.index("mag_sdss2010-i"),
        "mag_sdss2010-i",
        [np.where(np.isnan(f), np.nan, t.column("mag_sdss2010-i").to_numpy())],
    )
    pq.write_table(t2, half, row_group_size=500)
    with pytest.raises(
        CatalogError, match=rf"half.parquet: band sdss2010-i .* keeps only 1000 of {t.num_rows} rows"
    ):
        open_catalog_stream(half, chunk_rows=700).scan()


def test_streaming_noise_model_agrees_with_in_memory_fit():
    cat = read_catalog("sample_data/mock_sdss/catalog.ecsv")
    ref = NoiseModel.fit(cat.flux, cat.flux_err, cat.bands)

    def chunks():
        for i in range(0, len(cat), 3001):
            yield cat.flux[i:i + 3001], cat.flux_err[i:i + 3001]

    got = NoiseModel.fit_stream(chunks, cat.bands)
    for b in cat.bands:
        r, g = ref.per_band[b], got.per_band[b]
        assert g.n_rows == r.n_rows and len(g.mag) == len(r.mag) == 20
        assert abs(g.softening / r.softening - 1) < 1e-3
        assert np.abs(np.subtract(g.mag, r.mag)).max() < 0.005  # mag
        assert np.abs(np.subtract(g.log10_sigma_median, r.log10_sigma_median)).max() < 0.005  # dex
        assert np.abs(np.subtract(g.log10_sigma_scatter, r.log10_sigma_scatter)).max() < 0.005
    f = torch.tensor(cat.flux[:2000], dtype=torch.float64)
    mu_r, s_r = ref.sigma_params(f)
    mu_g, s_g = got.sigma_params(f)
    assert float((mu_r - mu_g).abs().max()) < 0.005 and float((s_r - s_g).abs().max()) < 0.005


def test_streamed_fit_never_reads_the_catalog_whole_and_resumes_exactly(tmp_path, parquet_cat, monkeypatch):
    import engine.catalog
    import engine.population.stream as stream_mod

    def refuse(*a, **k):
        raise AssertionError("read_catalog called: the streamed fit loaded the catalog whole")

    monkeypatch.setattr(engine.catalog, "read_catalog", refuse)
    reads = []
    real_read = stream_mod.StreamingTrainer.chunk_features

    def counting(self, c):
        if c not in self._cache:
            reads.append(c)
        return real_read(self, c)

    monkeypatch.setattr(stream_mod.StreamingTrainer, "chunk_features", counting)
    a = fit(str(parquet_cat), tmp_path / "a", forward=TOY, stream="on", stream_options=STREAM, **SMALL)
    cfg = json.loads((a.path / "config.json").read_text())
    assert cfg["stream"]["chunk_rows"] == 700 and cfg["observed"]["streamed"] is True
    n = pq.ParquetFile(parquet_cat).metadata.num_rows
    assert cfg["catalog"]["n_rows"] == n and cfg["observed"]["n_rows"] == n
    assert cfg["observed"]["n_train_resident"] == 500 and cfg["observed"]["n_val_resident"] == 400
    assert cfg["observed"]["n_train"] + cfg["observed"]["n_val"] == cfg["observed"]["n_used"] > 2500
    obs = pq.read_table(a.path / "observed.parquet")
    assert obs.num_rows == 900 and sorted(set(obs.column("split").to_pylist())) == ["train", "val"]
    assert len(set(reads)) == 4, "the training batches did not come from every chunk of the file"
    hist = a.history()
    assert hist[-1]["event"] == "done" and set(a.population().column("member").to_pylist()) == {0, 1}
    nm = json.loads((a.path / "noise_model.json").read_text())
    assert nm["per_band"]["sdss2010-g"]["n_rows"] == n - 40
    # stop in the middle of member 1, resume: the same run (the pool is a function of seed and step)
    it = iter_fit(str(parquet_cat), tmp_path / "r", forward=TOY, stream="on", stream_options=STREAM, **SMALL)
    for ev in it:
        if ev["event"] == "step" and ev["member"] == 1 and ev["step"] == 11:
            break
    it.close()
    r = fit(str(parquet_cat), tmp_path / "r", forward=TOY, resume=True)

    def losses(run):
        return [
            (e["member"], e["step"], e["train_loss"], e["val_loss"])
            for e in read_history(run.path / "history.jsonl")
            if e["event"] == "step"
        ]

    assert losses(r) == losses(a)
    assert r.population().to_pydict()["log_mstar"] == a.population().to_pydict()["log_mstar"]
