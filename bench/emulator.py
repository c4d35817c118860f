"""Emulator vs direct SPS: throughput (forward + backward through θ, batch 10⁴) in one run.

    python bench/emulator.py [--file engine/data/emulator_sdss_galex.pt] [--batch 10000]
                             [--device auto] [--json]

Also reports the shipped file's training time and stored accuracy (from its metadata).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fwd_bwd_rates(models: dict, theta: torch.Tensor, repeats: int) -> dict[str, float]:
    """Best galaxies/s of forward + backward of each model, timed in turns (model A, model B, A, B, …) so that
    a slow spell of the machine falls on all of them alike."""

    def once(model):
        t = theta.clone().requires_grad_(True)
        model.magnitudes(t).clamp(max=60).sum().backward()
        if t.is_cuda:
            torch.cuda.synchronize()

    for model in models.values():
        once(model)
    best = {name: float("inf") for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            once(model)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: theta.shape[0] / b for name, b in best.items()}


def main(argv=None) -> int:
    from engine.emulator import default_emulator_path, load
    from engine.emulator.dataset import uniform_theta
    from engine.runtime import tune_cpu_allocator

    tuned = tune_cpu_allocator()  # for both models alike (see engine/runtime.py)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=str(default_emulator_path()))
    ap.add_argument("--batch", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    emu = load(args.file, device=None if args.device == "auto" else args.device)
    theta = uniform_theta(emu.bounds, args.batch, torch.Generator().manual_seed(0)).to(emu.device, emu.dtype)
    rates = fwd_bwd_rates({"emulator": emu, "sps": emu.sps}, theta, args.repeats)
    r_emu, r_sps = rates["emulator"], rates["sps"]
    meta = emu.metadata
    out = {
        "device": str(emu.device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "allocator_tuned": tuned,
        "emulator_fwd_bwd_gal_per_s": r_emu,
        "sps_fwd_bwd_gal_per_s": r_sps,
        "ratio": r_emu / r_sps,
        "training_minutes": meta.get("training_seconds", float("nan")) / 60,
        "n_train": meta.get("n_train"),
        "accuracy": meta.get("accuracy"),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"forward+backward, batch {args.batch}, {out['device']} ({out['threads']} threads):")
        print(
            f"  emulator {r_emu:10.0f} gal/s\n  SPS      {r_sps:10.0f} gal/s\n  ratio    "
            f"{r_emu / r_sps:10.1f}x"
        )
        print(
            f"shipped emulator: {out['n_train']} training galaxies, trained in "
            f"{out['training_minutes']:.1f} min"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
