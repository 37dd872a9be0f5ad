"""Dice, DIN's data-adaptive activation (Zhou et al., KDD 2018, section 4.3), and an MLP built of it."""

from __future__ import annotations

import torch
from torch import nn

from streamrec.models.deep_base import init_linear


class Dice(nn.Module):
    """``p(s) * s + (1 - p(s)) * alpha * s`` with ``p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))``.

    E and Var are the batch's while learning (gradients on) and running averages when scoring,
    so a prediction never depends on the other examples in its request."""

    def __init__(self, dim: int, momentum: float = 0.01, eps: float = 1e-8) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.momentum, self.eps = momentum, eps

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        flat = s.reshape(-1, s.shape[-1])
        if torch.is_grad_enabled() and flat.shape[0] > 1:
            mean, var = flat.mean(dim=0), flat.var(dim=0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((s - mean) / torch.sqrt(var + self.eps))
        return p * s + (1 - p) * self.alpha * s


def dice_mlp(input_dim: int, hidden: tuple[int, ...], generator: torch.Generator) -> nn.Sequential:
    """Linear + Dice layers of widths ``hidden``, then a Linear to one logit."""
    layers: list[nn.Module] = []
    dim = input_dim
    for width in hidden:
        layers += [init_linear(nn.Linear(dim, width), generator), Dice(width)]
        dim = width
    layers.append(init_linear(nn.Linear(dim, 1), generator))
    return nn.Sequential(*layers)
