"""What a sequence network reads about the user's recent clicks, beyond their summed embeddings.

DIN compares each clicked item with the candidate through an activation unit over
``[h, c, h - c, h * c]`` (Zhou et al., KDD 2018). When an entry is the sum of its item's and its
category's embeddings, the category's share of that comparison is drowned by the item's (an item
is seen a few times, its row barely trained; a category is seen thousands of times), and a unit
that must *discover* "same category" from products of noisy sums needs far more than one pass.
Three things make behaviour matching learnable quickly and online:

* **Per-field keys.** Each entry keeps one embedding per history field (item, category, ...) and
  is compared field by field with the candidate's, instead of one summed vector.
* **Explicit match.** Whether an entry's field *equals* the candidate's (the same hashed row) is
  given to the network as an indicator: the hard search of SIM (Pi et al., CIKM 2020), which
  keeps the behaviours of the candidate's category, given as a feature instead of a filter.
* **Recency.** Each entry's position counted from the latest click (0 = latest) has a learned
  embedding, as BST's position embeddings (Chen et al., 2019) and SIM's time-gap embeddings, and
  :class:`RecencyMatch` weighs every (field, recency) match directly in the logit: "the
  candidate's category equals the k-th most recent clicked category", learned with a fast rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Behaviour:
    """A batch's history as a sequence network reads it. L history slots (oldest first, empty ones
    after), W history fields (the item and each ``--history-field``), D embedding width."""

    fields: torch.Tensor     # (B, L, W, D) each entry's embedding per field; 0 where the slot is empty
    candidate: torch.Tensor  # (B, W, D) the candidate's embedding per field
    match: torch.Tensor      # (B, L, W) 1.0 where the entry's field has the candidate's value
    recency: torch.Tensor    # (B, L) long: 0 for the latest click, 1 for the one before, ...
    mask: torch.Tensor       # (B, L) True where an entry is


def behaviour_of(history_rows: torch.Tensor, mask: torch.Tensor, fields: torch.Tensor,
                 candidate_rows: torch.Tensor, candidate: torch.Tensor) -> Behaviour:
    """Build a :class:`Behaviour` from the history's row ids (B, L, W), its mask, its embedded
    fields (B, L, W, D, already zero where empty) and the candidate's row ids (B, W) and embeddings."""
    match = ((history_rows == candidate_rows.unsqueeze(1)) & mask.unsqueeze(-1)).to(fields.dtype)
    count = mask.sum(dim=1, keepdim=True)
    slots = torch.arange(mask.shape[1]).unsqueeze(0)
    recency = (count - 1 - slots).clamp(min=0)
    return Behaviour(fields, candidate, match, recency, mask)


class RecencyMatch(nn.Module):
    """``sum over entries and fields of match * weight[recency, field]``: a learned recency profile of
    how much a match with the candidate in each history field moves the click logit. Starts at
    zero (no effect until the stream shows one)."""

    def __init__(self, length: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(length, width))

    def forward(self, behaviour: Behaviour) -> torch.Tensor:
        return (behaviour.match * self.weight[behaviour.recency]).sum(dim=(1, 2))


class RecencyEmbedding(nn.Module):
    """A small learned vector per recency (0 = latest click), for attention units."""

    def __init__(self, length: int, dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(length, dim, generator=generator) * 0.1)

    def forward(self, recency: torch.Tensor) -> torch.Tensor:
        return self.weight[recency]
