"""The Python API: streamrec's models and evaluation from a notebook, without Kafka or Redis.

A :class:`Model` learns one example or one batch at a time, in the order of the stream, and
measures itself on the way (predict, update the metrics, then learn, as progressive validation
does). An example is a dict with the user, the item and any feature fields: strings are
categorical, numbers numeric, ``None`` missing. Batches are lists of such dicts, pandas
DataFrames or pyarrow Tables.

>>> import streamrec
>>> model = streamrec.Model("lr")
>>> click = {"user_id": "u1", "item_id": "shoes", "country": "fr", "price": 30}
>>> model.predict_proba_one(click)  # nothing learned yet: every weight is zero
0.5
>>> for _ in range(5):  # FTRL's L1 keeps a weight at zero until its evidence is strong enough
...     model.learn_one(click, 1)
>>> model.predict_proba_one(click) > 0.5
True
>>> model.learn_many([{"user_id": "u2", "item_id": "hats", "country": "de", "price": 12}] * 4, [0, 0, 0, 0])
>>> model.examples
9

The same models, settings and reports as the command line (``streamrec evaluate`` calls
:func:`evaluate`); a model trained by ``streamrec train`` loads with :func:`load_version`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamrec.models import (
    REGISTRY,
    OnlineModel,
    apply_settings,
    check_wide_options,
    create_model,
    history_ttl_seconds,
    model_from_bytes,
    model_from_stored,
    model_names,
    spec_for,
)
from streamrec.models.base import read_metadata
from streamrec.models.online_search import SearchSettings
from streamrec.stream.behaviour_history import BehaviourHistory
from streamrec.stream.errors import ConfigError, ModelError
from streamrec.stream.feature_spec import DEFAULT_CAT_BUCKETS, SPEC_SAMPLE_ROWS, SpecOptions
from streamrec.stream.featurizer import Featurizer
from streamrec.stream.quality_metrics import StreamingMetrics

HISTORY_METADATA = "streamrec_history"  # a saved model's behaviour histories (JSON), beside its weights


def check_model_name(name: str) -> None:
    """A :class:`ConfigError` listing the registered models unless ``name`` is one."""
    if name not in REGISTRY:
        raise ConfigError(f"model {name!r} is not registered; choose one of {', '.join(model_names())}")


def parse_cross(cross: str | tuple[str, str]) -> tuple[str, str]:
    """``"A:B"`` or ``("A", "B")`` → ``("A", "B")``."""
    if isinstance(cross, tuple):
        return cross
    a, sep, b = cross.partition(":")
    if not sep or not a or not b:
        raise ConfigError(f"--cross {cross!r} must look like FIELD_A:FIELD_B")
    return a, b


def checked_settings(model: str, settings: Mapping[str, Any] | None, crosses: Sequence[tuple[str, str]] = (),
                     counts: Sequence[str] = ()) -> dict[str, str]:
    """Model settings as dotted keys → text (``{"ftrl.alpha": "0.5"}``), checked against the model
    now, with the crosses and count features, before any data is read."""
    check_model_name(model)
    text = {key: _setting_text(value) for key, value in (settings or {}).items()}
    check_wide_options(model, text, crosses, counts)
    apply_settings(REGISTRY[model].config_class(), text, model)
    return text


def _setting_text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def _records(batch: Any) -> list[dict[str, Any]]:
    """A batch as a list of dicts: a list of dicts, a pandas DataFrame or a pyarrow Table."""
    if isinstance(batch, list):
        return batch
    if hasattr(batch, "to_pylist"):  # pyarrow Table or RecordBatch
        return batch.to_pylist()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas DataFrame
        return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                for row in batch.to_dict(orient="records")]
    if isinstance(batch, Iterable) and not isinstance(batch, (str, bytes, Mapping)):
        return list(batch)
    raise ConfigError(f"a batch must be a list of dicts, a pandas DataFrame or a pyarrow Table, not "
                      f"{type(batch).__name__}")


class Model:
    """An online CTR model driven from Python; see the module docstring for an example.

    ``name`` is a registered model (:func:`streamrec.model_names`); ``settings`` its dotted
    settings (``{"ftrl.alpha": 0.5, "hidden": (128, 64)}``); ``crosses`` wide-part feature
    crosses (``"user_id:country"``); ``counts`` count features of fields or crosses;
    ``history_fields`` the fields a sequence model remembers with each click and ``history_length``
    how many of a user's latest clicks it reads (0: the model's default). The fields and
    their kinds are inferred from the first batch the model sees, as the trainer does.
    """

    def __init__(self, name: str = "wide_deep", *, settings: Mapping[str, Any] | None = None,
                 crosses: Sequence[str | tuple[str, str]] = (), counts: Sequence[str] = (),
                 history_fields: Sequence[str] = (), history_length: int = 0, buckets: int | None = None,
                 seed: int = 0, tables: str | None = None,
                 user_field: str = "user_id", item_field: str = "item_id", window: int = 10_000) -> None:
        pairs = tuple(parse_cross(c) for c in crosses)
        self.name = name
        self.settings = checked_settings(name, settings, pairs, tuple(counts))
        self.spec_options = SpecOptions(cat_buckets=buckets or DEFAULT_CAT_BUCKETS, crosses=pairs,
                                        counts=tuple(counts), seed=seed, history_fields=tuple(history_fields),
                                        history_length=history_length, keyed=keyed_tables(tables, buckets))
        self.seed = seed
        self.user_field, self.item_field = user_field, item_field
        self.metrics = StreamingMetrics(window)
        self.online: OnlineModel | None = None  # the model itself, once the first batch fixed its fields
        self._featurizer: Featurizer | None = None
        self._history: BehaviourHistory | None = None

    @classmethod
    def _wrap(cls, online: OnlineModel, history: BehaviourHistory | None = None) -> Model:
        model = cls.__new__(cls)
        model.name = online.name
        model.settings, model.spec_options, model.seed = {}, SpecOptions(), online.config.seed
        model.user_field, model.item_field = "user_id", "item_id"
        model.metrics = StreamingMetrics(10_000)
        model.online, model._featurizer = online, Featurizer(online.spec)
        model._history = history if history is not None else model._new_history()
        return model

    def _new_history(self) -> BehaviourHistory | None:
        spec = self._featurizer.spec if self._featurizer is not None else None
        if spec is None or not spec.history_length:
            return None
        return BehaviourHistory(spec.history_kind, spec.history_length, fields=spec.history_fields,
                                ttl_seconds=history_ttl_seconds(self.name, self.settings))

    # ------------------------------------------------------------------ batches

    def _split(self, records: list[dict[str, Any]]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
        users, items, features = [], [], []
        for record in records:
            if not isinstance(record, Mapping):
                raise ConfigError(f"an example must be a dict, not {type(record).__name__}")
            rest = dict(record)
            user, item = rest.pop(self.user_field, None), rest.pop(self.item_field, None)
            if user is None or item is None:
                raise ConfigError(f"every example needs {self.user_field!r} and {self.item_field!r} "
                                  f"(Model(user_field=..., item_field=...) names other fields)")
            users.append(str(user))
            items.append(str(item))
            features.append(rest)
        return users, items, features

    def _ensure(self, features: list[dict[str, Any]]) -> None:
        if self.online is None:
            spec = spec_for(self.name, self.spec_options.infer(features[:SPEC_SAMPLE_ROWS]))
            self.online = create_model(self.name, spec, seed=self.seed, settings=self.settings)
            self._featurizer = Featurizer(spec)
            self._history = self._new_history()

    def learn_many(self, batch: Any, labels: Sequence[int] | np.ndarray,
                   event_times: Sequence[float] | np.ndarray | None = None) -> None:
        """Learn a batch in one step (its examples in order); the predictions made before the step
        update :attr:`metrics`. ``event_times`` (seconds, one per example) is what keyed tables
        expire rows by when ``tables.ttl_seconds`` is set."""
        records = _records(batch)
        if len(records) != len(labels):
            raise ConfigError(f"{len(records)} examples but {len(labels)} labels")
        if not records:
            return
        users, items, features = self._split(records)
        self._ensure(features)
        assert self.online is not None and self._featurizer is not None
        label_list = [int(y) for y in labels]
        histories = None
        if self._history is not None:
            self._history.attach_encoder(self._featurizer.history_rows)
            histories = self._history.rows_before_learning(users, items, label_list, features)
        if event_times is not None and len(event_times) != len(records):
            raise ConfigError(f"{len(records)} examples but {len(event_times)} event times")
        batch_ = self._featurizer.build(users, items, features, label_list, histories, event_times)
        self.metrics.update(self.online.learn(batch_), np.asarray(label_list, dtype=np.float64))
        if self._history is not None:
            self._history.after(users, items, label_list, features, event_times)

    def learn_one(self, example: Mapping[str, Any], label: int, event_time: float | None = None) -> None:
        """Learn one example (``label`` 1 for a click, 0 for none)."""
        self.learn_many([dict(example)], [label], None if event_time is None else [event_time])

    def predict_proba_many(self, batch: Any) -> np.ndarray:
        """Click probabilities of a batch; nothing is learned."""
        records = _records(batch)
        if not records:
            return np.empty(0)
        users, items, features = self._split(records)
        self._ensure(features)
        assert self.online is not None and self._featurizer is not None
        histories = self._history.before(users, items) if self._history is not None else None
        return self.online.predict_proba(self._featurizer.build(users, items, features, histories=histories))

    def predict_proba_one(self, example: Mapping[str, Any]) -> float:
        """The click probability of one example."""
        return float(self.predict_proba_many([dict(example)])[0])

    # ------------------------------------------------------------------ what it learned

    @property
    def examples(self) -> int:
        """Examples learned so far (since this object was made or loaded)."""
        return self.metrics.examples

    def quality(self) -> dict[str, float]:
        """Progressive metrics so far: AUC (lifetime and window), logloss, normalised entropy, calibration."""
        return self.metrics.snapshot()

    def save(self, path: str | Path) -> Path:
        """Write the model (weights and optimiser state, safetensors; never pickle) to ``path``."""
        if self.online is None:
            raise ModelError("nothing to save: the model has not seen an example yet")
        extra = {} if self._history is None else {HISTORY_METADATA: orjson.dumps(self._history.state()).decode()}
        path = Path(path)
        path.write_bytes(self.online.to_bytes(extra))
        return path

    def __repr__(self) -> str:
        state = "not started" if self.online is None else f"{len(self.online.spec.fields)} fields"
        return f"Model({self.name!r}, {state}, {self.examples:,} examples learned)"


def load(path: str | Path) -> Model:
    """A model saved with :meth:`Model.save` (or any streamrec weights file)."""
    blob = Path(path).read_bytes()
    online = model_from_bytes(blob)
    history = read_metadata(blob).get(HISTORY_METADATA)
    return Model._wrap(online, BehaviourHistory.from_state(orjson.loads(history)) if history else None)


def load_version(redis_url: str, namespace: str, model: str, version: int | None = None) -> Model:
    """A version that ``streamrec train`` published (default: the live one), as a :class:`Model`."""
    from streamrec.stream.redis_connection import connect
    from streamrec.versions.store import VersionStore

    client = connect(redis_url)
    try:
        store = VersionStore(client, namespace, model)
        number = store.live() if version is None else version
        if number is None:
            raise ModelError(f"model {model!r} has no live version in namespace {namespace!r}")
        stored = store.load(number, with_state=True)
    finally:
        client.close()
    history = BehaviourHistory.from_state(orjson.loads(stored.history)) if stored.history else None
    return Model._wrap(model_from_stored(stored.weights, stored.shards), history)


TABLES = ("hashed", "keyed")


def keyed_tables(tables: str | None, buckets: int | None = None) -> bool:
    """``tables`` ("keyed": keyed tables, models/keyed_rows.py; "hashed": fixed hashing at
    ``buckets`` rows per field) as a spec's ``keyed``. None (the default) is keyed tables, unless
    ``buckets`` is given: only fixed hashing has buckets."""
    if tables is None:
        return buckets is None
    if tables not in TABLES:
        raise ConfigError(f"--tables {tables!r}: choose one of {', '.join(TABLES)}")
    if tables == "keyed" and buckets is not None:
        raise ConfigError("--buckets sets fixed hashing's rows: it does not apply to --tables keyed "
                          "(bound a keyed table with --set tables.max_rows=N)")
    return tables == "keyed"


def evaluate(path: str | Path, format: str, model: str = "wide_deep", *, user_field: str | None = None,
             item_field: str | None = None, columns: str | None = None, numeric_columns: str | None = None,
             limit: int | None = None, batch_size: int = 512, window: int = 10_000,
             crosses: Sequence[str | tuple[str, str]] = (), counts: Sequence[str] = (),
             settings: Mapping[str, Any] | None = None, history_fields: Sequence[str] = (), history_length: int = 0,
             seed: int = 0, strict: bool = False, search: bool = True, search_budget: float = 3.0,
             tables: str | None = None, on_progress: Callable[[int], None] | None = None,
             read_errors: list[str] | None = None) -> dict[str, Any]:
    """One progressive pass of ``model`` over a log file: the report ``streamrec evaluate`` prints
    (examples, AUC lifetime and window, logloss, normalised entropy, calibration, ex/s).
    With ``search`` (the default) settings, crosses and count features are searched online and the
    report's ``search`` says what was chosen (models/online_search.py); without it the model learns
    exactly the configuration given; ``search_budget`` bounds the examples its members learn, per
    example of the stream. Each id that earns it gets a row of its own, with admission, expiry and
    a row budget (keyed tables: ``tables.*`` settings, docs/keyed-tables.md); ``tables="hashed"``
    hashes ids into fixed tables instead.

    ``format`` is one of criteo, avazu, libsvm, libfm, csv, jsonl; ``columns`` maps csv/jsonl
    columns (``label=click,user=uid,item=ad``). Malformed rows are counted in the report
    (``malformed_rows``) and their first reasons appended to ``read_errors``."""
    from streamrec.evaluation import evaluate_file
    from streamrec.producers.readers import FORMATS, ReaderOptions, ReadStats, parse_mapping

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    pairs = tuple(parse_cross(c) for c in crosses)
    model_settings = checked_settings(model, settings, pairs, tuple(counts))
    stats = ReadStats()
    options = ReaderOptions(user_field=user_field, item_field=item_field, strict=strict,
                            mapping=parse_mapping(columns, numeric_columns))
    report, _model = evaluate_file(Path(path), format, model, limit=limit, stats=stats, reader_options=options,
                                   batch_size=batch_size, window=window, seed=seed, model_settings=model_settings,
                                   spec_options=SpecOptions(crosses=pairs, counts=tuple(counts), seed=seed,
                                                            history_fields=tuple(history_fields),
                                                            history_length=history_length,
                                                            keyed=keyed_tables(tables)),
                                   search=SearchSettings(budget=search_budget) if search else None,
                                   on_batch=on_progress)
    if read_errors is not None:
        read_errors.extend(stats.errors)
    return report


__all__ = ["Model", "check_model_name", "checked_settings", "evaluate", "load", "load_version", "model_names",
           "parse_cross"]
