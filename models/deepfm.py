"""``deepfm``: a factorisation machine and an MLP over the same embeddings, plus an FTRL linear part.

Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction", IJCAI 2017.
``logit = linear(x) + FM(x) + MLP(x)``: the FM's first-order term is the FTRL linear part (over
field ids, crosses and the bias); its second-order term is the sum of pairwise inner products of
field embeddings, ``0.5 * sum_d((sum_f v_fd)^2 - sum_f v_fd^2)``; the MLP reads the same
embeddings concatenated with the dense inputs. No pre-training: one network, one loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from streamrec.models.deep_base import DeepConfig, DeepModel, mlp
from streamrec.models.embedding import EmbeddingConfig
from streamrec.stream.feature_spec import FeatureSpec


def fm_second_order(rows: torch.Tensor) -> torch.Tensor:
    """Sum of pairwise inner products of the field embeddings (B, F, D) -> (B,), in O(F D)."""
    total = rows.sum(dim=1)
    return 0.5 * (total.pow(2) - rows.pow(2).sum(dim=1)).sum(dim=1)


class _DeepFMNet(nn.Module):
    def __init__(self, input_dim: int, hidden: tuple[int, ...], generator: torch.Generator) -> None:
        super().__init__()
        self.mlp = mlp(input_dim, hidden, generator)

    def forward(self, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        deep = self.mlp(torch.cat([rows.reshape(rows.shape[0], -1), dense], dim=1)).squeeze(1)
        return fm_second_order(rows) + deep


@dataclass(frozen=True)
class DeepFMConfig(DeepConfig):
    """DeepFM's settings: MLP widths and its embedding rows' learning rate."""

    hidden: tuple[int, ...] = (200, 200)
    # The FM term sums every pair of fields, so each row step moves the logit far more than in
    # wide_deep: smaller row steps (docs/defaults.md)
    embedding: EmbeddingConfig = field(default_factory=lambda: EmbeddingConfig(lr=0.02))


class DeepFM(DeepModel):
    """DeepFM (Guo et al., IJCAI 2017): FTRL linear part + FM + MLP over shared embeddings."""

    name = "deepfm"
    config_class = DeepFMConfig

    def build_deep(self, spec: FeatureSpec, config: DeepFMConfig, generator: torch.Generator) -> nn.Module:
        return _DeepFMNet(len(spec.fields) * config.embedding.dim + spec.dense_dim, config.hidden, generator)
