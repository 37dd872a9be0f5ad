"""``dien``: Deep Interest Evolution Network, a GRU over the user's clicks and an attention-gated
GRU (AUGRU) that evolves the interest relevant to the candidate.

Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI 2019.

* Interest extractor: a GRU over the user's last clicked items (oldest first; kept by the trainer
  from the stream, stream/behaviour_history.py; the items share the item_id embedding rows). Its states
  get the paper's auxiliary loss: state t must tell the item clicked at t+1 from an item another
  user of the batch clicked (a negative drawn from the batch), so each state carries the interest
  that led to the next click.
* Interest evolution: attention of each state on the candidate, ``softmax_t(h_t W e_c)`` over the
  clicks the user has, gates the update of a second GRU (AUGRU: ``u'_t = a_t * u_t``), so clicks
  unrelated to the candidate barely move its final state.
* The final interest, every field embedding, the candidate-interest product and the dense inputs
  feed an MLP with Dice activations (models/din.py), as in DIN. Embeddings use mini-batch-aware
  regularisation like every model here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.deep_base import DeepConfig, DeepModel, init_linear
from streamrec.models.dice import dice_mlp
from streamrec.stream.feature_spec import FeatureSpec
from streamrec.stream.sparse_batch import SparseBatch


class AUGRUCell(nn.Module):
    """A GRU cell whose update gate is scaled by an attention score per example."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.x = init_linear(nn.Linear(dim, 3 * hidden), generator)
        self.h = init_linear(nn.Linear(hidden, 3 * hidden), generator)

    def forward(self, x: torch.Tensor, h: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        xr, xu, xn = self.x(x).chunk(3, dim=1)
        hr, hu, hn = self.h(h).chunk(3, dim=1)
        reset = torch.sigmoid(xr + hr)
        update = attention.unsqueeze(1) * torch.sigmoid(xu + hu)
        candidate = torch.tanh(xn + reset * hn)
        return (1 - update) * h + update * candidate


class _DIENNet(nn.Module):
    def __init__(self, fields: int, dim: int, dense_dim: int, hidden: tuple[int, ...],
                 generator: torch.Generator, candidate: list[int]) -> None:
        super().__init__()
        self.candidate = candidate  # the item's field and the fields remembered with history items
        self.extractor = nn.GRU(dim, dim, batch_first=True)
        for name, param in self.extractor.named_parameters():  # seeded, like every other layer
            if "weight" in name:
                nn.init.uniform_(param, -(dim**-0.5), dim**-0.5, generator=generator)
            else:
                nn.init.zeros_(param)
        self.attention = nn.Parameter(torch.empty(dim, dim))
        nn.init.xavier_uniform_(self.attention, generator=generator)
        self.evolution = AUGRUCell(dim, dim, generator)
        self.mlp = dice_mlp(fields * dim + 2 * dim + dense_dim, hidden, generator)
        self.states: torch.Tensor | None = None  # the extractor's states of the last learning pass

    def forward(self, rows: torch.Tensor, dense: torch.Tensor, history: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        states, _ = self.extractor(history)  # (B, L, D); right-padded: padded states are masked below
        self.states = states if torch.is_grad_enabled() else None
        candidate = rows[:, self.candidate].sum(dim=1)
        scores = torch.einsum("bld,de,be->bl", states, self.attention, candidate)
        scores = scores.masked_fill(~mask, float("-inf"))
        # a user with no clicks yet has all scores -inf: no attention, the interest stays at zero
        attention = torch.where(mask.any(dim=1, keepdim=True), torch.softmax(scores, dim=1), torch.zeros_like(scores))
        interest = torch.zeros_like(candidate)
        for t in range(states.shape[1]):
            interest = self.evolution(states[:, t], interest, attention[:, t])
        features = [rows.reshape(rows.shape[0], -1), interest, interest * candidate, dense]
        return self.mlp(torch.cat(features, dim=1)).squeeze(1)


@dataclass(frozen=True)
class DIENConfig(DeepConfig):
    """DIEN's settings: MLP widths, dense learning rate and the auxiliary loss's weight."""

    hidden: tuple[int, ...] = (200, 80)
    dense_lr: float = 0.01  # no FTRL part: see dcn.py
    auxiliary_weight: float = 1.0  # the paper's alpha on the next-click loss


class DIEN(DeepModel):
    """Deep Interest Evolution Network (Zhou et al., AAAI 2019); see the module docstring."""

    name = "dien"
    config_class = DIENConfig
    has_wide = False
    history_length = 20

    def build_deep(self, spec: FeatureSpec, config: DIENConfig, generator: torch.Generator) -> nn.Module:
        return _DIENNet(len(spec.fields), config.embedding.dim, spec.dense_dim, config.hidden, generator,
                        self.candidate_positions())

    def auxiliary_loss(self, batch: SparseBatch, rows: torch.Tensor, history: torch.Tensor | None,
                       mask: torch.Tensor | None) -> torch.Tensor | None:
        states = self.deep.states
        if self.config.auxiliary_weight == 0 or states is None or history is None or mask is None:
            return None
        # state t against the click at t+1 (positive) and another user's click at t+1 (negative)
        positive, negative = history[:, 1:], history.roll(1, dims=0)[:, 1:]
        valid = mask[:, 1:] & mask[:, :-1] & mask.roll(1, dims=0)[:, 1:]
        if not bool(valid.any()):
            return None
        h = states[:, :-1]
        pos = nn.functional.logsigmoid((h * positive).sum(dim=2))
        neg = nn.functional.logsigmoid(-(h * negative).sum(dim=2))
        return -self.config.auxiliary_weight * (pos + neg)[valid].mean()
