"""``lr``: logistic regression trained with FTRL-Proximal (the wide part alone).

McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013.
Coordinates are every field id, every configured cross, the configured count features'
buckets (models/seen_counts.py) and a bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from streamrec.models.base import OnlineModel, own
from streamrec.models.ftrl import FTRLConfig, FTRLProximal
from streamrec.models.keyed_rows import KeyedRows, TableConfig, observe_event_time, wide_layout
from streamrec.models.seen_counts import SeenCounts
from streamrec.models.wide_inputs import wide_columns, wide_ids
from streamrec.stream.feature_spec import FeatureSpec
from streamrec.stream.sparse_batch import SparseBatch


@dataclass(frozen=True)
class LRConfig:
    """``lr``'s settings: its FTRL configuration."""

    ftrl: FTRLConfig = field(default_factory=FTRLConfig)
    seed: int = 0
    tables: TableConfig = field(default_factory=TableConfig)  # keyed tables (a keyed spec) only


class LogisticRegressionFTRL(OnlineModel):
    """Logistic regression trained with FTRL-Proximal (McMahan et al., KDD 2013)."""

    name = "lr"
    config_class = LRConfig
    # a step costs less than parsing its rows, so a second torch thread only competes with the
    # reading thread for the other core (docs/defaults.md)
    threads_beside_reader = 1
    optimizer_prefixes = ("wide.table.", "seen.table.")

    def __init__(self, spec: FeatureSpec, config: LRConfig = LRConfig()) -> None:
        super().__init__(spec, config)
        self.wide = FTRLProximal(spec.wide_rows, config.ftrl, wide_layout(spec, config.tables) if spec.keyed else None)
        self.seen = SeenCounts(spec, config.tables) if spec.counts else None
        self.wide_columns = wide_columns(spec, config.ftrl.ignored)

    def logits(self, batch: SparseBatch) -> torch.Tensor:
        ids = wide_ids(self.spec, batch, self.seen, columns=self.wide_columns)
        return self.wide.weights(ids).sum(dim=1).to(torch.float32)

    def learn(self, batch: SparseBatch) -> np.ndarray:
        assert batch.labels is not None, "learn needs labels"
        observe_event_time(self.keyed_tables().values(), batch)
        ids = wide_ids(self.spec, batch, self.seen, learning=True, columns=self.wide_columns)
        if self.config.ftrl.per_example:
            p = self.wide.learn_examples(ids, batch.labels)
        else:
            state = self.wide.gather(ids)
            p = torch.sigmoid(state.logits())
            self.wide.step_examples(state, p - batch.labels.to(torch.float64))
        if self.seen is not None:
            self.seen.record(batch)
        return p.numpy()

    def keyed_tables(self) -> dict[str, KeyedRows]:
        tables = {"wide": self.wide.table, "seen": None if self.seen is None else self.seen.table}
        return {group: table for group, table in tables.items() if table is not None}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"wide.z": self.wide.z, "wide.n": self.wide.n}
        if self.seen is not None:
            out.update(self.seen.tensors())
        for group, table in self.keyed_tables().items():
            out.update(table.tensors(group))
        return out

    def row_groups(self) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        groups = {"wide": (self.wide.n > 0, ("wide.z", "wide.n"))}
        if self.wide.table is not None:
            groups["wide"] = self.wide.table.row_group("wide", groups["wide"][1])
        if self.seen is not None:
            groups.update(self.seen.row_group())
        return groups

    def dirty_rows(self) -> dict[str, torch.Tensor]:
        dirty = {"wide": self.wide.dirty}
        if self.seen is not None:
            dirty["seen"] = self.seen.dirty
        return dirty

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.wide.z = own(tensors["wide.z"], self.wide.z)
        self.wide.n = own(tensors["wide.n"], self.wide.n)
        if self.seen is not None:
            self.seen.load(tensors)
        for group, table in self.keyed_tables().items():
            table.load(group, tensors)
