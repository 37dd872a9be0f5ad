"""What every embedding model shares: sparse embeddings, an optional FTRL part, a dense network.

A :class:`DeepModel` is three parts trained jointly on one logloss, each with the optimiser that
suits it (as in Wide&Deep):

* ``embedding``: one table for all fields (stream/featurizer.py), rows trained sparsely with
  row-wise Adagrad and mini-batch-aware L2 (models/embedding.py);
* ``wide`` (if the model has a linear part): FTRL-Proximal over every field id, cross, count
  feature bucket (models/seen_counts.py) and the bias;
* ``deep``: the model's own network (an ``nn.Module``) over the embedded fields ``(B, F, D)`` and
  the dense inputs ``(B, Dd)``, trained with Adam.

A model file only says what its network is (:meth:`DeepModel.build_deep`) and, if the network
does not take ``(rows, dense)`` (plus ``(history, mask)`` for sequence models) directly, how it is called (:meth:`DeepModel.deep_logit`).
Learning, serialisation, deltas and the regulariser are here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from streamrec.models.base import OnlineModel, own
from streamrec.models.behaviour import Behaviour, behaviour_of
from streamrec.models.embedding import EmbeddingConfig, SparseEmbedding
from streamrec.models.ftrl import CoordinateState, FTRLConfig, FTRLProximal
from streamrec.models.keyed_rows import (
    KeyedRows,
    TableConfig,
    embedding_layout,
    observe_event_time,
    wide_layout,
)
from streamrec.models.seen_counts import SeenCounts
from streamrec.models.wide_inputs import wide_columns, wide_ids
from streamrec.stream.feature_spec import FeatureSpec
from streamrec.stream.sparse_batch import SparseBatch


@dataclass(frozen=True)
class DeepConfig:
    """The settings every deep model has; model configs subclass it."""

    ftrl: FTRLConfig = field(default_factory=FTRLConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    hidden: tuple[int, ...] = (256, 128)
    dense_lr: float = 1e-3
    seed: int = 0
    tables: TableConfig = field(default_factory=TableConfig)  # keyed tables (a keyed spec) only


def init_linear(layer: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """PyTorch's default Linear initialisation, drawn from ``generator`` (seeded runs repeat)."""
    nn.init.kaiming_uniform_(layer.weight, a=5**0.5, generator=generator)
    if layer.bias is not None:
        bound = 1 / layer.in_features**0.5
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def mlp(input_dim: int, hidden: tuple[int, ...], generator: torch.Generator, out: int | None = 1) -> nn.Sequential:
    """Linear + ReLU layers of widths ``hidden``, then a Linear to ``out`` (none if ``out`` is None)."""
    layers: list[nn.Module] = []
    dim = input_dim
    for width in hidden:
        layers += [init_linear(nn.Linear(dim, width), generator), nn.ReLU()]
        dim = width
    if out is not None:
        layers.append(init_linear(nn.Linear(dim, out), generator))
    return nn.Sequential(*layers)


def leaf_rows(leaf: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``leaf[index]`` as (*index.shape, D), differentiable in ``leaf``. index_select's backward is
    an index_add_, which sums repeated rows serially on the CPU: seeded runs repeat bit for bit
    (as with F.embedding, whose sort-based backward costs several times more, for the same
    gradient to the bit), whereas plain indexing accumulates in parallel, in varying order."""
    return leaf.index_select(0, index.reshape(-1)).reshape(*index.shape, leaf.shape[1])


def pairs(fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i < j) over ``fields`` fields, for pairwise interactions."""
    i, j = torch.triu_indices(fields, fields, offset=1)
    return i, j


class AdamState:
    """Adam over named parameters, computed as torch.optim.Adam computes it (its foreach path, no
    weight decay), with its state exposed as named tensors. Written out here because torch's
    optimiser imports torch._dynamo at its first step, seconds that every process which learns
    (each worker, each learner, each ``evaluate``) would pay before its first batch."""

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, params: dict[str, nn.Parameter], lr: float, rates: dict[str, float] | None = None) -> None:
        """``rates``: a learning rate of their own for the named parameters (a network's
        ``learning_rates``), e.g. a few weights that must move fast within one pass."""
        self.params = params
        self.rates = {name: (rates or {}).get(name, lr) for name in params}
        self.state: dict[str, dict[str, torch.Tensor]] = {}  # per parameter, from its first gradient

    def step(self) -> None:
        names = [name for name, param in self.params.items() if param.grad is not None]
        if names:
            self._step(names)
        for param in self.params.values():
            param.grad = None

    @torch.no_grad()
    def _step(self, names: list[str]) -> None:
        for name in names:
            if name not in self.state:
                param = self.params[name]
                self.state[name] = {"exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param),
                                    "step": torch.tensor(0.0)}
        params = [self.params[name] for name in names]
        grads = [param.grad for param in params]
        averages = [self.state[name]["exp_avg"] for name in names]
        squares = [self.state[name]["exp_avg_sq"] for name in names]
        steps = [self.state[name]["step"] for name in names]
        beta1, beta2 = self.betas
        torch._foreach_add_(steps, 1.0)
        torch._foreach_lerp_(averages, grads, 1 - beta1)
        torch._foreach_mul_(squares, beta2)
        torch._foreach_addcmul_(squares, grads, grads, 1 - beta2)
        counts = [step.item() for step in steps]
        step_sizes = [(self.rates[name] / (1 - beta1**count)) * -1 for name, count in zip(names, counts)]
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_div_(denominators, [(1 - beta2**count) ** 0.5 for count in counts])
        torch._foreach_add_(denominators, self.eps)
        torch._foreach_addcdiv_(params, averages, denominators, step_sizes)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.params:
            state = self.state.get(name)
            if state is None:
                continue
            out[f"{prefix}.{name}.exp_avg"] = state["exp_avg"]
            out[f"{prefix}.{name}.exp_avg_sq"] = state["exp_avg_sq"]
            out[f"{prefix}.{name}.step"] = state["step"].reshape(1).to(torch.float64)
        return out

    def load(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        for name in self.params:
            key = f"{prefix}.{name}.exp_avg"
            if key in tensors:
                self.state[name] = {
                    "exp_avg": tensors[key].clone(), "exp_avg_sq": tensors[f"{prefix}.{name}.exp_avg_sq"].clone(),
                    "step": tensors[f"{prefix}.{name}.step"].reshape(()).to(torch.float32).clone(),
                }


@dataclass
class Backward:
    """What one backward pass leaves for the optimisers: the predictions, the residual ``p - y``, the wide
    coordinates and the embedding rows touched."""

    probabilities: torch.Tensor
    residual: torch.Tensor
    wide: CoordinateState | None
    e_unique: torch.Tensor
    e_inverse: torch.Tensor
    leaf: torch.Tensor


class DeepModel(OnlineModel):
    """Embeddings + (optional) FTRL linear part + a network; subclasses define the network."""

    optimizer_prefixes = ("adam.", "embedding.table.", "wide.table.", "seen.table.")
    has_wide: ClassVar[bool] = True  # the model has a linear part, trained with FTRL
    # > 0: the model reads the user's last N clicked items (batch.history; models.spec_for)
    history_length: ClassVar[int] = 0
    # what the history holds: the user's clicked items, or the item's clickers (stream/featurizer.py)
    history_kind: ClassVar[str] = "user_clicks"
    # the network also reads the history field by field, with matches and recencies (models/behaviour.py)
    reads_behaviour: ClassVar[bool] = False

    def __init__(self, spec: FeatureSpec, config: Any) -> None:
        super().__init__(spec, config)
        generator = torch.Generator().manual_seed(config.seed)
        tables = config.tables
        self.wide = (FTRLProximal(spec.wide_rows, config.ftrl, wide_layout(spec, tables) if spec.keyed else None)
                     if self.has_wide else None)
        self.seen = SeenCounts(spec, tables) if self.has_wide and spec.counts else None
        self.wide_columns = wide_columns(spec, config.ftrl.ignored) if self.has_wide else None
        keyed_embedding = embedding_layout(spec, tables, config.embedding.dim) if spec.keyed else None
        self.embedding = SparseEmbedding(spec.field_rows, config.embedding, generator, keyed_embedding,
                                         seed=config.seed)
        self.deep = self.build_deep(spec, config, generator)
        self.adam = AdamState(dict(self.deep.named_parameters()), config.dense_lr,
                              getattr(self.deep, "learning_rates", None))

    # ------------------------------------------------------------------ what a model file defines

    def build_deep(self, spec: FeatureSpec, config: Any, generator: torch.Generator) -> nn.Module:
        raise NotImplementedError

    def deep_logit(self, rows: torch.Tensor, dense: torch.Tensor, history: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, behaviour: Behaviour | None = None) -> torch.Tensor:
        """The network's logit (B,) from embedded fields (B, F, D) and dense inputs (B, Dd); for
        sequence models also the embedded history (B, L, D) and its mask (B, L), False where empty.
        For ``item_interactions`` histories the rows come signed and the mask is the rating: +1.0
        clicked, -1.0 shown without a click, 0.0 empty. Models with ``reads_behaviour`` also get
        the history field by field with its matches and recencies (models/behaviour.py). By
        default the network takes exactly these."""
        if history is None:
            return self.deep(rows, dense).reshape(-1)
        if behaviour is not None:
            return self.deep(rows, dense, history, mask, behaviour).reshape(-1)
        return self.deep(rows, dense, history, mask).reshape(-1)

    def auxiliary_loss(self, batch: SparseBatch, rows: torch.Tensor, history: torch.Tensor | None,
                       mask: torch.Tensor | None) -> torch.Tensor | None:
        """A loss learned beside the click logloss (DIEN's next-click loss, YouTube DNN's sampled
        softmax), from the same embedded rows; called right after :meth:`deep_logit` while
        learning, so a network may reuse what that forward pass kept. None: no extra loss."""
        return None

    def _mask_argument(self, mask: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        return mask * sign if self.history_kind == "item_interactions" else mask

    def _history(self, batch: SparseBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's history as (rows (B, L, W), mask (B, L), sign (B, L)): each entry's W
        embedding rows (its item and its ``history_fields``; 0 where empty), True where an entry
        is, and -1 for a negative interaction (stream/featurizer.py encodes one as ``-(row + 2)``;
        -1 is an empty slot), else 1. An empty history if the batch has none."""
        history = batch.history
        if history is None:
            history = torch.full((len(batch), max(self.spec.history_length, 1)), -1, dtype=torch.int64)
        if history.dim() == 2:
            history = history.unsqueeze(-1)
        first = history[..., 0]
        negative = first <= -2
        rows = torch.where(negative.unsqueeze(-1), -history - 2, history.clamp(min=0))
        return rows, first != -1, torch.where(negative, -1.0, 1.0)

    def _embed_history(self, entries: torch.Tensor, history: torch.Tensor, mask: torch.Tensor, sign: torch.Tensor,
                       batch: SparseBatch, rows: torch.Tensor) -> tuple[torch.Tensor, Behaviour | None]:
        """From the history's embedded rows (B, L, W, D): each entry's summed embedding (B, L, D),
        signed, zero where empty; and, for networks that read it, the :class:`Behaviour`."""
        if not self.reads_behaviour:
            return entries.sum(dim=2) * (mask * sign).unsqueeze(-1), None
        fields = entries * mask.unsqueeze(-1).unsqueeze(-1)
        positions = self.candidate_positions()
        behaviour = behaviour_of(history, mask, fields, batch.ids[:, positions], rows[:, positions])
        return fields.sum(dim=2) * sign.unsqueeze(-1), behaviour

    def candidate_positions(self) -> list[int]:
        """Where the candidate's item and its ``history_fields`` are among the fields: a history
        entry is the sum of those rows, and so is the candidate it is compared with."""
        return [1, *(self.spec.names.index(name) for name in self.spec.history_fields)]

    # ------------------------------------------------------------------ the shared step

    def logits(self, batch: SparseBatch) -> torch.Tensor:
        with torch.no_grad():
            rows = self.embedding.weight[self.embedding.lookup(batch.ids)]
            if self.history_length:
                history, mask, sign = self._history(batch)
                embedded, behaviour = self._embed_history(self.embedding.weight[self.embedding.lookup(history)],
                                                          history, mask, sign,
                                                          batch, rows)
                deep = self.deep_logit(rows, batch.dense, embedded, self._mask_argument(mask, sign), behaviour)
            else:
                deep = self.deep_logit(rows, batch.dense)
            deep = deep.to(torch.float64)
            if self.wide is not None:
                ids = wide_ids(self.spec, batch, self.seen, columns=self.wide_columns)
                deep = deep + self.wide.weights(ids).sum(dim=1)
            return deep.to(torch.float32)

    def learn(self, batch: SparseBatch) -> np.ndarray:
        observe_event_time(self.keyed_tables().values(), batch)
        step = self.backward(batch, step_wide=True)
        self.adam.step()
        # rows step on the per-example sum, as FTRL does (models/embedding.py says why)
        self.embedding.step(step.e_unique, step.e_inverse, step.leaf, scale=float(len(batch)))
        if step.wide is not None:  # one step for the batch (ftrl.per_example off)
            self.wide.step_examples(step.wide, step.residual)
        if self.seen is not None:
            self.seen.record(batch)
        return step.probabilities.numpy()

    def backward(self, batch: SparseBatch, step_wide: bool = False) -> Backward:
        """Forward pass and gradients of the mean logloss, without changing any weight; with
        ``step_wide`` and ``ftrl.per_example``, the wide part learns the batch one example at a
        time meanwhile, each example's probability (and residual) taking the network's logit as
        it is for the batch and the wide weights as the examples before it left them.

        Afterwards the network's parameters and ``leaf`` hold d(mean logloss)/d(parameter) in
        ``.grad``; ``residual`` (p - y) is the per-example gradient of each wide coordinate.
        """
        assert batch.labels is not None, "learn needs labels"
        logit = torch.zeros(len(batch), dtype=torch.float64)
        wide = ids = None
        per_example = step_wide and self.wide is not None and self.wide.config.per_example
        if self.wide is not None:
            ids = wide_ids(self.spec, batch, self.seen, learning=True, columns=self.wide_columns)
            if not per_example:
                wide = self.wide.gather(ids)
                logit = wide.logits()
        if self.history_length:
            # history rows share the table with the fields: one gather, one sparse step
            history, mask, sign = self._history(batch)
            fields = batch.ids.numel()
            present = history[mask]  # (entries, W)
            e_unique, e_inverse, leaf = self.embedding.gather(torch.cat([batch.ids.reshape(-1), present.reshape(-1)]),
                                                              len(batch))
            rows = leaf_rows(leaf, e_inverse[:fields].reshape(batch.ids.shape))
            at = torch.zeros_like(history)
            at[mask] = e_inverse[fields:].reshape(present.shape)
            embedded, behaviour = self._embed_history(leaf_rows(leaf, at), history, mask, sign, batch, rows)
            deep = self.deep_logit(rows, batch.dense, embedded, self._mask_argument(mask, sign), behaviour)
            auxiliary = self.auxiliary_loss(batch, rows, embedded, mask)
        else:
            e_unique, e_inverse, leaf = self.embedding.gather(batch.ids, len(batch))
            rows = leaf_rows(leaf, e_inverse)
            deep = self.deep_logit(rows, batch.dense)
            auxiliary = self.auxiliary_loss(batch, rows, None, None)
        if per_example:
            p = self.wide.learn_examples(ids, batch.labels, offsets=deep.detach().to(torch.float64))
        else:
            p = torch.sigmoid(logit + deep.detach().to(torch.float64))
        residual = p - batch.labels.to(torch.float64)
        # d(mean logloss)/d(deep logit) = (p - y) / B; FTRL takes the per-example sum.
        grad = (residual / len(batch)).to(torch.float32)
        # a scalar's backward, not deep.backward(grad): the same gradients (d/d deep of sum(deep *
        # grad) is grad, exactly), without the imports torch makes to check a given gradient's shape
        loss = (deep * grad).sum()
        (loss if auxiliary is None else loss + auxiliary).backward()
        return Backward(p, residual, wide, e_unique, e_inverse, leaf)

    # ------------------------------------------------------------------ state

    def keyed_tables(self) -> dict[str, KeyedRows]:
        tables = {"embedding": self.embedding.table}
        if self.wide is not None:
            tables["wide"] = self.wide.table
        if self.seen is not None:
            tables["seen"] = self.seen.table
        return {group: table for group, table in tables.items() if table is not None}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"embedding.weight": self.embedding.weight, "embedding.accum": self.embedding.accum,
               "embedding.counts": self.embedding.counts}
        if self.wide is not None:
            out.update({"wide.z": self.wide.z, "wide.n": self.wide.n})
        for group, table in self.keyed_tables().items():
            out.update(table.tensors(group))
        if self.seen is not None:
            out.update(self.seen.tensors())
        out.update({f"deep.{k}": v.detach() for k, v in self.deep.state_dict().items()})
        out.update(self.adam.tensors("adam"))
        return out

    def row_groups(self) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        groups = {"embedding": (self.embedding.counts > 0, ("embedding.weight", "embedding.accum", "embedding.counts"))}
        if self.wide is not None:
            groups["wide"] = (self.wide.n > 0, ("wide.z", "wide.n"))
        for group, table in self.keyed_tables().items():
            if group in groups:  # the count tables' own groups say how they are keyed
                groups[group] = table.row_group(group, groups[group][1])
        if self.seen is not None:
            groups.update(self.seen.row_group())
        return groups

    def dirty_rows(self) -> dict[str, torch.Tensor]:
        dirty = {"embedding": self.embedding.dirty}
        if self.wide is not None:
            dirty["wide"] = self.wide.dirty
        if self.seen is not None:
            dirty["seen"] = self.seen.dirty
        return dirty

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.wide is not None:
            self.wide.z, self.wide.n = own(tensors["wide.z"], self.wide.z), own(tensors["wide.n"], self.wide.n)
        if self.seen is not None:
            self.seen.load(tensors)
        self.embedding.weight = own(tensors["embedding.weight"], self.embedding.weight)
        self.embedding.accum = own(tensors["embedding.accum"], self.embedding.accum)
        self.embedding.counts = own(tensors["embedding.counts"], self.embedding.counts)
        for group, table in self.keyed_tables().items():
            table.load(group, tensors)
        self.deep.load_state_dict({k[len("deep."):]: v for k, v in tensors.items() if k.startswith("deep.")})
        self.adam.load("adam", tensors)
