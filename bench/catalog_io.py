"""Benchmark of the catalog reader on a large Parquet catalog.

Builds an N-row (default 10⁶) Parquet catalog with B bands of ``flux_<band>``/``flux_err_<band>``
[nanomaggy] and ``z_spec`` in a temporary folder (written row group by row group, so building it is
memory-bounded too), then measures, each in isolation:

* ``read_catalog``: wall time, rows/s, peak RSS increase (Linux ``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``), numpy peak (tracemalloc) and pyarrow's pool peak;
* ``iter_parquet_batches``: a streaming pass over the band columns;
* ``read_parquet_sample``: 10⁴ random rows.

Usage::

    python bench/catalog_io.py                 # 10⁶ rows, 5 bands, human-readable
    python bench/catalog_io.py --json          # one JSON object
    python bench/catalog_io.py --rows 3000000 --bands 8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.catalog import iter_parquet_batches, read_catalog, read_parquet_sample  # noqa: E402

SDSS = ["sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z",
        "galex-nuv", "galex-fuv", "twomass-J", "twomass-H", "twomass-Ks"]


def write_parquet(path: Path, n: int, bands: list[str], row_group: int = 100_000, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    writer = None
    meta = {b"table_meta_yaml": "\n".join(
        ["datatype:"] + [f"- {{name: {p}_{b}, unit: nanomaggy, datatype: float64}}"
                         for b in bands for p in ("flux", "flux_err")]).encode()}
    try:
        for start in range(0, n, row_group):
            k = min(row_group, n - start)
            cols = {}
            for b in bands:
                f = 10 ** (-0.4 * (rng.uniform(16, 23, k) - 22.5))
                sig = 0.3 + 0.01 * f
                cols[f"flux_{b}"] = f + rng.normal(0, 1, k) * sig
                cols[f"flux_err_{b}"] = sig
            cols["z_spec"] = rng.uniform(0, 0.6, k)
            tab = pa.table(cols).replace_schema_metadata(meta)
            if writer is None:
                writer = pq.ParquetWriter(str(path), tab.schema)
            writer.write_table(tab)
    finally:
        if writer is not None:
            writer.close()


def _status() -> dict[str, float]:
    d: dict[str, float] = {}
    try:
        for line in open("/proc/self/status"):
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                d[k] = int(v.split()[0]) / 1024
    except OSError:
        pass
    return d


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure(fn):
    """(result, seconds, rss_increase_mb or None, numpy_peak_mb, arrow_pool_peak_mb)."""
    import pyarrow as pa

    can_reset = _reset_peak()
    rss0 = _status().get("VmRSS")
    pool0 = pa.default_memory_pool().max_memory()
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _status().get("VmHWM")
    rss = (hwm - rss0) if (can_reset and hwm is not None and rss0 is not None) else None
    return out, dt, rss, peak / 2**20, max(pa.default_memory_pool().max_memory(), pool0) / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bands", type=int, default=5, help=f"number of bands (≤ {len(SDSS)})")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    bands = SDSS[: max(1, min(args.bands, len(SDSS)))]
    res: dict = {"rows": args.rows, "bands": len(bands), "python": platform.python_version(),
                 "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.parquet"
        t0 = time.perf_counter()
        write_parquet(path, args.rows, bands)
        res["write_s"] = time.perf_counter() - t0
        res["file_mb"] = path.stat().st_size / 2**20
        small = Path(tmp) / "small.parquet"
        write_parquet(small, 200, bands)
        read_catalog(small)  # imports outside the measurement
        cat, dt, rss, npk, apk = measure(lambda: read_catalog(path))
        out_mb = (
            cat.flux.nbytes + cat.flux_err.nbytes + (cat.z_spec.nbytes if cat.z_spec is not None else 0)
        ) / 2**20
        res["read_catalog"] = {"seconds": dt, "rows_per_s": len(cat) / dt, "output_mb": out_mb,
                               "rss_increase_mb": rss, "numpy_peak_mb": npk, "arrow_pool_peak_mb": apk}
        del cat
        cols = [f"flux_{b}" for b in bands] + [f"flux_err_{b}" for b in bands]

        def stream():
            n = 0
            acc = 0.0
            for batch in iter_parquet_batches(path, columns=cols, batch_rows=65_536):
                n += len(batch[cols[0]])
                acc += float(np.nansum(batch[cols[0]]))
            return n

        n, dt, rss, npk, apk = measure(stream)
        res["iter_parquet_batches"] = {"seconds": dt, "rows_per_s": n / dt, "rss_increase_mb": rss,
                                       "numpy_peak_mb": npk}
        k = min(10_000, args.rows)
        _, dt, rss, npk, apk = measure(lambda: read_parquet_sample(path, k, seed=0, columns=cols))
        res["read_parquet_sample"] = {"rows": k, "seconds": dt, "rss_increase_mb": rss, "numpy_peak_mb": npk}
    if args.json:
        print(json.dumps(res))
    else:
        rc = res["read_catalog"]
        fmt = lambda x: "n/a" if x is None else f"{x:.0f} MB"  # noqa: E731
        print(
            f"Parquet catalog: {res['rows']:,} rows x {res['bands']} bands, {res['file_mb']:.0f} MB on disk "
            f"(written in {res['write_s']:.1f} s)"
        )
        print(
            f"read_catalog:         {rc['seconds']:.2f} s = {rc['rows_per_s']:.3g} rows/s; output "
            f"{rc['output_mb']:.0f} MB, "
            f"peak RSS +{fmt(rc['rss_increase_mb'])}, numpy peak {rc['numpy_peak_mb']:.0f} MB, "
            f"arrow pool peak {rc['arrow_pool_peak_mb']:.0f} MB"
        )
        it = res["iter_parquet_batches"]
        print(f"iter_parquet_batches: {it['seconds']:.2f} s = {it['rows_per_s']:.3g} rows/s; peak RSS "
              f"+{fmt(it['rss_increase_mb'])}, numpy peak {it['numpy_peak_mb']:.0f} MB")
        sm = res["read_parquet_sample"]
        print(
            f"read_parquet_sample:  {sm['rows']} rows in {sm['seconds']:.2f} s; peak RSS "
            f"+{fmt(sm['rss_increase_mb'])}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
