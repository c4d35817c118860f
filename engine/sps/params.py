"""The physical parameters θ of a galaxy: one description of their order, ranges and units.

The order of :data:`PARAMS` is the public API: every tensor ``theta`` in the project has shape
``(N, 11)`` with columns in this order (Li et al. 2023, arXiv:2309.16958, Table 1).  The emulator,
the mock catalogs and the dashboard read the names, ranges, units and the number of SFH bases from
here.

=============  ===========================================================  ================
name           meaning                                                      range
=============  ===========================================================  ================
``z``          redshift                                                     [0, z_max]
``log_mstar``  log10 surviving stellar mass [M☉]                            [7, 13]
``kappa1..3``  SFH basis weights, stick-breaking to β1..β4                   [0, 1]
``t_burst``    lookback time of the burst [Gyr]                             [0.01, 13.27]
``f_burst``    fraction of the formed mass in the burst                     [0, 1]
``log_zmet``   log10 Z/Z☉ (constant in time)                                [-2.3, 0.4]
``n_dust``     power-law slope change of the Calzetti curve                 [-3, 1]
``tau1``       birth-cloud optical depth at 5500 Å (stars < 10 Myr)          [0, 3]
``tau2``       diffuse-ISM optical depth at 5500 Å                          [0, 3]
=============  ===========================================================  ================

The κ coordinates are the ``N_SFH_BASES − 1`` stick-breaking coordinates of the SFH basis weights
(:func:`engine.sps.sfh.stick_breaking`; Betancourt 2012, Li et al. 2023 Appendix A).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # torch is imported where θ is checked, so the names and ranges stay cheap to import
    import torch

#: The smooth SFH bases, in the order of their weights β (defined in :mod:`engine.sps.sfh`).
SFH_BASIS_NAMES: tuple[str, ...] = ("early", "declining", "constant", "rising")

#: Number of smooth SFH bases; θ holds ``N_SFH_BASES − 1`` stick-breaking coordinates κ.
N_SFH_BASES: int = len(SFH_BASIS_NAMES)

#: Names of the stick-breaking coordinates, in θ order (``kappa1`` ... ``kappa3``).
KAPPA_NAMES: tuple[str, ...] = tuple(f"kappa{i}" for i in range(1, N_SFH_BASES))

#: Default upper redshift bound (the redshift range of the SDSS main sample and of Li et al. 2023).
DEFAULT_Z_MAX: float = 0.65


class ParamSpec(NamedTuple):
    """One parameter of θ: its name, range, unit (for tables and axis labels) and meaning.

    The upper bound of ``z`` is :data:`DEFAULT_Z_MAX`; models built with another ``z_max`` replace it
    (:func:`param_bounds`).
    """

    name: str
    low: float
    high: float
    unit: str
    description: str


#: θ, column by column.
PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("z", 0.0, DEFAULT_Z_MAX, "", "redshift"),
    ParamSpec("log_mstar", 7.0, 13.0, "log10(M/Msun)", "log10 surviving stellar mass"),
    *(ParamSpec(k, 0.0, 1.0, "", f"stick-breaking coordinate {i} of the SFH basis weights")
      for i, k in enumerate(KAPPA_NAMES, start=1)),
    ParamSpec("t_burst", 0.01, 13.27, "Gyr", "lookback time of the burst"),
    ParamSpec("f_burst", 0.0, 1.0, "", "fraction of the formed mass in the burst"),
    ParamSpec("log_zmet", -2.3, 0.4, "log10(Z/Zsun)", "log10 metallicity (constant in time)"),
    ParamSpec("n_dust", -3.0, 1.0, "", "power-law slope change of the Calzetti curve"),
    ParamSpec("tau1", 0.0, 3.0, "", "birth-cloud optical depth at 5500 Å (stars < 10 Myr)"),
    ParamSpec("tau2", 0.0, 3.0, "", "diffuse-ISM optical depth at 5500 Å"),
)

PARAM_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMS)

#: Parameter ranges except the redshift, whose upper bound is ``z_max``.
BASE_BOUNDS: dict[str, tuple[float, float]] = {p.name: (p.low, p.high) for p in PARAMS if p.name != "z"}

#: Units of each parameter, for tables and axis labels.
PARAM_UNITS: dict[str, str] = {p.name: p.unit for p in PARAMS}

IDX = {name: i for i, name in enumerate(PARAM_NAMES)}

#: Columns of the κ coordinates in θ (contiguous).
KAPPA_SLICE: slice = slice(IDX[KAPPA_NAMES[0]], IDX[KAPPA_NAMES[-1]] + 1)


def param_bounds(z_max: float = DEFAULT_Z_MAX) -> dict[str, tuple[float, float]]:
    """Ranges of all parameters, in :data:`PARAM_NAMES` order.

    Parameters
    ----------
    z_max : float
        Upper bound of the redshift.
    """
    if not (z_max > 0 and z_max <= 10):
        raise ValueError(f"z_max must be in (0, 10], got {z_max}")
    out = {"z": (0.0, float(z_max))}
    out.update(BASE_BOUNDS)
    return {name: out[name] for name in PARAM_NAMES}


def validate_theta(theta: torch.Tensor, bounds: torch.Tensor, names: tuple[str, ...] = PARAM_NAMES,
                   rtol: float = 1e-5) -> None:
    """Raise a one-line ``ValueError`` unless ``theta`` is an (N, D) finite tensor inside ``bounds``.

    Parameters
    ----------
    theta : torch.Tensor
        Parameters, shape ``(N, D)``.
    bounds : torch.Tensor
        ``(D, 2)`` lower and upper bounds.
    names : tuple of str
        Parameter names, for the message.
    rtol : float
        Tolerance relative to each range, absorbing float32 round-off at the edges.
    """
    import torch

    if not isinstance(theta, torch.Tensor):
        raise ValueError(
            f"theta must be a torch.Tensor of shape (N, {len(names)}), got {type(theta).__name__}"
        )
    if theta.ndim != 2 or theta.shape[1] != len(names):
        raise ValueError(
            f"theta must have shape (N, {len(names)}) with columns {', '.join(names)}; got shape "
            f"{tuple(theta.shape)}"
        )
    with torch.no_grad():
        bad_nan = ~torch.isfinite(theta)
        if bool(bad_nan.any()):
            col = int(bad_nan.any(dim=0).nonzero()[0, 0])
            n = int(bad_nan[:, col].sum())
            raise ValueError(f"theta has NaN/inf in parameter '{names[col]}' ({n} of {theta.shape[0]} rows)")
        b = bounds.to(device=theta.device, dtype=theta.dtype)
        tol = rtol * (b[:, 1] - b[:, 0])
        low = theta < (b[:, 0] - tol)
        high = theta > (b[:, 1] + tol)
        out = low | high
        if bool(out.any()):
            col = int(out.any(dim=0).nonzero()[0, 0])
            n = int(out[:, col].sum())
            vals = theta[:, col][out[:, col]]
            raise ValueError(
                f"parameter '{names[col]}' outside its range [{float(b[col, 0]):g}, {float(b[col, 1]):g}]: "
                f"{n} of {theta.shape[0]} rows (values from {float(vals.min()):g} to {float(vals.max()):g})"
            )


def prepare_theta(theta, bounds: torch.Tensor, device: torch.device, dtype: torch.dtype,
                  names: tuple[str, ...] = PARAM_NAMES) -> torch.Tensor:
    """θ as an (N, D) tensor on ``device``/``dtype``, validated against ``bounds``; D = ``len(names)``
    (the columns of θ, by default :data:`PARAM_NAMES`).

    Accepts tensors, arrays and nested lists; a single θ of shape (D,) becomes (1, D).
    """
    import numpy as np
    import torch

    if not isinstance(theta, torch.Tensor):
        theta = torch.as_tensor(np.asarray(theta, dtype=np.float64))
    if theta.ndim == 1 and theta.shape[0] == len(names):
        theta = theta.unsqueeze(0)
    theta = theta.to(device=device, dtype=dtype)
    validate_theta(theta, bounds, names)
    return theta
