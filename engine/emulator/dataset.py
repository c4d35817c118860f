"""SPS training sets for the emulator, generated in chunks, in this process or on a dask cluster.

θ is drawn in one call by :func:`uniform_theta` (uniform over the box,
``torch.Generator().manual_seed(seed)``): cheap (88 bytes per galaxy).  The expensive part, the SPS
targets (:func:`sps_targets`), is computed in chunks of ``chunk`` galaxies, each chunk independently.
Chunks run one after the other in this process (``client=None``) or as dask tasks
(``popsed emulator train --workers N`` / ``--scheduler ADDR``); each worker builds the SPS once from
plain settings (bands, z_max, cosmology, device) and keeps it.  The SPS is batch-independent and
deterministic on the CPU, so the training set for a given seed is bit-identical whatever the number of
workers and the chunk size (tested).

A training row is drawn from θ uniform over the whole parameter box (fits explore all of it, not just a
mock population).  Of θ the networks need only (z, τ1, τ2, n_dust) and a burst age; the burst age is
drawn log-uniformly between 10 Myr and the age of the Universe at z (:func:`training_burst_age`, from θ's
``t_burst`` coordinate, so one uniform θ row is one training row), because the young-burst spectra change
fastest and a burst older than the Universe never contributes.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Sequence

import torch

from engine.emulator.model import H_CLIP
from engine.sps.model import metallicity_weights
from engine.sps.params import DEFAULT_Z_MAX, IDX, param_bounds

__all__ = ["sps_training_set", "chunk_targets", "uniform_theta", "training_burst_age", "sps_targets"]


def uniform_theta(bounds: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """θ uniform over the box ``bounds`` (D, 2), float64 on the CPU."""
    b = bounds.detach().cpu().double()
    return b[:, 0] + (b[:, 1] - b[:, 0]) * torch.rand(n, b.shape[0], generator=generator, dtype=torch.float64)


def training_burst_age(
    theta: torch.Tensor, t_age_gyr: torch.Tensor, z_max: float = DEFAULT_Z_MAX
) -> torch.Tensor:
    """The burst age [Gyr] of a training row: θ's ``t_burst`` coordinate mapped log-uniformly onto
    [10 Myr, t_age(z)]."""
    lo, hi = param_bounds(z_max)["t_burst"]
    u = ((theta[:, IDX["t_burst"]] - lo) / (hi - lo)).clamp(0.0, 1.0)
    l_lo = math.log10(lo)
    return torch.pow(10.0, l_lo + u * (torch.log10(t_age_gyr.to(theta.dtype)) - l_lo))


def sps_targets(sps, theta: torch.Tensor, batch: int = 20000, progress: bool = True) -> torch.Tensor:
    """Targets of the rows ``theta`` (N, D), (N, (K·n_Z + 1)·B), float64 on the CPU, clipped at ``H_CLIP``.

    h of the K = ``N_SFH_BASES`` bases at every metallicity node (n_Z·K·B values), then of the burst at
    the row's metallicity (B values)."""
    from tqdm.auto import tqdm

    out = []
    step = max(1, batch // 8)  # the per-component spectra are ~30x a galaxy's: smaller batches
    it = range(0, theta.shape[0], step)
    for s in tqdm(it, desc="SPS training set", unit="batch", disable=not progress, file=sys.stderr):
        th = theta[s:s + step].to(device=sps.device, dtype=sps.dtype)
        z = th[:, IDX["z"]]
        with torch.no_grad():
            t_b = training_burst_age(th, sps.cosmo.age_gyr(z), sps.z_max)
            lum = sps.basis_band_luminosities(z, th[:, IDX["tau1"]], th[:, IDX["tau2"]], th[:, IDX["n_dust"]])
            lum_b = sps.burst_band_luminosities(z, th[:, IDX["tau2"]], th[:, IDX["n_dust"]], t_b)
            w_z = metallicity_weights(th[:, IDX["log_zmet"]], sps.zmet_grid)[2]
            lum_b = torch.einsum("nk,nkb->nb", w_z, lum_b)  # the burst at the row's metallicity
            y = torch.cat([lum.reshape(th.shape[0], -1), lum_b], 1).double()
            h = -2.5 * torch.log10(y.clamp(min=1e-300))
        out.append(torch.nan_to_num(h, nan=H_CLIP, posinf=H_CLIP).clamp(max=H_CLIP).cpu())
    return torch.cat(out)


_SPS_CACHE: dict[tuple, Any] = {}


def _worker_sps(bands: tuple[str, ...], z_max: float, cosmology: str, device: str | None):
    """The SPS of this process for these settings (built once per process)."""
    key = (tuple(bands), float(z_max), str(cosmology), str(device))
    sps = _SPS_CACHE.get(key)
    if sps is None:
        from engine.emulator.model import resolve_cosmology
        from engine.sps import SPSModel

        sps = SPSModel(list(bands), cosmology=resolve_cosmology(cosmology), device=device, z_max=z_max)
        _SPS_CACHE[key] = sps
    return sps


def chunk_targets(
    theta: torch.Tensor,
    bands: Sequence[str],
    z_max: float,
    cosmology: str = "Planck18",
    device: str | None = None,
    batch: int = 20000,
    torch_threads: int | None = None,
) -> torch.Tensor:
    """SPS targets h (n, B) of one chunk of θ (the dask task; also used in-process)."""
    old = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    try:
        sps = _worker_sps(tuple(bands), z_max, cosmology, device)
        return sps_targets(sps, theta, batch=batch, progress=False)
    finally:
        if torch_threads:
            torch.set_num_threads(old)


def sps_training_set(sps, n: int, seed: int, *, cosmology: str = "Planck18", chunk: int = 100_000,
                     client: Any = None, workers: int | None = None, scheduler: str | None = None,
                     progress: bool = True, log: Callable[[str], None] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """θ (n, D) uniform over ``sps``'s box and the SPS targets h (n, B), float64 on the CPU.

    Parameters
    ----------
    sps : engine.sps.SPSModel
        The SPS of the client (its bands, z_max, device and box are used; workers build their own).
    n, seed : int
        Training-set size and seed.
    cosmology : str
        Name of the cosmology (as in the emulator metadata), for the workers' SPS.
    chunk : int
        Galaxies per chunk (one dask task each).
    client, workers, scheduler :
        A ``distributed.Client``; or a local cluster of ``workers`` processes; or the address of an
        existing scheduler.  None of them: the chunks run in this process.
    """
    g = torch.Generator().manual_seed(seed)
    theta = uniform_theta(sps.bounds, n, g)
    chunk = max(1, int(chunk))
    starts = list(range(0, n, chunk))
    if client is None and not workers and not scheduler:
        return theta, sps_targets(sps, theta, progress=progress)
    from engine.population.distributed import open_client

    c, close, threads = open_client(workers, scheduler, client)
    t0 = time.perf_counter()
    try:
        dev = None if sps.device.type == "cpu" else str(sps.device)
        futs = [
            c.submit(
                chunk_targets,
                theta[s : s + chunk].clone(),
                tuple(sps.bands),
                float(sps.z_max),
                cosmology,
                dev,
                20000,
                threads,
                pure=False,
                retries=2,
            )
            for s in starts
        ]
        from distributed import as_completed
        from tqdm.auto import tqdm

        index = {f.key: i for i, f in enumerate(futs)}
        out: list[torch.Tensor | None] = [None] * len(futs)
        with tqdm(total=len(futs), desc="SPS training set (dask)", unit="chunk", disable=not progress,
                  file=sys.stderr) as bar:
            for f in as_completed(futs):
                out[index[f.key]] = f.result()
                bar.update(1)
        if log:
            log(
                f"training set: {n} galaxies in {len(futs)} chunks on {len(c.scheduler_info()['workers'])} "
                "dask "
                f"workers in {time.perf_counter() - t0:.0f} s"
            )
    finally:
        close()
    return theta, torch.cat(out)
