"""Training an emulator: a training set from the direct SPS over the full box, then the network.

θ is drawn uniformly from the whole parameter box (fits explore all of it, not just a mock
population); the SPS computes the targets h_b (:mod:`engine.emulator.model`) in batches.
Training: Adam, mini-batches, a held-out validation split, learning rate halved when the
validation loss stalls (``ReduceLROnPlateau``), early stopping, best state kept.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from engine.emulator.model import FEATURE_NAMES, H_CLIP, Emulator
from engine.emulator.network import SpeculatorMLP
from engine.sps.model import resolve_device
from engine.sps.params import DEFAULT_Z_MAX, IDX


def effective_wavelength(f) -> float:
    """Pivot-like effective wavelength sqrt(∫λR dλ / ∫R/λ dλ) [Å] of a filter."""
    return float(np.sqrt(np.trapezoid(f.response * f.wave, f.wave) / np.trapezoid(f.response / f.wave, f.wave)))


def uniform_theta(bounds: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """θ uniform over the box ``bounds`` (D, 2), float64 on the CPU."""
    b = bounds.detach().cpu().double()
    return b[:, 0] + (b[:, 1] - b[:, 0]) * torch.rand(n, b.shape[0], generator=generator, dtype=torch.float64)


def sps_targets(sps, theta: torch.Tensor, batch: int = 20000, progress: bool = True) -> torch.Tensor:
    """h_b targets (N, B) from the direct SPS, clipped at ``H_CLIP``."""
    from tqdm.auto import tqdm

    out = []
    it = range(0, theta.shape[0], batch)
    for s in tqdm(it, desc="SPS training set", unit="batch", disable=not progress, file=sys.stderr):
        th = theta[s:s + batch].to(device=sps.device, dtype=sps.dtype)
        with torch.no_grad():
            m = sps.magnitudes(th)
            z = th[:, IDX["z"]]
            h = (m + 2.5 * th[:, IDX["log_mstar"]].unsqueeze(1) + 2.5 * torch.log10(1 + z).unsqueeze(1)
                 - 5.0 * torch.log10(sps.cosmo.luminosity_distance_mpc(z)).unsqueeze(1))
        out.append(torch.nan_to_num(h, nan=H_CLIP, posinf=H_CLIP).clamp(max=H_CLIP).double().cpu())
    return torch.cat(out)


@dataclass
class TrainResult:
    emulator: Emulator
    history: list[dict]
    seconds: float
    val_rmse_mag: list[float]


def train_network(x: torch.Tensor, y: torch.Tensor, *, hidden: Sequence[int], seed: int, device, epochs: int = 400,
                  batch: int = 1024, lr: float = 2e-3, val_fraction: float = 0.1, patience: int = 25,
                  max_minutes: float | None = None, log: Callable[[str], None] | None = print):
    """Fit a :class:`SpeculatorMLP` to standardised targets; returns (net, y_mean, y_std, history, val_rmse)."""
    device = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = x.shape[0]
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(round(val_fraction * n)))
    iv, it = perm[:n_val], perm[n_val:]
    y_mean, y_std = y[it].mean(0), y[it].std(0).clamp(min=1e-6)
    xs = x.float().to(device)
    ys = ((y - y_mean) / y_std).float().to(device)
    cens = (y >= H_CLIP).to(device)
    x_tr, y_tr, x_va, y_va, c_tr = xs[it], ys[it], xs[iv], ys[iv], cens[it]
    net = SpeculatorMLP(x.shape[1], y.shape[1], tuple(hidden)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(2, patience // 3))
    best, best_state, bad, history = math.inf, None, 0, []
    t0 = time.perf_counter()
    n_tr = x_tr.shape[0]
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n_tr, generator=g).to(device)
        tot = 0.0
        for s in range(0, n_tr, batch):
            idx = order[s:s + batch]
            r = net(x_tr[idx]) - y_tr[idx]
            r = torch.where(c_tr[idx], r.clamp(max=0.0), r)  # censored: only too-bright predictions cost
            loss = torch.mean(r**2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * idx.numel()
        net.eval()
        with torch.no_grad():
            c_va = cens[iv]
            val = float(sum(torch.sum(torch.where(c_va[s:s + 65536], (net(x_va[s:s + 65536]) - y_va[s:s + 65536])
                                                  .clamp(max=0.0), net(x_va[s:s + 65536]) - y_va[s:s + 65536]) ** 2)
                            for s in range(0, x_va.shape[0], 65536)) / y_va.numel())
        sched.step(val)
        lr_now = opt.param_groups[0]["lr"]
        history.append({"epoch": epoch, "train_mse": tot / n_tr / y.shape[1], "val_mse": val, "lr": lr_now,
                        "seconds": time.perf_counter() - t0})
        if val < best * (1 - 1e-4):
            best, bad = val, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
        if log and (epoch % 10 == 0 or bad == 0 and epoch % 5 == 0):
            log(f"epoch {epoch:4d}  train {history[-1]['train_mse']:.3e}  val {val:.3e}  lr {lr_now:.1e}  "
                f"{history[-1]['seconds']:.0f} s")
        if bad >= patience or lr_now < 1e-6:
            break
        if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            if log:
                log(f"stopping: time budget of {max_minutes} min reached")
            break
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x_va[s:s + 65536]) for s in range(0, x_va.shape[0], 65536)])
        keep = ~cens[iv]
        rmse = [float(((pred[keep[:, j], j] - y_va[keep[:, j], j]) ** 2).mean().sqrt().cpu() * y_std[j])
                for j in range(y.shape[1])]
    return net.cpu(), y_mean, y_std, history, rmse


def train_emulator(bands: Sequence[str], n_train: int, *, seed: int = 0, device=None, z_max: float = DEFAULT_Z_MAX,
                   hidden: Sequence[int] = (256, 256, 256, 256), epochs: int = 400, batch: int = 1024,
                   max_minutes: float | None = None, cosmology: str = "Planck18", progress: bool = True,
                   log: Callable[[str], None] | None = print, parallel: dict | None = None) -> TrainResult:
    """Generate a training set with the SPS and train an emulator for ``bands``."""
    from engine import __version__
    from engine.emulator.model import resolve_cosmology
    from engine.sps import SPSModel

    t0 = time.perf_counter()
    sps = SPSModel(list(bands), cosmology=resolve_cosmology(cosmology), device=device, z_max=z_max)
    from engine.emulator.dataset import sps_training_set  # parallel: workers / scheduler / client / chunk

    theta, y = sps_training_set(sps, n_train, seed, cosmology=cosmology, progress=progress, log=log, **(parallel or {}))
    t_gen = time.perf_counter() - t0
    if log:
        log(f"training set: {n_train} galaxies from the SPS in {t_gen:.0f} s")
    metadata = {
        "bands": list(sps.bands),
        "param_names": list(sps.param_names),
        "bounds": sps.bounds.cpu().tolist(),
        "z_max": z_max,
        "cosmology": cosmology,
        "uv_bump": True,
        "features": list(FEATURE_NAMES),
        "h_clip": H_CLIP,
        "lambda_eff": [effective_wavelength(f) for f in sps.filters],
        "n_train": n_train,
        "seed": seed,
        "hidden": list(hidden),
        "popsed_version": __version__,
        "torch_version": str(torch.__version__),
    }
    n_in = len(FEATURE_NAMES) + len(sps.bands)
    proto = Emulator(SpeculatorMLP(n_in, len(sps.bands), tuple(hidden)), metadata,
                     torch.zeros(len(sps.bands)), torch.ones(len(sps.bands)), device="cpu", dtype=torch.float64)
    x = proto.features(theta)
    net, y_mean, y_std, history, rmse = train_network(x, y, hidden=hidden, seed=seed, device=sps.device,
                                                      epochs=epochs, batch=batch, max_minutes=max_minutes, log=log)
    seconds = time.perf_counter() - t0
    metadata.update({"epochs": len(history), "training_seconds": seconds, "generation_seconds": t_gen,
                     "val_rmse_h_mag": rmse, "device_trained": str(sps.device)})
    emu = Emulator(net, metadata, y_mean, y_std, device=device)
    return TrainResult(emulator=emu, history=history, seconds=seconds, val_rmse_mag=rmse)
