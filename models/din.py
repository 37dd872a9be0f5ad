"""``din``: Deep Interest Network, attention over the user's clicked items against the candidate.

Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018. The user's
last clicked items (kept by the trainer from the stream, stream/behaviour_history.py), each with
its ``--history-field`` values (the paper's goods_id + cate_id), share the fields' embedding rows.
A local activation unit (:class:`ActivationUnit`) scores each clicked item against the candidate;
the history is pooled with these weights, not normalised by a softmax, so the pooled vector keeps
the intensity of the user's interest (section 4.3). The pooled interest, every field embedding and
the dense inputs feed an MLP with Dice activations. Embeddings use the paper's mini-batch-aware
regularisation (models/embedding.py).

Beyond the paper, so that behaviour matching is learned within one pass on any stream
(models/behaviour.py, measured in bench/sequence_learning.py): the unit compares entry and
candidate field by field instead of as one summed vector, it is told which fields of the entry
*equal* the candidate's (SIM's hard search, Pi et al. 2020, as a feature), and a recency-weighted
match term adds "the candidate's category equals the k-th latest click's" to the logit directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.behaviour import Behaviour, RecencyEmbedding, RecencyMatch
from streamrec.models.deep_base import DeepConfig, DeepModel, init_linear
from streamrec.models.dice import Dice, dice_mlp
from streamrec.stream.feature_spec import FeatureSpec


class ActivationUnit(nn.Module):
    """DIN's local activation unit: a score per history entry from the entry and the candidate,
    field by field, plus the entry's match indicators and recency (models/behaviour.py).

    The paper feeds ``[h, c, h - c, h * c]`` to a linear layer; ``h - c`` adds nothing a linear
    layer does not already get from ``h`` and ``c``, and the candidate's part is the same for
    every entry of an example, so the first layer is split into its parts and the candidate's is
    computed once per example: the same function class at about half the cost."""

    def __init__(self, width: int, dim: int, length: int, hidden: tuple[int, ...], recency_dim: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        first, rest = hidden[0], hidden[1:]
        self.entry = init_linear(nn.Linear(width * dim, first), generator)
        self.candidate = init_linear(nn.Linear(width * dim, first, bias=False), generator)
        self.product = init_linear(nn.Linear(width * dim, first, bias=False), generator)
        self.match = init_linear(nn.Linear(width, first, bias=False), generator)
        self.recency = RecencyEmbedding(length, recency_dim, generator) if recency_dim else None
        self.recency_layer = init_linear(nn.Linear(recency_dim, first, bias=False), generator) if recency_dim else None
        self.activation = Dice(first)
        self.out = dice_mlp(first, rest, generator)

    def forward(self, behaviour: Behaviour) -> torch.Tensor:
        b, length = behaviour.mask.shape
        h = behaviour.fields.reshape(b, length, -1)
        c = behaviour.candidate.reshape(b, 1, -1)
        s = self.entry(h) + self.candidate(c) + self.product(h * c) + self.match(behaviour.match)
        if self.recency is not None and self.recency_layer is not None:
            s = s + self.recency_layer(self.recency(behaviour.recency))
        return self.out(self.activation(s)).squeeze(2)


class _DINNet(nn.Module):
    def __init__(self, fields: int, dim: int, dense_dim: int, config: DINConfig, generator: torch.Generator,
                 width: int, length: int) -> None:
        super().__init__()
        self.unit = ActivationUnit(width, dim, length, config.attention_hidden, config.recency_dim, generator)
        self.match = RecencyMatch(length, width) if config.match_logit else None
        self.learning_rates = {"match.weight": config.match_lr}
        self.mlp = dice_mlp(fields * dim + width * dim + dense_dim, config.hidden, generator)

    def forward(self, rows: torch.Tensor, dense: torch.Tensor, history: torch.Tensor, mask: torch.Tensor,
                behaviour: Behaviour) -> torch.Tensor:
        weights = self.unit(behaviour) * mask  # empty slots weigh nothing; no softmax (the paper's 4.3)
        entries = behaviour.fields.reshape(*behaviour.fields.shape[:2], -1)  # (B, L, W * D)
        interest = (weights.unsqueeze(2) * entries).sum(dim=1)
        logit = self.mlp(torch.cat([rows.reshape(rows.shape[0], -1), interest, dense], dim=1)).squeeze(1)
        return logit if self.match is None else logit + self.match(behaviour)


@dataclass(frozen=True)
class DINConfig(DeepConfig):
    """DIN's settings: MLP widths, the activation unit's hidden widths and the dense learning rate."""

    hidden: tuple[int, ...] = (200, 80)
    attention_hidden: tuple[int, ...] = (36,)
    dense_lr: float = 0.01  # no FTRL part: see dcn.py
    recency_dim: int = 0        # width of an entry's recency embedding in the unit (0: none; RecencyMatch has recency)
    match_logit: bool = True    # the (field, recency) match weights in the logit (models/behaviour.py)
    match_lr: float = 0.05      # their Adam rate: a handful of weights that must move within one pass


class DIN(DeepModel):
    """Deep Interest Network (Zhou et al., KDD 2018); see the module docstring."""

    name = "din"
    config_class = DINConfig
    has_wide = False
    history_length = 20

    reads_behaviour = True

    def build_deep(self, spec: FeatureSpec, config: DINConfig, generator: torch.Generator) -> nn.Module:
        return _DINNet(len(spec.fields), config.embedding.dim, spec.dense_dim, config, generator,
                       len(self.candidate_positions()), max(spec.history_length, 1))
