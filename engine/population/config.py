"""Configuration of a population fit: the science (:class:`TrainConfig`, stored in ``config.json``), the
problem's inputs (:class:`FitSpec`: bands, selection, forward model) and how the fit is run
(:class:`FitOptions`: output, resume, checkpoint cadence, execution).

:func:`split_fit_kwargs` maps the keyword style of :func:`engine.population.fit` (``members=2,
workers=2, bands=...``) onto the three.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from engine.errors import PopsedError

from .error_floor import parse_error_floor
from .flow import FlowConfig
from .losses import LOSSES, BlurSchedule
from .run import FORMAT_VERSION

__all__ = ["LEGACY", "LEGACY_BY_FORMAT", "FitOptions", "FitSpec", "TrainConfig", "split_fit_kwargs"]


#: per run format version: the value of a TrainConfig field for runs of that format written before the field
#: existed (the default then), so that an old run resumes with the behaviour it was trained with
LEGACY_BY_FORMAT: dict[int, dict] = {1: {"whiten": 0.0, "best_from": 0.0, "ema": 0.0, "z_weight": 1.0,
                                         "entropy": 0.0, "redshift": "free"}}
#: (fields that only change what is reported, ``converge_floor`` and ``plateau_tol``, are not migrated: an old
#: run is reported with today's definition of convergence, :mod:`engine.population.convergence`)
#: the migrations of the current format
LEGACY = LEGACY_BY_FORMAT[FORMAT_VERSION]


@dataclass
class TrainConfig:
    """Everything that defines training (stored in ``config.json``)."""

    members: int = 4
    steps: int = 1000
    batch: int = 4096
    loss: str = "sliced"
    n_proj: int = 256
    sliced_p: int = 2
    val_proj: int = 512
    lr: float = 2e-3
    lr_schedule: str = "onecycle"  # onecycle | constant
    pct_start: float = 0.1
    grad_clip: float = 10.0
    noise_ramp: float = 0.3  # fraction of training over which the noise amplitude goes 0 -> 1
    noise_shape: str = "linear"  # linear | reference (1 / (1 + 30 exp(-12 t)))
    blur_stages: list = field(default_factory=lambda: [[0.0625, 0.3], [0.125, 0.2], [0.1875, 0.1],
                                                       [0.25, 0.05]])
    blur_final: float = 0.002
    sinkhorn_scaling: float = 0.8
    val_fraction: float = 0.15
    val_every: int = 10
    val_draw_factor: float = 2.0
    colours: bool = True
    # share of the sliced (and validation) projections drawn whitened (objective.Objective.directions)
    whiten: float = 0.5
    redshift: str = "auto"  # free | observed | auto (observed when every row has a usable spec-z; choices.py)
    max_draw_factor: float = 8.0
    soft_selection: bool = True
    soft_width: float = 0.05  # floor of the smooth selection width, relative to the flux at the cut
    selection_pull: float = 0.0
    entropy: float = 3e-3  # weight of the -entropy term (maximum-entropy preference among equally good fits)
    entropy_samples: int = 1024
    z_weight: float = 3.0  # weight of the observed-redshift column in the loss (``--redshift observed``)
    ema: float = 0.98  # decay per step of the flow-weight average used for validation and results (0: off)
    # the kept state: best validation at steps >= best_from * (steps - 1); 1: the final state
    best_from: float = 1.0
    obs_cap: int = 50000
    converge_factor: float = 1.5  # members kept (pooled): validation loss <= this x the ensemble's best
    # converged: validation loss <= this x the noise floor (convergence.ensemble_report)
    converge_floor: float = 2.0
    # converged: validation loss decreased by < this over the last third (convergence.plateau)
    plateau_tol: float = 0.02
    diverge_nonfinite: int = 25
    population_samples: int = 10000
    seed: int = 0
    flow: FlowConfig = field(default_factory=FlowConfig)

    def __post_init__(self):
        if isinstance(self.flow, dict):
            self.flow = FlowConfig.from_dict(self.flow)
        if self.loss not in LOSSES:
            raise PopsedError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.redshift not in ("free", "observed", "auto"):
            raise PopsedError(f"--redshift must be 'auto', 'free' or 'observed', got {self.redshift!r}")
        if self.members < 1 or self.steps < 1 or self.batch < 2:
            raise PopsedError("members and steps must be >= 1 and batch >= 2")
        if self.lr_schedule not in ("onecycle", "constant"):
            raise PopsedError(f"unknown lr schedule {self.lr_schedule!r}")
        if not self.lr > 0:
            raise PopsedError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.noise_ramp <= 1.0:
            raise PopsedError(f"noise_ramp must be in [0, 1] (a fraction of training), got {self.noise_ramp}")
        if not self.val_every >= 1:
            raise PopsedError(f"val_every must be >= 1 (steps), got {self.val_every}")
        if not 0.0 < self.val_fraction < 1.0:
            raise PopsedError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.entropy >= 0:
            raise PopsedError(f"entropy must be >= 0, got {self.entropy}")
        if not self.population_samples >= 1:
            raise PopsedError(f"population_samples must be >= 1, got {self.population_samples}")
        if not 0.0 <= self.best_from <= 1.0:
            raise PopsedError(f"best_from must be in [0, 1] (a fraction of training), got {self.best_from}")
        if not 0.0 <= self.ema < 1.0:
            raise PopsedError(f"ema must be in [0, 1), got {self.ema}")
        if not self.z_weight > 0:
            raise PopsedError(f"z_weight must be > 0, got {self.z_weight}")
        self.whiten = float(self.whiten)
        if not 0.0 <= self.whiten <= 1.0:
            raise PopsedError("whiten must be in [0, 1] (the share of whitened projections), got "
                              f"{self.whiten}")
        if not self.converge_floor >= 1.0:
            raise PopsedError("converge_floor must be >= 1 (a multiple of the noise floor), got "
                              f"{self.converge_floor}")
        if not self.plateau_tol >= 0.0:
            raise PopsedError(f"plateau_tol must be >= 0 (a relative decrease), got {self.plateau_tol}")
        if not self.converge_factor >= 1.0:
            raise PopsedError(f"converge_factor must be >= 1, got {self.converge_factor}")
        if self.noise_shape not in ("linear", "reference"):
            raise PopsedError(f"unknown noise ramp shape {self.noise_shape!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flow"] = self.flow.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, format_version: int = FORMAT_VERSION) -> TrainConfig:
        """From ``config.json``'s ``train`` of a run of format ``format_version``; a config written before a
        field existed keeps the behaviour it was trained with (:data:`LEGACY_BY_FORMAT`), not today's
        default."""
        if format_version not in LEGACY_BY_FORMAT:
            raise PopsedError(f"run format version {format_version!r} is not known (this popsed reads "
                              f"{', '.join(map(str, sorted(LEGACY_BY_FORMAT)))})")
        legacy = LEGACY_BY_FORMAT[format_version]
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**{k: v for k, v in legacy.items() if k not in known}, **known})

    def member_seeds(self) -> list[int]:
        ss = np.random.SeedSequence(int(self.seed)).spawn(self.members)
        return [int(s.generate_state(1, dtype=np.uint32)[0]) for s in ss]

    # ---- schedules (pure functions of the step) ----
    def lr_at(self, step: int) -> float:
        if self.lr_schedule == "constant" or self.steps < 2:
            return self.lr
        # one-cycle (as torch's OneCycleLR with cosine phases): lr/25 -> lr -> lr/25/1e4
        t = step / (self.steps - 1)
        lo0, lo1 = self.lr / 25.0, self.lr / 25.0 / 1e4
        if t < self.pct_start:
            x = t / self.pct_start
            return lo0 + (self.lr - lo0) * 0.5 * (1 - math.cos(math.pi * x))
        x = (t - self.pct_start) / max(1e-12, 1 - self.pct_start)
        return lo1 + (self.lr - lo1) * 0.5 * (1 + math.cos(math.pi * x))

    def noise_at(self, step: int) -> float:
        ramp_steps = self.noise_ramp * self.steps
        if ramp_steps <= 0:
            return 1.0
        t = step / ramp_steps
        if t >= 1:
            return 1.0
        if self.noise_shape == "linear":
            return float(t)
        return float(1.0 / (1.0 + 30.0 * math.exp(-12.0 * t)))

    def blur_at(self, step: int) -> float | None:
        if self.loss != "sinkhorn":
            return None
        return BlurSchedule([tuple(s) for s in self.blur_stages], self.blur_final)(step, self.steps)


@dataclass
class FitSpec:
    """What is fitted besides the catalog: its bands, the selection and the forward model.

    ``bands``: ``"auto"`` (every band of the catalog) or names; ``selection``: e.g. ``"sdss2010-r<19.8"`` or a
    list of cuts; ``forward``: ``auto``/``emulator``/``sps``/``MODULE:FACTORY`` or a forward-model object
    (:class:`~engine.population.forward.ForwardModel`); ``z_max``: the SPS's upper redshift bound;
    ``emulator_path``: an emulator file instead of the packaged one; ``read_options``: how to read the
    catalog file (``columns``: a column map, ``flux_unit``, ``extinction``, ``format``; the keywords of
    :func:`engine.catalog.read_catalog`), recorded in the run so that ``--resume`` reads it the same way;
    ``error_floor``: a systematic error floor (mag) added to the catalog's flux errors, one value or per band
    (:mod:`~engine.population.error_floor`; default 0).  Without a selection, the one a catalog carries in
    its metadata (``popsed mock`` writes it) is used.
    """

    bands: Any = "auto"
    selection: Any = None
    forward: Any = "auto"
    z_max: float = 0.65
    emulator_path: Any = None
    read_options: dict | None = None
    error_floor: Any = 0.0

    def __post_init__(self):
        parse_error_floor(self.error_floor)
        allowed = {"columns", "flux_unit", "extinction", "format"}
        unknown = sorted(set(self.read_options or {}) - allowed)
        if unknown:
            raise PopsedError(f"unknown catalog read option(s) {', '.join(unknown)}: use "
                              f"{', '.join(sorted(allowed))}")


@dataclass
class FitOptions:
    """How a fit is run; none of it changes the numbers.

    Output: ``resume`` (continue the run directory from its checkpoints), ``overwrite`` (replace it);
    ``checkpoint_every`` steps or ``checkpoint_seconds``; ``preview_every`` steps (dashboard preview).
    Execution: ``device``; ``workers`` (a local dask cluster of that many processes), ``scheduler``
    (``tcp://HOST:PORT``) or ``client`` (a ``distributed.Client``), ``retries`` of a failed member task;
    ``stream`` (``auto``/``on``/``off``) and ``stream_options``
    (:class:`~engine.population.stream.StreamOptions`
    fields) for large Parquet catalogs; ``progress`` (a progress bar, :func:`~engine.population.fit` only).
    """

    device: Any = "auto"
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 50
    checkpoint_seconds: float = 30.0
    preview_every: int = 25
    workers: int | None = None
    scheduler: str | None = None
    client: Any = None
    retries: int = 2
    stream: str | bool = "auto"
    stream_options: dict | None = None
    progress: bool = False

    def __post_init__(self):
        if self.resume and self.overwrite:
            raise PopsedError("--resume and --overwrite exclude each other")
        if not self.checkpoint_every >= 1:
            raise PopsedError(f"checkpoint_every must be >= 1 (steps), got {self.checkpoint_every}")
        if not self.checkpoint_seconds > 0:
            raise PopsedError(f"checkpoint_seconds must be > 0, got {self.checkpoint_seconds}")
        if not self.preview_every >= 0:
            raise PopsedError(f"preview_every must be >= 0 (0: no previews), got {self.preview_every}")
        if not self.retries >= 0:
            raise PopsedError(f"retries must be >= 0, got {self.retries}")
        if self.workers is not None and not self.workers >= 1:
            raise PopsedError(f"workers must be >= 1, got {self.workers}")
        if self.stream not in ("auto", "on", "off", "yes", "no", "always", "never", True, False, None):
            raise PopsedError(f"stream must be auto, on or off, got {self.stream!r}")

    @property
    def distributed(self) -> bool:
        """Whether the members run as dask tasks."""
        return bool(self.workers or self.scheduler or self.client is not None)


def split_fit_kwargs(kwargs: dict, options: FitOptions | None = None, spec: FitSpec | None = None
                     ) -> tuple[dict, FitOptions, FitSpec]:
    """Sort keyword arguments into :class:`TrainConfig` keywords, :class:`FitOptions` and :class:`FitSpec`
    (those given override the fields of ``options`` / ``spec``).  The TrainConfig keywords are returned as
    a dict: the config is built (and checked) only when a new run starts, as a resumed run reads its own."""
    opt_names = {f.name for f in fields(FitOptions)}
    spec_names = {f.name for f in fields(FitSpec)}
    opts = {k: v for k, v in kwargs.items() if k in opt_names}
    sp = {k: v for k, v in kwargs.items() if k in spec_names}
    rest = {k: v for k, v in kwargs.items() if k not in opt_names and k not in spec_names}
    options = FitOptions(**{**(_shallow_dict(options) if options else {}), **opts})
    spec = FitSpec(**{**(_shallow_dict(spec) if spec else {}), **sp})
    return rest, options, spec


def _shallow_dict(obj) -> dict:
    """A dataclass's fields as a dict, without copying their values (``dataclasses.asdict`` deep-copies)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
