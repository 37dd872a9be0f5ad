"""``dcn``: a cross network beside a deep network, over the stacked embeddings and dense inputs.

Wang et al., "Deep & Cross Network for Ad Click Predictions", ADKDD 2017. With ``x0`` the
stacked input, each cross layer computes ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l``: explicit
feature crosses whose degree grows by one per layer, with O(d) parameters each. The deep network
runs in parallel; the last cross output and the last hidden layer are concatenated into one
logistic output. DCN has no separate linear part (the cross network subsumes it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.deep_base import DeepConfig, DeepModel, init_linear, mlp
from streamrec.stream.feature_spec import FeatureSpec


class CrossNetwork(nn.Module):
    """DCN's cross layers: ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l``."""

    def __init__(self, dim: int, layers: int, generator: torch.Generator) -> None:
        super().__init__()
        bound = 1 / dim**0.5
        self.weights = nn.Parameter(torch.empty(layers, dim).uniform_(-bound, bound, generator=generator))
        self.biases = nn.Parameter(torch.zeros(layers, dim))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weights, self.biases):
            x = x0 * (x @ w).unsqueeze(1) + b + x
        return x


class _DCNNet(nn.Module):
    def __init__(self, input_dim: int, hidden: tuple[int, ...], cross_layers: int, generator: torch.Generator) -> None:
        super().__init__()
        self.cross = CrossNetwork(input_dim, cross_layers, generator)
        self.deep = mlp(input_dim, hidden, generator, out=None)
        self.out = init_linear(nn.Linear(input_dim + (hidden[-1] if hidden else input_dim), 1), generator)

    def forward(self, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([rows.reshape(rows.shape[0], -1), dense], dim=1)
        return self.out(torch.cat([self.cross(x0), self.deep(x0)], dim=1)).squeeze(1)


@dataclass(frozen=True)
class DCNConfig(DeepConfig):
    """DCN's settings: the number of cross layers and a dense learning rate of its own."""

    cross_layers: int = 3
    # No FTRL part learns the bias and the strong single features fast: Adam takes a larger step.
    dense_lr: float = 0.01


class DCN(DeepModel):
    """Deep & Cross Network (Wang et al., ADKDD 2017); see the module docstring."""

    name = "dcn"
    config_class = DCNConfig
    has_wide = False

    def build_deep(self, spec: FeatureSpec, config: DCNConfig, generator: torch.Generator) -> nn.Module:
        return _DCNNet(len(spec.fields) * config.embedding.dim + spec.dense_dim, config.hidden, config.cross_layers,
                       generator)
