"""SPS throughput: galaxies per second of engine.sps vs bagpipes' per-galaxy ``model_galaxy.update``.

Both compute SDSS ugriz photometry for θ drawn uniformly from the parameter box (τ1 = 0,
n_dust = 0 on the bagpipes side, which has no such parameters), in one run on this machine.
bagpipes runs with its default configuration.  Prints a table; ``--json`` prints JSON.

    python bench/sps_throughput.py [--device auto] [--sizes 1000,10000,100000] [--bagpipes-n 200]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BANDS = ["sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_ours(model, n: int, repeats: int, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    b = model.bounds.cpu()
    theta = (b[:, 0] + (b[:, 1] - b[:, 0]) * torch.rand(n, b.shape[0], generator=g)).to(model.device)
    model.fluxes(theta[: min(n, 256)])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            f = model.fluxes(theta)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        assert torch.isfinite(f).any()
    return best


def time_bagpipes(model, n: int) -> float:
    from bagpipes_reference import (
        bagpipes_components,
        import_bagpipes,
        random_comparison_theta,
        write_filter_files,
    )

    pipes = import_bagpipes(high_resolution=False)
    theta = random_comparison_theta(model, n, seed=3)
    comps = [bagpipes_components(model, row) for row in theta]
    with tempfile.TemporaryDirectory() as tmp:
        filt = write_filter_files(model, Path(tmp))
        with contextlib.redirect_stdout(io.StringIO()):
            galaxy = pipes.model_galaxy(comps[0], filt_list=filt, phot_units="mujy")
            t0 = time.perf_counter()
            for c in comps:
                galaxy.update(c)
            dt = time.perf_counter() - t0
    return dt / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bagpipes-n", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from engine.runtime import tune_cpu_allocator
    from engine.sps import SPSModel

    tune_cpu_allocator()

    model = SPSModel(BANDS, device=None if args.device == "auto" else args.device)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        dt = time_ours(model, n, args.repeats)
        rows.append({"n": n, "seconds": dt, "galaxies_per_s": n / dt, "peak_rss_mb": peak_rss_mb()})
    bp = time_bagpipes(model, args.bagpipes_n) if args.bagpipes_n > 0 else float("nan")
    best = max(r["galaxies_per_s"] for r in rows)
    out = {
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "bands": BANDS,
        "ours": rows,
        "bagpipes_seconds_per_galaxy": bp,
        "bagpipes_galaxies_per_s": 1.0 / bp,
        "ratio_best_batch_vs_bagpipes": best * bp,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"engine.sps on {out['device']} ({out['torch_threads']} threads), bands {','.join(BANDS)}")
        for r in rows:
            print(f"  batch {r['n']:>7d}: {r['seconds']:.3f} s  {r['galaxies_per_s']:>10.0f} gal/s  "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB")
        print(
            f"bagpipes model_galaxy.update: {bp * 1e3:.3f} ms/galaxy ({1 / bp:.0f} gal/s, "
            f"n={args.bagpipes_n})"
        )
        print(f"ratio (best batch / bagpipes): {out['ratio_best_batch_vs_bagpipes']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
