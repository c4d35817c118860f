"""The torch device of a computation: the one place that turns ``auto``/``cpu``/``cuda[:n]`` into a device."""
from __future__ import annotations

import torch

from engine.errors import PopsedError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``.

    Raises :class:`~engine.errors.PopsedError` (a ``ValueError``) when CUDA is asked for and not available.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PopsedError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PopsedError(f"device '{dev.type}' requested but CUDA is not available on this machine")
    return dev
