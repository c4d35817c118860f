"""Differentiable stellar population synthesis (Li et al. 2023, arXiv:2309.16958, Sect. 2).

Modules, one per concept: :mod:`~engine.sps.params` (θ names, ranges, validation),
:mod:`~engine.sps.ssp` (BC03/MILES grids), :mod:`~engine.sps.sfh` (star-formation
histories), :mod:`~engine.sps.dust` (attenuation curves), :mod:`~engine.sps.cosmology`
(distances and ages), :mod:`~engine.sps.photometry` (filters, AB integration) and
:mod:`~engine.sps.model` (:class:`SPSModel`, which puts them together).

The names below are imported on first use, so ``engine.sps.params`` (names, ranges) can be read
without loading torch and the SSP grids.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SPSModel", "PARAM_NAMES", "DERIVED_NAMES", "param_bounds", "resolve_device"]

_HOME = {
    "SPSModel": "engine.sps.model",
    "DERIVED_NAMES": "engine.sps.model",
    "resolve_device": "engine.device",
    "PARAM_NAMES": "engine.sps.params",
    "param_bounds": "engine.sps.params",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'engine.sps' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
