"""Whether the members of an ensemble converged, and which of them are pooled into the population.

Two separate questions:

- **converged** (honest, per member): the member's kept validation loss is within ``converge_floor`` times
  the noise floor, *and* its validation loss has stopped decreasing (:func:`plateau`);
- **kept** (pooled into ``population.parquet``, relative to the ensemble): a finite kept validation loss
  at most ``converge_factor`` times the best member's, and no divergence during training.

A short demonstration fit therefore still writes a population (its best members are kept) while saying
that none of them converged, and why.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["CONVERGENCE_DEFINITION", "PLATEAU_MIN", "PLATEAU_WINDOW", "ensemble_report", "plateau"]

#: the fraction of training, at its end, whose validation losses decide whether the loss has plateaued
PLATEAU_WINDOW = 1.0 / 3.0
#: the fewest validations per half of that window: a median of fewer is the scatter of single estimates
PLATEAU_MIN = 4

#: the definition written into ``summary.json``
CONVERGENCE_DEFINITION = (
    "converged: kept validation loss <= converge_floor x noise floor, and the validation loss has plateaued "
    "(over the last third of training, the median of its later half is lower than the median of its earlier "
    "half, at least 4 validations each, by less than plateau_tol); kept (pooled into population.parquet): "
    "finite kept validation loss <= converge_factor x the ensemble's best and no divergence")


def plateau(history, steps: int) -> float | None:
    """Relative decrease of the validation loss over the last :data:`PLATEAU_WINDOW` of training.

    ``history``: ``(step, validation loss)`` pairs of one member; ``steps``: its number of training steps.
    The validations at steps ``>= (1 - PLATEAU_WINDOW) (steps - 1)`` are split into an earlier and a later
    half (the middle one of an odd number is left out); the result is ``1 - median(later) /
    median(earlier)``: positive while the loss still decreases, about zero (or negative) on a plateau.
    Medians make it robust to the scatter of single validation estimates.  ``None`` when fewer than
    ``2 * PLATEAU_MIN`` finite validations fall in the window (too few to tell a plateau from scatter).
    """
    start = (1.0 - PLATEAU_WINDOW) * (steps - 1)
    vals = [float(v) for s, v in sorted(history) if s >= start and v is not None and math.isfinite(v)]
    half = len(vals) // 2
    if half < PLATEAU_MIN:
        return None
    early, late = float(np.median(vals[:half])), float(np.median(vals[-half:]))
    if not early > 0:
        return None
    return 1.0 - late / early


def _convergence(v: float, trend: float | None, noise_floor: float | None, converge_floor: float,
                 plateau_tol: float) -> tuple[bool, float | None, list[str]]:
    """``(converged, ratio to the noise floor, reasons it did not)`` of a member with kept validation loss
    ``v`` and plateau figure ``trend``."""
    reasons = []
    ratio = v / noise_floor if noise_floor is not None and noise_floor > 0 else None
    if ratio is None:
        reasons.append("no noise floor to compare the validation loss with")
    elif ratio > converge_floor:
        reasons.append(f"validation loss {v:.3g} is {ratio:.1f}x the noise floor {noise_floor:.3g} "
                       f"(converged: <= {converge_floor:g}x)")
    if trend is None:
        reasons.append(f"too few validations in the last third of training to judge a plateau (need "
                       f"{2 * PLATEAU_MIN}: more steps, or a smaller val_every)")
    elif trend >= plateau_tol:
        reasons.append(f"still decreasing by {trend:.0%} over the last third of training "
                       f"(plateau: < {plateau_tol:.0%})")
    return not reasons, ratio, reasons


def ensemble_report(members: list[dict], converge_factor: float, noise_floor: float | None, *,
                    converge_floor: float = 2.0, plateau_tol: float = 0.02,
                    histories: dict | None = None, steps: int | None = None) -> dict:
    """Decide, per member, whether it converged and whether it is kept (pooled).

    Parameters
    ----------
    members : rows with ``member``, ``status`` (``diverged`` when training flagged non-finite losses) and
        ``best_val_loss`` (the validation loss of the kept state).
    converge_factor : a member is kept when its kept validation loss is at most this times the best
        member's (and finite, and it did not diverge).
    noise_floor : the validation loss of the catalog's own training rows against its validation rows: what
        a population that reproduced the catalog exactly would reach, up to the scatter of the estimate.
    converge_floor : a converged member's kept validation loss is at most this times the noise floor.  A
        well-trained fit of a catalog its forward model can reproduce reaches about the floor; the default
        2 leaves room for the scatter of the validation estimate and for the model mismatch of a real
        catalog, while a loss several times the floor means that the predicted photometry is still visibly
        unlike the catalog's.
    plateau_tol : a converged member's validation loss decreased by less than this fraction over the last
        third of training (:func:`plateau`): a loss still falling faster has not finished training.
    histories : member -> ``(step, validation loss)`` pairs (``history.jsonl``); without them the plateau
        cannot be judged and no member is converged.
    steps : training steps per member (the plateau window).

    Returns
    -------
    dict
        ``members`` (each row with ``status``: ``converged``, ``not_converged`` or ``diverged``; ``kept``;
        ``floor_ratio``; ``plateau``; ``note``: why it did not converge or is not kept), ``converged``,
        ``kept`` and ``dropped`` (members not kept) lists.
    """
    vals = [m["best_val_loss"] for m in members
            if m.get("best_val_loss") is not None and m.get("status") != "diverged"]
    vals = [v for v in vals if math.isfinite(v)]
    best = min(vals) if vals else None
    out = []
    for m in members:
        r = dict(m)
        v = m.get("best_val_loss")
        hist = (histories or {}).get(m["member"])
        trend = plateau(hist, steps) if hist and steps else None
        r.update(status="diverged", kept=False, floor_ratio=None, plateau=trend)
        if v is None or not math.isfinite(v):
            r["note"] = "no finite validation loss"
        elif m.get("status") == "diverged":
            r["note"] = "diverged during training (non-finite losses)"
        else:
            ok, r["floor_ratio"], reasons = _convergence(v, trend, noise_floor, converge_floor, plateau_tol)
            r["status"] = "converged" if ok else "not_converged"
            thr = converge_factor * best
            r["kept"] = v <= thr
            if not r["kept"]:
                reasons.append(f"not pooled: validation loss {v:.4g} > {thr:.4g} ({converge_factor:g}x the "
                               f"ensemble's best {best:.4g})")
            if reasons:
                r["note"] = "; ".join(reasons)
        out.append(r)
    return {"members": out, "converged": [m["member"] for m in out if m["status"] == "converged"],
            "kept": [m["member"] for m in out if m["kept"]],
            "dropped": [m["member"] for m in out if not m["kept"]]}
