"""``lr``: logistic regression trained with FTRL-Proximal (the wide part alone).

McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013.
Coordinates are every field id, every configured cross and a bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from models.base import OnlineModel
from models.ftrl import FTRLConfig, FTRLProximal
from stream.features import FeatureSpec, SparseBatch


@dataclass(frozen=True)
class LRConfig:
    ftrl: FTRLConfig = field(default_factory=FTRLConfig)
    seed: int = 0


def wide_ids(spec: FeatureSpec, batch: SparseBatch) -> torch.Tensor:
    """Every wide coordinate of each example: field ids, cross ids and the bias."""
    bias = torch.full((len(batch), 1), spec.bias_id, dtype=torch.int64)
    return torch.cat([batch.ids, batch.cross_ids, bias], dim=1)


class LogisticRegressionFTRL(OnlineModel):
    name = "lr"
    config_class = LRConfig
    # a step is ~1.4 µs an example, parsing ~2 µs: two torch threads slowed a 1M-row pass from 2.5 s to 4.0 s
    threads_beside_reader = 1

    def __init__(self, spec: FeatureSpec, config: LRConfig = LRConfig()) -> None:
        super().__init__(spec, config)
        self.wide = FTRLProximal(spec.wide_rows, config.ftrl)

    def logits(self, batch: SparseBatch) -> torch.Tensor:
        ids = wide_ids(self.spec, batch)
        return self.wide.weights(ids).sum(dim=1).to(torch.float32)

    def learn(self, batch: SparseBatch) -> np.ndarray:
        assert batch.labels is not None, "learn needs labels"
        ids = wide_ids(self.spec, batch)
        state = self.wide.gather(ids)
        p = torch.sigmoid(state.logits())
        self.wide.step_examples(state, p - batch.labels.to(torch.float64))
        return p.numpy()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"wide.z": self.wide.z, "wide.n": self.wide.n}

    def row_groups(self) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        return {"wide": (self.wide.n > 0, ("wide.z", "wide.n"))}

    def dirty_rows(self) -> dict[str, torch.Tensor]:
        return {"wide": self.wide.dirty}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.wide.z = tensors["wide.z"].clone()
        self.wide.n = tensors["wide.n"].clone()
