"""Seconds per population-training step, 10^4 predicted vs 10^4 observed points, two configurations
measured in the same run:

(a) the default: coupling rational-quadratic NSF (engine.population.flow.FlowConfig()) + emulator +
    sliced Wasserstein (fresh projections every step);
(b) the reference paper's configuration (its code): 20 RQ coupling layers each followed by an LU-linear
    layer, ResidualNet conditioners of 100 hidden units, 60 bins, tail bound 3; 10^4 samples per step;
    geomloss Sinkhorn p=1, scaling 0.9, at its final blur 0.002 (tensorized backend unless KeOps is
    installed).

Both run the real trainer step (engine.population.trainer.Trainer.step: flow sampling, forward model,
noise, asinh magnitudes + colours, loss, backward, Adam) through the *same* forward model, so the ratio
is about the flow and the loss.  The forward model is the packaged emulator when its file exists,
otherwise an emulator-sized MLP stand-in (4 x 256 hidden, Speculator activation), reported as such.
Peak memory: each configuration runs in its own child process; reported as the child's peak RSS
(CPU) and torch.cuda.max_memory_allocated (CUDA).

    python bench/train_step.py [--n 10000] [--reps 5] [--ref-reps 1] [--device auto] [--json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BANDS = ("sdss2010-u", "sdss2010-g", "sdss2010-r", "sdss2010-i", "sdss2010-z")


class EmulatorStandIn:
    """An untrained MLP with the emulator's size and the forward-model protocol (timing only)."""

    derived_names = ()

    def __init__(self, device):
        import torch

        from engine.sps.params import PARAM_NAMES, param_bounds

        self.bands = BANDS
        self.param_names = PARAM_NAMES
        b = param_bounds(0.65)
        self.bounds = torch.tensor([b[n] for n in PARAM_NAMES], device=device)
        g = torch.Generator().manual_seed(0)
        dims = [11, 256, 256, 256, 256, len(BANDS)]
        self.w = [
            (torch.randn(i, o, generator=g) / i**0.5).to(device)
            for i, o in zip(dims[:-1], dims[1:], strict=True)
        ]
        self.b = [torch.zeros(o, device=device) for o in dims[1:]]
        self.beta = [torch.ones(o, device=device) for o in dims[1:-1]]

    def fluxes(self, theta):
        import torch

        x = 2 * (theta - self.bounds[:, 0]) / (self.bounds[:, 1] - self.bounds[:, 0]) - 1
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            x = x @ w + b
            if i < len(self.beta):
                x = (0.5 + 0.5 * torch.sigmoid(self.beta[i] * x)) * x
        mag = 19.0 + 0.5 * x - 2.5 * (theta[:, 1:2] - 10.5) + 5 * torch.log10(theta[:, :1] / 0.1 + 1e-3)
        return torch.pow(10.0, -0.4 * (mag - 22.5))

    def derived(self, theta):
        return {}


def _forward_model(device):
    try:
        import engine.emulator as em

        path = em.default_emulator_path()
        if path.is_file():
            return em.load(path, device=device, bands=BANDS), f"emulator ({path.name})"
    except Exception:
        pass
    return EmulatorStandIn(device), "emulator-sized MLP stand-in (no emulator file found)"


def _measure(config: str, n: int, reps: int, device: str, threads: int, q):
    import torch

    from engine.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    if threads:
        torch.set_num_threads(threads)
    import numpy as np

    from engine.population.config import TrainConfig
    from engine.population.flow import REFERENCE_FLOW, FlowConfig
    from engine.population.forward import resolve_device
    from engine.population.noise import NoiseModel
    from engine.population.observed import prepare_observed
    from engine.population.trainer import Trainer

    dev = resolve_device(device)
    model, fdesc = _forward_model(dev)
    # an observed catalog of n training rows (+1 % validation) from a broad population
    m = n + max(5, n // 100)
    vf = (m - n) / m
    g = torch.Generator(device="cpu").manual_seed(1)
    lo, hi = model.bounds[:, 0].cpu(), model.bounds[:, 1].cpu()
    theta = lo + (hi - lo) * (0.2 + 0.6 * torch.rand(m, len(lo), generator=g))
    with torch.no_grad():
        f = model.fluxes(theta.to(dev)).double().cpu().numpy()
    rng = np.random.default_rng(2)
    err = np.sqrt(0.05**2 + 0.01 * np.clip(f, 0, None))
    obs_f = f + err * rng.normal(size=f.shape)
    nm = NoiseModel.fit(obs_f, err, model.bands)
    if config == "default":
        cfg = TrainConfig(members=1, steps=10**6, batch=n, loss="sliced", flow=FlowConfig(), val_every=10**9,
                          val_fraction=vf, noise_ramp=0.0)
    else:
        cfg = TrainConfig(
            members=1,
            steps=10**6,
            batch=n,
            loss="sinkhorn",
            flow=REFERENCE_FLOW,
            val_every=10**9,
            val_fraction=vf,
            noise_ramp=0.0,
            blur_stages=[],
            blur_final=0.002,
            sinkhorn_scaling=0.9,
        )
    obs = prepare_observed(obs_f, err, model.bands, None, [], "free", cfg.val_fraction, 0)
    tr = Trainer(model, obs, nm, [], cfg, dev)
    ms = tr.new_member(0)
    ms.step = 1  # skip the step-0 validation
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        ev = tr.step(ms)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    out = {
        "config": config,
        "seconds": times,
        "median_s": float(np.median(times)),
        "min_s": float(np.min(times)),
        "n_pred": n,
        "n_obs": int(tr.x_train.shape[0]),
        "features": int(tr.x_train.shape[1]),
        "forward": fdesc,
        "flow": cfg.flow.to_dict(),
        "loss": cfg.loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_setup_mb": rss_setup,
        "train_loss": ev["train_loss"],
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "flow_parameters": sum(p.numel() for p in ms.flow.parameters()),
    }
    if cfg.loss == "sinkhorn":
        out["sinkhorn"] = {"p": 1, "blur": 0.002, "scaling": 0.9,
                           "backend": tr.objective.train_loss.fn.backend}
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    q.put(out)


def run_child(config, n, reps, device, threads):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(config, n, reps, device, threads, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="points per side (default 10^4)")
    ap.add_argument("--reps", type=int, default=5, help="timed steps of the default configuration")
    ap.add_argument("--ref-reps", type=int, default=1, help="timed steps of the reference configuration")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.time()
    default = run_child("default", a.n, a.reps, a.device, a.threads)
    reference = run_child("reference", a.n, a.ref_reps, a.device, a.threads)
    ratio = reference["median_s"] / default["median_s"]
    res = {"default": default, "reference": reference, "ratio": ratio, "target_ratio": 100,
           "cpu_count": os.cpu_count(), "wall_s": time.time() - t0}
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        for r in (default, reference):
            print(f"{r['config']:>9}: {r['median_s']:.3f} s/step (median of {len(r['seconds'])}; "
                  f"{r['loss']}, flow {r['flow_parameters']} params), peak RSS {r['peak_rss_mb']:.0f} MB"
                  + (f", CUDA peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""))
        print(
            f"forward model: {default['forward']}; {a.n} vs {default['n_obs']} points in "
            f"{default['features']}-d"
        )
        print(f"ratio reference/default: {ratio:.1f}x (target >= 100x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
