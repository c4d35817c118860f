"""Cosmology tables for the forward model, differentiable in redshift.

Luminosity distance and age of the Universe are computed once with astropy
(``astropy.cosmology.Planck18`` by default, any astropy ``FLRW`` instance accepted)
on a fine, uniform redshift grid and interpolated linearly in torch, so gradients
with respect to z flow through them.
"""
from __future__ import annotations

import numpy as np
import torch

#: Distance floor [Mpc] (10 pc): at z = 0 fluxes are those at 10 pc (absolute magnitudes).
D_L_FLOOR_MPC = 1e-5


class CosmologyTable:
    """Tabulated D_L(z) [Mpc] and t_age(z) [Gyr] on [0, z_max].

    Parameters
    ----------
    cosmology : astropy.cosmology.FLRW or None
        ``None`` means ``Planck18``.
    z_max : float
        Upper end of the table (fits and models never exceed it).
    n : int
        Number of grid points.
    """

    def __init__(self, cosmology=None, z_max: float = 0.65, n: int = 2049, device=None, dtype=torch.float32):
        from astropy.cosmology import FLRW, Planck18

        if cosmology is None:
            cosmology = Planck18
        if not isinstance(cosmology, FLRW):
            raise ValueError(
                f"cosmology must be an astropy.cosmology FLRW instance, got {type(cosmology).__name__}"
            )
        self.cosmology = cosmology
        self.z_max = float(z_max)
        z = np.linspace(0.0, self.z_max, n)
        self.dz = z[1] - z[0]
        dl = cosmology.luminosity_distance(z).to_value("Mpc")
        age = cosmology.age(z).to_value("Gyr")
        self.age_now_gyr = float(age[0])
        self._z = z
        self._age_gyr_grid = age
        self._dl = torch.as_tensor(np.maximum(dl, D_L_FLOOR_MPC), device=device, dtype=dtype)
        self._age = torch.as_tensor(age, device=device, dtype=dtype)

    @property
    def z_grid(self) -> np.ndarray:
        """The table's redshift grid (n,), uniform on [0, z_max]."""
        return self._z

    @property
    def age_grid_gyr(self) -> np.ndarray:
        """Age of the Universe [Gyr] on :attr:`z_grid`, float64 (for tabulating other functions of z)."""
        return self._age_gyr_grid

    @property
    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """t_age [Gyr] and D_L [Mpc] (floored) on :attr:`z_grid`, as interpolated by :meth:`age_gyr` and
        :meth:`luminosity_distance_mpc`."""
        return self._age, self._dl

    def interp(self, table: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Linear interpolation in z (N,) of ``table`` (n, ...) tabulated on :attr:`z_grid`: (N, ...).

        Differentiable in z; any function of z alone can be tabulated once and evaluated this way."""
        k, a = self.interp_index(z)
        a = a.reshape(z.shape + (1,) * (table.ndim - 1))
        return table[k] * (1.0 - a) + table[k + 1] * a

    def interp_index(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid index k (long) and weight a (differentiable in z) of :meth:`interp`.

        value = (1−a) T[k] + a T[k+1]."""
        s = (z / self.dz).clamp(min=0.0)
        k = s.detach().floor().long().clamp(max=len(self._z) - 2)
        return k, s - k.to(s.dtype)

    def luminosity_distance_mpc(self, z: torch.Tensor) -> torch.Tensor:
        """D_L [Mpc], floored at 10 pc."""
        return self.interp(self._dl, z)

    def age_gyr(self, z: torch.Tensor) -> torch.Tensor:
        """Age of the Universe at z [Gyr]."""
        return self.interp(self._age, z)
