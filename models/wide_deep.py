"""``wide_deep``: an FTRL-Proximal wide part beside a deep part of embeddings and an MLP.

Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016. As in the paper, the
wide part is trained with FTRL and the deep part with an adaptive optimiser, jointly on one
logloss: ``logit = wide(x) + deep(x)``; both step on the same per-example gradient ``p - y``.
Embedding rows are updated sparsely with mini-batch-aware L2 (models/embedding.py). The shared
machinery is models/deep_base.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from streamrec.models.deep_base import AdamState, DeepConfig, DeepModel, mlp
from streamrec.models.embedding import EmbeddingConfig
from streamrec.stream.feature_spec import FeatureSpec

__all__ = ["AdamState", "WideDeep", "WideDeepConfig", "mlp"]


@dataclass(frozen=True)
class WideDeepConfig(DeepConfig):
    """Wide&Deep's settings: the shared deep settings, with embedding row steps suited to one pass."""

    # Row-wise Adagrad on the summed per-example gradient is scale-free, so lr is the step in
    # embedding units; the shared 0.05 left the rows far too slow for one pass (docs/defaults.md).
    embedding: EmbeddingConfig = field(default_factory=lambda: EmbeddingConfig(lr=1.5))


class WideDeep(DeepModel):
    """Wide & Deep (Cheng et al., DLRS 2016); see the module docstring."""

    name = "wide_deep"
    config_class = WideDeepConfig

    def __init__(self, spec: FeatureSpec, config: WideDeepConfig = WideDeepConfig()) -> None:
        super().__init__(spec, config)

    def build_deep(self, spec: FeatureSpec, config: WideDeepConfig, generator: torch.Generator) -> nn.Module:
        return mlp(len(spec.fields) * config.embedding.dim + spec.dense_dim, config.hidden, generator)

    def deep_logit(self, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.deep(torch.cat([rows.reshape(rows.shape[0], -1), dense], dim=1)).squeeze(1)
