"""The photometric emulator: θ (redshift included) → band magnitudes, a drop-in for SPSModel.

**Choice: a photometric emulator.**  Measured on this machine (``bench/emulator.py``), emulating
the band magnitudes directly costs one small MLP per galaxy, while a rest-frame PCA spectral
emulator still has to rebuild a ~650-bin spectrum and run the redshift shift and filter
integration of :mod:`engine.sps.photometry` for every galaxy — work of the same order as the
direct SPS's own photometry step, which caps its speed-up; the photometric emulator has no such
floor.  Bands are fixed at training time (retrain for new bands: minutes on a CPU).

**What is emulated.**  Everything known in closed form is taken out, so the network learns a
smooth, bounded function (Alsing et al. 2020 do the same with their normalisations):

    m_b = h_b(x) − 2.5 log_mstar − 2.5 log10(1 + z) + 5 log10(D_L(z) / Mpc)

h_b is the magnitude of one M☉ of *surviving* mass at 1 Mpc without the (1+z) bandwidth term:
it holds the k-correction, the SFH, dust and the mass-to-light ratio.  The inputs x are θ without
``log_mstar``, with the burst made explicit exactly as in the SPS (``f_burst`` replaced by the
effective fraction, zero when ``t_burst`` ≥ t_age(z), and ``t_burst`` by log10 of
min(t_burst, t_age)), which removes the SPS's one discontinuity from what the network must learn.
Inputs are scaled to [−1, 1]; outputs standardised per band.  Targets are clipped at
``H_CLIP`` (52 mag; a galaxy fainter than that is brighter than 25 mag only within ~10 Mpc) and
treated as censored in the loss (only predictions brighter than the clip are penalised).
For each band the network also sees log(1 + τ_ISM) at the band's effective wavelength in the
rest frame (the analytic dust curve of :mod:`engine.sps.dust`), which carries the steep,
band-dependent dust dependence that the network would otherwise have to learn.

Files: one ``torch.save`` dict of tensors, numbers and strings (state dict, normalisation and
metadata: bands, parameter names and ranges, training-set size, measured accuracy, versions),
loaded with ``weights_only=True``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from engine.emulator.network import SpeculatorMLP
from engine.errors import ModelFileError
from engine.sps.cosmology import CosmologyTable
from engine.sps.model import DERIVED_NAMES, resolve_device
from engine.sps.params import IDX, PARAM_NAMES, param_bounds, prepare_theta, validate_theta

FORMAT = "popsed-emulator"
FORMAT_VERSION = 1
H_CLIP = 52.0

#: Input features (order) and their ranges before scaling to [−1, 1].
FEATURE_NAMES = ("z", "kappa1", "kappa2", "kappa3", "log_t_burst", "f_burst_eff", "log_zmet", "n_dust", "tau1",
                 "tau2")


def feature_bounds(z_max: float) -> torch.Tensor:
    b = param_bounds(z_max)
    rng = [b["z"], b["kappa1"], b["kappa2"], b["kappa3"], (math.log10(0.01), math.log10(14.0)), (0.0, 1.0),
           b["log_zmet"], b["n_dust"], b["tau1"], b["tau2"]]
    return torch.tensor(rng, dtype=torch.float64)


def resolve_cosmology(name: str):
    """An astropy built-in cosmology by name (e.g. ``Planck18``)."""
    import astropy.cosmology as ac

    cosmo = getattr(ac, name, None)
    if cosmo is None or not isinstance(cosmo, ac.FLRW):
        raise ModelFileError(f"unknown cosmology '{name}' in emulator file (built-in astropy realisations only)")
    return cosmo


class Emulator:
    """A trained photometric emulator with the forward API of :class:`engine.sps.SPSModel`.

    Use :func:`load` to read one from disk; :mod:`engine.emulator.train` makes them.
    """

    param_names: tuple[str, ...] = PARAM_NAMES
    derived_names: tuple[str, ...] = DERIVED_NAMES

    def __init__(self, net: SpeculatorMLP, metadata: dict, y_mean: torch.Tensor, y_std: torch.Tensor,
                 device=None, dtype: torch.dtype = torch.float32, band_index: Sequence[int] | None = None):
        self.device = resolve_device(device)
        self.dtype = dtype
        self.metadata = metadata
        self.net = net.to(device=self.device, dtype=dtype).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        all_bands = tuple(metadata["bands"])
        self._band_index = list(range(len(all_bands))) if band_index is None else list(band_index)
        self.bands: tuple[str, ...] = tuple(all_bands[i] for i in self._band_index)
        self._sel = torch.tensor(self._band_index, device=self.device)
        self.z_max = float(metadata["z_max"])
        b = param_bounds(self.z_max)
        self.bounds = torch.tensor([b[n] for n in PARAM_NAMES], device=self.device, dtype=dtype)
        self.cosmo = CosmologyTable(resolve_cosmology(metadata["cosmology"]), z_max=self.z_max, device=self.device,
                                    dtype=dtype)
        fb = feature_bounds(self.z_max).to(device=self.device, dtype=dtype)
        self._x_lo, self._x_span = fb[:, 0], fb[:, 1] - fb[:, 0]
        self._leff = torch.tensor(metadata["lambda_eff"], device=self.device, dtype=dtype)
        self._y_mean = y_mean.to(device=self.device, dtype=dtype)
        self._y_std = y_std.to(device=self.device, dtype=dtype)
        self._sps = None

    # ---------------------------------------------------------------- helpers
    def validate_theta(self, theta: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the parameter if θ is malformed or outside the training box."""
        validate_theta(theta, self.bounds, PARAM_NAMES)

    def _prep(self, theta) -> torch.Tensor:
        return prepare_theta(theta, self.bounds, self.device, self.dtype)

    def features(self, theta: torch.Tensor) -> torch.Tensor:
        """Network inputs scaled to [−1, 1] (see module docstring), shape (N, 10)."""
        z = theta[:, IDX["z"]]
        t_age = self.cosmo.age_gyr(z)
        t_b = theta[:, IDX["t_burst"]]
        active = t_b < t_age
        f_eff = theta[:, IDX["f_burst"]] * active.to(theta.dtype)
        log_tb = torch.log10(torch.minimum(t_b, t_age))
        x = torch.stack([z, theta[:, IDX["kappa1"]], theta[:, IDX["kappa2"]], theta[:, IDX["kappa3"]], log_tb, f_eff,
                         theta[:, IDX["log_zmet"]], theta[:, IDX["n_dust"]], theta[:, IDX["tau1"]],
                         theta[:, IDX["tau2"]]], dim=1)
        x = 2.0 * (x - self._x_lo) / self._x_span - 1.0
        return torch.cat([x, torch.log1p(self.band_tau(theta)) / 3.0 - 1.0], dim=1)

    def band_tau(self, theta: torch.Tensor) -> torch.Tensor:
        """Diffuse-dust optical depth at each band's rest-frame effective wavelength, (N, B_all)."""
        from engine.sps.dust import tau_ism_at

        lam = self._leff.unsqueeze(0) / (1.0 + theta[:, IDX["z"]]).unsqueeze(1)  # Å, rest frame
        return tau_ism_at(lam, theta[:, IDX["tau2"]].unsqueeze(1), theta[:, IDX["n_dust"]].unsqueeze(1))

    def h_magnitudes(self, theta: torch.Tensor) -> torch.Tensor:
        """h_b of the module docstring for the selected bands, shape (N, B)."""
        y = self.net(self.features(theta))
        return (y * self._y_std + self._y_mean).index_select(1, self._sel)

    def distance_term(self, theta: torch.Tensor) -> torch.Tensor:
        """−2.5 log_mstar − 2.5 log10(1+z) + 5 log10 D_L[Mpc], shape (N,)."""
        z = theta[:, IDX["z"]]
        return (-2.5 * theta[:, IDX["log_mstar"]] - 2.5 * torch.log10(1.0 + z)
                + 5.0 * torch.log10(self.cosmo.luminosity_distance_mpc(z)))

    # ---------------------------------------------------------------- public API (as SPSModel)
    def magnitudes(self, theta: torch.Tensor) -> torch.Tensor:
        """AB magnitudes (N, B); differentiable in θ."""
        theta = self._prep(theta)
        return self.h_magnitudes(theta) + self.distance_term(theta).unsqueeze(1)

    def fluxes(self, theta: torch.Tensor) -> torch.Tensor:
        """AB flux densities [nanomaggies] (N, B); differentiable in θ."""
        return torch.pow(10.0, -0.4 * (self.magnitudes(theta) - 22.5))

    def derived(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Derived quantities, computed exactly by the SPS (no spectra needed)."""
        return self.sps.derived(theta)

    @property
    def sps(self):
        """The direct SPS model for the same bands, cosmology and box (created on first use)."""
        if self._sps is None:
            from engine.sps import SPSModel

            self._sps = SPSModel(self.bands, cosmology=self.cosmo.cosmology, device=self.device, dtype=self.dtype,
                                 z_max=self.z_max, uv_bump=bool(self.metadata.get("uv_bump", True)))
        return self._sps

    def select_bands(self, bands: Sequence[str]) -> "Emulator":
        """An emulator restricted to ``bands`` (in that order); ``ValueError`` naming bands it lacks."""
        missing = [b for b in bands if b not in self.bands]
        if missing:
            raise ModelFileError(
                f"emulator was not trained on band(s) {', '.join(missing)}; it has {', '.join(self.bands)}"
            )
        idx = [self._band_index[self.bands.index(b)] for b in bands]
        return Emulator(self.net, self.metadata, self._y_mean, self._y_std, self.device, self.dtype, idx)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Emulator":
        return Emulator(self.net, self.metadata, self._y_mean, self._y_std, device or self.device,
                        dtype or self.dtype, self._band_index)

    def __repr__(self) -> str:
        return (f"Emulator(bands={list(self.bands)}, z_max={self.z_max}, device='{self.device}', "
                f"n_train={self.metadata.get('n_train')})")


def save(path: str | Path, net: SpeculatorMLP, metadata: dict, y_mean: torch.Tensor, y_std: torch.Tensor) -> Path:
    """Write an emulator file atomically (a dict of tensors and plain values, no pickled objects)."""
    import os
    import tempfile

    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metadata": metadata,
        "hidden": list(net.hidden),
        "n_in": net.n_in,
        "n_out": net.n_out,
        "state_dict": {k: v.detach().cpu().float() for k, v in net.state_dict().items()},
        "y_mean": y_mean.detach().cpu().double(),
        "y_std": y_std.detach().cpu().double(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, device=None, bands: Sequence[str] | None = None,
         dtype: torch.dtype = torch.float32) -> Emulator:
    """Load an emulator file (``weights_only=True``); clear :class:`ModelFileError` on any problem.

    Parameters
    ----------
    path : str or Path
    device : str, optional
        ``None``/``"auto"``: CUDA when available.
    bands : sequence of str, optional
        Restrict (and order) the bands; an error names any band the emulator lacks.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"emulator file '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(
            f"'{path}' is not a readable popsed emulator file (truncated or foreign: {exc.__class__.__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"'{path}' is not a popsed emulator file (no '{FORMAT}' header)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"emulator file '{path}' has format version {version}; this popsed reads version {FORMAT_VERSION} "
            f"(retrain it with `popsed emulator train`)"
        )
    try:
        meta = payload["metadata"]
        if tuple(meta["param_names"]) != PARAM_NAMES:
            raise ModelFileError(f"emulator file '{path}' has parameters {meta['param_names']}, expected {PARAM_NAMES}")
        n_bands = len(meta["bands"])
        if int(payload["n_out"]) != n_bands or int(payload["n_in"]) != len(FEATURE_NAMES) + n_bands:
            raise ValueError(f"network shape ({payload['n_in']} -> {payload['n_out']}) does not match "
                             f"{n_bands} bands")
        net = SpeculatorMLP(int(payload["n_in"]), int(payload["n_out"]), tuple(int(h) for h in payload["hidden"]))
        net.load_state_dict(payload["state_dict"])
        emu = Emulator(net, meta, payload["y_mean"], payload["y_std"], device=device, dtype=dtype)
    except ModelFileError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ModelFileError(f"emulator file '{path}' is damaged or incompatible ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:120]})") from None
    return emu.select_bands(bands) if bands is not None else emu
