"""The Speculator network (Alsing et al. 2020, ApJS 249, 5).

A fully connected network whose hidden layers use the Speculator activation

    a(x) = [γ + (1 − γ) · sigmoid(β ⊙ x)] ⊙ x,

with trainable γ and β per unit (Alsing et al. 2020, Eq. 8): it interpolates between a
linear unit (β → 0 gives (1+γ)/2 · x) and a ReLU-like unit, which suits the smooth
but sharply varying mappings from physical parameters to photometry.
"""
from __future__ import annotations

import torch
from torch import nn


class SpeculatorActivation(nn.Module):
    """a(x) = [γ + (1 − γ) σ(β x)] x with per-unit trainable γ, β (Alsing et al. 2020, Eq. 8)."""

    def __init__(self, width: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(width) * 0.1)
        self.beta = nn.Parameter(torch.randn(width) * 0.1 + 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.gamma + (1.0 - self.gamma) * torch.sigmoid(self.beta * x)) * x


class SpeculatorMLP(nn.Module):
    """MLP ``n_in → hidden… → n_out`` with Speculator activations on the hidden layers."""

    def __init__(self, n_in: int, n_out: int, hidden: tuple[int, ...] = (256, 256, 256, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), SpeculatorActivation(h)]
            width = h
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)
        self.n_in, self.n_out, self.hidden = n_in, n_out, tuple(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
