"""Population inference: normalizing-flow ensembles fitted to photometric catalogs.

Public API
----------
- :func:`fit` (returns a :class:`Run`) and :func:`iter_fit` (the event iterator, for notebooks and the
  dashboard): fit a catalog into a run directory (docs/run_format.md);
- :class:`Run`: read a run directory (config, history, population, summary, flows);
- building blocks: :class:`PopulationFlow` / :class:`FlowConfig` (flow.py; its splines in spline.py),
  :class:`BoxBijection` (bounds.py), :func:`sliced_wasserstein` / :class:`SinkhornLoss` (losses.py),
  :class:`NoiseModel` / :func:`asinh_mag` (noise.py), :func:`parse_selection` / :func:`selection_mask`
  (selection.py), :class:`Trainer` (trainer.py), :class:`TrainConfig` / :class:`FitOptions` /
  :class:`FitSpec` (config.py), :class:`ForwardModel` / :func:`make_forward_model` (forward.py),
  :class:`Objective` (objective.py).
"""
from .api import fit, iter_fit
from .bounds import BoxBijection
from .config import FitOptions, FitSpec, TrainConfig
from .flow import FlowConfig, PopulationFlow
from .forward import ForwardModel, make_forward_model
from .losses import SinkhornLoss, sliced_wasserstein
from .noise import NoiseModel, asinh_mag
from .objective import Objective
from .run import Run
from .selection import Cut, parse_selection, selection_mask
from .trainer import Trainer

__all__ = ["fit", "iter_fit", "Run", "BoxBijection", "FlowConfig", "PopulationFlow", "SinkhornLoss",
           "sliced_wasserstein", "NoiseModel", "asinh_mag", "Cut", "parse_selection", "selection_mask",
           "TrainConfig", "Trainer", "FitOptions", "FitSpec", "ForwardModel", "make_forward_model",
           "Objective"]
