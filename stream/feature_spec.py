"""The fields of a stream and how each becomes ids: :class:`FeatureSpec`, saved with every model version.

Every example has the same fields: ``user_id``, ``item_id``, then the stream's feature fields.
Each field owns a region of one id space, so one embedding table and one FTRL state serve all
fields::

    id space (rows)   [ user_id | item_id | C1 ......... | I1 ... ] [ crosses | counts | bias ] (wide only)
    offsets            0         b_user    b_user+b_item   ...        field_rows

The hashing itself is in :mod:`streamrec.stream.featurizer`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from streamrec.stream.errors import ConfigError
from streamrec.stream.hashing import GOLDEN

FieldKind = Literal["cat", "num"]
ID_FIELDS = ("user_id", "item_id")
DEFAULT_CAT_BUCKETS = 1 << 16
DEFAULT_NUM_BUCKETS = 512
DEFAULT_CROSS_BUCKETS = 1 << 18
COUNT_LEVELS = 32  # log2 levels of a count: 0, 1, 2-3, 4-7, ... (an int32 count needs 32)
DEFAULT_COUNT_ROWS = 1 << 22  # rows of a counted cross's table (FeatureSpec.count_rows)
SPEC_SAMPLE_ROWS = 1000  # rows a new model's spec is inferred from
# a keyed spec's categorical fields and crosses hash into this many ids each: 64-bit keys in
# effect (two of a field's million values share one with odds of about 1 in 2 million), which
# keyed tables map to rows of their own (models/keyed_rows.py)
KEY_SPACE = 1 << 40


@dataclass(frozen=True)
class FieldSpec:
    """One field of the stream: its name, kind (categorical or numeric) and hash buckets."""

    name: str
    kind: FieldKind
    buckets: int


HISTORY_KINDS = ("user_clicks", "item_interactions")


@dataclass(frozen=True)
class FeatureSpec:
    """The fields of a stream and how each is hashed; saved with every model version."""

    fields: tuple[FieldSpec, ...]
    crosses: tuple[tuple[str, str], ...] = ()
    cross_buckets: int = DEFAULT_CROSS_BUCKETS
    dense_numeric: bool = True
    seed: int = 0
    # the user's last N clicked items, hashed like item_id (same embedding rows); 0 = none.
    # Set by sequence models (models.spec_for); the trainer keeps the histories (stream/behaviour_history.py).
    history_length: int = 0
    # "user_clicks": the user's clicked items (item rows); "item_interactions": the users shown the
    # item, user rows signed by whether they clicked (autorec).
    history_kind: str = "user_clicks"
    # categorical fields remembered with each clicked item (e.g. its category): a history entry
    # is then the sum of the item's row and these fields' rows, as DIN's goods_id + cate_id
    history_fields: tuple[str, ...] = ()
    # wide-only count features: for each key (a field, or a cross "A:B" among ``crosses``), how many
    # earlier examples the model learned from had the same value and how many of them were clicks,
    # log2 levels of both as one coordinate. The counts are model state (models/seen_counts.py).
    counts: tuple[str, ...] = ()
    # rows of a counted cross's table (a power of two): a cross's own wide buckets collide too
    # often to tell "never seen" from "seen" (docs/defaults.md)
    count_rows: int = DEFAULT_COUNT_ROWS
    # keyed tables: categorical fields and crosses hash into KEY_SPACE ids, and each model table
    # gives the ids that earn one a row of its own (models/keyed_rows.py); else fixed hashing
    keyed: bool = False
    _offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ConfigError(f"duplicate feature fields: {sorted(duplicates)}")
        for a, b in self.crosses:
            if a not in names or b not in names:
                raise ConfigError(f"--cross {a}:{b}: both fields must exist; fields: {', '.join(names)}")
        if self.history_kind not in HISTORY_KINDS:
            raise ConfigError(f"history_kind must be one of {HISTORY_KINDS}, not {self.history_kind!r}")
        kinds = {f.name: f.kind for f in self.fields}
        for name in self.history_fields:
            if kinds.get(name) != "cat" or name in ID_FIELDS:
                raise ConfigError(f"--history-field {name}: must be one of the stream's categorical fields: "
                                  + ", ".join(n for n, k in kinds.items() if k == "cat" and n not in ID_FIELDS))
        crossed = [f"{a}:{b}" for a, b in self.crosses]
        for key in self.counts:
            if key not in names and key not in crossed:
                hint = (f"; add --cross {key} first" if key.count(":") == 1 and all(p in names for p in key.split(":"))
                        else "")
                raise ConfigError(f"--count {key}: must be a field or a cross given with --cross{hint}; fields: "
                                  f"{', '.join(names)}" + (f"; crosses: {', '.join(crossed)}" if crossed else ""))
        if self.count_rows < 2 or self.count_rows & (self.count_rows - 1):
            raise ConfigError(f"count_rows must be a power of two, not {self.count_rows}")
        if len(set(self.counts)) != len(self.counts):
            raise ConfigError(f"--count repeats a key: {', '.join(self.counts)}")
        for f in self.fields:
            if f.buckets < 2:
                raise ConfigError(f"field {f.name}: buckets must be at least 2")
        sizes = np.array([f.buckets for f in self.fields], dtype=np.int64)
        object.__setattr__(self, "_offsets", np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def offsets(self) -> np.ndarray:
        return self._offsets

    @property
    def field_rows(self) -> int:
        """Rows of the embedding tables (all fields)."""
        return int(sum(f.buckets for f in self.fields))

    def pair_keys(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """One int64 key per pair of field ids, distinct for distinct pairs: exact with fixed
        hashing (``first * field_rows + second``); a keyed spec's ids (2^40 per field) do not fit
        that product, so there ``first`` times an odd constant (a bijection) plus ``second``, wrapping."""
        if not self.keyed:
            return first * np.int64(self.field_rows) + second
        with np.errstate(over="ignore"):
            return (first.view(np.uint64) * GOLDEN).view(np.int64) + second

    @property
    def cross_offsets(self) -> np.ndarray:
        """The first wide id of each cross."""
        return self.field_rows + np.arange(len(self.crosses), dtype=np.int64) * self.cross_buckets

    @property
    def count_offset(self) -> int:
        """The first wide coordinate of the count features (after the fields and crosses)."""
        return self.field_rows + len(self.crosses) * self.cross_buckets

    @property
    def wide_rows(self) -> int:
        """Coordinates of the wide part: fields, crosses, count buckets, then one bias coordinate."""
        return self.count_offset + len(self.counts) * COUNT_LEVELS**2 + 1

    def count_keys(self) -> list[tuple[int, ...]]:
        """For each count key, the positions among the fields of what it counts: one field, or
        the two fields of a cross."""
        names = self.names
        return [(names.index(key),) if key in names else tuple(names.index(part) for part in key.split(":"))
                for key in self.counts]

    @property
    def bias_id(self) -> int:
        return self.wide_rows - 1

    @property
    def numeric_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.kind == "num")

    @property
    def dense_dim(self) -> int:
        return len(self.numeric_fields) if self.dense_numeric else 0

    def to_json(self) -> str:
        data = {"fields": [asdict(f) for f in self.fields], "crosses": [list(c) for c in self.crosses],
                "cross_buckets": self.cross_buckets, "dense_numeric": self.dense_numeric, "seed": self.seed}
        if self.history_length:
            data["history_length"] = self.history_length
        if self.history_kind != "user_clicks":
            data["history_kind"] = self.history_kind
        if self.history_fields:
            data["history_fields"] = list(self.history_fields)
        if self.counts:
            data["counts"] = list(self.counts)
            data["count_rows"] = self.count_rows
        if self.keyed:
            data["keyed"] = True
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        data = json.loads(text)
        return cls(
            fields=tuple(FieldSpec(**f) for f in data["fields"]),
            crosses=tuple((a, b) for a, b in data["crosses"]),
            cross_buckets=data["cross_buckets"], dense_numeric=data["dense_numeric"], seed=data["seed"],
            history_length=data.get("history_length", 0),
            history_kind=data.get("history_kind", "user_clicks"),
            history_fields=tuple(data.get("history_fields", ())),
            counts=tuple(data.get("counts", ())), count_rows=data.get("count_rows", DEFAULT_COUNT_ROWS),
            keyed=bool(data.get("keyed", False)),
        )

    @classmethod
    def infer(cls, sample: Sequence[dict[str, Any]], *, cat_buckets: int = DEFAULT_CAT_BUCKETS,
              num_buckets: int = DEFAULT_NUM_BUCKETS, bucket_overrides: dict[str, int] | None = None,
              crosses: Sequence[tuple[str, str]] = (), cross_buckets: int = DEFAULT_CROSS_BUCKETS,
              dense_numeric: bool = True, seed: int = 0, counts: Sequence[str] = (),
              count_rows: int = DEFAULT_COUNT_ROWS, keyed: bool = False) -> FeatureSpec:
        """Fields and kinds from sample feature dicts: strings are categorical, numbers numeric.

        A field that is null in every sample row is categorical. Fields keep first-seen order.
        ``keyed``: categorical fields and crosses get ``KEY_SPACE`` ids (bucket counts do not apply).
        """
        if keyed:
            if bucket_overrides:
                raise ConfigError("--buckets sets fixed hashing's rows: it does not apply to keyed tables "
                                  "(--tables keyed); bound a keyed table with --set tables.max_rows=N")
            cat_buckets = cross_buckets = KEY_SPACE
        kinds: dict[str, FieldKind | None] = {}
        for features in sample:
            for name, value in features.items():
                if name in ID_FIELDS:
                    raise ConfigError(f"feature field {name!r} clashes with the event's own {name}")
                if kinds.get(name) is None:
                    kinds[name] = None if value is None else ("cat" if isinstance(value, str) else "num")
        overrides = dict(bucket_overrides or {})
        fields = [FieldSpec(n, "cat", overrides.pop(n, cat_buckets)) for n in ID_FIELDS]
        for name, kind in kinds.items():
            kind = kind or "cat"
            fields.append(FieldSpec(name, kind, overrides.pop(name, cat_buckets if kind == "cat" else num_buckets)))
        if overrides:
            raise ConfigError(f"--buckets names unknown fields: {', '.join(sorted(overrides))}")
        return cls(tuple(fields), tuple(crosses), cross_buckets, dense_numeric, seed, counts=tuple(counts),
                   count_rows=count_rows, keyed=keyed)


@dataclass(frozen=True)
class SpecOptions:
    """How a new model's :class:`FeatureSpec` is made from the first rows of its stream: bucket
    counts, the wide crosses and count features, and the fields remembered in behaviour histories."""

    cat_buckets: int = DEFAULT_CAT_BUCKETS
    bucket_overrides: dict[str, int] = field(default_factory=dict)
    crosses: tuple[tuple[str, str], ...] = ()
    counts: tuple[str, ...] = ()  # count features (FeatureSpec.counts)
    count_rows: int = DEFAULT_COUNT_ROWS  # rows of a counted cross's table (FeatureSpec.count_rows)
    dense_numeric: bool = True
    seed: int = 0
    # sequence models: fields remembered with each clicked item (FeatureSpec.history_fields)
    history_fields: tuple[str, ...] = ()
    # sequence models: clicks remembered per user (FeatureSpec.history_length); 0 = the model's own default
    history_length: int = 0
    # keyed tables (FeatureSpec.keyed); False: fixed hashing at ``cat_buckets`` rows per field
    keyed: bool = True

    def infer(self, sample: list[dict[str, Any]]) -> FeatureSpec:
        if self.keyed and self.cat_buckets != DEFAULT_CAT_BUCKETS:
            raise ConfigError(f"cat_buckets={self.cat_buckets} sets fixed hashing's rows: it does not apply to "
                              f"keyed tables (keyed=False hashes; bound a keyed table with tables.max_rows)")
        spec = FeatureSpec.infer(sample, cat_buckets=self.cat_buckets, bucket_overrides=self.bucket_overrides,
                                 crosses=self.crosses, dense_numeric=self.dense_numeric, seed=self.seed,
                                 counts=self.counts, count_rows=self.count_rows, keyed=self.keyed)
        if self.history_length < 0:
            raise ConfigError(f"history_length must be >= 0, got {self.history_length}")
        return dataclasses.replace(spec, history_fields=self.history_fields, history_length=self.history_length)
