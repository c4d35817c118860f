"""``popsed emulator train|check|info``."""
from __future__ import annotations

import argparse
import json
import sys

from engine.errors import PopsedError


def add_subparser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("emulator", help="train, check or inspect a neural SED emulator")
    esub = p.add_subparsers(dest="emulator_command", metavar="ACTION")
    esub.required = True

    t = esub.add_parser("train", help="generate an SPS training set over the full box and train an emulator")
    t.add_argument("--bands", required=True, help="comma-separated speclite band names")
    t.add_argument("--n-train", type=int, required=True)
    t.add_argument("--out", required=True, help="emulator file to write (.pt)")
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--z-max", type=float, default=0.65)
    t.add_argument("--hidden", default="48,48,48", help="hidden layer widths of the basis network")
    t.add_argument(
        "--burst-hidden", default=None, help="hidden layer widths of the burst network (default: --hidden)"
    )
    t.add_argument(
        "--epochs",
        type=int,
        default=400,
        help="epoch cap; with --max-minutes, training (and its learning-rate decay) ends at whichever "
             "comes first",
    )
    t.add_argument("--batch", type=int, default=512)
    t.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time")
    t.add_argument("--check-n", type=int, default=20000, help="fresh θ for the accuracy stored in the file")
    t.add_argument(
        "--workers",
        type=int,
        default=None,
        help="generate the SPS training set in parallel chunks on a local dask cluster of N processes",
    )
    t.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="generate the SPS training set on an existing dask.distributed cluster")
    t.add_argument(
        "--chunk",
        type=int,
        default=100_000,
        help="galaxies per training-set chunk (with --workers/--scheduler)",
    )
    t.set_defaults(func=_train)

    c = esub.add_parser("check", help="accuracy and speed of an emulator against the direct SPS")
    c.add_argument("file")
    c.add_argument("--n", type=int, default=20000)
    c.add_argument("--seed", type=int, default=12345)
    c.add_argument("--device", default="auto")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_check)

    i = esub.add_parser("info", help="print an emulator file's metadata")
    i.add_argument("file")
    i.set_defaults(func=_info)


def _device(s: str):
    return None if s == "auto" else s


def _train(args) -> int:
    from engine.emulator.check import check_emulator, format_report
    from engine.emulator.model import save
    from engine.emulator.train import train_emulator

    bands = [b.strip() for b in args.bands.split(",") if b.strip()]
    if args.n_train < 1000:
        raise PopsedError(f"--n-train must be at least 1000, got {args.n_train}")
    try:
        hidden = tuple(int(h) for h in args.hidden.split(","))
        burst_hidden = tuple(int(h) for h in args.burst_hidden.split(",")) if args.burst_hidden else None
    except ValueError:
        raise PopsedError(f"--hidden must be comma-separated integers, got '{args.hidden}'") from None
    if args.workers is not None and args.scheduler:
        raise PopsedError("--workers and --scheduler exclude each other")
    if args.workers is not None and args.workers < 1:
        raise PopsedError(f"--workers must be >= 1, got {args.workers}")
    if args.chunk < 1:
        raise PopsedError(f"--chunk must be >= 1, got {args.chunk}")
    parallel = ({"workers": args.workers, "scheduler": args.scheduler, "chunk": args.chunk}
                if (args.workers or args.scheduler) else None)
    try:
        res = train_emulator(
            bands,
            args.n_train,
            seed=args.seed,
            device=_device(args.device),
            z_max=args.z_max,
            hidden=hidden,
            burst_hidden=burst_hidden,
            epochs=args.epochs,
            batch=args.batch,
            max_minutes=args.max_minutes,
            log=lambda s: print(s, file=sys.stderr),
            parallel=parallel,
        )
    except ValueError as exc:
        raise PopsedError(str(exc)) from None
    emu = res.emulator
    rep = check_emulator(emu, n=args.check_n, seed=args.seed + 1_000_003)
    emu.metadata["accuracy"] = {b: e["all"] for b, e in rep["bands"].items()}
    emu.metadata["accuracy_check"] = {"n": rep["n"], "seed": rep["seed"], "mag_max": rep["mag_max"]}
    save(args.out, emu)
    print(format_report(rep))
    print(f"wrote {args.out} (trained in {res.seconds / 60:.1f} min)")
    return 0


def _check(args) -> int:
    from engine.emulator.check import check_emulator, format_report
    from engine.emulator.model import load

    emu = load(args.file, device=_device(args.device))
    rep = check_emulator(emu, n=args.n, seed=args.seed)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def _info(args) -> int:
    from engine.emulator.model import load

    emu = load(args.file, device="cpu")
    print(json.dumps(emu.metadata, indent=2))
    return 0
