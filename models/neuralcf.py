"""``neuralcf``: NeuMF, generalised matrix factorisation beside an MLP over user and item.

He et al., "Neural Collaborative Filtering", WWW 2017. Pure collaborative filtering: only the
user and item embeddings are read (the first two fields of every stream, see stream/featurizer.py);
context fields are ignored by design. GMF is their element-wise product, the MLP reads them
concatenated, and one logistic layer reads both. The two branches share the embedding rows here
(the paper allows either); the rows are trained sparsely like every other model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.deep_base import DeepConfig, DeepModel, init_linear, mlp
from streamrec.stream.feature_spec import FeatureSpec


class _NeuMFNet(nn.Module):
    def __init__(self, dim: int, hidden: tuple[int, ...], generator: torch.Generator) -> None:
        super().__init__()
        self.mlp = mlp(2 * dim, hidden, generator, out=None)
        self.out = init_linear(nn.Linear(dim + (hidden[-1] if hidden else 2 * dim), 1), generator)

    def forward(self, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        user, item = rows[:, 0], rows[:, 1]
        gmf = user * item
        deep = self.mlp(torch.cat([user, item], dim=1))
        return self.out(torch.cat([gmf, deep], dim=1)).squeeze(1)


@dataclass(frozen=True)
class NeuralCFConfig(DeepConfig):
    """NeuMF's settings (the shared deep settings with its own dense learning rate)."""

    hidden: tuple[int, ...] = (64, 32, 16)
    dense_lr: float = 0.03  # no FTRL part, and only two fields to learn from


class NeuralCF(DeepModel):
    """NeuMF (He et al., WWW 2017); see the module docstring."""

    name = "neuralcf"
    config_class = NeuralCFConfig
    has_wide = False
    reads_context = False

    def build_deep(self, spec: FeatureSpec, config: NeuralCFConfig, generator: torch.Generator) -> nn.Module:
        return _NeuMFNet(config.embedding.dim, config.hidden, generator)
