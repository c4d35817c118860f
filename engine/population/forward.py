"""The forward model seam: what the trainer needs of a forward model (:class:`ForwardModel`), building one
from its description (:func:`make_forward_model`), and the device it runs on (:func:`resolve_device`).

:class:`engine.sps.SPSModel`, the emulator (:class:`engine.emulator.Emulator`) and the toy model
(:class:`engine.population.toy.ToyForwardModel`) all satisfy :class:`ForwardModel`.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

import engine.emulator as em
from engine.device import resolve_device
from engine.errors import PopsedError
from engine.sps import SPSModel

__all__ = ["FORWARD_KINDS", "ForwardModel", "is_forward_model", "make_forward_model", "resolve_device"]

FORWARD_KINDS = ("auto", "emulator", "sps")


@runtime_checkable
class ForwardModel(Protocol):
    """A differentiable map from physical parameters ``theta`` (N, D) to noise-free fluxes (N, B) in
    nanomaggies, with the parameter box the population lives in.

    ``bands``: the B band names; ``param_names``: the D parameter names (``"z"`` among them for fits with
    an observed redshift); ``bounds``: (D, 2) lower/upper bounds; ``device``: the torch device;
    ``derived_names``: the names of :meth:`derived`'s quantities.
    """

    bands: Sequence[str]
    param_names: Sequence[str]
    derived_names: Sequence[str]
    bounds: torch.Tensor
    device: torch.device

    def fluxes(self, theta: torch.Tensor) -> torch.Tensor:
        """Noise-free fluxes (N, B) [nanomaggies] of parameters ``theta`` (N, D), differentiable."""
        ...

    def derived(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Derived quantities (e.g. star-formation rates), each (N,)."""
        ...


def is_forward_model(obj) -> bool:
    """Whether ``obj`` is a forward-model object (rather than a description such as ``"sps"``): the test
    the fit has always used, a ``fluxes`` method."""
    return hasattr(obj, "fluxes")


def make_forward_model(kind, bands, device, z_max: float = 0.65, emulator_path=None):
    """Build the forward model; returns ``(model, description dict)``.

    ``kind``: ``sps`` (engine.sps.SPSModel), ``emulator`` (engine.emulator, the packaged file or
    ``emulator_path``), ``auto`` (the emulator when one covering the bands is available, else the SPS), or
    ``module:factory`` (called as ``factory(bands=..., device=..., z_max=...)``)."""
    bands = list(bands)
    if kind not in FORWARD_KINDS and isinstance(kind, str) and ":" in kind:
        mod, _, attr = kind.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise PopsedError(f"cannot load forward model {kind!r}: {exc}") from None
        return factory(bands=bands, device=device, z_max=z_max), {"kind": kind}
    if kind not in FORWARD_KINDS:
        raise PopsedError(f"--forward must be one of {', '.join(FORWARD_KINDS)} or MODULE:FACTORY, got "
                          f"{kind!r}")
    if kind in ("emulator", "auto"):
        err = None
        try:
            path = Path(emulator_path) if emulator_path else em.default_emulator_path()
            if not path.is_file():
                raise PopsedError(f"no emulator file at {path} (train one with `popsed emulator train`)")
            model = em.load(path, device=device, bands=bands)
            return model, {"kind": "emulator", "file": str(path), "z_max": float(model.z_max)}
        except (ImportError, PopsedError) as exc:
            err = exc
        if kind == "emulator":
            raise PopsedError(f"--forward emulator: {err}")
    try:
        model = SPSModel(bands, device=device, z_max=z_max)
    except ValueError as exc:
        raise PopsedError(f"--forward sps: {exc}") from None
    desc = {"kind": "sps", "file": None, "z_max": float(z_max)}
    if kind == "auto":  # say why: the direct SPS is about ten times slower than an emulator
        desc["fallback"] = str(err)
    return model, desc
