"""The physical parameters θ of a galaxy, their order, ranges and validation.

The order of :data:`PARAM_NAMES` is the public API: every tensor ``theta`` in the
project has shape ``(N, 11)`` with columns in this order (DESIGN §2; Li et al.
2023, arXiv:2309.16958, Table 1).

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
"""
from __future__ import annotations

import torch

PARAM_NAMES: tuple[str, ...] = (
    "z",
    "log_mstar",
    "kappa1",
    "kappa2",
    "kappa3",
    "t_burst",
    "f_burst",
    "log_zmet",
    "n_dust",
    "tau1",
    "tau2",
)

#: Default upper redshift bound (DESIGN §2).
DEFAULT_Z_MAX: float = 0.65

#: Parameter ranges except the redshift, whose upper bound is ``z_max``.
BASE_BOUNDS: dict[str, tuple[float, float]] = {
    "log_mstar": (7.0, 13.0),
    "kappa1": (0.0, 1.0),
    "kappa2": (0.0, 1.0),
    "kappa3": (0.0, 1.0),
    "t_burst": (0.01, 13.27),
    "f_burst": (0.0, 1.0),
    "log_zmet": (-2.3, 0.4),
    "n_dust": (-3.0, 1.0),
    "tau1": (0.0, 3.0),
    "tau2": (0.0, 3.0),
}

#: Units of each parameter, for tables and axis labels.
PARAM_UNITS: dict[str, str] = {
    "z": "",
    "log_mstar": "log10(M/Msun)",
    "kappa1": "",
    "kappa2": "",
    "kappa3": "",
    "t_burst": "Gyr",
    "f_burst": "",
    "log_zmet": "log10(Z/Zsun)",
    "n_dust": "",
    "tau1": "",
    "tau2": "",
}

IDX = {name: i for i, name in enumerate(PARAM_NAMES)}


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
    if not isinstance(theta, torch.Tensor):
        raise ValueError(f"theta must be a torch.Tensor of shape (N, {len(names)}), got {type(theta).__name__}")
    if theta.ndim != 2 or theta.shape[1] != len(names):
        raise ValueError(
            f"theta must have shape (N, {len(names)}) with columns {', '.join(names)}; got shape {tuple(theta.shape)}"
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


def prepare_theta(theta, bounds: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """θ as an (N, D) tensor on ``device``/``dtype``, validated against ``bounds``.

    Accepts tensors, arrays and nested lists; a single θ of shape (D,) becomes (1, D).
    """
    if not isinstance(theta, torch.Tensor):
        import numpy as np

        theta = torch.as_tensor(np.asarray(theta, dtype=np.float64))
    if theta.ndim == 1 and theta.shape[0] == len(PARAM_NAMES):
        theta = theta.unsqueeze(0)
    theta = theta.to(device=device, dtype=dtype)
    validate_theta(theta, bounds, PARAM_NAMES)
    return theta
