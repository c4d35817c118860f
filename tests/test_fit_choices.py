"""What ``popsed fit`` decides from the catalog when the user leaves it open (redshift mode, selection), the
notices that say so, and the catalog options (column map, flux unit) that a fit records and resumes with."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from engine.population.choices import catalog_selection, estimate_selection, resolve_redshift

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "mock_sdss" / "catalog.ecsv"
BANDS = ["sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z"]


def popsed(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def small_sample(n: int = 600) -> Table:
    t = Table.read(SAMPLE)
    return t[:n]


def test_redshift_auto_is_observed_only_when_every_row_has_a_usable_spec_z():
    z = np.array([0.1, 0.2, 0.3])
    assert resolve_redshift("auto", z, (0.0, 0.65))[0] == "observed"
    mode, notice = resolve_redshift("auto", np.array([0.1, np.nan, 0.3]), (0.0, 0.65))
    assert mode == "free" and "1 of 3 rows have no spec-z" in notice
    mode, notice = resolve_redshift("auto", np.array([0.1, 0.9]), (0.0, 0.65))
    assert mode == "free" and "1 of 2" in notice  # outside the model's range
    assert resolve_redshift("auto", None, (0.0, 0.65))[0] == "free"
    assert resolve_redshift("free", z, (0.0, 0.65)) == ("free", None)
    assert resolve_redshift("auto", z, (0.0, 0.65), streamed=True)[0] == "free"


def test_magnitude_limit_is_found_in_the_band_that_is_cut():
    rng = np.random.default_rng(1)
    # galaxy counts rising towards faint magnitudes (dN/dm ∝ 10^{0.4 m}), cut at r = 19.5 after noise
    r = 14 + np.log10(1 + rng.uniform(0, 10 ** (0.4 * 6.5) - 1, 40000)) / 0.4
    r = r + rng.normal(0, 0.02, r.size)
    keep = r < 19.5
    g = r + rng.normal(0.8, 0.3, r.size)
    flux = 10 ** (-0.4 * (np.stack([g, r], 1)[keep] - 22.5))
    lim = estimate_selection(flux, ["sdss2010-g", "sdss2010-r"])
    assert lim is not None and lim.band == "sdss2010-r" and abs(lim.mag - 19.5) < 0.02
    assert "--selection 'sdss2010-r<19.50'" in lim.notice()
    # a sample with no cut (Gaussian magnitudes) has none
    flux = 10 ** (-0.4 * (rng.normal(18, 1, (5000, 2)) - 22.5))
    assert estimate_selection(flux, ["sdss2010-g", "sdss2010-r"]) is None


def test_catalog_selection_from_metadata():
    assert catalog_selection({"selection": "sdss2010-r<19.8"}) == "sdss2010-r<19.8"
    assert catalog_selection({}) is None and catalog_selection(None) is None


def test_fit_applies_a_mock_catalogs_own_selection_and_its_spec_z(tmp_path):
    t = small_sample()
    assert t.meta["selection"] == "sdss2010-r<19.8"  # popsed mock writes it
    t.write(tmp_path / "cat.ecsv")
    res = popsed("fit", tmp_path / "cat.ecsv", "--out", tmp_path / "run", "--members", 1, "--steps", 3,
                 "--batch", 256, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "selection: sdss2010-r<19.8 (from the catalog's metadata)" in res.stderr
    assert "redshift: observed (every one of the 600 rows has a spec-z" in res.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["selection"] == [{"band": "sdss2010-r", "op": "<", "value": 19.8}]
    assert cfg["redshift"] == "observed" and cfg["train"]["redshift"] == "observed"
    assert len(cfg["notices"]) == 2
    # without the metadata and a spec-z missing: no selection (a suggestion) and free redshifts
    t.meta.clear()
    t["z_spec"][5] = np.nan
    t.write(tmp_path / "cat2.ecsv")
    res = popsed("fit", tmp_path / "cat2.ecsv", "--out", tmp_path / "run2", "--members", 1, "--steps", 3,
                 "--batch", 256, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert ("looks magnitude-limited in sdss2010-r" in res.stderr
            and "--selection 'sdss2010-r<19.8" in res.stderr)
    assert "redshift: free (photometric redshifts: 1 of 600 rows have no spec-z" in res.stderr
    cfg = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert cfg["selection"] == [] and cfg["redshift"] == "free"


def test_fit_reads_a_catalog_through_a_column_map_and_resumes_with_it(tmp_path):
    src = small_sample()
    t = Table()
    for b in BANDS:  # an astronomer's table: letter columns with magnitudes, no units
        letter = b[-1]
        t[letter] = src[f"mag_{b}"]
        t[f"{letter}_err"] = src[f"mag_err_{b}"]
    t["zspec"] = src["z_spec"]
    ok = np.all([np.isfinite(t[c]) for c in t.colnames], axis=0)
    t[ok].write(tmp_path / "cat.csv")
    cmap = {"bands": {b: {"mag": b[-1], "mag_err": f"{b[-1]}_err"} for b in BANDS}, "z_spec": "zspec"}
    (tmp_path / "map.json").write_text(json.dumps(cmap))
    # without the map the letter columns are refused with a hint; --bands u suggests the speclite name
    res = popsed("fit", tmp_path / "cat.csv", "--out", tmp_path / "run", "--members", 1, "--steps", 2)
    assert res.returncode == 2 and "--bands" in res.stderr and not (tmp_path / "run").exists()
    res = popsed("fit", tmp_path / "cat.csv", "--out", tmp_path / "run", "--bands", "u", "--members", 1)
    assert res.returncode == 2 and "sdss2010-u" in res.stderr
    args = ["fit", "cat.csv", "--out", "run", "--members", 1, "--steps", 4, "--batch", 256, "--no-progress",
            "--selection", "sdss2010-r<19.8", "--columns", "map.json", "--checkpoint-every", 2]
    res = popsed(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["catalog"]["read_options"] == {"columns": str((tmp_path / "map.json").resolve())}
    assert cfg["bands"] == BANDS and cfg["redshift"] == "observed"
    # --resume reads the catalog the same way (from another directory: the map's path was made absolute)
    other = tmp_path / "elsewhere"
    other.mkdir()
    res = popsed("fit", tmp_path / "cat.csv", "--out", tmp_path / "run", "--resume", "--no-progress",
                 cwd=other)
    assert res.returncode == 0, res.stderr


def test_fit_refuses_unitless_fluxes_without_a_flux_unit(tmp_path):
    src = small_sample()
    t = Table()
    for b in BANDS:
        t[f"flux_{b}"] = np.asarray(src[f"flux_{b}"])  # no unit
        t[f"flux_err_{b}"] = np.asarray(src[f"flux_err_{b}"])
    t.write(tmp_path / "cat.ecsv")
    res = popsed("fit", tmp_path / "cat.ecsv", "--out", tmp_path / "run", "--members", 1, "--steps", 2)
    assert res.returncode == 2 and "unit" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    res = popsed("fit", tmp_path / "cat.ecsv", "--out", tmp_path / "run", "--members", 1, "--steps", 2,
                 "--batch", 256, "--flux-unit", "nanomaggy", "--no-progress")
    assert res.returncode == 0, res.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["catalog"]["read_options"] == {"flux_unit": "nanomaggy"}


@pytest.mark.parametrize("bad", ["--extinction", "--format"])
def test_fit_catalog_option_errors_are_one_line(tmp_path, bad):
    value = "sdss2010-r" if bad == "--extinction" else "votable"
    res = popsed("fit", SAMPLE, "--out", tmp_path / "run", bad, value, "--members", 1, "--steps", 2)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "run").exists()


def test_auto_forward_model_says_why_it_fell_back_to_the_sps():
    from engine.population.forward import make_forward_model

    _, desc = make_forward_model("auto", ["sdss2010-r", "twomass-J"], "cpu")
    assert desc["kind"] == "sps" and "twomass-J" in desc["fallback"]
    _, desc = make_forward_model("auto", ["sdss2010-g", "sdss2010-r"], "cpu")
    assert desc["kind"] == "emulator" and "fallback" not in desc
