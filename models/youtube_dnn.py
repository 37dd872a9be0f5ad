"""``youtube_dnn``: the candidate-generation network of YouTube's recommender, a softmax over items.

Covington et al., "Deep Neural Networks for YouTube Recommendations", RecSys 2016. A ReLU tower
reads the average of the user's clicked items (kept from the stream, stream/behaviour_history.py;
item_id rows), the user id, the context fields other than the candidate and the dense inputs, and
outputs a user vector u; an item's vector is its item_id row. Training is extreme multiclass
classification: for every click, a softmax over items with the clicked one as the class,
approximated by a sampled softmax whose negatives are the other items of the same mini-batch
(so they come at the stream's item frequencies, corrected by subtracting log Q, as in Yi et al.,
RecSys 2019). The click score of a pair is the candidate's logit ``u . v_i + b``, which also
learns the click logloss every model here learns, so it is a calibrated CTR.

Besides AUC, it reports ``recall_at_10`` progressively: for each click, before learning from it,
whether the clicked item ranks in the top 10 of every item seen so far by ``u . v``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.deep_base import DeepConfig, DeepModel, mlp
from streamrec.stream.feature_spec import FeatureSpec
from streamrec.stream.sparse_batch import SparseBatch

RECALL_K = 10


class _YouTubeNet(nn.Module):
    def __init__(self, fields: int, dim: int, dense_dim: int, hidden: tuple[int, ...],
                 generator: torch.Generator) -> None:
        super().__init__()
        # the user side: history average, user id, context fields (all but the candidate item), dense
        self.tower = mlp(dim + (fields - 1) * dim + dense_dim, hidden, generator, out=dim)
        # the click head: a scale and a bias on the candidate's logit, learned by the click logloss,
        # since the softmax is blind to both (it only ranks items against each other)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))
        self.users: torch.Tensor | None = None  # the user vectors of the last learning pass

    def user_vectors(self, rows: torch.Tensor, dense: torch.Tensor, history: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        count = mask.sum(dim=1, keepdim=True).clamp(min=1)
        watched = history.sum(dim=1) / count  # padded slots are zero rows
        user_side = torch.cat([rows[:, :1], rows[:, 2:]], dim=1).reshape(rows.shape[0], -1)
        return self.tower(torch.cat([watched, user_side, dense], dim=1))

    def forward(self, rows: torch.Tensor, dense: torch.Tensor, history: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        users = self.user_vectors(rows, dense, history, mask)
        self.users = users if torch.is_grad_enabled() else None
        return self.scale * (users * rows[:, 1]).sum(dim=1) + self.bias


@dataclass(frozen=True)
class YouTubeDNNConfig(DeepConfig):
    """The YouTube DNN's settings: tower widths, dense learning rate and the sampled-softmax loss's weight."""

    hidden: tuple[int, ...] = (256, 128)
    dense_lr: float = 0.01
    # the sampled-softmax loss beside the click logloss: a small weight lifts recall@10 and keeps
    # the click AUC; a large one ranks items better but pulls the shared logit off calibration
    # (docs/defaults.md)
    softmax_weight: float = 0.05


class YouTubeDNN(DeepModel):
    """Deep Neural Networks for YouTube Recommendations (Covington et al., RecSys 2016); see the module
    docstring."""

    name = "youtube_dnn"
    config_class = YouTubeDNNConfig
    has_wide = False
    history_length = 20

    def __init__(self, spec: FeatureSpec, config: YouTubeDNNConfig) -> None:
        super().__init__(spec, config)
        self.recall_hits = 0
        self.recall_clicks = 0

    def build_deep(self, spec: FeatureSpec, config: YouTubeDNNConfig, generator: torch.Generator) -> nn.Module:
        return _YouTubeNet(len(spec.fields), config.embedding.dim, spec.dense_dim, config.hidden, generator)

    def auxiliary_loss(self, batch: SparseBatch, rows: torch.Tensor, history: torch.Tensor | None,
                       mask: torch.Tensor | None) -> torch.Tensor | None:
        users = self.deep.users
        assert batch.labels is not None
        clicked = batch.labels > 0
        if users is None or not bool(clicked.any()):
            return None
        # this step's forward pass ran on the weights from before the batch: its user vectors and
        # item rows are the progressive ones, so recall needs no forward pass of its own
        self._count_recall(users[clicked].detach(), rows[clicked, 1].detach(), batch.ids[clicked, 1])
        if self.config.softmax_weight == 0:
            return None
        items = batch.ids[:, 1]
        unique, inverse, counts = torch.unique(items, return_inverse=True, return_counts=True)
        # one row per distinct item of the batch: the candidates every click is scored against
        first = torch.full((len(unique),), len(items)).scatter_reduce(0, inverse, torch.arange(len(items)), "amin")
        candidates = rows[first, 1]
        logits = users[clicked] @ candidates.T - torch.log(counts.to(users.dtype) / len(items))
        return self.config.softmax_weight * nn.functional.cross_entropy(logits, inverse[clicked])

    def _count_recall(self, users: torch.Tensor, item_rows: torch.Tensor, items: torch.Tensor) -> None:
        """Progressive recall@k of clicks (their user vectors, clicked items' rows and ids)
        against every item seen before them (rows whose counts the step has not moved yet)."""
        start, size = int(self.spec.offsets[1]), self.spec.fields[1].buckets
        seen = self.embedding.rows_between(start, start + size)
        with torch.no_grad():
            own = (users * item_rows).sum(dim=1)
            scores = users @ self.embedding.weight[seen].T
            # an item seen for the first time is not in the catalogue yet: a miss
            known = torch.isin(self.embedding.lookup(items), seen)
            rank = (scores > own.unsqueeze(1)).sum(dim=1)
        self.recall_hits += int((known & (rank < RECALL_K)).sum())
        self.recall_clicks += len(items)

    def extra_metrics(self) -> dict[str, float]:
        recall = self.recall_hits / self.recall_clicks if self.recall_clicks else float("nan")
        return {f"recall_at_{RECALL_K}": recall, "recall_clicks": float(self.recall_clicks)}
