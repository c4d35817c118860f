"""Run directories: files, refusal, lock, determinism, resume (in-process and after SIGKILL of the CLI)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from engine.errors import RunDirError
from engine.population import fit, iter_fit
from engine.population.flow import FlowConfig
from engine.population.run import RunLock, read_history
from engine.population.toy import ToyForwardModel, make_toy_catalog

SMALL = dict(members=2, steps=30, batch=128, selection="toy-r<20.5", flow=FlowConfig(layers=2, hidden=16),
             val_every=5, population_samples=500, checkpoint_every=7)
DERIVED = ("log_sfr_10myr", "log_sfr_100myr", "log_ssfr_100myr", "log_mformed", "mwage_gyr")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cat():
    return make_toy_catalog(600, seed=5)[0]


def _steps_by_member(hist):
    out = {}
    for e in hist:
        if e["event"] == "step":
            out.setdefault(e["member"], []).append(e["step"])
    return out


def _check_complete(run_dir, members, steps):
    hist = read_history(Path(run_dir) / "history.jsonl")
    assert hist[0]["event"] == "start" and hist[-1]["event"] == "done"
    by = _steps_by_member(hist)
    assert sorted(by) == list(range(members))
    for k in range(members):
        assert by[k] == list(range(steps)), f"member {k} history has gaps or duplicates"
    done = [e["member"] for e in hist if e["event"] == "member_done"]
    assert done == list(range(members))
    # members are sequential: all of member k's lines before member k+1's
    order = [e["member"] for e in hist if e["event"] in ("step", "member_done")]
    assert order == sorted(order)
    return hist


def test_fit_writes_the_run_format(tmp_path, cat):
    # 30 steps leave the members far from converged (validation 5x the floor), so which of them falls within
    # the default 1.5x of the best is chance; this test is about the format, the dropping has its own test
    run = fit(cat, tmp_path / "run", forward=ToyForwardModel(), converge_factor=10.0, **SMALL)
    d = run.path
    for name in ("config.json", "noise_model.json", "observed.parquet", "history.jsonl", "preview.parquet",
                 "population.parquet", "summary.json", "checkpoints/member_0.pt", "flows/member_1.pt"):
        assert (d / name).exists(), name
    assert not (d / "run.lock").exists()
    assert not list(d.glob(".*.tmp"))
    cfg = json.loads((d / "config.json").read_text())
    for key in (
        "format_version",
        "popsed_version",
        "catalog",
        "bands",
        "forward",
        "loss",
        "members",
        "steps",
        "batch",
        "seed",
        "seeds",
        "selection",
        "redshift",
        "z_max",
        "param_names",
        "bounds",
        "device",
        "versions",
    ):
        assert key in cfg, key
    assert cfg["selection"] == [{"band": "toy-r", "op": "<", "value": 20.5}] and len(cfg["seeds"]) == 2
    hist = _check_complete(d, 2, 30)
    step = next(e for e in hist if e["event"] == "step")
    for key in ("member", "step", "train_loss", "val_loss", "noise", "blur", "lr", "seconds", "time", "wall"):
        assert key in step
    pop = pq.read_table(d / "population.parquet")
    cols = pop.column_names
    assert cols[0] == "member"
    for name in ("z", "log_mstar", "tau2", *DERIVED, "mag_toy-g", "mag_toy-r", "mag_toy-i", "selected"):
        assert name in cols, name
    assert pop.num_rows == 1000 and set(pop.column("member").to_pylist()) == {0, 1}
    sel = np.asarray(pop.column("selected"))
    assert sel.dtype == bool and 0 < sel.mean() < 1
    th = np.asarray(pop.column("log_mstar"))
    assert th.min() > 8 and th.max() < 12
    obs = pq.read_table(d / "observed.parquet")
    assert set(obs.column("split").to_pylist()) <= {"train", "val", ""}
    s = run.summary()
    assert s["status"] == "complete" and s["noise_floor"] > 0
    assert set(s["percentiles"]["log_mstar"]) == {"p16", "p50", "p84"}
    assert [m["member"] for m in s["members"]] == [0, 1]
    flow = run.load_flow(1)  # weights_only loading of the saved flow
    assert flow.sample(10).shape == (10, 3)


def test_refuses_existing_run_and_foreign_dirs(tmp_path, cat):
    out = tmp_path / "run"
    fit(cat, out, forward=ToyForwardModel(), **{**SMALL, "members": 1, "steps": 3})
    with pytest.raises(RunDirError, match="already exists"):
        fit(cat, out, forward=ToyForwardModel(), **SMALL)
    run = fit(cat, out, forward=ToyForwardModel(), overwrite=True, **{**SMALL, "members": 1, "steps": 4})
    assert _steps_by_member(run.history())[0] == [0, 1, 2, 3]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="does not look like a popsed run"):
        fit(cat, foreign, forward=ToyForwardModel(), overwrite=True, **SMALL)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_lock_names_the_owner(tmp_path, cat):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            fit(cat, out, forward=ToyForwardModel(), **SMALL)
    # a child process holding the lock is reported too
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, '.');"
                              "from engine.population.run import RunLock; l = RunLock(sys.argv[1]).acquire();"
                              "print('locked', flush=True); time.sleep(30)", str(out)],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {child.pid}"):
            fit(cat, out, forward=ToyForwardModel(), resume=True, **SMALL)
    finally:
        child.kill()
        child.wait()
    fit(
        cat, out, forward=ToyForwardModel(), **{**SMALL, "members": 1, "steps": 2}
    )  # free again after the kill


def _losses(run):
    return [
        (e["member"], e["step"], e["train_loss"], e["val_loss"])
        for e in run.history()
        if e["event"] == "step"
    ]


def test_same_seed_same_run_and_resume_is_seamless(tmp_path, cat):
    a = fit(cat, tmp_path / "a", forward=ToyForwardModel(), **SMALL)
    b = fit(cat, tmp_path / "b", forward=ToyForwardModel(), **SMALL)
    assert _losses(a) == _losses(b)
    pa, pb = a.population().to_pydict(), b.population().to_pydict()
    assert pa["log_mstar"] == pb["log_mstar"]
    c = fit(cat, tmp_path / "c", forward=ToyForwardModel(), **{**SMALL, "seed": 1})
    assert _losses(c) != _losses(a)
    # stop iterating in the middle of member 1, then resume: identical to the uninterrupted run
    it = iter_fit(cat, tmp_path / "r", forward=ToyForwardModel(), **SMALL)
    for ev in it:
        if ev["event"] == "step" and ev["member"] == 1 and ev["step"] == 12:
            break
    it.close()
    assert not (tmp_path / "r" / "run.lock").exists()
    r = fit(cat, tmp_path / "r", forward=ToyForwardModel(), resume=True)
    _check_complete(r.path, 2, 30)
    assert _losses(r) == _losses(a)
    assert r.population().to_pydict()["log_mstar"] == pa["log_mstar"]
    starts = [e for e in r.history() if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed"] and starts[1]["from_member"] == 1


def test_weight_average_is_validated_kept_and_resumed(tmp_path, cat):
    """With ``ema`` the optimisation is unchanged (same training losses) but validation, the kept flows and
    the population use the weight average; an interrupted run resumes to the identical result."""
    plain = fit(cat, tmp_path / "plain", forward=ToyForwardModel(), ema=0.0, **SMALL)
    a = fit(cat, tmp_path / "a", forward=ToyForwardModel(), ema=0.8, **SMALL)
    la, lp = _losses(a), _losses(plain)
    assert [x[:3] for x in la] == [x[:3] for x in lp]
    assert [x[3] for x in la if x[3] is not None] != [x[3] for x in lp if x[3] is not None]
    ck = torch.load(a.path / "checkpoints" / "member_0.pt", weights_only=True)
    avg, cur = ck["ema_flow"], ck["flow"]
    assert avg.keys() == cur.keys() and any(not torch.equal(avg[k], cur[k]) for k in avg)
    it = iter_fit(cat, tmp_path / "r", forward=ToyForwardModel(), ema=0.8, **SMALL)
    for ev in it:
        if ev["event"] == "step" and ev["member"] == 0 and ev["step"] == 17:
            break
    it.close()
    r = fit(cat, tmp_path / "r", forward=ToyForwardModel(), resume=True)
    assert _losses(r) == la
    assert r.population().to_pydict()["log_mstar"] == a.population().to_pydict()["log_mstar"]


def _write_catalog_file(path, n=800, seed=11):
    from engine.catalog import catalog_from_arrays

    bands = ("sdss2010-g", "sdss2010-r", "sdss2010-i")
    toy, _, _ = make_toy_catalog(n, seed=seed, bands=bands, cut_band="sdss2010-r")
    cat = catalog_from_arrays(list(bands), toy.flux, toy.flux_err, toy.z_spec)
    cat.to_table().write(path, format="ascii.ecsv", overwrite=True)
    return path


def _popsed(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "engine.cli", *args], env=env,
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_cli_sigkill_then_resume(tmp_path):
    catalog = _write_catalog_file(tmp_path / "cat.ecsv")
    out = tmp_path / "run"
    args = [
        "fit", str(catalog), "--out", str(out), "--forward", "engine.population.toy:ToyForwardModel",
        "--members", "2", "--steps", "120", "--batch", "128", "--selection", "sdss2010-r<20.5",
        "--checkpoint-every", "10", "--device", "cpu", "--no-progress",
    ]
    p = _popsed(*args)
    hist_path = out / "history.jsonl"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline:
        if p.poll() is not None:
            break
        hist = read_history(hist_path)
        steps = [e for e in hist if e["event"] == "step"]
        if steps and (steps[-1]["member"] == 1 or steps[-1]["step"] >= 70):
            p.send_signal(signal.SIGKILL)
            killed_at = (steps[-1]["member"], steps[-1]["step"])
            break
        time.sleep(0.05)
    p.wait()
    assert killed_at is not None, f"fit ended before it could be killed: {p.stderr.read()[-2000:]}"
    assert (out / "run.lock").exists()  # left behind by the kill; the flock is gone with the process
    # without --resume the directory is refused
    q = _popsed(*args)
    _, err = q.communicate(timeout=120)
    assert q.returncode == 2 and "already exists" in err
    r = _popsed(*args, "--resume")
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err[-3000:]
    _check_complete(out, 2, 120)
    assert (out / "population.parquet").exists() and (out / "summary.json").exists()
    assert not (out / "run.lock").exists()
    s = _popsed("summary", str(out), "--json")
    so, se = s.communicate(timeout=60)
    assert s.returncode == 0, se
    summ = json.loads(so)
    assert summ["status"] == "complete" and "log_mstar" in summ["percentiles"]
    t = _popsed("summary", str(out))
    to, _ = t.communicate(timeout=60)
    assert "log_mstar" in to and "members:" in to
