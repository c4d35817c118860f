"""How the fit scales: catalog size, batch size, a 10^7-row Parquet catalog, ensembles on dask workers.

Three measurements, each configuration in its own child process (so the peak RSS, ``ru_maxrss`` of that
child, is its own):

1. ``step`` -- the training step (``Trainer.step``: flow sampling, packaged emulator, noise, selection,
   asinh features, sliced Wasserstein, backward, Adam) for in-memory catalogs of N = 10^4, 10^5, 10^6
   galaxies and batch sizes 1024 / 4096, with the default observed batch (``obs_cap`` = 5·10^4 catalog
   rows per step) and with ``obs_cap = N`` (every step against the whole catalog: the loss is then
   O(P N log N), P = 256 projections).  Reported: the child's peak RSS, the memory the catalog + trainer
   add over the bare process (RSS after setup minus RSS before), and the median seconds per step.
2. ``big`` -- a 10^7-row Parquet catalog fitted through ``popsed fit``'s streaming path (one member, a
   few steps): peak RSS of the whole fit (reading, noise model, resident samples, training, writing the
   run) and where the time goes.  The catalog is derived from the bundled mock
   (``sample_data/mock_sdss``, 2·10^4 galaxies): rows are drawn with replacement and re-observed -- the
   noise-free flux of the drawn galaxy (``truth.ecsv``, ``mag_true_<band>``) plus a fresh Gaussian draw
   of its quoted error (``catalog.ecsv``) -- and streamed to Parquet in row groups of 131 072 rows
   (float32 columns ``flux_<band>``, ``flux_err_<band>`` in nanomaggies, ``z_spec``).  It is written once
   to ``--big-path`` (default ``$TMPDIR/popsed_scaling_1e7.parquet``) and reused.
3. ``ensemble`` -- wall time of a 4-member ensemble (bundled mock, emulator, short fits) on 2 local dask
   workers (1 torch thread each; cluster start-up included) vs sequential in one process (``--threads``
   torch threads, default 1).

    python bench/scaling.py [--only step,big,ensemble] [--sizes 1e4,1e5,1e6] [--batches 1024,4096]
                            [--reps 3] [--big-rows 1e7] [--big-steps 5] [--ens-steps 60] [--threads 1]
                            [--json]

Numbers are measured each run (nothing is hard-coded); on a shared machine they are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BANDS = ("sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z")
MOCK = ROOT / "sample_data" / "mock_sdss"
SELECTION = "sdss2010-r<19.8"


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _mock_arrays():
    """Noise-free fluxes (truth), quoted errors and z of the bundled mock (float64, nanomaggies)."""
    import numpy as np
    from astropy.table import Table

    cat = Table.read(MOCK / "catalog.ecsv")
    truth = Table.read(MOCK / "truth.ecsv")
    f_true = np.stack(
        [10 ** (-0.4 * (np.asarray(truth[f"mag_true_{b}"], dtype=np.float64) - 22.5)) for b in BANDS], 1
    )
    err = np.stack([np.asarray(cat[f"flux_err_{b}"], dtype=np.float64) for b in BANDS], 1)
    return f_true, err, np.asarray(cat["z_spec"], dtype=np.float64)


def _resample(n: int, seed: int, f_true, err, z):
    """n re-observed galaxies drawn with replacement from the mock (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    i = rng.integers(0, f_true.shape[0], n)
    return f_true[i] + err[i] * rng.standard_normal((n, len(BANDS))), err[i], z[i]


# ---------------------------------------------------------------------------------------------- 1. step
def child_step(n: int, batch: int, obs_cap: int | None, reps: int, threads: int, forward: str) -> dict:
    import numpy as np
    import torch

    from engine.population.config import TrainConfig
    from engine.population.forward import make_forward_model
    from engine.population.noise import NoiseModel
    from engine.population.observed import prepare_observed
    from engine.population.selection import parse_selection
    from engine.population.trainer import Trainer

    torch.set_num_threads(threads)
    model, fdesc = make_forward_model(forward, BANDS, torch.device("cpu"))
    f_true, err, z = _mock_arrays()
    cuts = parse_selection(SELECTION)
    rss0 = _rss_mb()
    flux, ferr, zz = _resample(n, 1, f_true, err, z)
    noise = NoiseModel.fit(flux, ferr, BANDS)
    cfg = TrainConfig(members=1, steps=1000, batch=batch, obs_cap=obs_cap or 50_000, val_every=10**9)
    obs = prepare_observed(flux, ferr, BANDS, zz, cuts, "free", cfg.val_fraction, 0)
    tr = Trainer(model, obs, noise, cuts, cfg, "cpu")
    ms = tr.new_member(0)
    ms.step = 400  # past the noise ramp: full noise, the usual selection acceptance
    rss1 = _rss_mb()
    tr.step(ms)  # warm-up (first validation is at step 0 only)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        tr.step(ms)
        times.append(time.perf_counter() - t)
    return {
        "forward": fdesc["kind"],
        "n": n,
        "batch": batch,
        "obs_cap": cfg.obs_cap,
        "obs_rows_per_step": int(min(cfg.obs_cap, tr.x_train.shape[0])),
        "seconds_per_step": float(np.median(times)),
        "step_times": times,
        "setup_mb": rss1 - rss0,
        "peak_rss_mb": _peak_mb(),
    }


# ---------------------------------------------------------------------------------------------- 2. big
def write_big(path: Path, rows: int, seed: int = 2024, group: int = 131_072) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    f_true, err, z = _mock_arrays()
    t0 = time.perf_counter()
    schema = pa.schema(
        [pa.field(f"flux_{b}", pa.float32(), metadata={"unit": "nanomaggy"}) for b in BANDS]
        + [pa.field(f"flux_err_{b}", pa.float32(), metadata={"unit": "nanomaggy"}) for b in BANDS]
        + [pa.field("z_spec", pa.float32())]
    )
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as w:
        done, k = 0, 0
        while done < rows:
            m = min(group, rows - done)
            f, e, zz = _resample(m, seed + k, f_true, err, z)
            cols = [f[:, j].astype(np.float32) for j in range(len(BANDS))] + \
                   [e[:, j].astype(np.float32) for j in range(len(BANDS))] + [zz.astype(np.float32)]
            w.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=group)
            done += m
            k += 1
    os.replace(tmp, path)
    return {"rows": rows, "seconds": time.perf_counter() - t0, "bytes": path.stat().st_size,
            "row_groups": pq.ParquetFile(path).num_row_groups}


def child_big(path: str, steps: int, batch: int, out: str, threads: int, forward: str) -> dict:
    import torch

    from engine.population import fit

    torch.set_num_threads(threads)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    marks = {}
    import engine.population.problem as st

    real_prep = st.prepare_streamed

    def timed_prep(*a, **k):
        t = time.perf_counter()
        r = real_prep(*a, **k)
        marks["scan_and_noise_s"] = time.perf_counter() - t
        marks["rss_after_scan_mb"] = _rss_mb()
        return r

    st.prepare_streamed = timed_prep  # the fit calls it as engine.population.problem.prepare_streamed
    run = fit(path, out, members=1, steps=steps, batch=batch, forward=forward, selection=SELECTION,
              overwrite=True, checkpoint_every=10**6, val_every=max(1, steps - 1), population_samples=10_000)
    total = time.perf_counter() - t0
    cfg = run.config
    hist = run.history()
    steps_s = [e["seconds"] for e in hist if e["event"] == "step"]
    return {
        "forward": cfg["forward"]["kind"],
        "rows": cfg["catalog"]["n_rows"],
        "streamed": bool(cfg["observed"].get("streamed")),
        "n_used": cfg["observed"]["n_used"],
        "n_chunks": cfg["observed"]["n_chunks"],
        "steps": steps,
        "batch": batch,
        "seconds_total": total,
        "seconds_per_step": steps_s,
        "peak_rss_mb": _peak_mb(),
        "rss_before_mb": rss0,
        **marks,
    }


# ---------------------------------------------------------------------------------------------- 3. ensemble
def child_ensemble(workers: int | None, steps: int, batch: int, out: str, threads: int, forward: str) -> dict:
    import torch

    from engine.population import fit

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    run = fit(str(MOCK / "catalog.ecsv"), out, members=4, steps=steps, batch=batch, forward=forward,
              selection=SELECTION, overwrite=True, workers=workers, population_samples=5000)
    wall = time.perf_counter() - t0
    s = run.summary()
    return {
        "forward": run.config["forward"]["kind"],
        "workers": workers,
        "members": 4,
        "steps": steps,
        "batch": batch,
        "wall_s": wall,
        "member_seconds": s.get("member_seconds"),
        "converged": s.get("converged"),
    }


# ---------------------------------------------------------------------------------------------- driver
def _child(kind: str, **kw) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps({"kind": kind, **kw})]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"child {kind} {kw} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="step,big,ensemble")
    ap.add_argument("--sizes", default="1e4,1e5,1e6")
    ap.add_argument("--batches", default="1024,4096")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big-rows", type=float, default=1e7)
    ap.add_argument("--big-steps", type=int, default=5)
    ap.add_argument("--big-batch", type=int, default=4096)
    ap.add_argument("--big-path", default=os.path.join(tempfile.gettempdir(), "popsed_scaling_1e7.parquet"))
    ap.add_argument("--ens-steps", type=int, default=60)
    ap.add_argument("--ens-batch", type=int, default=1024)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the step/big children and of the sequential ensemble (default 1: on a "
        "shared 2-core machine intra-op threading oversubscribes the cores)",
    )
    ap.add_argument(
        "--forward",
        default="auto",
        help="forward model: auto (the packaged emulator when it loads, else the direct SPS), emulator, sps",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        spec = json.loads(a._child)
        kind = spec.pop("kind")
        res = {"step": child_step, "big": child_big, "ensemble": child_ensemble}[kind](**spec)
        print(json.dumps(res))
        return 0
    only = set(a.only.split(","))
    report: dict = {"cpu_count": os.cpu_count()}
    say = (lambda *x: None) if a.json else print
    if "step" in only:
        rows = []
        sizes = [int(float(x)) for x in a.sizes.split(",")]
        batches = [int(x) for x in a.batches.split(",")]
        say(f"{'N':>9} {'batch':>6} {'obs/step':>9} {'s/step':>8} {'setup MB':>9} {'peak MB':>8}")
        for n in sizes:
            for cap_mode in ("default", "full"):
                for b in (batches if cap_mode == "default" else batches[-1:]):
                    r = _child(
                        "step",
                        n=n,
                        batch=b,
                        obs_cap=None if cap_mode == "default" else n,
                        reps=a.reps,
                        threads=a.threads,
                        forward=a.forward,
                    )
                    r["mode"] = cap_mode
                    rows.append(r)
                    say(f"{n:>9} {b:>6} {r['obs_rows_per_step']:>9} {r['seconds_per_step']:>8.3f} "
                        f"{r['setup_mb']:>9.0f} {r['peak_rss_mb']:>8.0f}  ({cap_mode})")
        report["step"] = rows
    if "big" in only:
        path = Path(a.big_path)
        rows = int(a.big_rows)
        import pyarrow.parquet as pq

        if not path.is_file() or pq.ParquetFile(path).metadata.num_rows != rows:
            report["big_write"] = write_big(path, rows)
            say(f"wrote {path}: {rows} rows, {report['big_write']['bytes'] / 2**20:.0f} MB, "
                f"{report['big_write']['seconds']:.0f} s")
        with tempfile.TemporaryDirectory() as td:
            r = _child(
                "big",
                path=str(path),
                steps=a.big_steps,
                batch=a.big_batch,
                out=os.path.join(td, "run"),
                threads=a.threads,
                forward=a.forward,
            )
        report["big"] = r
        say(
            f"10^7 fit (streamed={r['streamed']}, {r['n_chunks']} chunks, {r['n_used']} usable rows): "
            f"peak RSS {r['peak_rss_mb']:.0f} MB; total {r['seconds_total']:.0f} s, validation+noise passes "
            f"{r.get('scan_and_noise_s', float('nan')):.0f} s, steps "
            f"{', '.join(f'{s:.2f}' for s in r['seconds_per_step'])} s"
        )
    if "ensemble" in only:
        with tempfile.TemporaryDirectory() as td:
            seq = _child(
                "ensemble",
                workers=None,
                steps=a.ens_steps,
                batch=a.ens_batch,
                out=os.path.join(td, "s"),
                threads=a.threads,
                forward=a.forward,
            )
            par = _child(
                "ensemble",
                workers=2,
                steps=a.ens_steps,
                batch=a.ens_batch,
                out=os.path.join(td, "p"),
                threads=a.threads,
                forward=a.forward,
            )
        report["ensemble"] = {"sequential": seq, "workers_2": par, "speedup": seq["wall_s"] / par["wall_s"]}
        say(f"4 members x {a.ens_steps} steps (batch {a.ens_batch}): sequential {seq['wall_s']:.1f} s, "
            f"2 workers {par['wall_s']:.1f} s (x{seq['wall_s'] / par['wall_s']:.2f})")
    if a.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
