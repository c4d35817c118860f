"""What a fit fits: the catalog, the forward model, the noise model, the cuts and the training configuration,
for a new run (:func:`new_problem`) or from the ``config.json`` of a run being resumed
(:func:`resumed_problem`); and the trainer built on them (:func:`build_trainer`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import __version__
from engine.catalog import check_redshift, open_catalog_stream
from engine.errors import PopsedError, RunDirError

from .choices import catalog_selection, estimate_selection, resolve_redshift
from .completeness import resolve_cuts
from .config import FitOptions, FitSpec, TrainConfig
from .error_floor import apply_error_floor, error_floors
from .forward import ForwardModel, is_forward_model, make_forward_model
from .noise import NoiseModel
from .observed import Observed, load_catalog, prepare_observed, want_stream
from .run import FORMAT_VERSION
from .rundir import RunDir, versions
from .selection import Cut, check_cuts, parse_selection
from .stream import StreamingTrainer, StreamOptions, prepare_streamed
from .trainer import Trainer

__all__ = ["FitProblem", "build_trainer", "new_problem", "resumed_problem"]


@dataclass
class FitProblem:
    """The inputs of a fit.  ``model_bands`` / ``z_max``: the arguments the forward model was built with
    (a worker rebuilds it from them and ``forward``, its description)."""

    cfg: TrainConfig
    cfg_json: dict
    cat: Any
    model: ForwardModel
    forward: dict
    model_bands: list
    z_max: float | None
    noise: NoiseModel | None
    cuts: list[Cut]
    stream: StreamOptions | None = None  # set when the catalog is streamed from its Parquet file
    custom_forward: bool = False  # the forward model was given as an object
    error_floor: dict | None = None  # mag per model band, added to the catalog's flux errors (error_floor.py)

    def floors(self) -> np.ndarray:
        """The error floor of each of the forward model's bands (mag; 0 where none)."""
        return np.array([float((self.error_floor or {}).get(b, 0.0)) for b in self.model.bands])


def _close_on_error(cat, exc: BaseException):
    if cat is not None and hasattr(cat, "close"):
        cat.close()
    raise exc


def resumed_problem(rd: RunDir, catalog, spec: FitSpec, dev: torch.device) -> FitProblem:
    """The problem of the run in ``rd`` (its ``config.json``); ``catalog``: the catalog, or None for the path
    stored in the run; ``spec.forward``: a forward-model object to use instead of the stored description."""
    cfg_json = rd.read_config()
    cfg = TrainConfig.from_dict(cfg_json["train"], cfg_json["format_version"])
    sopts = StreamOptions.from_dict(cfg_json["stream"]) if "stream" in cfg_json else None
    cat_src = catalog if catalog is not None else cfg_json["catalog"]["path"]
    read_options = cfg_json["catalog"].get("read_options") or {}
    if sopts is not None:
        cat = open_catalog_stream(str(cat_src), bands=cfg_json.get("catalog_bands", cfg_json["bands"]),
                                  chunk_rows=sopts.chunk_rows, **_stream_read_options(read_options))
    else:
        cat = load_catalog(cat_src, cfg_json.get("catalog_bands", cfg_json["bands"]), read_options)
    try:
        if cat.sha256 != cfg_json["catalog"]["sha256"]:
            raise RunDirError(f"the catalog's sha256 differs from the one {rd.path} was fitted to; resume "
                              "needs the same catalog")
        fw = cfg_json["forward"]
        z_max = cfg_json.get("z_max", spec.z_max)
        custom = is_forward_model(spec.forward)
        model = spec.forward if custom else make_forward_model(fw["kind"], cfg_json["bands"], dev, z_max,
                                                               fw.get("file"))[0]
        noise = NoiseModel.load(rd.path / "noise_model.json")
        cuts = parse_selection(cfg_json["selection"])
    except BaseException as exc:
        _close_on_error(cat, exc)
    return FitProblem(cfg, cfg_json, cat, model, fw, list(cfg_json["bands"]), z_max, noise, cuts, sopts,
                      custom, dict(cfg_json.get("error_floor") or {}))


def new_problem(catalog, cfg: TrainConfig, spec: FitSpec, options: FitOptions,
                dev: torch.device) -> FitProblem:
    """Read the catalog, build the forward model and fit the noise model of a new run."""
    sopts = StreamOptions.from_dict(options.stream_options) if want_stream(catalog, options.stream) else None
    if sopts is not None:
        want = None if spec.bands in (None, "auto") else spec.bands
        cat = open_catalog_stream(str(catalog), bands=want, chunk_rows=sopts.chunk_rows,
                                  **_stream_read_options(spec.read_options or {}))
    else:
        cat = load_catalog(catalog, spec.bands, spec.read_options)
    try:
        notices: list[str] = []
        cuts = parse_selection(_selection(spec.selection, cat, notices))
        check_cuts(cuts, cat.bands)
        cuts = resolve_cuts(cuts, None if sopts is not None else cat.flux, cat.bands, notices)
        model_bands = list(getattr(cat, "filters", None) or cat.bands)
        custom = is_forward_model(spec.forward)
        if custom:
            model, fdesc = spec.forward, {"kind": "custom", "class": type(spec.forward).__name__}
        else:
            model, fdesc = make_forward_model(spec.forward, model_bands, dev, spec.z_max, spec.emulator_path)
        if len(model.bands) != len(cat.bands):
            raise PopsedError(f"forward model bands {list(model.bands)} do not match the catalog bands "
                              f"{list(cat.bands)}")
        if fdesc.get("fallback"):
            notices.append(f"forward model: the direct SPS, as no emulator covers these bands "
                           f"({fdesc['fallback']}); train one with `popsed emulator train` for ~10x "
                           f"faster fits")
        cfg = _resolve_redshift(cfg, cat, model, sopts is not None, notices)
        floors = error_floors(spec.error_floor, cat.bands, model.bands)
        noise = None if sopts is not None else NoiseModel.fit(
            cat.flux, apply_error_floor(cat.flux, cat.flux_err, list(floors.values())), tuple(model.bands))
        p = FitProblem(cfg, {}, cat, model, fdesc, model_bands, spec.z_max, noise, cuts, sopts, custom,
                       floors)
        p.cfg_json = _new_config_json(p, dev, options)
        p.cfg_json["catalog"]["read_options"] = dict(spec.read_options or {})
        p.cfg_json["notices"] = notices
    except BaseException as exc:
        _close_on_error(cat, exc)
    return p


def _stream_read_options(read_options: dict) -> dict:
    """The read options a streamed catalog takes (its format is Parquet)."""
    return {k: v for k, v in read_options.items() if k != "format"}


def _selection(selection, cat, notices: list[str]):
    """The selection to apply: the one given, else the catalog's own (its metadata); without either, a
    notice when the catalog looks magnitude-limited (:func:`~.choices.estimate_selection`)."""
    if selection is not None:
        return selection
    own = catalog_selection(getattr(cat, "meta", None))
    if own is not None:
        notices.append(f"selection: {own} (from the catalog's metadata) -- pass --selection to use another")
        return own
    if hasattr(cat, "flux"):
        limit = estimate_selection(np.asarray(cat.flux), cat.bands)
        if limit is not None:
            notices.append(limit.notice())
    return None


def _z_range(model: ForwardModel) -> tuple[float, float] | None:
    """The forward model's redshift range, None when z is not one of its parameters."""
    names = list(model.param_names)
    if "z" not in names:
        return None
    row = torch.as_tensor(model.bounds).detach().cpu().double()[names.index("z")]
    return float(row[0]), float(row[1])


def _resolve_redshift(cfg: TrainConfig, cat, model: ForwardModel, streamed: bool,
                      notices: list[str]) -> TrainConfig:
    """``cfg`` with ``redshift="auto"`` resolved against the catalog's spec-z and the model's z range."""
    if cfg.redshift != "auto":
        return cfg
    z_range = _z_range(model)
    if z_range is None:
        return replace(cfg, redshift="free")
    mode, notice = resolve_redshift("auto", None if streamed else cat.z_spec, z_range, streamed=streamed)
    notices.append(notice)
    return replace(cfg, redshift=mode)


def _new_config_json(p: FitProblem, dev: torch.device, options: FitOptions) -> dict:
    """``config.json`` of a new run (``observed``, ``noise_floor`` and ``features`` are added when
    written)."""
    cfg, cat, model = p.cfg, p.cat, p.model
    bounds = torch.as_tensor(model.bounds).detach().cpu().double()
    z_range = _z_range(model)
    zmax_eff = None if z_range is None else z_range[1]
    if cfg.redshift == "observed" and hasattr(cat, "measured"):
        check_redshift(cat, float(bounds[0, 0]), zmax_eff)
    streaming = p.stream is not None
    cfg_json = {
        "format_version": FORMAT_VERSION,
        "popsed_version": __version__,
        "catalog": {"path": None if getattr(cat, "path", None) is None else str(Path(cat.path).resolve()),
                    "sha256": cat.sha256,
                    "n_rows": int(cat.n_file_rows if streaming else np.asarray(cat.flux).shape[0])},
        "bands": list(model.bands),
        "catalog_bands": list(cat.bands),
        "forward": p.forward, "loss": cfg.loss, "members": cfg.members, "steps": cfg.steps,
        "batch": cfg.batch,
        "seed": cfg.seed, "seeds": cfg.member_seeds(),
        "selection": [c.to_dict() for c in p.cuts], "error_floor": dict(p.error_floor or {}),
        "redshift": cfg.redshift, "z_max": zmax_eff,
        "param_names": list(model.param_names), "bounds": bounds.tolist(),
        "derived_names": list(getattr(model, "derived_names", ())),
        "device": str(dev), "versions": versions(), "train": cfg.to_dict(),
    }
    if streaming:
        cfg_json["stream"] = p.stream.to_dict()
    if options.distributed:
        cfg_json["execution"] = {"workers": options.workers, "scheduler": options.scheduler,
                                 "retries": int(options.retries)}
    return cfg_json


def _map_band(band, cat_bands, model_bands):
    """A selection band named as the catalog names it -> the forward model's name of that band."""
    if band in model_bands:
        return band
    if band in cat_bands:
        return model_bands[list(cat_bands).index(band)]
    return band


def build_trainer(p: FitProblem, rd: RunDir | None, dev: torch.device,
                  preview_every: int) -> tuple[Trainer, Observed]:
    """The observed rows and the trainer of problem ``p`` (its cuts renamed to the model's bands, and its
    noise model fitted in the streaming pass of a new streamed fit).  ``rd``: the run being resumed, None
    for a new run (whose trainer is built, so that all its inputs are checked, before anything is written)."""
    model, cfg = p.model, p.cfg
    bands = tuple(model.bands)
    p.cuts = [replace(c, band=_map_band(c.band, p.cat.bands, bands)) for c in p.cuts]
    if p.stream is not None:
        if rd is not None and rd.resuming:
            obs = rd.read_observed(bands, p.cfg_json)
        else:
            obs, p.noise = prepare_streamed(p.cat, bands, p.cuts, cfg, p.stream, floors=p.floors())
        trainer = StreamingTrainer(model, obs, p.noise, p.cuts, cfg, dev, p.cat, p.stream)
    else:
        obs = prepare_observed(p.cat.flux, p.cat.flux_err, bands, p.cat.z_spec, p.cuts, cfg.redshift,
                               cfg.val_fraction, cfg.seed)
        trainer = Trainer(model, obs, p.noise, p.cuts, cfg, dev)
    trainer.preview_every = preview_every
    return trainer, obs
