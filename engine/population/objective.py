"""The objective of a population fit -- the one place to change the loss.

- features (:class:`Featurizer`): asinh magnitudes (softening from the noise model), optionally adjacent
  colours, plus the redshift when ``redshift="observed"``, standardised by the observed training rows;
- projection directions (:meth:`Objective.directions`), partly whitened (:func:`whitening_matrix`);
- the distance between predicted and observed features, chosen from :data:`TRAIN_LOSSES` (sliced
  Wasserstein, Rabin et al. 2011 / Bonneel et al. 2015; Sinkhorn divergence, Feydy et al. 2019); the
  low-level math is in :mod:`engine.population.losses`;
- validation: the sliced Wasserstein distance with fixed directions (one metric whatever the training loss);
- regularisers: the maximum-entropy term (:meth:`Objective.neg_entropy`) and the selection pull
  (:meth:`Objective.pull_penalty`), and the smooth selection probability through which rejected draws near
  a cut still feel the loss (:meth:`Objective.selection_probability`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from .flow import PopulationFlow
from .losses import SinkhornLoss, random_directions, sliced_wasserstein
from .noise import asinh_mag, pogson_mag
from .selection import Cut

if TYPE_CHECKING:  # annotations only
    from .config import TrainConfig

__all__ = ["TRAIN_LOSSES", "Featurizer", "Objective", "whitening_matrix"]


class Featurizer:
    """Standardised photometric features: asinh magnitudes [+ adjacent colours] [+ redshift]."""

    def __init__(self, softening, colours: bool, use_z: bool, mean, std):
        self.softening = np.asarray(softening, dtype=np.float64)
        self.colours = bool(colours)
        self.use_z = bool(use_z)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self._t: dict = {}

    def names(self, bands) -> list[str]:
        out = [f"asinh_{b}" for b in bands]
        if self.colours:
            out += [f"{a}-{b}" for a, b in zip(bands[:-1], bands[1:], strict=True)]
        if self.use_z:
            out.append("z")
        return out

    def _raw_np(self, flux, z=None):
        m = asinh_mag(flux, self.softening)
        cols = [m]
        if self.colours:
            cols.append(m[:, :-1] - m[:, 1:])
        if self.use_z:
            cols.append(np.asarray(z, dtype=np.float64)[:, None])
        return np.concatenate(cols, axis=1)

    @classmethod
    def fit(cls, flux, softening, colours=False, z=None, z_weight: float = 1.0) -> Featurizer:
        """Standardise on ``flux`` (and ``z``); the redshift column is then multiplied by ``z_weight``.

        Random projection directions give each standardised column a share of the distance proportional to
        its variance (Bonneel et al. 2015), so beside 9 photometric columns (5 magnitudes, 4 colours) an
        unweighted redshift carries a tenth of it; ``z_weight`` = 3 gives it the variance of the
        photometric block together, so that the redshift distribution is matched as closely as the
        photometry."""
        f = cls(softening, colours, z is not None, 0.0, 1.0)
        raw = f._raw_np(flux, z)
        f.mean = raw.mean(0)
        f.std = np.maximum(raw.std(0), 1e-6)
        if z is not None:
            f.std[-1] /= z_weight
        return f

    def numpy(self, flux, z=None) -> np.ndarray:
        return (self._raw_np(flux, z) - self.mean) / self.std

    def __call__(self, flux: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        key = (str(flux.device), flux.dtype)
        if key not in self._t:
            self._t[key] = tuple(torch.tensor(a, device=flux.device, dtype=flux.dtype)
                                 for a in (self.softening, self.mean, self.std))
        b, mu, sd = self._t[key]
        m = asinh_mag(flux, b)
        cols = [m]
        if self.colours:
            cols.append(m[:, :-1] - m[:, 1:])
        if self.use_z:
            cols.append(z[:, None])
        return (torch.cat(cols, dim=1) - mu) / sd

    def _t_soft(self, like: torch.Tensor) -> torch.Tensor:
        key = ("soft", str(like.device), like.dtype)
        if key not in self._t:
            self._t[key] = torch.tensor(self.softening, device=like.device, dtype=like.dtype)
        return self._t[key]

    def to_dict(self) -> dict:
        return {"softening": self.softening.tolist(), "colours": self.colours, "use_z": self.use_z,
                "mean": self.mean.tolist(), "std": self.std.tolist()}


def whitening_matrix(x: np.ndarray, rel_tol: float = 1e-9) -> np.ndarray:
    """Symmetric (ZCA) whitening map ``W = C^(-1/2)`` of the columns of ``x`` (N, P), scaled so that ``x @ W``
    has a total variance of P (that of standardised columns, which is what the trainer passes).

    ``x @ W`` has covariance ``(P / r)`` times the projector on the r directions of ``C`` above ``rel_tol``
    of its largest eigenvalue (colours are differences of the magnitudes, so with ``colours`` the 9 ugriz
    columns have rank 5): every independent direction weighs alike (Kessy, Lewin & Strimmer 2018)."""
    x = np.asarray(x, dtype=np.float64)
    lam, v = np.linalg.eigh(np.atleast_2d(np.cov(x, rowvar=False)))
    keep = lam > rel_tol * max(float(lam.max()), 1e-300)
    vk = v[:, keep]
    return (vk / np.sqrt(lam[keep])) @ vk.T * math.sqrt(x.shape[1] / int(keep.sum()))


# ---------------------------------------------------------------------------------------------- losses
Directions = Callable[[int, torch.Generator, torch.device], torch.Tensor]


class SlicedTrainLoss:
    """Sliced Wasserstein-p distance on ``n_proj`` fresh directions per step
    (:meth:`Objective.directions`)."""

    def __init__(self, cfg: TrainConfig, directions: Directions):
        self.p, self.n_proj, self.directions = cfg.sliced_p, cfg.n_proj, directions

    def __call__(self, pred, obs, gen, blur, weights):
        return sliced_wasserstein(pred, obs, p=self.p, x_weights=weights,
                                  directions=self.directions(self.n_proj, gen, pred.device).to(pred.dtype))


class SinkhornTrainLoss:
    """Debiased Sinkhorn divergence (p = 1) with the blur of the step (``TrainConfig.blur_at``)."""

    def __init__(self, cfg: TrainConfig, directions: Directions):
        self.fn = SinkhornLoss(p=1, scaling=cfg.sinkhorn_scaling)

    def __call__(self, pred, obs, gen, blur, weights):
        return self.fn(pred, obs, blur, weights)


#: training losses by name (``TrainConfig.loss``): ``factory(cfg, directions)`` -> ``loss(pred, obs, gen,
#: blur, weights)``; a new loss is one entry here (and its name in ``losses.LOSSES``)
TRAIN_LOSSES: dict[str, Callable[..., Callable]] = {"sliced": SlicedTrainLoss, "sinkhorn": SinkhornTrainLoss}


# ---------------------------------------------------------------------------------------------- objective
class Objective:
    """Training loss, validation distance and regularisers on standardised features.

    ``x_train``: the observed training features (whitening is estimated on their photometric columns);
    ``cuts`` / ``bands``: the selection (for the smooth selection probability and the pull term).
    """

    def __init__(self, cfg: TrainConfig, feat: Featurizer, x_train: torch.Tensor, use_z: bool, device,
                 cuts: list[Cut] = (), bands: tuple[str, ...] = ()):
        self.cfg = cfg
        self.feat = feat
        self.cuts = list(cuts)
        self.bands = tuple(bands)
        dt = torch.float32
        # whitening of the photometric columns (block-diagonal with 1 for the redshift), see directions()
        n_phot = x_train.shape[1] - (1 if use_z else 0)
        w = np.eye(x_train.shape[1])
        if cfg.whiten > 0:
            w[:n_phot, :n_phot] = whitening_matrix(x_train[:, :n_phot].double().cpu().numpy())
        self.whiten = torch.tensor(w, dtype=dt, device=device)  # .to() in directions() is then a no-op
        self.val_dirs = self.directions(cfg.val_proj,
                                        torch.Generator(device="cpu").manual_seed(int(cfg.seed) + 99991),
                                        "cpu").to(device)
        self.train_loss = TRAIN_LOSSES[cfg.loss](cfg, self.directions)

    def directions(self, n: int, gen: torch.Generator, device) -> torch.Tensor:
        """``n`` projection directions (D, n) in the standardised feature space: a share ``1 - whiten`` of
        them uniform on the sphere, the rest uniform on the sphere of the *whitened* space (``W d``, with
        ``W`` the ZCA map of the catalog's photometric columns, :func:`whitening_matrix`).

        Standardised but correlated columns give the common brightness direction of the magnitudes most of
        each random projection; whitened directions (Kessy, Lewin & Strimmer 2018) weigh every independent
        colour direction as much as brightness, and the unwhitened share keeps the brightness direction --
        on which the selection acts -- weighed as in the standardised space."""
        d = random_directions(self.whiten.shape[0], n, gen, device)
        k = int(round(self.cfg.whiten * n))
        if k == 0:
            return d
        return torch.cat([d[:, : n - k], self.whiten.to(device) @ d[:, n - k:]], dim=1)

    def neg_entropy(self, flow: PopulationFlow, gen: torch.Generator) -> torch.Tensor:
        """Monte-Carlo estimate of ``-H[q] = E_q[log q(theta)]`` (nats, physical units) from fresh draws.

        With ``entropy > 0`` the training loss becomes ``OT + entropy * E_q[log q]``: among populations that
        reproduce the catalog equally well (the colour-age-metallicity-dust degeneracies make many), it
        prefers the least committal one, which is the variational form of a uniform prior over the box
        (``E_q[log q] = KL(q || uniform) - log volume``).  Estimated on all draws, selected or not.
        """
        x = flow.base_noise(self.cfg.entropy_samples, gen)
        return flow.push(x, with_log_prob=True)[1].mean()

    def validation_distance(self, pred: torch.Tensor, ref: torch.Tensor) -> float:
        """Sliced Wasserstein distance with the fixed validation directions (the validation loss, and the
        noise floor between the catalog's validation and training rows)."""
        return float(sliced_wasserstein(pred, ref, p=self.cfg.sliced_p, directions=self.val_dirs))

    def regularised(self, loss: torch.Tensor, penalty: torch.Tensor | None, flow: PopulationFlow,
                    gen: torch.Generator) -> tuple[torch.Tensor, float]:
        """``loss`` plus the selection pull ``penalty`` and ``entropy * E_q[log q]``; also the entropy
        estimate (NaN when the term is off)."""
        ent_v = math.nan
        if penalty is not None:
            loss = loss + penalty
        if self.cfg.entropy > 0:
            neg_h = self.neg_entropy(flow, gen)
            ent_v = -float(neg_h.detach())
            loss = loss + self.cfg.entropy * neg_h
        return loss, ent_v

    def cut_params(self, flux: torch.Tensor, sigma: torch.Tensor, amplitude: float):
        """Per hard cut: (band flux, flux at the cut, smooth width, sign) -- sign +1 for '<' (brighter
        passes)."""
        out = []
        for c in self.cuts:
            if c.soft:
                continue
            j = self.bands.index(c.band)
            f_cut = 10.0 ** (-0.4 * (c.value - 22.5))
            width = torch.sqrt((amplitude * sigma[:, j]) ** 2 + (self.cfg.soft_width * f_cut) ** 2)
            out.append((flux[:, j], f_cut, width, 1.0 if c.op in ("<", "<=") else -1.0))
        return out

    def near_cut(self, flux, sigma, amplitude, noisy=None) -> torch.Tensor:
        """Rows within 3 smooth widths of a hard cut, or (``noisy``: the noisy fluxes) whose completeness
        under a soft cut is between 0.25 % and 99.75 % (6 widths of the logistic)."""
        near = torch.zeros(flux.shape[0], dtype=torch.bool, device=flux.device)
        for fj, f_cut, width, _ in self.cut_params(flux, sigma, amplitude):
            near |= (fj - f_cut).abs() < 3.0 * width
        for c in self.cuts:
            if c.soft and noisy is not None:
                m = pogson_mag(noisy[:, self.bands.index(c.band)])
                near |= (m - c.value).abs() < 6.0 * c.width
        return near

    def selection_probability(self, flux, sigma, amplitude, noisy=None) -> torch.Tensor:
        """The smooth selection weight: per hard cut ``Phi((f - f_cut) / width)`` of the noise-free flux,
        per soft cut its completeness ``C(m)`` of the noisy magnitude (``noisy``, differentiable in the
        flux; ``flux`` when not given)."""
        p = torch.ones(flux.shape[0], device=flux.device, dtype=flux.dtype)
        for fj, f_cut, width, sign in self.cut_params(flux, sigma, amplitude):
            p = p * torch.special.ndtr(sign * (fj - f_cut) / width)
        src = flux if noisy is None else noisy
        for c in self.cuts:
            if c.soft:
                p = p * c.completeness(pogson_mag(src[:, self.bands.index(c.band)]))
        return p

    def pull_penalty(self, noisy_rejected: torch.Tensor, rejected_fraction: float,
                     pull: float) -> torch.Tensor:
        """Selection pull: ``pull * (rejected fraction) * mean softplus-distance (mag) beyond the cuts`` of
        (a random subset of) the rejected samples, given their noisy fluxes ``noisy_rejected``.

        The masked OT loss constrains the population only where it is selected: it is blind to how much
        mass lies beyond the cuts, and mass leaking across the limit never comes back (the acceptance rate
        then collapses and the loss starves).  This weak term pulls rejected samples back toward the
        limit; it prefers, among the populations that reproduce the catalog, the one with the least
        mass beyond the cuts.  Its gradient reaches the flow only through rejected samples.
        """
        f = noisy_rejected
        mags = asinh_mag(f, self.feat._t_soft(f))
        viol = []
        for c in self.cuts:
            mj = mags[:, self.bands.index(c.band)]
            viol.append((mj - c.value) if c.op in ("<", "<=") else (c.value - mj))
        v = torch.stack(viol, 1).max(1).values
        w = 0.2  # mag
        return pull * rejected_fraction * (w * torch.nn.functional.softplus(v / w)).mean()
