"""A rejected ``popsed fit`` leaves nothing on disk, and the corrected rerun into the same ``--out`` works;
members are reported converged only against the noise floor and a plateau."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from engine.errors import RunDirError
from engine.population import fit
from engine.population.flow import FlowConfig
from engine.population.toy import ToyCatalog, ToyForwardModel, make_toy_catalog

REPO = Path(__file__).resolve().parents[1]
TOY = "engine.population.toy:ToyForwardModel"
TINY = ["--forward", TOY, "--members", "2", "--steps", "30", "--batch", "128", "--device", "cpu",
        "--no-progress", "--selection", "sdss2010-r<20.5", "--val-every", "5"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _popsed(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    """A good ECSV catalog of the toy model in SDSS band names, and bad ones derived from it."""
    from engine.catalog import catalog_from_arrays

    d = tmp_path_factory.mktemp("catalogs")
    bands = ("sdss2010-g", "sdss2010-r", "sdss2010-i")
    toy, _, _ = make_toy_catalog(500, seed=11, bands=bands, cut_band="sdss2010-r")
    good = catalog_from_arrays(list(bands), toy.flux, toy.flux_err, toy.z_spec).to_table()
    good.write(d / "good.ecsv", format="ascii.ecsv")
    Table({"id": np.arange(200), "ra": np.zeros(200)}).write(d / "no_bands.ecsv", format="ascii.ecsv")
    good[:5].write(d / "few_rows.ecsv", format="ascii.ecsv")
    nan = good.copy()
    for name in nan.colnames:
        if name.endswith("sdss2010-i"):
            nan[name] = np.nan
    nan.write(d / "nan_band.ecsv", format="ascii.ecsv")
    return d


BAD = {
    "missing file": ("missing.ecsv", []),
    "no band columns": ("no_bands.ecsv", []),
    "too few rows": ("few_rows.ecsv", []),
    "NaN-only band": ("nan_band.ecsv", []),
    "unparsable selection": ("good.ecsv", ["--selection", "sdss2010-r<<19"]),
    "selection on a band not fitted": ("good.ecsv", ["--selection", "sdss2010-z<19"]),
    "band not in the catalog": ("good.ecsv", ["--bands", "sdss2010-g,sdss2010-z"]),
    "unknown forward model": ("good.ecsv", ["--forward", "nonsense"]),
    "forward module missing": ("good.ecsv", ["--forward", "no_such_module:Factory"]),
    "unknown device": ("good.ecsv", ["--device", "tpu"]),
    "option out of range": ("good.ecsv", ["--checkpoint-every", "0"]),
    "members out of range": ("good.ecsv", ["--members", "0"]),
    "negative learning rate": ("good.ecsv", ["--lr", "-1"]),
}


def _refused(catalogs, out, kind) -> None:
    name, extra = BAD[kind]
    r = _popsed("fit", str(catalogs / name), "--out", str(out), *TINY, *extra)
    assert r.returncode == 2, (kind, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("popsed fit: error: "), (kind, r.stderr[-2000:])


def test_rejected_fits_leave_nothing_and_the_corrected_rerun_works(catalogs, tmp_path):
    out = tmp_path / "run"
    for kind in BAD:
        _refused(catalogs, out, kind)
        assert not out.exists(), f"{kind}: {sorted(p.name for p in out.iterdir())}"
    # --resume of a run that never started says so
    r = _popsed("fit", str(catalogs / "good.ecsv"), "--out", str(out), *TINY, "--resume")
    assert r.returncode == 2 and "nothing to resume" in r.stderr and not out.exists(), r.stderr
    r = _popsed("fit", str(catalogs / "good.ecsv"), "--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "config.json").is_file() and (out / "summary.json").is_file()
    # 30 steps: a population is written, but no member is called converged, and the last line says so
    last = r.stdout.strip().splitlines()[-1]
    assert last == (f"run complete: {out} (2 members: 0 converged, 2 not converged — see popsed summary "
                    f"{out})"), last
    summ = json.loads((out / "summary.json").read_text())
    assert summ["converged"] == [] and summ["kept"] and summ["noise_floor"] > 0
    for m in summ["members"]:
        # validations at steps 20, 25 and 29 in the last third: too few to tell a plateau from scatter
        assert m["status"] == "not_converged" and m["plateau"] is None, m
        assert "too few validations in the last third" in m["note"], m["note"]
    s = _popsed("summary", str(out))
    assert s.returncode == 0, s.stderr
    assert "noise floor" in s.stdout and "x floor" in s.stdout and "not_converged" in s.stdout, s.stdout


def test_rejected_fit_into_an_existing_directory_leaves_it_unchanged(catalogs, tmp_path):
    # an empty directory, and one holding the empty checkpoints/ and flows/ an older popsed left behind
    for name, subdirs in (("empty", ()), ("leftovers", ("checkpoints", "flows"))):
        out = tmp_path / name
        out.mkdir()
        for sd in subdirs:
            (out / sd).mkdir()
        _refused(catalogs, out, "band not in the catalog")
        assert sorted(p.name for p in out.iterdir()) == sorted(subdirs)
        r = _popsed("fit", str(catalogs / "good.ecsv"), "--out", str(out), *TINY, "--members", "1",
                    "--steps", "3")
        assert r.returncode == 0 and (out / "config.json").is_file(), r.stderr[-3000:]


def test_a_directory_with_other_files_is_refused_and_kept(catalogs, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    (out / "flows").mkdir()
    r = _popsed("fit", str(catalogs / "good.ecsv"), "--out", str(out), *TINY)
    assert (r.returncode == 2 and "not a popsed run directory" in r.stderr
            and "notes.txt" in r.stderr), r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["flows", "notes.txt"]
    assert (out / "notes.txt").read_text() == "precious"


def test_in_process_refusals_create_nothing(tmp_path):
    cat = make_toy_catalog(300, seed=3)[0]
    out = tmp_path / "r"
    with pytest.raises(ValueError, match="not among the fitted bands"):
        fit(cat, out, forward=ToyForwardModel(), members=1, steps=2, selection="toy-z<20")
    assert not out.exists()
    with pytest.raises(RunDirError, match="nothing to resume"):
        fit(cat, out, forward=ToyForwardModel(), resume=True)
    assert not out.exists()


def test_a_fit_of_a_catalog_the_model_cannot_reproduce_is_not_converged(tmp_path):
    # every galaxy ten magnitudes brighter than the toy model can make one: the loss stays huge
    cat = make_toy_catalog(400, seed=7)[0]
    bad = ToyCatalog(cat.bands, cat.flux * 1e4, cat.flux_err * 1e4, z_spec=cat.z_spec, truth=cat.truth)
    run = fit(bad, tmp_path / "r", forward=ToyForwardModel(), members=2, steps=30, batch=128, val_every=5,
              flow=FlowConfig(layers=2, hidden=16), population_samples=200)
    s = run.summary()
    assert s["converged"] == [] and len(s["kept"]) >= 1
    for m in s["members"]:
        assert (m["status"] == "not_converged" and m["floor_ratio"] > 10
                and "x the noise floor" in m["note"]), m
