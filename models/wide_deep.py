"""``wide_deep``: an FTRL-Proximal wide part beside a deep part of embeddings and an MLP.

Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016. As in the paper, the
wide part is trained with FTRL and the deep part with an adaptive optimiser, jointly on one
logloss: ``logit = wide(x) + deep(x)``; both step on the same per-example gradient ``p - y``.
Embedding rows are updated sparsely with mini-batch-aware L2 (models/embedding.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from models.base import OnlineModel
from models.embedding import EmbeddingConfig, SparseEmbedding
from models.ftrl import FTRLConfig, FTRLProximal
from models.lr import wide_ids
from stream.features import FeatureSpec, SparseBatch


@dataclass(frozen=True)
class WideDeepConfig:
    ftrl: FTRLConfig = field(default_factory=FTRLConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    hidden: tuple[int, ...] = (256, 128)
    dense_lr: float = 1e-3
    seed: int = 0


def mlp(input_dim: int, hidden: tuple[int, ...], generator: torch.Generator) -> nn.Sequential:
    layers: list[nn.Module] = []
    dim = input_dim
    for width in hidden:
        layers += [nn.Linear(dim, width), nn.ReLU()]
        dim = width
    layers.append(nn.Linear(dim, 1))
    net = nn.Sequential(*layers)
    for module in net:
        if isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=5**0.5, generator=generator)
            bound = 1 / module.in_features**0.5
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    return net


class AdamState:
    """torch.optim.Adam over named parameters, with its state exposed as named tensors."""

    def __init__(self, params: dict[str, nn.Parameter], lr: float) -> None:
        self.params = params
        self.optimizer = torch.optim.Adam(list(params.values()), lr=lr)

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for name, param in self.params.items():
            state = self.optimizer.state.get(param)
            if state:
                out[f"{prefix}.{name}.exp_avg"] = state["exp_avg"]
                out[f"{prefix}.{name}.exp_avg_sq"] = state["exp_avg_sq"]
                out[f"{prefix}.{name}.step"] = state["step"].reshape(1).to(torch.float64)
        return out

    def load(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        for name, param in self.params.items():
            key = f"{prefix}.{name}.exp_avg"
            if key in tensors:
                self.optimizer.state[param] = {
                    "exp_avg": tensors[key].clone(), "exp_avg_sq": tensors[f"{prefix}.{name}.exp_avg_sq"].clone(),
                    "step": tensors[f"{prefix}.{name}.step"].reshape(()).to(torch.float32).clone(),
                }


@dataclass
class _Backward:
    probabilities: torch.Tensor
    residual: torch.Tensor
    w_unique: torch.Tensor
    w_inverse: torch.Tensor
    e_unique: torch.Tensor
    e_inverse: torch.Tensor
    leaf: torch.Tensor


class WideDeep(OnlineModel):
    name = "wide_deep"
    config_class = WideDeepConfig
    optimizer_prefixes = ("adam.",)

    def __init__(self, spec: FeatureSpec, config: WideDeepConfig = WideDeepConfig()) -> None:
        super().__init__(spec, config)
        generator = torch.Generator().manual_seed(config.seed)
        self.wide = FTRLProximal(spec.wide_rows, config.ftrl)
        self.embedding = SparseEmbedding(spec.field_rows, config.embedding, generator)
        input_dim = len(spec.fields) * config.embedding.dim + spec.dense_dim
        self.deep = mlp(input_dim, config.hidden, generator)
        self.adam = AdamState(dict(self.deep.named_parameters()), config.dense_lr)

    def _deep_input(self, batch: SparseBatch, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([rows.reshape(len(batch), -1), batch.dense], dim=1)

    def logits(self, batch: SparseBatch) -> torch.Tensor:
        with torch.no_grad():
            wide = self.wide.weights(wide_ids(self.spec, batch)).sum(dim=1)
            deep = self.deep(self._deep_input(batch, self.embedding.weight[batch.ids])).squeeze(1)
            return (wide + deep).to(torch.float32)

    def learn(self, batch: SparseBatch) -> np.ndarray:
        step = self.backward(batch)
        self.adam.step()
        self.embedding.step(step.e_unique, step.e_inverse, step.leaf)
        self.wide.step_unique(step.w_unique, step.w_inverse, step.residual)
        return step.probabilities.numpy()

    def backward(self, batch: SparseBatch) -> _Backward:
        """Forward pass and gradients of the mean logloss, without changing any weight.

        Afterwards the MLP parameters and ``leaf`` hold d(mean logloss)/d(parameter) in ``.grad``;
        ``residual`` (p - y) is the per-example gradient of each wide coordinate.
        """
        assert batch.labels is not None, "learn needs labels"
        w_unique, w_inverse = torch.unique(wide_ids(self.spec, batch), return_inverse=True)
        wide = self.wide.weights(w_unique)[w_inverse].sum(dim=1)
        e_unique, e_inverse, leaf = self.embedding.gather(batch.ids)
        # F.embedding's CPU backward sums repeated rows in a fixed order, so seeded runs repeat
        # bit for bit (plain indexing accumulates in parallel, in varying order).
        rows = nn.functional.embedding(e_inverse, leaf)
        deep = self.deep(self._deep_input(batch, rows)).squeeze(1)
        p = torch.sigmoid(wide + deep.detach().to(torch.float64))
        residual = p - batch.labels.to(torch.float64)
        # d(mean logloss)/d(deep logit) = (p - y) / B; FTRL takes the per-example sum.
        deep.backward((residual / len(batch)).to(torch.float32))
        return _Backward(p, residual, w_unique, w_inverse, e_unique, e_inverse, leaf)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"wide.z": self.wide.z, "wide.n": self.wide.n, "embedding.weight": self.embedding.weight,
               "embedding.accum": self.embedding.accum, "embedding.counts": self.embedding.counts}
        out.update({f"deep.{k}": v.detach() for k, v in self.deep.state_dict().items()})
        out.update(self.adam.tensors("adam"))
        return out

    def row_groups(self) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        return {"wide": (self.wide.n > 0, ("wide.z", "wide.n")),
                "embedding": (self.embedding.counts > 0,
                              ("embedding.weight", "embedding.accum", "embedding.counts"))}

    def dirty_rows(self) -> dict[str, torch.Tensor]:
        return {"wide": self.wide.dirty, "embedding": self.embedding.dirty}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.wide.z, self.wide.n = tensors["wide.z"].clone(), tensors["wide.n"].clone()
        self.embedding.weight = tensors["embedding.weight"].clone()
        self.embedding.accum = tensors["embedding.accum"].clone()
        self.embedding.counts = tensors["embedding.counts"].clone()
        self.deep.load_state_dict({k[len("deep."):]: v for k, v in tensors.items() if k.startswith("deep.")})
        self.adam.load("adam", tensors)
