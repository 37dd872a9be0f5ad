"""The contract every streamrec model keeps, and safetensors (de)serialisation.

* ``predict_proba(batch) -> np.ndarray``: click probabilities, no state change.
* ``learn(batch) -> np.ndarray``: one online step on a labelled batch; returns the probabilities
  the model gave *before* the step, so progressive validation (predict, update metrics, learn)
  costs one forward pass instead of two.
* ``tensors()`` / ``load_tensors()``: the complete state (weights and optimiser state) as named
  tensors; ``to_bytes`` / ``from_bytes`` wrap them in safetensors with the model name, its
  config and its :class:`~streamrec.stream.feature_spec.FeatureSpec` as metadata. Never pickle.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from streamrec.models.keyed_rows import table_summary
from streamrec.stream.errors import ModelError
from streamrec.stream.feature_spec import FeatureSpec
from streamrec.stream.sparse_batch import SparseBatch

FORMAT = "streamrec-weights-1"
DELTA_FORMAT = "streamrec-delta-1"


@dataclass(frozen=True)
class DeltaTensors:
    """A parsed :meth:`OnlineModel.delta_bytes` blob (see :func:`read_delta`)."""

    model: str
    dense: bool  # carries the dense weights
    tensors: dict[str, torch.Tensor]


class OnlineModel(abc.ABC):
    """The contract every streamrec model keeps (module docstring): learn and predict on a
    :class:`~streamrec.stream.sparse_batch.SparseBatch`, its whole state as named tensors, row-sparse
    versions and deltas."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    # tensors that only learning needs (optimiser moments): never in a delta, which is for scoring
    optimizer_prefixes: ClassVar[tuple[str, ...]] = ()
    # False for pure collaborative filtering: only user and item ids are read
    reads_context: ClassVar[bool] = True
    # torch threads while a reading thread parses ahead (consumers/prequential.evaluate_columns):
    # None keeps torch's default; a step lighter than parsing does better leaving the core to it
    threads_beside_reader: ClassVar[int | None] = None

    def __init__(self, spec: FeatureSpec, config: Any) -> None:
        self.spec = spec
        self.config = config

    @abc.abstractmethod
    def logits(self, batch: SparseBatch) -> torch.Tensor:
        """Raw scores (B,), without gradient tracking."""

    @abc.abstractmethod
    def learn(self, batch: SparseBatch) -> np.ndarray: ...

    @abc.abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]: ...

    @abc.abstractmethod
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...

    def predict_proba(self, batch: SparseBatch) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(self.logits(batch)).numpy().astype(np.float64)

    def extra_metrics(self) -> dict[str, float]:
        """Model-specific progressive metrics for reports (youtube_dnn's recall@k); none by default."""
        return {}

    # ---------------------------------------------------------------- serialisation

    def metadata(self) -> dict[str, str]:
        meta = {"format": FORMAT, "model": self.name, "spec": self.spec.to_json(),
                "config": json.dumps(dataclasses.asdict(self.config), sort_keys=True)}
        if self.keyed_tables():  # what `streamrec models show` reports of a version's keyed tables
            meta["tables"] = json.dumps(table_summary(self), sort_keys=True)
        return meta

    def row_groups(self) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        """Tables whose untouched rows still hold their seeded initial values:
        ``{group: (touched-row mask, tensor names)}``. Only touched rows are written (see to_bytes)."""
        return {}

    def dirty_rows(self) -> dict[str, torch.Tensor]:
        """``{group: mask}`` of the rows of each row group changed since the last :meth:`delta_bytes`."""
        return {}

    def keyed_tables(self) -> dict[str, Any]:
        """``{group: KeyedRows}`` of the row groups whose rows are handed out by key
        (models/keyed_rows.py): they grow before stored rows are written in, and re-index after."""
        return {}

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors().values() if t.is_floating_point())

    def dense_names(self) -> list[str]:
        """Tensors outside the row groups that scoring needs (not optimiser state)."""
        grouped = {name for _touched, names in self.row_groups().values() for name in names}
        return [n for n in self.tensors() if n not in grouped and not n.startswith(self.optimizer_prefixes)]

    def _row_slices(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """For each row group, the rows where ``masks[group]`` is set (``<group>@rows``) and those
        rows of each of its tensors (``<name>@touched``): the row-sparse form of a table."""
        current = self.tensors()
        out = {}
        for group, (_touched, names) in self.row_groups().items():
            rows = torch.nonzero(masks[group], as_tuple=True)[0]
            out[f"{group}@rows"] = rows
            for name in names:
                out[f"{name}@touched"] = current[name].detach()[rows]
        return out

    def delta_bytes(self, include_dense: bool, extra_metadata: dict[str, str] | None = None) -> bytes:
        """Safetensors of what changed since the previous delta: every row-group row learning
        touched since then, and (``include_dense``) the dense weights; then starts a new delta.

        Applied in order to a model equal to this one at the previous delta (:meth:`apply_delta`),
        it gives this model's predictions exactly, with the dense part as of the last delta that
        carried it. Optimiser state is left out: a scorer never learns."""
        dirty = self.dirty_rows()
        tensors = self._row_slices(dirty)
        if include_dense:
            current = self.tensors()
            tensors.update({name: current[name].detach() for name in self.dense_names()})
        for mask in dirty.values():
            mask.zero_()
        meta = {"format": DELTA_FORMAT, "model": self.name, "dense": "1" if include_dense else "0"}
        return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={**meta, **(extra_metadata or {})})

    def apply_delta(self, delta: DeltaTensors) -> None:
        """Apply a delta (:func:`read_delta`) in place: rows written, dense weights copied. The
        delta is only read, so one parsed delta can be applied to several copies of a model."""
        if delta.model != self.name:
            raise ModelError(f"a delta for model {delta.model!r} cannot apply to {self.name!r}")
        stored = delta.tensors
        keyed = self.keyed_tables()
        old_keys = {}
        for group, table in keyed.items():
            rows = stored[f"{group}@rows"]
            table.reserve(int(rows.max()) + 1 if len(rows) else 0)
            old_keys[group] = table.keys[rows.numpy()].copy()
        current = self.tensors()
        with torch.no_grad():
            row_keys = set()
            for group, (_touched, names) in self.row_groups().items():
                rows = stored[f"{group}@rows"]
                row_keys.add(f"{group}@rows")
                for name in names:
                    current[name][rows] = stored[f"{name}@touched"]
                    row_keys.add(f"{name}@touched")
                if group in keyed:
                    keyed[group].rekeyed(rows.numpy(), old_keys[group])
            for name, value in stored.items():
                if name in row_keys:
                    continue
                if name not in current:
                    raise ModelError(f"delta holds {name!r}, which model {self.name!r} does not have")
                current[name].copy_(value)

    def load_dense(self, stored: dict[str, torch.Tensor]) -> None:
        """Copy the dense weights of a loaded :meth:`to_bytes` blob in place (rows untouched)."""
        current = self.tensors()
        with torch.no_grad():
            for name in self.dense_names():
                current[name].copy_(stored[name])

    def to_bytes(self, extra_metadata: dict[str, str] | None = None) -> bytes:
        """Safetensors: dense tensors as they are; for each row group, only the touched rows.

        A stream touches a small share of a hashed table, and untouched rows are exactly what the
        seeded constructor makes, so a version holds only the touched rows and a loader rebuilds
        the rest by constructing the model (:func:`streamrec.models.model_from_bytes`;
        ``bench/online_loop.py`` prints the sizes).
        """
        return st_save(self.row_sparse_tensors(), metadata={**self.metadata(), **(extra_metadata or {})})

    def row_sparse_tensors(self) -> dict[str, torch.Tensor]:
        """What :meth:`to_bytes` writes: the tensors outside row groups as they are, and each row
        group's touched rows (``<group>@rows``, ``<name>@touched``)."""
        groups = self.row_groups()
        grouped = {name for _touched, names in groups.values() for name in names}
        tensors = {k: v.detach() for k, v in self.tensors().items() if k not in grouped}
        tensors.update(self._row_slices({group: touched for group, (touched, _names) in groups.items()}))
        return {k: v.contiguous() for k, v in tensors.items()}

    def load_row_sparse(self, stored: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`to_bytes` wrote into a freshly constructed (seeded) model. Every tensor's
        shape and every row index is checked against the model first: a :class:`ModelError`
        names the first that does not fit. The stored rows are written into the fresh model's own
        tables (it is new, so nothing else holds them), which saves a copy of each table."""
        full = dict(stored)
        for group, table in self.keyed_tables().items():
            rows = stored.get(f"{group}@rows")
            if rows is not None and len(rows):
                if int(rows.max()) >= 1 << 40:
                    raise ModelError(f"stored rows of {group!r} are not rows of a keyed table")
                table.reserve(int(rows.max()) + 1)
        fresh = self.tensors()
        try:
            for group, (_mask, names) in self.row_groups().items():
                rows = full.pop(f"{group}@rows", None)
                if rows is None:
                    continue
                for name in names:
                    table = fresh[name].detach()
                    if rows.dim() != 1 or (len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= table.shape[0])):
                        raise ModelError(f"stored rows of {group!r} fall outside its {table.shape[0]} rows")
                    values = full.pop(f"{name}@touched")
                    if values.shape != (len(rows), *table.shape[1:]):
                        raise ModelError(f"stored {name!r} rows have shape {tuple(values.shape)}, expected "
                                         f"{(len(rows), *table.shape[1:])}")
                    table.index_copy_(0, rows.long(), values.to(table.dtype))
                    full[name] = fresh[name]  # the model's own tensor, which load_tensors then keeps
            for name, value in full.items():
                if name in fresh and fresh[name].shape != value.shape and not name.startswith(self.optimizer_prefixes):
                    raise ModelError(f"stored {name!r} has shape {tuple(value.shape)}, the model's is "
                                     f"{tuple(fresh[name].shape)}")
            self.load_tensors(full)
        except KeyError as exc:
            raise ModelError(f"the stored weights lack {exc.args[0]!r}") from None


def own(loaded: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """What a model keeps of a loaded tensor: a copy, so it shares nothing with the caller's,
    unless it is already the model's own (written in place by :meth:`OnlineModel.load_row_sparse`)."""
    return loaded if loaded is current else loaded.clone()


def config_from_json(config_class: type, text: str) -> Any:
    """Rebuild a (possibly nested) config dataclass from its ``asdict`` JSON."""
    data = json.loads(text)

    def build(cls: type, values: dict[str, Any]) -> Any:
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            ftype = f.type if isinstance(f.type, type) else None
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
            if dataclasses.is_dataclass(default):
                value = build(type(default), value)
            elif isinstance(default, tuple):
                value = tuple(value)
            elif ftype is not None and dataclasses.is_dataclass(ftype):
                value = build(ftype, value)
            kwargs[f.name] = value
        return cls(**kwargs)

    return build(config_class, data)


def read_metadata(blob: bytes, expected_format: str = FORMAT) -> dict[str, str]:
    """The safetensors header metadata of a weights (or delta) blob, without loading tensors."""
    if len(blob) < 8:
        raise ModelError("weights blob is truncated")
    header_len = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except ValueError as exc:
        raise ModelError(f"weights blob has no valid safetensors header: {exc}") from None
    meta = header.get("__metadata__") or {}
    if meta.get("format") != expected_format:
        kind = "weights" if expected_format == FORMAT else "delta"
        raise ModelError(f"not streamrec {kind} (format {meta.get('format')!r}, expected {expected_format!r})")
    return meta


def load_tensors_blob(blob: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(blob)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelError(f"corrupt weights: {exc}") from None


def read_delta(blob: bytes) -> DeltaTensors:
    """Parse and check a delta blob once; apply it to any number of model copies."""
    meta = read_metadata(blob, DELTA_FORMAT)
    return DeltaTensors(meta.get("model", ""), meta.get("dense") == "1", load_tensors_blob(blob))
