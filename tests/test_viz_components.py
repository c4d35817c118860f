"""popsed_viz components in a Python process.

Each view renders alone, streams and filters; bad input gives messages.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest

pn = pytest.importorskip("panel")
from bokeh.document import Document  # noqa: E402

from popsed_viz.app import Dashboard, discover_runs  # noqa: E402
from popsed_viz.jobs import FitJob, fit_command, safe_filename  # noqa: E402
from popsed_viz.monitor import TrainingMonitor, format_duration  # noqa: E402
from popsed_viz.photometry import PhotometryView  # noqa: E402
from popsed_viz.population import PopulationView, converged_members, member_mask  # noqa: E402

from synthetic_run import write_synthetic_run  # noqa: E402


@pytest.fixture()
def run(tmp_path):
    return write_synthetic_run(tmp_path / "run", n_population=4000, members=3)


def render(obj):
    doc = Document()
    if isinstance(obj, pn.template.base.BaseTemplate):
        obj.server_doc(doc)
        return doc, None
    model = pn.panel(obj).get_root(doc)
    return doc, model


def image_sums(model):
    """Sum of every rasterised image drawn under a bokeh model."""
    out = []
    for m in model.select({"type": __import__("bokeh").models.ColumnDataSource}):
        if "image" in m.data:
            out.append(float(sum(np.nansum(np.asarray(a, dtype=float)) for a in m.data["image"])))
    return out


def test_population_view_renders_and_z_cut_changes_sfms(run):
    v = PopulationView(run)
    assert v.param.member.objects == ["pooled", "member 0", "member 1", "member 2"]
    assert v.z_range == (0.0, 0.65)
    pane = pn.pane.HoloViews(v.sfms())
    doc, model = render(pane)
    before = image_sums(model)
    assert before and before[0] > 0
    v.z_range = (0.1, 0.2)
    after = image_sums(model)
    assert after and after[0] < before[0]  # fewer samples in the cut → a different raster
    _, idx = v._selection(v.z_range, v.member)
    pop = v.reader.population()
    z = pop["z"].to_numpy()[idx]
    assert z.min() >= 0.1 and z.max() <= 0.2
    v.member = "member 1"
    _, idx1 = v._selection(v.z_range, v.member)
    assert set(pop["member"].to_numpy()[idx1]) == {1}
    render(v.panel())  # every view (incl. the corner tab) renders alone, as in a notebook
    render(v.corner())


def test_population_view_without_population(tmp_path):
    run = write_synthetic_run(tmp_path / "run", complete=False, lock=True)
    v = PopulationView(run)
    render(v.panel())
    assert "running" in v.message or "population" in v.message


def test_photometry_view_switches_from_preview_to_population(tmp_path):
    run = write_synthetic_run(tmp_path / "run", complete=False)
    v = PhotometryView(run)
    render(v.panel())
    df, caption = v._predicted(v.member, v.source)
    assert "preview" in caption and len(df) == 300
    # the fit ends: population.parquet appears (newer than the preview)
    time.sleep(0.02)
    full = write_synthetic_run(tmp_path / "full")
    os.replace(full / "population.parquet", run / "population.parquet")
    assert v.refresh()
    df, caption = v._predicted(v.member, v.source)
    assert "final population" in caption


def test_training_monitor_streams_new_lines(tmp_path):
    run = write_synthetic_run(tmp_path / "run", members=2, steps=10, complete=False, lock=True)
    lines = (run / "history.jsonl").read_text().splitlines(keepends=True)
    (run / "history.jsonl").write_text("".join(lines[:16]))  # start + 15 of the 20 steps
    m = TrainingMonitor(run)
    render(m.panel())
    assert m.n_steps == 15 and len(m.buffer.data) == 15
    with open(run / "history.jsonl", "a") as fh:
        for i in range(10, 15):
            fh.write(json.dumps({"event": "step", "member": 1, "step": i, "train_loss": 0.1, "val_loss": None,
                                 "noise": 1.0, "blur": None, "lr": 1e-3, "seconds": 0.1, "time": 1.0 + i,
                                 "wall": 0.0}) + "\n")
        fh.write('{"event": "step", "member": 1, "step": 15, "train')  # half-written line
    assert m.refresh()
    assert m.n_steps == 20 and len(m.buffer.data) == 20
    assert not m.refresh()  # the partial line waits
    assert np.isfinite(m.steps_per_s) and m.eta_s >= 0
    assert m.progress == 100 and m.eta_s == 0  # 20 of 20 steps
    with open(run / "history.jsonl", "a") as fh:
        fh.write('_loss": 0.1}\n')  # the half line completes (missing fields are NaN)
    assert m.refresh() and m.n_steps == 21


def test_training_monitor_shows_the_noise_floor_and_honest_status(tmp_path):
    run = write_synthetic_run(tmp_path / "run", members=2, steps=10)
    lines = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    lines[0]["noise_floor"] = 0.24
    (run / "history.jsonl").write_text("".join(json.dumps(ev) + "\n" for ev in lines))
    (run / "summary.json").write_text(json.dumps({"members": [
        {"member": 0, "status": "not_converged", "best_val_loss": 1.85,
         "note": "validation loss 1.85 is 7.7x the noise floor 0.24"},
        {"member": 1, "status": "converged", "best_val_loss": 0.26}]}))
    m = TrainingMonitor(run)
    assert m.noise_floor == 0.24
    overlay = m._loss_overlay(m.buffer.data)
    floor = [c for c in overlay if c.label == "noise floor"]
    assert len(floor) == 1 and set(floor[0].dimension_values(1)) == {0.24}
    assert "member 0: **⚠ not converged**" in m.members_text and "7.7x the noise floor" in m.members_text
    assert "member 1: **converged**" in m.members_text
    # while running, a member_done event only says the member finished
    (run / "summary.json").unlink()
    (run / "history.jsonl").write_text("".join(json.dumps(ev) + "\n" for ev in lines[:-1]))
    m = TrainingMonitor(run)
    assert "converged" not in m.members_text and m.members_text.count("**finished**") == 2


def test_training_monitor_follows_a_restarted_run(tmp_path):
    run = write_synthetic_run(tmp_path / "run", members=1, steps=10)
    m = TrainingMonitor(run)
    assert m.n_steps == 10 and m.phase == "done" and m.progress == 100
    write_synthetic_run(tmp_path / "run", members=1, steps=3, complete=False)  # --overwrite
    m.refresh()
    assert m.n_steps == 3 and len(m.buffer.data) == 3


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt", "partial", "garbage_history"])
def test_dashboard_bad_input_shows_a_message(tmp_path, kind):
    path = tmp_path / "run"
    if kind == "empty":
        path.mkdir()
    elif kind == "corrupt":
        write_synthetic_run(path)
        (path / "config.json").write_text("{")
        (path / "population.parquet").write_bytes(b"\x00" * 100)
        (path / "observed.parquet").write_text("nope")
    elif kind == "partial":
        write_synthetic_run(path, complete=False, lock=True)
    elif kind == "garbage_history":
        path.mkdir()
        (path / "history.jsonl").write_bytes(b"\xff\xfe garbage\n{]\n")
    d = Dashboard(path, runs_dir=tmp_path / "runs")
    render(d.panel())
    render(d.template())
    d.refresh()
    expected = {"missing": "not found", "empty": "not a popsed run", "corrupt": "corrupt",
                "partial": "in progress", "garbage_history": "stopped"}[kind]
    assert expected in d.status_text
    if kind in ("missing", "empty", "corrupt"):
        assert d.status_level == "danger"


def test_dashboard_open_run_and_sessions_do_not_interfere(tmp_path, run):
    a = Dashboard(run, runs_dir=tmp_path / "runs")
    b = Dashboard(run, runs_dir=tmp_path / "runs")
    render(a.template())
    render(b.template())
    a.z_slider.value = (0.2, 0.3)
    assert a.population.z_range == (0.2, 0.3)
    assert b.population.z_range == (0.0, 0.65)
    a.member_select.value = "member 2"
    assert a.photometry.member == "member 2" and b.photometry.member == "pooled"
    a.open_run(tmp_path / "nowhere")
    assert "not found" in a.status_text and "complete" in b.status_text
    a.open_run(run)
    assert "complete" in a.status_text


def test_discover_runs(tmp_path):
    write_synthetic_run(tmp_path / "runs" / "a", truth=False)
    write_synthetic_run(tmp_path / "runs" / "b", truth=False)
    (tmp_path / "runs" / "junk").mkdir()
    names = sorted(p.name for p in discover_runs(tmp_path / "runs"))
    assert names == ["a", "b"]
    assert discover_runs(tmp_path / "absent") == []


def test_fit_job_command_and_stop(tmp_path):
    cmd = fit_command("cat.ecsv", tmp_path / "r", steps=5, members=2, batch=128)
    assert cmd[1:5] == ["-m", "engine.cli", "fit", "cat.ecsv"]
    assert cmd[cmd.index("--steps") + 1] == "5" and cmd[cmd.index("--members") + 1] == "2"
    assert safe_filename("../../etc/pass wd.csv") == "pass_wd.csv"
    job = FitJob("cat.ecsv", tmp_path / "r")
    job.cmd = [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(60)"]
    job.start()
    assert job.running
    text, level = job.describe()
    assert "running" in text
    t = time.time()
    job.stop(timeout=5)
    assert not job.running and time.time() - t < 15
    text, level = job.describe()
    assert "stopped" in text and level == "warning"


def test_helpers():
    assert format_duration(None) == "—"
    assert format_duration(75) == "1 min 15 s"
    assert format_duration(7300).startswith("2 h")
    members = np.array([0, 1, 2, 1])
    assert member_mask(members, "member 1").tolist() == [False, True, False, True]
    assert isinstance(member_mask(members, "pooled"), slice)
    assert member_mask(members, "pooled", [0, 2]).tolist() == [True, False, True, False]
    assert converged_members({"members": [{"member": 0, "status": "converged"},
                                          {"member": 1, "status": "diverged"}]}) == [0]
    assert converged_members(None) is None
    # summaries with "kept": the pooled members are the kept ones, converged or not
    assert converged_members({"members": [{"member": 0, "status": "not_converged", "kept": True},
                                          {"member": 1, "status": "not_converged", "kept": False},
                                          {"member": 2, "status": "converged", "kept": True}]}) == [0, 2]


def test_dashboard_upload_and_fit_guards(tmp_path, run):
    d = Dashboard(run, runs_dir=tmp_path / "runs")
    d.catalog_choice.value = "upload"
    assert d.start_fit() is None and "Upload a catalog first" in d.job_text
    d.upload.filename = "../evil name.txt"
    d.upload.value = b"x"
    assert "Unsupported catalog file" in d.job_text and d.job_level == "danger"
    d.upload.filename = "../../my cat.csv"
    d.upload.value = b"mag_sdss2010-r\n18.0\n"
    saved = tmp_path / "runs" / "uploads" / "my_cat.csv"
    assert saved.read_bytes() == b"mag_sdss2010-r\n18.0\n"
    assert d.catalog_choice.value == "upload" and "Uploaded" in d.job_text
    d.stop_fit()
    assert "No fit is running" in d.job_text


def test_dashboard_catalog_options_become_fit_options(tmp_path):
    """The upload's catalog options are the options of ``popsed fit`` (column map, flux unit, bands,
    selection, redshift), and every offered flux unit is one the catalog reader knows."""
    from engine.catalog.units import flux_unit_factor
    from popsed_viz.app import FLUX_UNITS

    for unit in FLUX_UNITS[1:]:
        assert flux_unit_factor(unit) > 0
    d = Dashboard(None, runs_dir=tmp_path / "runs")
    assert d.catalog_args() == []  # defaults: nothing passed
    d.catalog_choice.value = "upload"
    d.colmap_upload.filename = "map.yml"
    d.colmap_upload.value = b"bands: {}\n"
    d.bands_input.value = "sdss2010-u,sdss2010-r"
    d.flux_unit_input.value = "uJy"
    d.selection_input.value = "sdss2010-r<17.77"
    d.redshift_input.value = "free"
    args = d.catalog_args()
    saved = tmp_path / "runs" / "uploads" / "map.yml"
    assert saved.read_bytes() == b"bands: {}\n"
    assert args == ["--bands", "sdss2010-u,sdss2010-r", "--columns", str(saved), "--flux-unit", "uJy",
                    "--selection", "sdss2010-r<17.77", "--redshift", "free"]
    from engine.cli import build_parser

    ns = build_parser(["fit"]).parse_args(["fit", "cat.csv", "--out", "run", *args])  # all valid fit options
    assert ns.flux_unit == "uJy" and ns.redshift == "free" and ns.columns == str(saved)
