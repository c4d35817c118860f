"""Accuracy and speed of an emulator against the direct SPS on fresh θ.

|Δmag| = |m_emulator − m_SPS| per band over θ drawn uniformly from the full box (a seed
different from training), restricted to magnitudes brighter than ``mag_max`` (both models),
reported overall and in bins of redshift and magnitude, plus the throughput of both.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from engine.emulator.dataset import uniform_theta

Z_BINS = (0.0, 0.1, 0.2, 0.3, 0.45, 0.65)
MAG_BINS = (10.0, 18.0, 20.0, 22.0, 23.5, 25.0)


def _stats(d: np.ndarray) -> dict:
    if d.size == 0:
        return {"n": 0, "median": None, "p95": None, "p99": None}
    return {"n": int(d.size), "median": float(np.median(d)), "p95": float(np.percentile(d, 95)),
            "p99": float(np.percentile(d, 99))}


def _throughput(fn, theta: torch.Tensor, repeats: int = 3) -> float:
    fn(theta[:256])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(theta)
        if theta.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return theta.shape[0] / best


def check_emulator(emu, n: int = 20000, seed: int = 12345, mag_max: float = 25.0) -> dict:
    """Per-band |Δmag| statistics vs the SPS and the throughput of both (galaxies/s)."""
    sps = emu.sps
    g = torch.Generator().manual_seed(seed)
    theta = uniform_theta(emu.bounds, n, g).to(device=emu.device, dtype=emu.dtype)
    with torch.no_grad():
        m_emu = emu.magnitudes(theta).double().cpu().numpy()
        m_sps = sps.magnitudes(theta).double().cpu().numpy()
    z = theta[:, 0].double().cpu().numpy()
    out = {"n": n, "seed": seed, "mag_max": mag_max, "bands": {}}
    for j, b in enumerate(emu.bands):
        ok = (m_sps[:, j] < mag_max) & (m_emu[:, j] < mag_max + 1) & np.isfinite(m_sps[:, j])
        d = np.abs(m_emu[:, j] - m_sps[:, j])
        entry = {"all": _stats(d[ok]), "z_bins": {}, "mag_bins": {}}
        for lo, hi in zip(Z_BINS[:-1], Z_BINS[1:], strict=True):
            entry["z_bins"][f"{lo}-{hi}"] = _stats(d[ok & (z >= lo) & (z < hi)])
        for lo, hi in zip(MAG_BINS[:-1], MAG_BINS[1:], strict=True):
            entry["mag_bins"][f"{lo}-{hi}"] = _stats(d[ok & (m_sps[:, j] >= lo) & (m_sps[:, j] < hi)])
        out["bands"][b] = entry
    t = theta[: min(n, 20000)]
    out["throughput"] = {"emulator_gal_per_s": _throughput(emu.magnitudes, t),
                         "sps_gal_per_s": _throughput(sps.magnitudes, t), "device": str(emu.device)}
    out["throughput"]["ratio"] = out["throughput"]["emulator_gal_per_s"] / out["throughput"]["sps_gal_per_s"]
    return out


def format_report(rep: dict) -> str:
    lines = [
        f"|Δmag| emulator vs SPS on {rep['n']} fresh θ (seed {rep['seed']}), magnitudes < {rep['mag_max']}",
        f"{'band':<14}{'n':>7}{'median':>9}{'p95':>9}{'p99':>9}",
    ]
    for b, e in rep["bands"].items():
        a = e["all"]
        lines.append(f"{b:<14}{a['n']:>7}{a['median']:>9.4f}{a['p95']:>9.4f}{a['p99']:>9.4f}")
    for key, title in (("z_bins", "redshift"), ("mag_bins", "magnitude")):
        lines.append(f"p99 by {title} bin:")
        bins = list(next(iter(rep["bands"].values()))[key])
        lines.append(f"{'band':<14}" + "".join(f"{k:>11}" for k in bins))
        for b, e in rep["bands"].items():
            vals = [e[key][k]["p99"] for k in bins]
            lines.append(f"{b:<14}" + "".join(f"{v:>11.4f}" if v is not None else f"{'-':>11}" for v in vals))
    t = rep["throughput"]
    lines.append(f"throughput on {t['device']}: emulator {t['emulator_gal_per_s']:.0f} gal/s, "
                 f"SPS {t['sps_gal_per_s']:.0f} gal/s, ratio {t['ratio']:.1f}x")
    return "\n".join(lines)
