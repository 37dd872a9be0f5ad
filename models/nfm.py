"""``nfm``: bi-interaction pooling of the embeddings, then an MLP; plus an FTRL linear part.

He and Chua, "Neural Factorization Machines for Sparse Predictive Analytics", SIGIR 2017.
The bi-interaction layer pools the field embeddings into one vector of pairwise interactions,
``0.5 * ((sum_f v_f)^2 - sum_f v_f^2)`` (element-wise, shape (B, D)); hidden layers model the
higher-order interactions on top of it. The linear term is FTRL over field ids, crosses and bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.deep_base import DeepConfig, DeepModel, mlp
from streamrec.stream.feature_spec import FeatureSpec


def bi_interaction(rows: torch.Tensor) -> torch.Tensor:
    """(B, F, D) -> (B, D): the element-wise sum of every pairwise product of field embeddings."""
    total = rows.sum(dim=1)
    return 0.5 * (total.pow(2) - rows.pow(2).sum(dim=1))


class _NFMNet(nn.Module):
    def __init__(self, input_dim: int, hidden: tuple[int, ...], generator: torch.Generator) -> None:
        super().__init__()
        self.mlp = mlp(input_dim, hidden, generator)

    def forward(self, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([bi_interaction(rows), dense], dim=1)).squeeze(1)


@dataclass(frozen=True)
class NFMConfig(DeepConfig):
    """NFM's settings: the hidden widths over the bi-interaction pooling."""

    hidden: tuple[int, ...] = (64,)


class NFM(DeepModel):
    """Neural Factorization Machines (He and Chua, SIGIR 2017); see the module docstring."""

    name = "nfm"
    config_class = NFMConfig

    def build_deep(self, spec: FeatureSpec, config: NFMConfig, generator: torch.Generator) -> nn.Module:
        return _NFMNet(config.embedding.dim + spec.dense_dim, config.hidden, generator)
