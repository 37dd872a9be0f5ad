"""``deep_crossing``: embedding, stacking, residual units and a scoring layer.

Shan et al., "Deep Crossing: Web-Scale Modeling without Manually Crafted Combinatorial
Features", KDD 2016. The embedded fields and the dense inputs are stacked into one vector; each
residual unit computes ``ReLU(x + W1 ReLU(W0 x + b0) + b1)``, so the layers learn the residual
of the identity; a logistic scoring layer ends it. No linear part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from streamrec.models.deep_base import DeepConfig, DeepModel, init_linear
from streamrec.models.embedding import EmbeddingConfig
from streamrec.stream.feature_spec import FeatureSpec


class ResidualUnit(nn.Module):
    """``ReLU(x + W1 ReLU(W0 x + b0) + b1)``."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.inner = init_linear(nn.Linear(dim, hidden), generator)
        self.outer = init_linear(nn.Linear(hidden, dim), generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.outer(torch.relu(self.inner(x))))


class _DeepCrossingNet(nn.Module):
    def __init__(self, input_dim: int, units: int, unit_hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.units = nn.Sequential(*[ResidualUnit(input_dim, unit_hidden, generator) for _ in range(units)])
        self.score = init_linear(nn.Linear(input_dim, 1), generator)

    def forward(self, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        stacked = torch.cat([rows.reshape(rows.shape[0], -1), dense], dim=1)
        return self.score(self.units(stacked)).squeeze(1)


@dataclass(frozen=True)
class DeepCrossingConfig(DeepConfig):
    """Deep Crossing's settings: how many residual units, their hidden width, the learning rates."""

    residual_units: int = 2
    unit_hidden: int = 64
    dense_lr: float = 0.01  # no FTRL part: see dcn.py
    # the stacked input is mostly embeddings: they must move faster than the default to lead
    embedding: EmbeddingConfig = field(default_factory=lambda: EmbeddingConfig(lr=0.1))


class DeepCrossing(DeepModel):
    """Deep Crossing (Shan et al., KDD 2016); see the module docstring."""

    name = "deep_crossing"
    config_class = DeepCrossingConfig
    has_wide = False

    def build_deep(self, spec: FeatureSpec, config: DeepCrossingConfig, generator: torch.Generator) -> nn.Module:
        return _DeepCrossingNet(len(spec.fields) * config.embedding.dim + spec.dense_dim, config.residual_units,
                                config.unit_hidden, generator)
