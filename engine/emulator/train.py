"""Training an emulator: a training set from the direct SPS over the full box, then the two networks.

The training set (:mod:`engine.emulator.dataset`) draws θ uniform over the whole parameter box.  The SPS
computes, for each row, h = −2.5 log10 of the band luminosity of every (metallicity node, SFH basis,
band) and of the burst at every (metallicity node, band)
(:meth:`engine.sps.SPSModel.basis_band_luminosities`, :meth:`~engine.sps.SPSModel.burst_band_luminosities`).

Training (each network): Adam, mini-batches, a held-out validation split, a cosine learning-rate decay
over the epoch budget -- or over the wall-time budget when ``max_minutes`` is given, so the learning rate
always reaches its floor -- and the best validation state kept.  Loss: mean squared error of the
standardised h, censored above :data:`~engine.emulator.model.H_CLIP`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from engine.device import resolve_device
from engine.emulator.dataset import sps_training_set, training_burst_age
from engine.emulator.model import (
    CONSTANTS,
    H_CLIP,
    N_WINDOWS,
    SED_RANGE,
    ComponentInputs,
    Emulator,
    burst_sed_features,
)
from engine.emulator.network import SpeculatorMLP
from engine.sps import sfh as sfh_mod
from engine.sps.model import metallicity_nodes
from engine.sps.params import DEFAULT_Z_MAX, IDX, N_SFH_BASES


def burst_sed_table(sps, n_windows: int = N_WINDOWS, wave_range: tuple[float, float] = SED_RANGE) -> dict:
    """The burst SED-feature constants: window edges [Å] (W+1,), mean L_ν of every single-age SSP of the
    library in each window (n_Z, S, W), and the mean/std of its log10 over the library (W,)."""
    edges = np.geomspace(wave_range[0], wave_range[1], n_windows + 1)
    wave = sps.wave.detach().double().cpu().numpy()
    lnu = sps._ssp_lnu_full.detach().double().cpu().reshape(sps.n_z, sps.n_ssp, -1)
    cols = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = torch.as_tensor((wave >= lo) & (wave < hi))
        if int(sel.sum()) == 0:
            raise ValueError(
                f"SED feature window {lo:.0f}-{hi:.0f} Å holds no wavelength bin of the SSP grid"
            )
        cols.append(lnu[:, :, sel].mean(-1))
    table = torch.stack(cols, -1)
    logt = torch.log10(table.clamp(min=1e-30))
    return {"sed_windows": torch.as_tensor(edges), "sed_table": table, "sed_mean": logt.mean((0, 1)),
            "sed_std": logt.std((0, 1)).clamp(min=1e-3)}


def network_inputs(inputs: ComponentInputs, theta: torch.Tensor, t_age_gyr: torch.Tensor, z_max: float,
                   constants: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the basis and burst networks for training rows ``theta`` (float64, CPU)."""
    c = {k: theta[:, i] for k, i in IDX.items()}
    x_basis = inputs.basis(c["z"], c["tau1"], c["tau2"], c["n_dust"])
    t_b = training_burst_age(theta, t_age_gyr, z_max)
    k_z, a_z = metallicity_nodes(c["log_zmet"], constants["zmet_grid"])
    k_b, a_b = sfh_mod.burst_interpolation(t_b, constants["ssp_log_ages"])
    sed = burst_sed_features(
        constants["sed_table"], k_z, a_z, k_b, a_b, constants["sed_mean"], constants["sed_std"]
    )
    x_burst = inputs.burst(c["z"], c["tau2"], c["n_dust"], t_b, c["log_zmet"], sed)
    return x_basis, x_burst


@dataclass
class TrainResult:
    emulator: Emulator
    history: dict[str, list[dict]]
    seconds: float
    val_rmse_mag: dict[str, float]


@dataclass
class _Split:
    """Standardised training and validation rows (``c``: censored targets, h ≥ ``H_CLIP``)."""

    x_tr: torch.Tensor
    y_tr: torch.Tensor
    c_tr: torch.Tensor
    x_va: torch.Tensor
    y_va: torch.Tensor
    c_va: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor


def _split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, g: torch.Generator, device) -> _Split:
    """Random train / validation rows; targets standardised by the uncensored training values."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(round(val_fraction * n)))
    iv, it = perm[:n_val], perm[n_val:]
    cens_all = y >= H_CLIP
    yt = torch.where(cens_all[it], torch.nan, y[it])
    y_mean = torch.nan_to_num(yt.nanmean(0), nan=H_CLIP)
    y_std = torch.nan_to_num(torch.sqrt(torch.nanmean((yt - y_mean) ** 2, 0)), nan=1.0).clamp(min=1e-3)
    xs = x.float().to(device)
    ys = ((y - y_mean) / y_std).float().to(device)
    cens = cens_all.to(device)
    return _Split(xs[it], ys[it], cens[it], xs[iv], ys[iv], cens[iv], y_mean, y_std)


def _censored_sq(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared residuals; a censored target (the component is dark) only costs too-bright predictions."""
    r = net(x) - y
    return torch.where(c, r.clamp(max=0.0), r) ** 2


def _val_mse(net: torch.nn.Module, d: _Split, chunk: int = 65536) -> float:
    tot = 0.0
    with torch.no_grad():
        for s in range(0, d.x_va.shape[0], chunk):
            tot += float(torch.sum(_censored_sq(net, d.x_va[s:s + chunk], d.y_va[s:s + chunk],
                                                d.c_va[s:s + chunk])))
    return tot / d.y_va.numel()


def _val_rmse_mag(net: torch.nn.Module, d: _Split, chunk: int = 65536) -> float:
    """Root-mean-square error in h [mag] over the uncensored validation values."""
    with torch.no_grad():
        pred = torch.cat([net(d.x_va[s:s + chunk]) for s in range(0, d.x_va.shape[0], chunk)])
        err = ((pred - d.y_va) * d.y_std.float().to(pred.device))[~d.c_va]
        return float(err.pow(2).mean().sqrt().cpu())


def _train_epoch(net, opt, d: _Split, order: torch.Tensor, batch: int, lr_at: Callable[[int], float | None]
                 ) -> tuple[float, bool]:
    """One pass over the training rows in ``order``; ``lr_at(b)``: the learning rate of batch b, None once
    the schedule has ended.  Returns the summed training loss and whether the schedule ended."""
    tot = 0.0
    for b, s in enumerate(range(0, d.x_tr.shape[0], batch)):
        rate = lr_at(b)
        if rate is None:
            return tot, True
        for pg in opt.param_groups:
            pg["lr"] = rate
        idx = order[s:s + batch]
        loss = torch.mean(_censored_sq(net, d.x_tr[idx], d.y_tr[idx], d.c_tr[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += float(loss.detach()) * idx.numel()
    return tot, False


def train_network(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: Sequence[int],
    seed: int,
    device,
    epochs: int = 400,
    batch: int = 512,
    lr: float = 2e-3,
    val_fraction: float = 0.1,
    max_minutes: float | None = None,
    name: str = "network",
    log: Callable[[str], None] | None = print,
):
    """Fit a :class:`SpeculatorMLP` to standardised targets with a cosine learning-rate decay
    (Loshchilov & Hutter 2017).

    The decay runs over ``epochs`` epochs, or over ``max_minutes`` of wall time when that is given,
    whichever ends first: the learning rate always reaches its floor at the end of training.  Returns
    ``(net, y_mean, y_std, history, val_rmse)``; ``val_rmse`` is the root-mean-square error in h [mag] over
    the uncensored validation values.
    """
    device = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d = _split(x, y, val_fraction, g, device)
    net = SpeculatorMLP(x.shape[1], y.shape[1], tuple(hidden)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    lr_min = lr * 1e-3
    best, best_state, history = math.inf, None, []
    t0 = time.perf_counter()
    n_tr = d.x_tr.shape[0]
    n_batches = math.ceil(n_tr / batch)

    def lr_at(epoch: int, b: int) -> float | None:
        frac = (epoch + b / n_batches) / epochs
        if max_minutes is not None:
            frac = max(frac, (time.perf_counter() - t0) / (60.0 * max_minutes))
        return None if frac >= 1.0 else lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * frac))

    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n_tr, generator=g).to(device)
        tot, done = _train_epoch(net, opt, d, order, batch, lambda b, e=epoch: lr_at(e, b))
        net.eval()
        val = _val_mse(net, d)
        history.append({"network": name, "epoch": epoch, "train_mse": tot / n_tr, "val_mse": val,
                        "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        if val < best:
            best = val
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if log and (epoch % 10 == 0 or done):
            log(f"{name} epoch {epoch:4d}  train {history[-1]['train_mse']:.3e}  val {val:.3e}  "
                f"lr {history[-1]['lr']:.1e}  {history[-1]['seconds']:.0f} s")
        if done:
            break
    net.load_state_dict(best_state)
    net.eval()
    rmse = _val_rmse_mag(net, d)
    return net.cpu(), d.y_mean, d.y_std, history, rmse


def _sps_constants(sps) -> dict[str, torch.Tensor]:
    """The SPS tables the emulator's exact linear layer needs (float64, CPU), and the burst SED table."""
    constants = {
        "age_edges_gyr": sps.age_edges_gyr,
        "live_frac": sps.live_frac,
        "ssp_log_ages": sps.ssp_log_ages,
        "ssp_live": sps.ssp_live,
        "zmet_grid": sps.zmet_grid,
    }
    constants = {k: v.detach().double().cpu() for k, v in constants.items()}
    constants.update(burst_sed_table(sps))
    return constants


def _metadata(sps, z_max: float, cosmology: str, lam: list[float]) -> dict:
    """What an emulator file says of the SPS it emulates."""
    from engine import __version__

    return {
        "bands": list(sps.bands),
        "param_names": list(sps.param_names),
        "bounds": sps.bounds.cpu().tolist(),
        "z_max": z_max,
        "cosmology": cosmology,
        "uv_bump": True,
        "design": "exact linear SFH/metallicity/burst combination of emulated component band luminosities",
        "h_clip": H_CLIP,
        "lambda_eff": lam,
        "device_trained": str(sps.device),
        "popsed_version": __version__,
        "torch_version": str(torch.__version__),
    }


def train_emulator(
    bands: Sequence[str],
    n_train: int,
    *,
    seed: int = 0,
    device=None,
    z_max: float = DEFAULT_Z_MAX,
    hidden: Sequence[int] = (48, 48, 48),
    burst_hidden: Sequence[int] | None = None,
    epochs: int = 400,
    batch: int = 512,
    max_minutes: float | None = None,
    burst_share: float = 0.5,
    cosmology: str = "Planck18",
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    parallel: dict | None = None,
) -> TrainResult:
    """Generate a training set with the SPS and train an emulator for ``bands``.

    ``max_minutes`` is the training budget of both networks together (``burst_share`` of it for the
    burst network); ``parallel`` (``workers``/``scheduler``/``client``/``chunk``) fans the training-set
    generation out over dask (:mod:`engine.emulator.dataset`).
    """
    from engine.emulator.model import resolve_cosmology
    from engine.sps import SPSModel

    t0 = time.perf_counter()
    sps = SPSModel(list(bands), cosmology=resolve_cosmology(cosmology), device=device, z_max=z_max)
    theta, y = sps_training_set(
        sps, n_train, seed, cosmology=cosmology, progress=progress, log=log, **(parallel or {})
    )
    t_gen = time.perf_counter() - t0
    if log:
        log(f"training set: {n_train} rows from the SPS in {t_gen:.0f} s")
    lam = [f.effective_wavelength for f in sps.filters]
    n_b, n_z = len(sps.bands), sps.n_z
    n_basis = n_z * N_SFH_BASES * n_b
    inputs = ComponentInputs(z_max, lam, dtype=torch.float64)
    constants = _sps_constants(sps)
    t_age = sps.cosmo.age_gyr(theta[:, IDX["z"]].to(device=sps.device, dtype=sps.dtype)).double().cpu()
    x_basis, x_burst = network_inputs(inputs, theta, t_age, z_max, constants)
    burst_hidden = tuple(burst_hidden or hidden)
    nets, norms, history, rmse = {}, {}, {}, {}
    for name, x, yy, hid, share in (("basis", x_basis, y[:, :n_basis], tuple(hidden), 1.0 - burst_share),
                                    ("burst", x_burst, y[:, n_basis:], burst_hidden, burst_share)):
        net, mean, std, hist, r = train_network(
            x,
            yy,
            hidden=hid,
            seed=seed,
            device=sps.device,
            epochs=epochs,
            batch=batch,
            name=name,
            log=log,
            max_minutes=None if max_minutes is None else max_minutes * share,
        )
        nets[name], norms[name], history[name], rmse[name] = net, (mean, std), hist, r
    constants = {k: constants[k] for k in CONSTANTS}
    seconds = time.perf_counter() - t0
    metadata = {
        **_metadata(sps, z_max, cosmology, lam),
        "n_train": n_train,
        "seed": seed,
        "hidden": {"basis": list(hidden), "burst": list(burst_hidden)},
        "epochs": {k: len(v) for k, v in history.items()},
        "training_seconds": seconds,
        "generation_seconds": t_gen,
        "val_rmse_h_mag": rmse,
    }
    emu = Emulator(nets, norms, constants, metadata, device=device)
    return TrainResult(emulator=emu, history=history, seconds=seconds, val_rmse_mag=rmse)
