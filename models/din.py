"""``din``: Deep Interest Network, attention over the user's clicked items against the candidate.

Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018. The user's
last clicked items (kept by the trainer from the stream, consumers/history.py) share the
item_id embedding rows. A local activation unit scores each history item against the candidate
item from ``[h, c, h - c, h * c]``; the history is pooled with these weights, not normalised by a
softmax, so the pooled vector keeps the intensity of the user's interest (section 4.3). The
pooled interest, every field embedding and the dense inputs feed an MLP with Dice activations.
Embeddings use the paper's mini-batch-aware regularisation (models/embedding.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.deep_base import DeepConfig, DeepModel, init_linear
from stream.features import FeatureSpec


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
    layers: list[nn.Module] = []
    dim = input_dim
    for width in hidden:
        layers += [init_linear(nn.Linear(dim, width), generator), Dice(width)]
        dim = width
    layers.append(init_linear(nn.Linear(dim, 1), generator))
    return nn.Sequential(*layers)


class _DINNet(nn.Module):
    def __init__(self, fields: int, dim: int, dense_dim: int, hidden: tuple[int, ...],
                 attention_hidden: tuple[int, ...], generator: torch.Generator, candidate: list[int]) -> None:
        super().__init__()
        self.candidate = candidate  # the item's field and the fields remembered with history items
        self.attention = dice_mlp(4 * dim, attention_hidden, generator)
        self.mlp = dice_mlp(fields * dim + dim + dense_dim, hidden, generator)

    def forward(self, rows: torch.Tensor, dense: torch.Tensor, history: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        candidate = rows[:, self.candidate].sum(dim=1).unsqueeze(1).expand_as(history)
        scores = self.attention(torch.cat([history, candidate, history - candidate, history * candidate], dim=2))
        weights = scores.squeeze(2) * mask  # empty slots weigh nothing
        interest = (weights.unsqueeze(2) * history).sum(dim=1)
        return self.mlp(torch.cat([rows.reshape(rows.shape[0], -1), interest, dense], dim=1)).squeeze(1)


@dataclass(frozen=True)
class DINConfig(DeepConfig):
    hidden: tuple[int, ...] = (200, 80)
    attention_hidden: tuple[int, ...] = (36,)
    dense_lr: float = 0.01  # no FTRL part: see dcn.py


class DIN(DeepModel):
    name = "din"
    config_class = DINConfig
    has_wide = False
    history_length = 20

    def build_deep(self, spec: FeatureSpec, config: DINConfig, generator: torch.Generator) -> nn.Module:
        return _DINNet(len(spec.fields), config.embedding.dim, spec.dense_dim, config.hidden, config.attention_hidden,
                       generator, self.candidate_positions())
