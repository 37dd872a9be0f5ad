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

As in ``din`` (models/behaviour.py): the extractor reads each click field by field (item and its
``--history-field`` values, concatenated, not summed), the attention score of a click adds a
learned weight per field that *matches* the candidate and a learned bias per recency, and the
recency-weighted match term goes into the logit; those few weights learn at ``match_lr``.

The two GRUs read only each user's latest ``recurrent_length`` clicks, while the match term reads
the whole history: the split of SIM (Pi et al., CIKM 2020), where a cheap search covers the long
history and the sequence model the recent one. A GRU's cost grows with every step it runs, one
step after the other, and the interest a click shows fades along the sequence anyway (DIEN's own
premise for the evolution layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.behaviour import Behaviour, RecencyMatch
from streamrec.models.deep_base import DeepConfig, DeepModel, init_linear
from streamrec.models.dice import dice_mlp
from streamrec.stream.feature_spec import FeatureSpec
from streamrec.stream.sparse_batch import SparseBatch


class AUGRU(nn.Module):
    """A GRU whose update gate is scaled by an attention score per example and step (DIEN's AUGRU:
    ``u'_t = a_t * u_t``), run over a whole sequence.

    The input projections of every step are one matrix product, and the sequence is split into
    its steps once (``unbind``): slicing step t out of a (B, L, .) tensor inside the loop would
    make backward write a full-size gradient per step."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.x = init_linear(nn.Linear(dim, 3 * hidden), generator)
        self.h = init_linear(nn.Linear(hidden, 3 * hidden), generator)
        self.hidden = hidden

    def forward(self, inputs: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """inputs (B, L, dim), attention (B, L) → the final state (B, hidden)."""
        k = self.hidden
        steps, weights = self.x(inputs).unbind(1), attention.unsqueeze(2).unbind(1)
        h = inputs.new_zeros(inputs.shape[0], k)
        for x, a in zip(steps, weights):
            g = self.h(h)
            gates = torch.sigmoid(x[:, :2 * k] + g[:, :2 * k])  # reset and update at once
            candidate = torch.tanh(torch.addcmul(x[:, 2 * k:], gates[:, :k], g[:, 2 * k:]))
            h = torch.addcmul(h, a * gates[:, k:], candidate - h)
        return h


def _at_slots(slots: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each (B, L, ...) tensor's entries at ``slots`` (B, K), row by row."""
    by_row = torch.arange(len(slots)).unsqueeze(1)
    return tuple(t[by_row, slots] for t in tensors)


class _DIENNet(nn.Module):
    def __init__(self, fields: int, dim: int, dense_dim: int, config: DIENConfig, generator: torch.Generator,
                 width: int, length: int) -> None:
        super().__init__()
        # the extractor reads each click field by field (item, category, ...), not their sum
        self.extractor = nn.GRU(width * dim, dim, batch_first=True)
        for name, param in self.extractor.named_parameters():  # seeded, like every other layer
            if "weight" in name:
                nn.init.uniform_(param, -(dim**-0.5), dim**-0.5, generator=generator)
            else:
                nn.init.zeros_(param)
        self.attention = nn.Parameter(torch.empty(dim, width * dim))
        nn.init.xavier_uniform_(self.attention, generator=generator)
        # attention also sees whether the click matches the candidate, field by field, and how recent it is
        self.match_attention = nn.Parameter(torch.zeros(width))
        self.recency_attention = nn.Parameter(torch.zeros(length))
        self.evolution = AUGRU(dim, dim, generator)
        self.mlp = dice_mlp(fields * dim + 2 * dim + dense_dim, config.hidden, generator)
        self.match = RecencyMatch(length, width) if config.match_logit else None
        self.learning_rates = {name: config.match_lr for name in ("match.weight", "match_attention",
                                                                   "recency_attention")}
        self.recurrent_length = config.recurrent_length
        self.states: torch.Tensor | None = None  # the extractor's states of the last learning pass
        self.latest: torch.Tensor | None = None  # which history slots those states are of (None: all)

    def latest_slots(self, mask: torch.Tensor) -> torch.Tensor | None:
        """(B, K) the slots of each user's latest K clicks, oldest first and empty slots after, as the
        history itself is laid out; None when the history is no longer than K."""
        k = self.recurrent_length
        if not k or mask.shape[1] <= k:
            return None
        return (mask.sum(dim=1, keepdim=True) - k).clamp(min=0) + torch.arange(k)

    def forward(self, rows: torch.Tensor, dense: torch.Tensor, history: torch.Tensor, mask: torch.Tensor,
                behaviour: Behaviour) -> torch.Tensor:
        b = mask.shape[0]
        entries, match, recency = behaviour.fields.reshape(b, mask.shape[1], -1), behaviour.match, behaviour.recency
        latest = self.latest_slots(mask)
        if latest is not None:  # the GRUs read the latest clicks; the match term below reads them all
            entries, match, recency, mask = _at_slots(latest, entries, match, recency, mask)
        states, _ = self.extractor(entries)  # oldest first, empty slots after: their states are masked below
        self.states = states if torch.is_grad_enabled() else None
        self.latest = latest
        candidate = behaviour.candidate.reshape(b, -1)
        scores = torch.einsum("bld,de,be->bl", states, self.attention, candidate)
        scores = scores + match @ self.match_attention + self.recency_attention[recency]
        scores = scores.masked_fill(~mask, float("-inf"))
        # a user with no clicks yet has all scores -inf: no attention, the interest stays at zero
        attention = torch.where(mask.any(dim=1, keepdim=True), torch.softmax(scores, dim=1), torch.zeros_like(scores))
        interest = self.evolution(states, attention)
        summed = behaviour.candidate.sum(dim=1)
        features = [rows.reshape(b, -1), interest, interest * summed, dense]
        logit = self.mlp(torch.cat(features, dim=1)).squeeze(1)
        return logit if self.match is None else logit + self.match(behaviour)


@dataclass(frozen=True)
class DIENConfig(DeepConfig):
    """DIEN's settings: MLP widths, dense learning rate and the auxiliary loss's weight."""

    hidden: tuple[int, ...] = (200, 80)
    dense_lr: float = 0.01  # no FTRL part: see dcn.py
    auxiliary_weight: float = 1.0  # the paper's alpha on the next-click loss
    match_logit: bool = True    # the (field, recency) match weights in the logit (models/behaviour.py)
    match_lr: float = 0.05      # the Adam rate of the match and recency weights
    recurrent_length: int = 10  # the GRUs read each user's latest clicks, at most this many (0: all)


class DIEN(DeepModel):
    """Deep Interest Evolution Network (Zhou et al., AAAI 2019); see the module docstring."""

    name = "dien"
    config_class = DIENConfig
    has_wide = False
    history_length = 20

    reads_behaviour = True

    def build_deep(self, spec: FeatureSpec, config: DIENConfig, generator: torch.Generator) -> nn.Module:
        return _DIENNet(len(spec.fields), config.embedding.dim, spec.dense_dim, config, generator,
                        len(self.candidate_positions()), max(spec.history_length, 1))

    def auxiliary_loss(self, batch: SparseBatch, rows: torch.Tensor, history: torch.Tensor | None,
                       mask: torch.Tensor | None) -> torch.Tensor | None:
        states = self.deep.states
        if self.config.auxiliary_weight == 0 or states is None or history is None or mask is None:
            return None
        if self.deep.latest is not None:
            history, mask = _at_slots(self.deep.latest, history, mask)
        # state t against the click at t+1 (positive) and another user's click at t+1 (negative)
        positive, negative = history[:, 1:], history.roll(1, dims=0)[:, 1:]
        valid = mask[:, 1:] & mask[:, :-1] & mask.roll(1, dims=0)[:, 1:]
        if not bool(valid.any()):
            return None
        h = states[:, :-1]
        pos = nn.functional.logsigmoid((h * positive).sum(dim=2))
        neg = nn.functional.logsigmoid(-(h * negative).sum(dim=2))
        return -self.config.auxiliary_weight * (pos + neg)[valid].mean()
