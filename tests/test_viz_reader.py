"""popsed_viz.reader: tailing history.jsonl and reading missing / partial / corrupt runs without raising."""
from __future__ import annotations

import json
import os

import pytest

from popsed_viz.reader import HistoryTail, RunReader, colour_pairs, steps_frame

from synthetic_run import write_synthetic_run


def _step(k, i, **kw):
    ev = {"event": "step", "member": k, "step": i, "train_loss": 1.0, "val_loss": None, "noise": 0.5,
          "blur": None, "lr": 1e-3, "seconds": 0.1, "time": float(i), "wall": 0.0}
    ev.update(kw)
    return json.dumps(ev)


def test_tail_reads_only_complete_lines(tmp_path):
    f = tmp_path / "history.jsonl"
    tail = HistoryTail(f)
    assert tail.poll() == ([], False)  # no file yet: nothing, no error
    with open(f, "w") as fh:
        fh.write(_step(0, 0) + "\n" + _step(0, 1)[:20])  # the second line is still being written
        fh.flush()
        events, restarted = tail.poll()
        assert [e["step"] for e in events] == [0] and not restarted
        fh.write(_step(0, 1)[20:] + "\n")
        fh.flush()
        events, _ = tail.poll()
        assert [e["step"] for e in events] == [1]
        assert tail.poll() == ([], False)


def test_tail_skips_garbage_and_restarts_on_truncation(tmp_path):
    f = tmp_path / "history.jsonl"
    f.write_text(_step(0, 0) + "\n{not json\n" + json.dumps([1, 2]) + "\n" + _step(0, 1) + "\n")
    tail = HistoryTail(f)
    events, _ = tail.poll()
    assert [e["step"] for e in events] == [0, 1]
    assert tail.bad_lines == 2
    # the run was restarted with --overwrite: a new, shorter file
    f.write_text(_step(0, 0) + "\n")
    events, restarted = tail.poll()
    assert restarted and [e["step"] for e in events] == [0]
    # replaced atomically by another file (new inode) of larger size
    tmp = tmp_path / "h.tmp"
    tmp.write_text("".join(_step(1, i) + "\n" for i in range(5)))
    os.replace(tmp, f)
    events, restarted = tail.poll()
    assert restarted and [e["member"] for e in events] == [1] * 5


def test_steps_frame_handles_nulls_and_junk():
    df = steps_frame([json.loads(_step(0, 0)), json.loads(_step(1, 3, val_loss=0.5, blur="x")),
                      {"event": "member_done", "member": 0}])
    assert len(df) == 2
    assert df["member"].tolist() == [0, 1]
    assert df["val_loss"].isna().tolist() == [True, False]
    assert df["blur"].isna().all()


def test_status_missing_and_not_a_run(tmp_path):
    st = RunReader(tmp_path / "nope").status()
    assert st.state == "missing" and "not found" in st.message
    st = RunReader(None).status()
    assert st.state == "missing"
    (tmp_path / "empty").mkdir()
    st = RunReader(tmp_path / "empty").status()
    assert st.state == "not_a_run" and not st.ok
    (tmp_path / "file").write_text("x")
    assert RunReader(tmp_path / "file").status().state == "missing"


def test_status_complete_and_data(tmp_path):
    run = write_synthetic_run(tmp_path / "run", n_population=400)
    r = RunReader(run)
    st = r.status()
    assert st.state == "complete" and st.ok and not st.live
    assert r.bands()[0] == "sdss2010-u"
    assert len(r.population()) == 400
    assert list(r.population(["z", "member"]).columns) == ["z", "member"]
    assert r.truth() is not None and "log_mstar" in r.truth()
    assert len(r.read_history()) > 10


def test_status_partial_running_run(tmp_path):
    run = write_synthetic_run(tmp_path / "run", complete=False, lock=True)
    r = RunReader(run)
    st = r.status()
    assert st.state == "running" and st.live
    assert r.population() is None
    # the lock is stale: no progress for a long time
    r.stall_seconds = -1
    assert r.status().state == "stalled"
    # a killed fit: no lock, no done event, no population
    os.remove(run / "run.lock")
    assert RunReader(run).status().state == "stopped"


def test_status_corrupt_files(tmp_path):
    run = write_synthetic_run(tmp_path / "run", n_population=100)
    (run / "config.json").write_text("{ this is not json")
    (run / "population.parquet").write_bytes(b"PAR1 garbage")
    r = RunReader(run)
    st = r.status()
    assert st.state == "corrupt" and st.level == "danger"
    assert any("config.json" in d for d in st.details)
    assert any("population.parquet" in d for d in st.details)
    assert r.config() is None and r.population() is None  # never raises
    # band names fall back to the observed photometry's columns
    assert r.bands() == [f"sdss2010-{b}" for b in "ugriz"]


def test_truth_found_beside_catalog(tmp_path):
    mock = tmp_path / "mock"
    mock.mkdir()
    run = write_synthetic_run(tmp_path / "run", truth=False)
    cfg = json.loads((run / "config.json").read_text())
    assert RunReader(run).truth() is None
    write_synthetic_run(tmp_path / "other")  # provides a truth.ecsv to copy
    os.replace(tmp_path / "other" / "truth.ecsv", mock / "truth.ecsv")
    cfg["catalog"]["path"] = str(mock / "catalog.ecsv")
    (run / "config.json").write_text(json.dumps(cfg))
    assert RunReader(run).truth_path() == mock / "truth.ecsv"


def test_colour_pairs():
    pairs = colour_pairs(["u", "g", "r", "i", "z"])
    assert pairs[0] == (("u", "g"), ("g", "r"))
    assert len(pairs) == 3
    assert colour_pairs(["g", "r"]) == []


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\x00\xff\xfe"])
def test_tail_odd_bytes(tmp_path, content):
    f = tmp_path / "history.jsonl"
    f.write_bytes(content + b"\n")
    events, _ = HistoryTail(f).poll()
    assert events == []
