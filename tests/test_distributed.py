"""Ensembles and SPS training sets on dask.distributed.

(engine.population.distributed, engine.emulator.dataset)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from engine.population import Run, fit, iter_fit
from engine.population.flow import FlowConfig
from engine.population.run import read_history
from engine.population.toy import ToyForwardModel, make_toy_catalog

distributed = pytest.importorskip("distributed")

BANDS = ("sdss2010-g", "sdss2010-r", "sdss2010-i")
TOY = "engine.population.toy:ToyForwardModel"
SMALL = dict(
    members=2,
    steps=40,
    batch=128,
    selection="sdss2010-r<20.5",
    flow=FlowConfig(layers=2, hidden=16),
    val_every=5,
    population_samples=400,
    checkpoint_every=7,
    redshift="free",  # the toy catalog has spec-z: auto would fit them
    entropy=0.0,
)
# marker of the "lost worker" test: a worker that builds the dying forward model while it is absent exits
DIE_MARKER = os.environ.setdefault("POPSED_TEST_DIE_MARKER",
                                   os.path.join(tempfile.gettempdir(), f"popsed-die-{os.getpid()}"))


def dying_toy(bands, device=None, z_max=0.65):
    """A forward-model factory whose first use on a dask worker (per marker file) kills that worker."""
    try:
        distributed.get_worker()
        on_worker = True
    except ValueError:
        on_worker = False
    if on_worker and not os.path.exists(DIE_MARKER):
        Path(DIE_MARKER).write_text("died once\n")
        os._exit(1)
    return ToyForwardModel(bands, device=device, z_max=z_max)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cat():
    from engine.catalog import catalog_from_arrays

    toy, _, _ = make_toy_catalog(600, seed=5, bands=BANDS, cut_band="sdss2010-r")
    return catalog_from_arrays(list(BANDS), toy.flux, toy.flux_err, toy.z_spec)


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes (shared by the tests that do not start their own)."""
    import logging

    lc = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR)
    client = distributed.Client(lc)
    yield client
    client.close()
    lc.close()


def _steps(hist):
    out: dict[int, list[int]] = {}
    for e in hist:
        if e["event"] == "step":
            out.setdefault(e["member"], []).append(e["step"])
    return out


def _losses(run_dir):
    return sorted((e["member"], e["step"], e["train_loss"], e["val_loss"])
                  for e in read_history(Path(run_dir) / "history.jsonl") if e["event"] == "step")


def _check_all_members(run_dir, members, steps):
    d = Path(run_dir)
    hist = read_history(d / "history.jsonl")
    assert hist[0]["event"] == "start" and hist[-1]["event"] == "done"
    by = _steps(hist)
    assert sorted(by) == list(range(members)), "a member is missing from history.jsonl"
    for k in range(members):
        assert sorted(by[k]) == list(range(steps)), f"member {k}: history has gaps or duplicates"
        assert (d / "flows" / f"member_{k}.pt").is_file() and (d / "checkpoints" / f"member_{k}.pt").is_file()
    assert sorted(e["member"] for e in hist if e["event"] == "member_done") == list(range(members))
    pop = pq.read_table(d / "population.parquet")
    assert set(pop.column("member").to_pylist()) == set(range(members)), (
        "a member is missing from population.parquet"
    )
    assert not (d / "run.lock").exists() and not list(d.glob(".*.tmp"))
    return hist


def test_two_workers_train_two_members_concurrently(tmp_path, cat):
    """`workers=2`: a local cluster of two processes trains both members at once; every event reaches
    history.jsonl while the fit runs; the result equals the sequential fit member by member."""
    out = tmp_path / "dist"
    seen_live = set()
    for ev in iter_fit(cat, out, forward=TOY, workers=2, **SMALL):
        if ev["event"] == "step" and ev["member"] not in seen_live:
            lines = (out / "history.jsonl").read_text().splitlines()
            assert json.loads(lines[-1]) == json.loads(json.dumps(ev)), (
                "the event is not in history.jsonl yet"
            )
            seen_live.add(ev["member"])
    assert seen_live == {0, 1}
    hist = _check_all_members(out, 2, SMALL["steps"])
    walls = {k: [e["wall"] for e in hist if e["event"] == "step" and e["member"] == k] for k in (0, 1)}
    # concurrent: each member's training interval overlaps the other's
    assert min(walls[0][-1], walls[1][-1]) > max(walls[0][0], walls[1][0]), walls
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["execution"]["workers"] == 2
    seq = fit(cat, tmp_path / "seq", forward=TOY, **SMALL)
    assert _losses(out) == _losses(seq.path), (
        "a member trained on a worker differs from the same member in-process"
    )
    a, b = Run(out).population().to_pydict(), seq.population().to_pydict()
    assert a["log_mstar"] == b["log_mstar"]


def test_failed_member_is_reported_then_resumed(tmp_path, cat, monkeypatch):
    """A member whose task keeps raising is retried, then reported (event, summary status and note),
    never silently dropped; --resume trains it."""
    import logging

    from engine.population.trainer import Trainer

    real = Trainer.iter_member

    def broken(self, ms):
        if ms.member == 1:
            raise RuntimeError("injected failure of member 1")
        return real(self, ms)

    monkeypatch.setattr(Trainer, "iter_member", broken)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=logging.CRITICAL) as lc, distributed.Client(lc) as client:
        run = fit(cat, tmp_path / "r", forward=TOY, client=client, retries=1, **SMALL)
        hist = run.history()
        s = run.summary()
        assert s["failed"] == [1] and 1 in s["dropped"]
        m1 = next(m for m in s["members"] if m["member"] == 1)
        assert m1["status"] == "failed" and "injected failure of member 1" in m1["note"]
        assert any("failed on the cluster" in n and "injected failure" in n for n in s["notes"])
        failed = [e for e in hist if e["event"] == "member_failed"]
        assert len(failed) == 1 and failed[0]["member"] == 1 and failed[0]["attempts"] == 2
        assert [e["member"] for e in hist if e["event"] == "member_retry"] == [1]
        assert set(run.population().column("member").to_pylist()) == {0}
        monkeypatch.setattr(Trainer, "iter_member", real)
        run = fit(cat, tmp_path / "r", forward=TOY, client=client, resume=True)
    _check_all_members(run.path, 2, SMALL["steps"])
    assert "failed" not in run.summary()


def test_lost_worker_member_is_retried(tmp_path, cat, cluster):
    """A worker process that dies while building member's model: dask reschedules the task; the member
    is in the run, with a member_retry event and a gap-free history."""
    Path(DIE_MARKER).unlink(missing_ok=True)
    try:
        run = fit(cat, tmp_path / "r", forward="test_distributed:dying_toy", client=cluster,
                  **{**SMALL, "members": 1, "steps": 15})
    finally:
        died = Path(DIE_MARKER).exists()
        Path(DIE_MARKER).unlink(missing_ok=True)
    assert died
    _check_all_members(run.path, 1, 15)


def test_cli_fit_on_a_scheduler_and_resume(tmp_path, cat, cluster):
    """`popsed fit --scheduler ADDR`; a kill-free interruption (stop iterating) then
    `--resume --scheduler`."""
    from engine.cli import main

    catalog = tmp_path / "cat.ecsv"
    cat.to_table().write(catalog, format="ascii.ecsv")
    out = tmp_path / "run"
    it = iter_fit(str(catalog), out, forward=TOY, client=cluster, **SMALL)
    n = 0
    for ev in it:
        n += ev["event"] == "step"
        if n >= 30:
            break
    it.close()
    assert not (out / "run.lock").exists()
    rc = main(["fit", str(catalog), "--out", str(out), "--resume", "--scheduler", cluster.scheduler.address,
               "--no-progress"])
    assert rc == 0
    _check_all_members(out, 2, SMALL["steps"])
    ref = fit(str(catalog), tmp_path / "ref", forward=TOY, **SMALL)
    assert _losses(out) == _losses(ref.path)
    assert main(["fit", str(catalog), "--out", str(tmp_path / "x"), "--workers", "0"]) == 2


def test_emulator_training_set_is_the_same_on_any_number_of_workers(cluster):
    """Chunked SPS training sets: bit-identical sequentially, chunked on 2 workers, and as before."""
    from engine.emulator.dataset import sps_targets, sps_training_set, uniform_theta
    from engine.sps import SPSModel

    sps = SPSModel(["sdss2010-u", "sdss2010-r"], device="cpu")
    th0, y0 = sps_training_set(sps, 2500, seed=3, progress=False)
    th1, y1 = sps_training_set(sps, 2500, seed=3, client=cluster, chunk=700, progress=False)
    th2, y2 = sps_training_set(sps, 2500, seed=3, client=cluster, chunk=2500, progress=False)
    g = torch.Generator().manual_seed(3)
    th_old = uniform_theta(sps.bounds, 2500, g)
    y_old = sps_targets(sps, th_old, progress=False)
    for th, y in ((th1, y1), (th2, y2), (th_old, y_old)):
        assert torch.equal(th, th0) and torch.equal(y, y0)
    assert y0.shape[0] == 2500 and torch.isfinite(y0).all()
    th3, _ = sps_training_set(sps, 2500, seed=4, progress=False)
    assert not torch.equal(th3, th0)


def test_emulator_train_cli_on_a_scheduler(tmp_path, cluster):
    from engine.cli import main
    from engine.emulator import load

    out = tmp_path / "emu.pt"
    rc = main(
        [
            "emulator",
            "train",
            "--bands",
            "sdss2010-g,sdss2010-r",
            "--n-train",
            "1500",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--hidden",
            "16,16",
            "--check-n",
            "500",
            "--device",
            "cpu",
            "--scheduler",
            cluster.scheduler.address,
            "--chunk",
            "600",
        ]
    )
    assert rc == 0
    emu = load(out, device="cpu")
    assert emu.metadata["n_train"] == 1500 and list(emu.metadata["bands"]) == ["sdss2010-g", "sdss2010-r"]
    assert main(["emulator", "train", "--bands", "sdss2010-g", "--n-train", "1500", "--out", str(out),
                 "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
