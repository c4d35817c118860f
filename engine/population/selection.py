"""Survey selection cuts such as ``sdss2010-r<19.8``, hard or with a completeness curve.

A cut is ``<band><op><value>`` with ``op`` one of ``<``, ``<=``, ``>``, ``>=`` and ``value`` an AB
magnitude.  Several cuts are given as repeated options or separated by commas
(``sdss2010-r<19.8,sdss2010-g<21``); a galaxy is selected when it passes all of them.

The magnitude tested is the AB (Pogson) magnitude of the *noisy* flux, ``22.5 - 2.5 log10 f``; a flux
<= 0 counts as infinitely faint (fails ``<``, passes ``>``); NaN (no measurement) fails every cut.
The selection is a mask (not differentiable): the loss is computed on the selected subset.

Soft cuts.  ``<band><op><value>~<width>`` (e.g. ``sdss2010-r<17.77~0.1``) is a logistic completeness in
the magnitude ``m`` (the usual form of a survey's completeness near its limit, e.g. Rykoff et al. 2015)::

    C(m) = 1 / (1 + exp(s (m - value) / width)),     s = +1 for < and <=, -1 for > and >=

and a galaxy is kept with probability ``C(m)`` (a Bernoulli draw from the caller's generator).  A soft cut
describes the survey that made the catalog: the catalog itself is already the selected sample and is not
cut by it (:func:`hard_cuts`).  ``<band><op>fit`` (or ``<band><op>~fit``, ``<band><op><value>~fit``) asks for
the position and width fitted from the catalog's own histogram (:mod:`.completeness`); such a cut is
*pending* until :func:`engine.population.completeness.resolve_cuts` replaces it with the fitted one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import PopsedError

from .noise import pogson_mag


class SelectionError(PopsedError):
    """A selection cut cannot be parsed or refers to an unknown band."""


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CUT = re.compile(r"^\s*(?P<band>[A-Za-z0-9_.\-]+?)\s*(?P<op><=|>=|<|>)\s*"
                  rf"(?:(?P<fit>~?\s*fit)|(?P<value>{_NUM})(?:\s*~\s*(?:(?P<width>{_NUM})|(?P<wfit>fit)))?)\s*$")
_OPS = ("<", "<=", ">", ">=")


@dataclass(frozen=True)
class Cut:
    """A cut on ``band``: hard (``width`` 0) or a logistic completeness of ``width`` mag centred on
    ``value``; ``fit``: position and width still to be fitted from the catalog (a pending cut)."""

    band: str
    op: str
    value: float
    width: float = 0.0
    fit: bool = False

    def __post_init__(self):
        if self.op not in _OPS:
            raise SelectionError(f"selection op {self.op!r} is not one of {_OPS}")
        if not self.fit and not (self.width == 0.0 or self.width > 0):
            raise SelectionError(f"selection {self.band}{self.op}{self.value:g}~{self.width:g}: completeness "
                                 "width must be > 0")

    @property
    def soft(self) -> bool:
        """Whether the cut is a completeness curve (or one still to be fitted)."""
        return self.fit or self.width > 0

    def __str__(self) -> str:
        if self.fit:
            return f"{self.band}{self.op}fit"
        tail = f"~{self.width:g}" if self.width > 0 else ""
        return f"{self.band}{self.op}{self.value:g}{tail}"

    def to_dict(self) -> dict:
        if self.fit:
            raise SelectionError(f"selection {self}: the completeness has not been fitted yet")
        d = {"band": self.band, "op": self.op, "value": self.value}
        if self.width > 0:
            d["width"] = self.width
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Cut":
        """From :meth:`to_dict`; an entry without ``width`` (written before soft cuts existed) is hard."""
        if d.get("op") not in _OPS:
            raise SelectionError(f"selection op {d.get('op')!r} is not one of {_OPS}")
        return cls(str(d["band"]), str(d["op"]), float(d["value"]), float(d.get("width", 0.0)))

    def completeness(self, m):
        """``C(m)`` of the module docstring (1 where a hard cut passes, else 0); torch or numpy ``m``."""
        sign = 1.0 if self.op in ("<", "<=") else -1.0
        if isinstance(m, torch.Tensor):
            if self.width > 0:
                return torch.where(torch.isnan(m), torch.zeros_like(m),
                                   torch.sigmoid(-sign * (m - self.value) / self.width))
            return (_compare(m, self.op, self.value) & ~torch.isnan(m)).to(m.dtype)
        m = np.asarray(m, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            if self.width > 0:
                c = 1.0 / (1.0 + np.exp(np.clip(sign * (m - self.value) / self.width, -700, 700)))
                return np.where(np.isnan(m), 0.0, c)
            return (_compare(m, self.op, self.value) & ~np.isnan(m)).astype(np.float64)


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
                    ">=, e.g. sdss2010-r<19.8, optionally ~WIDTH (mag, a completeness curve) or BAND<OP>fit"
                )
            cuts.append(_cut_of(m))
    return cuts


def _cut_of(m: re.Match) -> Cut:
    if m["fit"] or m["wfit"]:
        return Cut(m["band"], m["op"], math.nan if m["value"] is None else float(m["value"]), math.nan, True)
    if m["width"] is not None and not float(m["width"]) > 0:
        raise SelectionError(f"selection {m.group(0).strip()!r}: completeness width must be > 0")
    return Cut(m["band"], m["op"], float(m["value"]), 0.0 if m["width"] is None else float(m["width"]))


def hard_cuts(cuts: list[Cut]) -> list[Cut]:
    """The hard cuts among ``cuts`` (those that also apply to the observed catalog)."""
    return [c for c in cuts if not c.soft]


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


def selection_mask(flux, bands, cuts: list[Cut], generator: torch.Generator | None = None):
    """Boolean mask (N,) of rows of ``flux`` (N, B) (torch or numpy, nanomaggies) passing all cuts.

    A soft cut keeps a row with probability ``C(m)``: one uniform draw per row and soft cut, from
    ``generator`` (torch; numpy flux: a ``numpy.random.Generator`` or None).  Hard cuts draw nothing."""
    bands = tuple(bands)
    if any(c.fit for c in cuts):
        raise SelectionError("a selection to be fitted (BAND<fit) must be fitted before it is applied")
    if isinstance(flux, torch.Tensor):
        mask = torch.ones(flux.shape[0], dtype=torch.bool, device=flux.device)
        for c in cuts:
            m = pogson_mag(flux[:, bands.index(c.band)])
            if c.soft:
                u = torch.rand(m.shape, generator=generator, device=m.device, dtype=m.dtype)
                mask &= u < c.completeness(m)
            else:
                mask &= _compare(m, c.op, c.value) & ~torch.isnan(m)
        return mask
    flux = np.asarray(flux)
    mask = np.ones(flux.shape[0], dtype=bool)
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
    for c in cuts:
        m = pogson_mag(flux[:, bands.index(c.band)])
        if c.soft:
            mask &= rng.random(m.shape) < c.completeness(m)
            continue
        with np.errstate(invalid="ignore"):
            mask &= _compare(m, c.op, c.value) & ~np.isnan(m)
    return mask
