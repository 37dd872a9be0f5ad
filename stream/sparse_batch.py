"""One mini-batch of featurized examples, as the models read it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseBatch:
    """One mini-batch: ``ids`` (B, F) field ids, ``cross_ids`` (B, C) wide-only ids,
    ``dense`` (B, D) float inputs, ``labels`` (B,) in {0, 1} (absent when scoring),
    ``history`` (B, L) the user's recently clicked items as item_id rows, -1 where empty
    (present when the spec has a history), ``event_time`` (B,) each example's event time in
    seconds (float64; absent where the stream has none, or when scoring)."""

    ids: torch.Tensor
    cross_ids: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor | None = None
    history: torch.Tensor | None = None
    event_time: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rows(self, start: int, stop: int) -> SparseBatch:
        """Examples ``start:stop`` (views, no copy)."""
        return SparseBatch(self.ids[start:stop], self.cross_ids[start:stop], self.dense[start:stop],
                           None if self.labels is None else self.labels[start:stop],
                           None if self.history is None else self.history[start:stop],
                           None if self.event_time is None else self.event_time[start:stop])

    @staticmethod
    def concat(first: SparseBatch, second: SparseBatch) -> SparseBatch:
        def cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None or b is None else torch.cat([a, b])

        return SparseBatch(torch.cat([first.ids, second.ids]), torch.cat([first.cross_ids, second.cross_ids]),
                           torch.cat([first.dense, second.dense]), cat(first.labels, second.labels),
                           cat(first.history, second.history), cat(first.event_time, second.event_time))

    def to(self, device: str | torch.device) -> SparseBatch:
        return SparseBatch(self.ids.to(device), self.cross_ids.to(device), self.dense.to(device),
                           None if self.labels is None else self.labels.to(device),
                           None if self.history is None else self.history.to(device),
                           None if self.event_time is None else self.event_time.to(device))
