"""``popsed fit`` and ``popsed summary``."""
from __future__ import annotations

import sys
from pathlib import Path

from engine.catalog.cli import add_catalog_arguments, parse_extinction
from engine.errors import PopsedError, RunDirError

from .api import fit
from .run import Run, dumps


def add_subparser(sub) -> None:
    p = sub.add_parser("fit", help="fit the population behind a catalog (flow ensemble) into a run directory",
                       description="Fit an ensemble of normalizing flows to the population behind CATALOG; "
                                   "write the run directory RUN (docs/run_format.md).")
    p.add_argument("catalog", help="catalog file (FITS/ECSV/CSV/HDF5/Parquet)")
    p.add_argument("--out", required=True, help="run directory to create (or resume)")
    p.add_argument("--bands", default="auto",
                   help="auto (every band in the catalog) or B1,B2,... (speclite names)")
    p.add_argument("--members", type=int, default=4, help="ensemble size K (default 4)")
    p.add_argument("--steps", type=int, default=1000, help="training steps per member (default 1000)")
    p.add_argument("--batch", type=int, default=4096, help="predicted samples per step (default 4096)")
    p.add_argument("--loss", choices=("sliced", "sinkhorn"), default="sliced")
    p.add_argument("--forward", default="auto",
                   help="emulator | sps | auto (emulator when available, else sps) | MODULE:FACTORY")
    p.add_argument("--emulator", default=None, help="emulator file (default: the packaged one)")
    add_catalog_arguments(p, bands=False, min_rows=False)
    p.add_argument("--redshift", choices=("auto", "free", "observed"), default="auto",
                   help="observed: fit the catalog's spec-z; free: photometric redshifts; auto (default): "
                        "observed when every row has a spec-z inside the model's redshift range, else free "
                        "(the choice is printed)")
    p.add_argument("--selection", action="append", default=None,
                   help="selection cut, e.g. sdss2010-r<19.8 (repeat, or comma-separate, for several); "
                        "sdss2010-r<17.77~0.1: a logistic completeness of width 0.1 mag instead of a hard "
                        "cut (the catalog's rows are not cut by it); sdss2010-r<fit: its position and "
                        "width fitted from the catalog's histogram (printed and recorded); default: the "
                        "catalog's own (written by popsed mock), else none -- a catalog that looks "
                        "magnitude-limited gets a suggestion")
    p.add_argument("--error-floor", default=None, metavar="MAG",
                   help="systematic error floor (mag) added in quadrature to the catalog's flux errors "
                        "before the noise model is fitted, one value (0.02) or per band "
                        "(sdss2010-u=0.05,sdss2010-g=0.02); default 0 (the catalog's errors as they are; "
                        "a recommended floor depends on the catalog and the SPS and is not measured "
                        "here)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--z-max", type=float, default=0.65, help="upper redshift bound of the SPS (default 0.65)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    p.add_argument("--noise-ramp", type=float, default=None,
                   help="fraction of training over which noise ramps 0 -> 1")
    p.add_argument("--entropy", type=float, default=None,
                   help="weight of the maximum-entropy term E_q[log q] (default 3e-3; 0: off). It prefers, "
                        "among populations that fit equally well, the least committal one (a uniform prior "
                        "over the parameter box in variational form). Along directions the photometry does "
                        "not constrain (e.g. grey dust against mass with optical bands only) the population "
                        "stays about as broad as the initial flow, with or without it")
    p.add_argument("--ema", type=float, default=None,
                   help="decay per step of the flow-weight average that is validated and kept (default 0.98, "
                        "about the last 50 steps; 0: off, single iterates)")
    p.add_argument("--best-from", type=float, default=None, metavar="FRACTION",
                   help="keep each member's state of lowest validation loss among the steps after this "
                        "fraction of training (default 1: the final state; 0: the best of the whole run, "
                        "which can be an undertrained early state whose validation loss is lower only "
                        "through its scatter)")
    p.add_argument("--z-weight", type=float, default=None,
                   help="weight of the spec-z column in the loss with --redshift observed (default 3, the "
                        "weight of the nine photometric columns together; 1: one column among ten)")
    p.add_argument("--whiten", type=float, default=None, metavar="SHARE",
                   help="share of the sliced-Wasserstein projections drawn in the whitened photometric "
                        "space, where every independent colour direction weighs as much as overall "
                        "brightness (default 0.5; 0: all in the standardised magnitudes and colours, where "
                        "brightness dominates; 1: all whitened; used by the sliced loss and the validation "
                        "loss)")
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps (default 10)")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="checkpoint every N steps (and every 30 s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=None,
                   help="train the members in parallel on a local dask cluster of N worker processes")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="train the members on an existing dask.distributed cluster")
    p.add_argument("--retries", type=int, default=2,
                   help="retries of a failed member task (with --workers/--scheduler)")
    p.add_argument("--stream", choices=("auto", "on", "off"), default="auto",
                   help="stream a Parquet catalog from the file instead of reading it whole "
                        "(auto: above 2 million rows)")
    p.set_defaults(func=_cmd_fit)

    s = sub.add_parser("summary", help="summarise a run directory",
                       description="Per-parameter 16/50/84 percentiles of the pooled population, per-member "
                                   "status and losses.")
    s.add_argument("run", help="run directory")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_cmd_summary)


def _cmd_fit(args) -> int:
    if args.resume and args.overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if args.workers is not None and args.scheduler:
        raise PopsedError("--workers and --scheduler exclude each other (the scheduler's cluster has its own "
                          "workers)")
    if args.workers is not None and args.workers < 1:
        raise PopsedError(f"--workers must be >= 1, got {args.workers}")
    opts = {}
    if args.lr is not None:
        opts["lr"] = args.lr
    if args.noise_ramp is not None:
        opts["noise_ramp"] = args.noise_ramp
    if args.entropy is not None:
        if not args.entropy >= 0:
            raise PopsedError(f"--entropy must be >= 0, got {args.entropy}")
        opts["entropy"] = args.entropy
    if args.val_every is not None:
        opts["val_every"] = args.val_every
    for key in ("ema", "z_weight", "whiten", "best_from"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    try:
        run = fit(args.catalog, args.out, bands=args.bands, members=args.members, steps=args.steps,
                  batch=args.batch,
                  loss=args.loss, forward=args.forward, emulator_path=args.emulator, redshift=args.redshift,
                  selection=args.selection, error_floor=args.error_floor, device=args.device, seed=args.seed,
                  resume=args.resume,
                  overwrite=args.overwrite, z_max=args.z_max, checkpoint_every=args.checkpoint_every,
                  progress=not args.no_progress, workers=args.workers, scheduler=args.scheduler,
                  retries=args.retries, stream=args.stream, read_options=_read_options(args),
                  notify=lambda notice: print(f"popsed fit: {notice}", file=sys.stderr), **opts)
    except KeyboardInterrupt:
        print(f"popsed fit: interrupted; a checkpoint is in {args.out}; continue with "
              "--resume", file=sys.stderr)
        return 130
    print(complete_line(run.path, run.summary()))
    return 0


def _read_options(args) -> dict:
    """How to read the catalog file: the ``popsed catalog`` options given to ``popsed fit``."""
    opts = {"columns": args.columns, "flux_unit": args.flux_unit,
            "extinction": parse_extinction(args.extinction), "format": args.format}
    if opts["columns"] is not None:
        opts["columns"] = str(Path(opts["columns"]).resolve())  # --resume may run from elsewhere
    return {k: v for k, v in opts.items() if v is not None}


def complete_line(path, s: dict) -> str:
    """The last line of ``popsed fit``: how many members converged (never "converged" for one that did
    not)."""
    members = s.get("members") or []
    n_conv = sum(1 for m in members if m.get("status") == "converged")
    dropped = s.get("dropped") or []
    pooled = f"; {len(dropped)} left out of the population" if dropped else ""
    return (f"run complete: {path} ({len(members)} member{'s' if len(members) != 1 else ''}: {n_conv} "
            f"converged, {len(members) - n_conv} not converged{pooled} — see popsed summary {path})")


def format_summary(s: dict, cfg: dict | None = None) -> str:
    lines = []
    if cfg:
        lines.append(f"run: {cfg.get('catalog', {}).get('path')}  bands {','.join(cfg.get('bands', []))}  "
                     f"loss {cfg.get('loss')}  members {cfg.get('members')}  steps {cfg.get('steps')}")
        floor = {b: v for b, v in (cfg.get("error_floor") or {}).items() if v}
        lines.append("error floor (mag, in quadrature with the catalog's errors): "
                     + (", ".join(f"{b} {v:g}" for b, v in floor.items()) if floor else "none"))
    lines.append(f"status: {s.get('status')}")
    if s.get("noise_floor") is not None:
        lines.append(f"noise floor (val vs train): {s['noise_floor']:.4g}")
    if s.get("converge_floor") is not None:
        lines.append(f"converged: validation loss <= {s['converge_floor']:g}x the noise floor and a decrease "
                     f"< {s.get('plateau_tol', 0):.0%} over the last third of training")
    lines.append("members:")
    for m in s.get("members", []):
        bits = [f"  {m['member']}: {m.get('status')}"]
        if "kept" in m:
            bits.append("pooled" if m["kept"] else "not pooled")
        for key in ("best_val_loss", "final_val_loss", "train_loss"):
            if m.get(key) is not None:
                bits.append(f"{key} {m[key]:.4g}")
        if m.get("floor_ratio") is not None:
            bits.append(f"{m['floor_ratio']:.2f}x floor")
        if m.get("plateau") is not None:
            bits.append(f"last-third decrease {m['plateau']:.1%}")
        for key in ("best_step", "step", "seconds"):
            if m.get(key) is not None:
                bits.append(f"{key} {m[key]}")
        if m.get("note"):
            bits.append(f"({m['note']})")
        lines.append("  ".join(bits))
    for n in s.get("notes", []) or []:
        lines.append(f"note: {n}")
    pct = s.get("percentiles")
    if pct:
        lines.append(f"pooled population ({s.get('n_population')} samples): 16 / 50 / 84th percentiles")
        w = max(len(k) for k in pct)
        for k, v in pct.items():
            lines.append(f"  {k:<{w}}  {v['p16']:10.4g} {v['p50']:10.4g} {v['p84']:10.4g}")
    return "\n".join(lines)


def _cmd_summary(args) -> int:
    run = Run(args.run)
    s = run.summary()
    if args.json:
        print(dumps(s, indent=1))
    else:
        print(format_summary(s, run.config))
    return 0
