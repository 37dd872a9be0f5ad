"""``ipnn`` and ``opnn``: product-based neural networks (inner and outer product layer).

Qu et al., "Product-based Neural Networks for User Response Prediction", ICDM 2016. The first
hidden layer adds two signals before its ReLU: ``l_z``, a linear map of the stacked embeddings
(and dense inputs), and ``l_p``, a linear map of their pairwise products:

* IPNN: the inner product of every pair of field embeddings, ``F(F-1)/2`` values;
* OPNN: the outer product, summed over fields first (the paper's superposition trick:
  ``p = f_sum f_sum^T``, a D x D matrix) so the cost stays O(D^2) instead of O(F^2 D^2).

Further hidden layers and a logistic output follow. No linear part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.deep_base import DeepConfig, DeepModel, init_linear, mlp, pairs
from streamrec.stream.feature_spec import FeatureSpec


class _PNNNet(nn.Module):
    def __init__(self, fields: int, dim: int, dense_dim: int, hidden: tuple[int, ...], outer: bool,
                 generator: torch.Generator) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("a PNN needs at least one hidden layer (the product layer)")
        self.outer = outer
        self.register_buffer("left", pairs(fields)[0], persistent=False)
        self.register_buffer("right", pairs(fields)[1], persistent=False)
        product_dim = dim * dim if outer else len(self.left)
        self.linear_signal = init_linear(nn.Linear(fields * dim + dense_dim, hidden[0]), generator)
        self.product_signal = init_linear(nn.Linear(product_dim, hidden[0]), generator)
        self.rest = mlp(hidden[0], hidden[1:], generator)

    def forward(self, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        z = torch.cat([rows.reshape(rows.shape[0], -1), dense], dim=1)
        if self.outer:
            total = rows.sum(dim=1)
            products = (total.unsqueeze(2) * total.unsqueeze(1)).reshape(rows.shape[0], -1)
        else:
            products = (rows[:, self.left] * rows[:, self.right]).sum(dim=2)
        return self.rest(torch.relu(self.linear_signal(z) + self.product_signal(products))).squeeze(1)


@dataclass(frozen=True)
class PNNConfig(DeepConfig):
    """PNN's settings: hidden widths and a dense learning rate of its own."""

    hidden: tuple[int, ...] = (256, 128)
    dense_lr: float = 0.01  # no FTRL part: see dcn.py


class _PNN(DeepModel):
    config_class = PNNConfig
    has_wide = False
    outer = False

    def build_deep(self, spec: FeatureSpec, config: PNNConfig, generator: torch.Generator) -> nn.Module:
        return _PNNNet(len(spec.fields), config.embedding.dim, spec.dense_dim, config.hidden, self.outer, generator)


class IPNN(_PNN):
    """PNN with an inner-product layer (Qu et al., ICDM 2016)."""

    name = "ipnn"


class OPNN(_PNN):
    """PNN with an outer-product layer, superposed over fields (Qu et al., ICDM 2016)."""

    name = "opnn"
    outer = True
