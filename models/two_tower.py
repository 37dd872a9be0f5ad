"""``two_tower``: a user tower and an item tower whose output vectors meet in a dot product.

Huang et al., "Learning Deep Structured Semantic Models for Web Search" (DSSM), CIKM 2013; Yi et
al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys 2019.
The item tower reads only the item id's embedding, so item vectors can be computed once and
indexed for retrieval; the user tower reads the user id, every context field and the dense
inputs. ``logit = <u, v> + b``, trained on clicks like every model here (pointwise logloss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.deep_base import DeepConfig, DeepModel, mlp
from streamrec.stream.feature_spec import FeatureSpec


class _TwoTowerNet(nn.Module):
    def __init__(self, fields: int, dim: int, dense_dim: int, hidden: tuple[int, ...], out_dim: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.user_tower = mlp((fields - 1) * dim + dense_dim, hidden, generator, out=out_dim)
        self.item_tower = mlp(dim, hidden, generator, out=out_dim)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        user_side = torch.cat([rows[:, :1], rows[:, 2:]], dim=1).reshape(rows.shape[0], -1)
        u = self.user_tower(torch.cat([user_side, dense], dim=1))
        v = self.item_tower(rows[:, 1])
        return (u * v).sum(dim=1) + self.bias


@dataclass(frozen=True)
class TwoTowerConfig(DeepConfig):
    """The towers' settings: hidden widths, output dimension and the dense learning rate."""

    hidden: tuple[int, ...] = (128,)
    out_dim: int = 32
    dense_lr: float = 0.01  # no FTRL part: see dcn.py


class TwoTower(DeepModel):
    """A user tower and an item tower meeting in a dot product (DSSM; Yi et al., RecSys 2019)."""

    name = "two_tower"
    config_class = TwoTowerConfig
    has_wide = False

    def build_deep(self, spec: FeatureSpec, config: TwoTowerConfig, generator: torch.Generator) -> nn.Module:
        return _TwoTowerNet(len(spec.fields), config.embedding.dim, spec.dense_dim, config.hidden, config.out_dim,
                            generator)
