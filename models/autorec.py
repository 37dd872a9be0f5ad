"""``autorec``: item-based AutoRec, an autoencoder over each item's interaction vector.

Sedhain et al., "AutoRec: Autoencoders Meet Collaborative Filtering", WWW 2015 (I-AutoRec). An
item i is the vector r_i of its users' interactions; the encoder ``h = g(V r_i + mu)`` and the
decoder ``r_hat_ui = W_u . h + b_u`` reconstruct it, trained only on observed entries. Here r_i
holds the users who were shown i so far, kept from the stream by the trainer (the last
``history_length`` of them, stream/behaviour_history.py, ``item_interactions``): +1 for a click, -1 for
an impression without one (a click stream has no ratings; unshown users stay unobserved, 0).
``V r_i`` is then the signed sum of the user_id embedding rows, passed through a dense layer (with
mu), normalised by the count; the decoder reads the user's own row through a second dense layer. The observed entry of an example is its (user, item) pair: the
click is the target and the reconstruction its logit. Pure collaborative filtering like
``neuralcf``: context fields are not read. Embedding rows train sparsely like every model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from streamrec.models.deep_base import DeepConfig, DeepModel, init_linear
from streamrec.stream.errors import ConfigError
from streamrec.stream.feature_spec import FeatureSpec


class _ItemAutoRecNet(nn.Module):
    def __init__(self, dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        # V (through the user rows, plus one column shared by all users) and mu
        self.encoder = init_linear(nn.Linear(dim + 1, hidden), generator)
        self.decoder = init_linear(nn.Linear(hidden, dim), generator)   # W_u = the user's row through this
        self.user_bias = init_linear(nn.Linear(dim, 1), generator)      # b_u from the user's row
        # W_u = e_u + w0: the part of the decoder every user shares carries how well the item does
        # overall (an item's click rate), which tiny new user rows could not pass on
        self.shared_row = nn.Parameter(torch.zeros(dim))

    def forward(self, rows: torch.Tensor, dense: torch.Tensor, interactions: torch.Tensor,
                ratings: torch.Tensor) -> torch.Tensor:
        count = ratings.abs().sum(dim=1, keepdim=True).clamp(min=1)
        # the shared column: each user's row is e_u + c, so V r_i also sees sum(r_i) (how often
        # the item was clicked rather than skipped), which random user rows cannot show early on
        observed = torch.cat([interactions.sum(dim=1), ratings.sum(dim=1, keepdim=True)], dim=1) / count
        code = torch.sigmoid(self.encoder(observed))
        user = rows[:, 0]
        return ((user + self.shared_row) * self.decoder(code)).sum(dim=1) + self.user_bias(user).squeeze(1)


@dataclass(frozen=True)
class AutoRecConfig(DeepConfig):
    """I-AutoRec's settings: the hidden widths and a dense learning rate of its own."""

    hidden: tuple[int, ...] = (64,)  # the code size (one layer, as in the paper)
    # no FTRL part and few inputs: a faster dense step than the other models' (docs/defaults.md)
    dense_lr: float = 0.03


class AutoRec(DeepModel):
    """Item-based AutoRec (Sedhain et al., WWW 2015); see the module docstring."""

    name = "autorec"
    config_class = AutoRecConfig
    has_wide = False
    reads_context = False
    history_length = 50
    history_kind = "item_interactions"

    def build_deep(self, spec: FeatureSpec, config: AutoRecConfig, generator: torch.Generator) -> nn.Module:
        if len(config.hidden) != 1:
            raise ConfigError(f"autorec: hidden must be one code size, not {config.hidden}")
        return _ItemAutoRecNet(config.embedding.dim, config.hidden[0], generator)
