"""``din``: Deep Interest Network, attention over the user's clicked items against the candidate.

Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018. The user's
last clicked items (kept by the trainer from the stream, stream/behaviour_history.py) share the
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

from streamrec.models.deep_base import DeepConfig, DeepModel
from streamrec.models.dice import dice_mlp
from streamrec.stream.feature_spec import FeatureSpec


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
    """DIN's settings: MLP widths, the activation unit's hidden widths and the dense learning rate."""

    hidden: tuple[int, ...] = (200, 80)
    attention_hidden: tuple[int, ...] = (36,)
    dense_lr: float = 0.01  # no FTRL part: see dcn.py


class DIN(DeepModel):
    """Deep Interest Network (Zhou et al., KDD 2018); see the module docstring."""

    name = "din"
    config_class = DINConfig
    has_wide = False
    history_length = 20

    def build_deep(self, spec: FeatureSpec, config: DINConfig, generator: torch.Generator) -> nn.Module:
        return _DINNet(len(spec.fields), config.embedding.dim, spec.dense_dim, config.hidden, config.attention_hidden,
                       generator, self.candidate_positions())
