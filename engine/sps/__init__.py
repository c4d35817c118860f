"""Differentiable stellar population synthesis (DESIGN §2).

Modules, one per concept: :mod:`~engine.sps.params` (θ names, ranges, validation),
:mod:`~engine.sps.ssp` (BC03/MILES grids), :mod:`~engine.sps.sfh` (star-formation
histories), :mod:`~engine.sps.dust` (attenuation curves), :mod:`~engine.sps.cosmology`
(distances and ages), :mod:`~engine.sps.photometry` (filters, AB integration) and
:mod:`~engine.sps.model` (:class:`SPSModel`, which puts them together).
"""
from engine.device import resolve_device
from engine.sps.model import DERIVED_NAMES, SPSModel
from engine.sps.params import PARAM_NAMES, param_bounds

__all__ = ["SPSModel", "PARAM_NAMES", "DERIVED_NAMES", "param_bounds", "resolve_device"]
