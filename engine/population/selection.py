"""Survey selection cuts such as ``sdss2010-r<19.8``.

A cut is ``<band><op><value>`` with ``op`` one of ``<``, ``<=``, ``>``, ``>=`` and ``value`` an AB
magnitude.  Several cuts are given as repeated options or separated by commas
(``sdss2010-r<19.8,sdss2010-g<21``); a galaxy is selected when it passes all of them.

The magnitude tested is the AB (Pogson) magnitude of the *noisy* flux, ``22.5 - 2.5 log10 f``; a flux
<= 0 counts as infinitely faint (fails ``<``, passes ``>``); NaN (no measurement) fails every cut.
The selection is a mask (not differentiable): the loss is computed on the selected subset.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import PopsedError

from .noise import pogson_mag


class SelectionError(PopsedError):
    """A selection cut cannot be parsed or refers to an unknown band."""


_CUT = re.compile(r"^\s*(?P<band>[A-Za-z0-9_.\-]+?)\s*(?P<op><=|>=|<|>)\s*"
                  r"(?P<value>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")
_OPS = ("<", "<=", ">", ">=")


@dataclass(frozen=True)
class Cut:
    band: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.band}{self.op}{self.value:g}"

    def to_dict(self) -> dict:
        return {"band": self.band, "op": self.op, "value": self.value}

    @classmethod
    def from_dict(cls, d: dict) -> "Cut":
        if d.get("op") not in _OPS:
            raise SelectionError(f"selection op {d.get('op')!r} is not one of {_OPS}")
        return cls(str(d["band"]), str(d["op"]), float(d["value"]))


def parse_selection(specs) -> list[Cut]:
    """Parse one string or a list of strings (each possibly comma-separated) into cuts."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    cuts: list[Cut] = []
    for spec in specs:
        if isinstance(spec, Cut):
            cuts.append(spec)
            continue
        if isinstance(spec, dict):
            cuts.append(Cut.from_dict(spec))
            continue
        for part in str(spec).split(","):
            if not part.strip():
                continue
            m = _CUT.match(part)
            if not m:
                raise SelectionError(
                    f"cannot parse selection {part.strip()!r}: expected BAND<OP>MAG with OP one of < <= > "
                    ">=, e.g. sdss2010-r<19.8"
                )
            cuts.append(Cut(m["band"], m["op"], float(m["value"])))
    return cuts


def check_cuts(cuts: list[Cut], bands) -> None:
    """Every cut must refer to one of the fitted ``bands``."""
    bands = tuple(bands)
    for c in cuts:
        if c.band not in bands:
            raise SelectionError(f"selection {c} uses band {c.band!r}, which is not among the fitted bands "
                                 f"{list(bands)}")


def _compare(m, op: str, value: float):
    if op == "<":
        return m < value
    if op == "<=":
        return m <= value
    if op == ">":
        return m > value
    return m >= value


def selection_mask(flux, bands, cuts: list[Cut]):
    """Boolean mask (N,) of rows of ``flux`` (N, B) (torch or numpy, nanomaggies) passing all cuts."""
    bands = tuple(bands)
    if isinstance(flux, torch.Tensor):
        mask = torch.ones(flux.shape[0], dtype=torch.bool, device=flux.device)
        for c in cuts:
            m = pogson_mag(flux[:, bands.index(c.band)])
            mask &= _compare(m, c.op, c.value) & ~torch.isnan(m)
        return mask
    flux = np.asarray(flux)
    mask = np.ones(flux.shape[0], dtype=bool)
    for c in cuts:
        m = pogson_mag(flux[:, bands.index(c.band)])
        with np.errstate(invalid="ignore"):
            mask &= _compare(m, c.op, c.value) & ~np.isnan(m)
    return mask
