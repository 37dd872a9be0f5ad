"""A block of rows as columns: what the columnar readers produce and the featurizer's column path reads.

Each column is dictionary-encoded (row ``k`` holds ``values[codes[k]]``), so a value that repeats
is hashed or bucketed once per block (:meth:`streamrec.stream.featurizer.Featurizer.build_columns`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class CategoricalColumn:
    """Dictionary-encoded strings: row ``k`` holds ``values[codes[k]]``, or nothing where
    ``codes[k] == len(values)`` (one past the end, so that a lookup table with one more entry
    for "missing" maps every row in a single take). ``arrow``, when the values came as an Arrow
    string array, is that array: the featurizer hashes it from its buffers, and ``values`` (Python
    strings) are made only if something asks for them."""

    __slots__ = ("codes", "_values", "arrow")

    def __init__(self, codes: np.ndarray, values: np.ndarray | None = None, arrow: Any = None) -> None:
        if values is None and arrow is None:
            raise ValueError("a categorical column needs its values, as numpy or as Arrow")
        self.codes, self._values, self.arrow = codes, values, arrow

    @property
    def values(self) -> np.ndarray:  # (distinct,) str
        if self._values is None:
            self._values = self.arrow.to_numpy(zero_copy_only=False)
        return self._values

    @property
    def distinct(self) -> int:
        return len(self.arrow) if self._values is None else len(self._values)

    def to_list(self) -> list[str | None]:
        return np.append(self.values.astype(object), None)[self.codes].tolist()


@dataclass
class NumericColumn:
    """Dictionary-encoded numbers, missing where ``codes[k] == len(values)`` as in
    :class:`CategoricalColumn`. Numbers repeat as much as strings do, so their buckets too are
    computed once per distinct value."""

    codes: np.ndarray   # integer (n,)
    values: np.ndarray  # (distinct,) float64

    def to_list(self) -> list[float | None]:
        numbers = [int(v) if v.is_integer() else v for v in self.values.tolist()]
        return [(numbers + [None])[c] for c in self.codes.tolist()]


@dataclass
class ColumnChunk:
    """Consecutive rows of a file: ``first_row`` is the index of the first among all valid rows."""

    first_row: int
    labels: np.ndarray                            # int8 (n,)
    users: CategoricalColumn
    items: CategoricalColumn
    categorical: dict[str, CategoricalColumn]     # feature fields, without the user and item fields
    numeric: dict[str, NumericColumn]
    event_times: np.ndarray | None = None         # float64 (n,), seconds since the epoch

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int) -> ColumnChunk:
        def cut(column: CategoricalColumn) -> CategoricalColumn:
            return CategoricalColumn(column.codes[:n], column._values, column.arrow)

        return ColumnChunk(self.first_row, self.labels[:n], cut(self.users), cut(self.items),
                           {name: cut(c) for name, c in self.categorical.items()},
                           {name: NumericColumn(c.codes[:n], c.values) for name, c in self.numeric.items()},
                           None if self.event_times is None else self.event_times[:n])

    def feature_dicts(self, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` rows' feature dicts as the row readers build them (to infer a spec)."""
        first = self.head(limit)
        columns: dict[str, list[Any]] = {name: c.to_list() for name, c in first.numeric.items()}
        columns.update((name, c.to_list()) for name, c in first.categorical.items())
        return [{name: columns[name][k] for name in columns} for k in range(len(first))]
