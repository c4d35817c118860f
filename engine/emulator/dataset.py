"""SPS training sets for the emulator, generated in chunks, in this process or on a dask cluster.

θ is drawn here, in one call, exactly as :func:`engine.emulator.train.uniform_theta` always drew it
(uniform over the box, ``torch.Generator().manual_seed(seed)``): cheap (88 bytes per galaxy).  The
expensive part, the SPS targets, is computed in chunks of ``chunk`` galaxies, each chunk independently
(:func:`engine.emulator.train.sps_targets` on that slice of θ).  Chunks run one after the other in
this process (``client=None``) or as dask tasks (``popsed emulator train --workers N`` /
``--scheduler ADDR``); each worker builds the SPS once from plain settings (bands, z_max, cosmology,
device) and keeps it.  The SPS is batch-independent and deterministic on the CPU, so the training set
for a given seed is bit-identical whatever the number of workers and the chunk size (tested), and
identical to the sequential generation before this module existed.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

import torch

__all__ = ["sps_training_set", "chunk_targets"]

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


def chunk_targets(theta: torch.Tensor, bands: Sequence[str], z_max: float, cosmology: str = "Planck18",
                  device: str | None = None, batch: int = 20000, torch_threads: int | None = None) -> torch.Tensor:
    """SPS targets h (n, B) of one chunk of θ (the dask task; also used in-process)."""
    from engine.emulator.train import sps_targets

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
    from engine.emulator.train import sps_targets, uniform_theta

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
        futs = [c.submit(chunk_targets, theta[s:s + chunk].clone(), tuple(sps.bands), float(sps.z_max), cosmology,
                         dev, 20000, threads, pure=False, retries=2)
                for s in starts]
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
            log(f"training set: {n} galaxies in {len(futs)} chunks on {len(c.scheduler_info()['workers'])} dask "
                f"workers in {time.perf_counter() - t0:.0f} s")
    finally:
        close()
    return theta, torch.cat(out)
