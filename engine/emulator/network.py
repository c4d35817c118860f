"""The Speculator network (Alsing et al. 2020, ApJS 249, 5).

A fully connected network whose hidden layers use the Speculator activation

    a(x) = [γ + (1 − γ) · sigmoid(β ⊙ x)] ⊙ x,

with trainable γ and β per unit (Alsing et al. 2020, Eq. 8): it interpolates between a
linear unit (β → 0 gives (1+γ)/2 · x) and a ReLU-like unit, which suits the smooth
but sharply varying mappings from physical parameters to photometry.
"""
from __future__ import annotations

from typing import Sequence

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


class _FoldedLayer(torch.autograd.Function):
    """y = silu(t) + c ⊙ t with t = h Wᵀ + b: one hidden layer of :class:`InferenceMLP`, with a hand-written
    backward (∂y/∂t = silu'(t) + c, fused as ``silu_backward`` + one in-place ``addcmul_``; then ∂/∂h = g W).

    Autograd's own graph for the same three ops keeps two gradient buffers for t and adds them, an extra
    pass over the largest tensors of the emulator.  W, b and c are constants (buffers): no gradient."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        t = torch.addmm(b, h, w.t())
        y = torch.nn.functional.silu(t).addcmul_(t, c)
        ctx.save_for_backward(t, w, c)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        t, w, c = ctx.saved_tensors
        g_t = torch.ops.aten.silu_backward(g, t).addcmul_(g, c)
        return g_t.mm(w) if ctx.needs_input_grad[0] else None, None, None, None


class InferenceMLP(nn.Module):
    """A trained :class:`SpeculatorMLP` in evaluation form: the same function, fewer passes over memory.

    With t = β ⊙ x the activation is a(x) = [γ + (1 − γ) σ(βx)] x = (1 − γ)/β ⊙ [silu(t) + c ⊙ t] with
    c = γ / (1 − γ).  So β of hidden layer i is folded into layer i's weights and bias (it outputs t
    directly), (1 − γ)/β into the columns of layer i+1's weights, and what is left per unit is
    silu(t) + c t: two native passes forward and two backward (:class:`_FoldedLayer`: silu's fused backward
    and one in-place multiply-add), instead of the training form's four and about six.  A layer with any
    |β| or |1 − γ| ≤ ``FOLD_MIN`` is not folded (the factors would be ill-conditioned) and keeps the
    training form.  The last layer keeps
    only the output ``rows`` and includes an affine map ``scale · y + shift`` of them.  All folding is done
    in float64; the parameters are buffers (no gradients: θ is what is differentiated).

    ``features(x)`` gives the last hidden layer, so a caller can evaluate the last layer itself
    (``w_out``, ``b_out``), e.g. for a subset of outputs per row.
    """

    FOLD_MIN = 1e-4

    def __init__(
        self,
        net: SpeculatorMLP,
        rows: Sequence[int] | None = None,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
    ):
        super().__init__()
        lin = [m for m in net.net if isinstance(m, nn.Linear)]
        act = [m for m in net.net if isinstance(m, SpeculatorActivation)]
        col_scale = None  # factor of the previous layer's output folded into this layer's weight columns
        self.n_hidden = len(act)
        for i, (layer, a) in enumerate(zip(lin[:-1], act, strict=True)):
            w, b = layer.weight.detach().double(), layer.bias.detach().double()
            if col_scale is not None:
                w = w * col_scale.unsqueeze(0)
            beta, gamma = a.beta.detach().double(), a.gamma.detach().double()
            fold = bool((beta.abs() > self.FOLD_MIN).all() and ((1.0 - gamma).abs() > self.FOLD_MIN).all())
            if fold:
                w, b = w * beta.unsqueeze(1), b * beta
                col_scale = (1.0 - gamma) / beta
                self.register_buffer(f"c{i}", gamma / (1.0 - gamma))
                self.register_buffer(f"beta{i}", None)
                self.register_buffer(f"g{i}", None)
            else:
                col_scale = None
                self.register_buffer(f"c{i}", None)
                self.register_buffer(f"beta{i}", beta)
                self.register_buffer(f"g{i}", gamma)
            self.register_buffer(f"w{i}", w)
            self.register_buffer(f"b{i}", b)
        w, b = lin[-1].weight.detach().double(), lin[-1].bias.detach().double()
        if col_scale is not None:
            w = w * col_scale.unsqueeze(0)
        idx = torch.arange(w.shape[0]) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
        w, b = w[idx], b[idx]
        if scale is not None:
            s = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)
            s = s[idx] if s.numel() > 1 else s
            w, b = w * s.unsqueeze(1), b * s
        if shift is not None:
            c = torch.as_tensor(shift, dtype=torch.float64).reshape(-1)
            b = b + (c[idx] if c.numel() > 1 else c)
        self.register_buffer("w_out", w)
        self.register_buffer("b_out", b)
        self.n_in, self.n_out = lin[0].in_features, int(w.shape[0])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last hidden layer (N, H), up to the per-unit factor folded into the next layer."""
        h = x
        for i in range(self.n_hidden):
            c = getattr(self, f"c{i}")
            if c is not None:
                h = _FoldedLayer.apply(h, getattr(self, f"w{i}"), getattr(self, f"b{i}"), c)
            else:  # the training form
                t = torch.addmm(getattr(self, f"b{i}"), h, getattr(self, f"w{i}").t())
                g = getattr(self, f"g{i}")
                h = t * torch.addcmul(g, 1.0 - g, torch.sigmoid(getattr(self, f"beta{i}") * t))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_out, self.features(x), self.w_out.t())
