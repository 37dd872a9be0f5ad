"""Online CTR models and the registry that names them (``create_model``, ``model_from_bytes``)."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from streamrec.models.autorec import AutoRec
from streamrec.models.base import OnlineModel, config_from_json, load_tensors_blob, read_metadata
from streamrec.models.dcn import DCN
from streamrec.models.deep_crossing import DeepCrossing
from streamrec.models.deepfm import DeepFM
from streamrec.models.dien import DIEN
from streamrec.models.din import DIN
from streamrec.models.lr import LogisticRegressionFTRL
from streamrec.models.neuralcf import NeuralCF
from streamrec.models.nfm import NFM
from streamrec.models.pnn import IPNN, OPNN
from streamrec.models.two_tower import TwoTower
from streamrec.models.wide_deep import WideDeep
from streamrec.models.youtube_dnn import YouTubeDNN
from streamrec.stream.errors import ConfigError, ModelError
from streamrec.stream.feature_spec import FeatureSpec

REGISTRY: dict[str, type[OnlineModel]] = {cls.name: cls for cls in (
    LogisticRegressionFTRL, WideDeep, DeepFM, NFM, DCN, DeepCrossing, IPNN, OPNN, NeuralCF, TwoTower, DIN, DIEN,
    AutoRec, YouTubeDNN)}


def spec_for(name: str, spec: FeatureSpec) -> FeatureSpec:
    """``spec`` with what model ``name`` reads besides the fields (a sequence model's history): a
    length already in the spec (a loaded model's, or ``--history-length``) wins over the model's default."""
    cls = REGISTRY.get(name)
    if not getattr(cls, "history_length", 0):  # a history means nothing to a model that reads none
        if not spec.history_fields and not spec.history_length:
            return spec
        return dataclasses.replace(spec, history_fields=(), history_length=0)
    kind = getattr(cls, "history_kind", "user_clicks")
    fields = spec.history_fields if kind == "user_clicks" else ()
    return dataclasses.replace(spec, history_length=spec.history_length or cls.history_length, history_kind=kind,
                               history_fields=fields)


def history_ttl_seconds(name: str, settings: dict[str, str] | None = None) -> float:
    """How long a sequence model's histories (stream/behaviour_history.py) keep a key not seen in
    any example, in event time: the model's ``tables.ttl_seconds`` (0: for ever), so that histories
    expire as its keyed tables do. A bad setting is a :class:`ConfigError` naming it."""
    cls = REGISTRY.get(name)
    if cls is None:
        return 0.0
    tables = getattr(apply_settings(cls.config_class(), settings or {}, name), "tables", None)
    return float(tables.ttl_seconds) if tables is not None else 0.0


def model_names() -> list[str]:
    return sorted(REGISTRY)


def create_model(name: str, spec: FeatureSpec, seed: int = 0, settings: dict[str, str] | None = None,
                 **overrides: Any) -> OnlineModel:
    """A new model; ``settings`` are dotted config keys as text (``{"ftrl.alpha": "0.5"}``, from
    ``--set``), ``overrides`` top-level config fields as values."""
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(model_names())}")
    cls = REGISTRY[name]
    check_wide_options(name, settings or {}, spec.crosses, spec.counts)
    config = dataclasses.replace(cls.config_class(), seed=seed, **overrides)
    config = apply_settings(config, settings or {}, name)
    return cls(spec, config)


def is_wide_setting(key: str) -> bool:
    """Whether a dotted setting key configures the FTRL wide part (``ftrl.alpha``)."""
    return key.split(".")[0] == "ftrl"


def has_wide_part(name: str) -> bool:
    """Whether model ``name`` has a linear part trained with FTRL (``lr`` is nothing else)."""
    return bool(getattr(REGISTRY[name], "has_wide", True))


def check_wide_options(name: str, settings: dict[str, str], crosses: Sequence[tuple[str, str]],
                       counts: Sequence[str] = ()) -> None:
    """A model without a wide part would silently ignore FTRL settings, crosses and count features
    (which feed only the wide part): name the first such option instead."""
    if has_wide_part(name):
        return
    with_wide = ", ".join(n for n in model_names() if has_wide_part(n))
    for key in settings:
        if is_wide_setting(key):
            raise ConfigError(f"--set {key}: {name} has no wide (FTRL) part; models with one: {with_wide}")
    if crosses:
        a, b = crosses[0]
        raise ConfigError(f"--cross {a}:{b}: {name} has no wide part, and crosses feed only the wide part; "
                          f"models with one: {with_wide}")
    if counts:
        raise ConfigError(f"--count {counts[0]}: {name} has no wide part, and count features feed only the wide "
                          f"part; models with one: {with_wide}")


def config_keys(config: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += config_keys(value, f"{prefix}{f.name}.")
        elif f.name != "seed":
            keys.append(prefix + f.name)
    return keys


def _coerce(text: str, current: Any, key: str) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(current, tuple):
            return tuple(int(part) for part in text.replace(",", " ").split())
        return type(current)(text)
    except ValueError:
        raise ConfigError(f"--set {key}={text}: expected {type(current).__name__} like {current!r}") from None


def apply_settings(config: Any, settings: dict[str, str], model: str = "") -> Any:
    """``config`` with dotted keys replaced, e.g. ``{"ftrl.alpha": "0.5", "hidden": "128,64"}``.

    An unknown key is a :class:`ConfigError` that lists the known ones."""
    for key, text in settings.items():
        path = key.split(".")
        holders = [config]
        for part in path[:-1]:
            inner = getattr(holders[-1], part, None)
            if not dataclasses.is_dataclass(inner):
                holders = []
                break
            holders.append(inner)
        if not holders or path[-1] not in {f.name for f in dataclasses.fields(holders[-1])} or path[-1] == "seed" \
                or dataclasses.is_dataclass(getattr(holders[-1], path[-1])):
            known = config_keys(config)
            if model in REGISTRY and not has_wide_part(model):
                known = [k for k in known if not is_wide_setting(k)]
            raise ConfigError(f"--set {key}: {model or 'this model'} has no such setting; known: {', '.join(known)}")
        config = replace_setting(config, key, _coerce(text, getattr(holders[-1], path[-1]), key))
    return config


def replace_setting(config: Any, key: str, value: Any) -> Any:
    """``config`` with the dotted setting ``key`` (``ftrl.alpha``) set to ``value``, the nested
    configs on the way replaced (configs are frozen); unchecked: :func:`apply_settings` checks."""
    part, _, rest = key.partition(".")
    return dataclasses.replace(config, **{part: replace_setting(getattr(config, part), rest, value) if rest else value})


def parse_settings(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``("ftrl.alpha=0.5", ...)`` from the command line → ``{"ftrl.alpha": "0.5"}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--set {pair!r} must look like KEY=VALUE, e.g. ftrl.alpha=0.5")
        out[key.strip()] = value.strip()
    return out


# What a stored model may ask for before anything is allocated: a version's metadata is input
# like any other, and a corrupt or hostile one must not make a loader allocate terabytes.
MAX_MODEL_BYTES = 64 << 30
MAX_LAYER_WIDTH = 1 << 16


def model_bytes_estimate(spec: FeatureSpec, config: Any) -> int:
    """Roughly what a model built from ``spec`` and ``config`` holds in memory (the tables dominate)."""
    dim = getattr(getattr(config, "embedding", None), "dim", 0)
    if spec.keyed:  # a keyed table starts small and grows with what it admits (its rows are loaded, not allocated)
        return 0
    embedding = spec.field_rows * (2 * 4 * dim + 8)  # weights + Adagrad state (float32), counts
    wide = spec.wide_rows * 2 * 8                     # FTRL z and n (float64)
    counts = 2 * 4 * sum(spec.count_rows if ":" in key else 0 for key in spec.counts)
    return embedding + wide + counts


def check_model_size(spec: FeatureSpec, config: Any, name: str) -> None:
    """:class:`ModelError` if the model would be larger than :data:`MAX_MODEL_BYTES` or has a
    layer wider than :data:`MAX_LAYER_WIDTH` (checked before a stored model is built)."""
    estimate = model_bytes_estimate(spec, config)
    if estimate > MAX_MODEL_BYTES:
        raise ModelError(f"{name}: the stored spec asks for {spec.field_rows:,} embedding rows and {spec.wide_rows:,} "
                         f"wide coordinates (about {estimate / 2**30:,.0f} GiB; at most {MAX_MODEL_BYTES >> 30} GiB): "
                         "not loaded")
    widths = [getattr(getattr(config, "embedding", None), "dim", 0), *getattr(config, "hidden", ())]
    if any(not 0 <= int(w) <= MAX_LAYER_WIDTH for w in widths):
        raise ModelError(f"{name}: the stored config has a layer of width {max(widths)} (at most {MAX_LAYER_WIDTH}): "
                         "not loaded")


class PristineModels:
    """Freshly built (seeded, untrained) models kept by (model, spec, config), so that loading
    another version of the same model copies one instead of drawing every initial row again.

    A stored version holds only its touched rows; the others keep their seeded initial values, so
    each load starts from a fresh model. Drawing a large embedding table costs several times a
    memory copy of it, and a scorer loads many versions of one model: it keeps one of these
    (``keep`` models, the most recently used) at the price of one more copy of each in memory."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._models: OrderedDict[tuple[str, str, str], OnlineModel] = OrderedDict()
        self._lock = threading.Lock()

    def fresh(self, key: tuple[str, str, str], build: Callable[[], OnlineModel]) -> OnlineModel:
        """A new model equal to ``build()``, copied from the kept one when there is one."""
        with self._lock:
            template = self._models.get(key)
            if template is None:
                template = self._models[key] = build()
                while len(self._models) > self.keep:
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
        return copy.deepcopy(template)


def model_from_bytes(blob: bytes, pristine: PristineModels | None = None) -> OnlineModel:
    """Rebuild a model from a safetensors blob written by :meth:`OnlineModel.to_bytes`; the spec,
    the config and every tensor's shape are checked before anything large is built or loaded.
    With ``pristine`` the fresh model is copied from one kept there instead of built."""
    meta = read_metadata(blob)
    if "shards" in meta:
        raise ModelError(f"these weights are shard {meta.get('shard')} of {meta['shards']} of a model learned by "
                         "ranks: load every shard together (model_from_shards)")
    model = _fresh_model(meta, pristine)
    model.load_row_sparse(load_tensors_blob(blob))
    return model


def model_from_shards(shards: Sequence[bytes], pristine: PristineModels | None = None) -> OnlineModel:
    """The whole model from every shard a trainer's ranks wrote (:meth:`ShardedModel.shard_bytes`,
    in any order): whoever reads it need not know how many ranks learned it."""
    from streamrec.models.sharded import join_shards, shard_order

    metas = [read_metadata(blob) for blob in shards]
    order = shard_order(metas)
    first = metas[order[0]]
    for meta in metas:
        if (meta.get("model"), meta.get("spec"), meta.get("config")) != (first.get("model"), first.get("spec"),
                                                                           first.get("config")):
            raise ModelError("the shards are of different models (model, spec or config differ)")
    model = _fresh_model(first, pristine)
    model.load_row_sparse(join_shards([load_tensors_blob(shards[k]) for k in order], model))
    return model


def model_from_stored(weights: bytes, shards: Sequence[bytes] = (), pristine: PristineModels | None = None) -> OnlineModel:
    """The model of a stored version: its ``weights``, or its ``shards`` when ranks wrote it."""
    return model_from_shards(shards, pristine) if shards else model_from_bytes(weights, pristine)


def _fresh_model(meta: dict[str, str], pristine: PristineModels | None) -> OnlineModel:
    """A freshly built (seeded, untrained) model of a blob's metadata, its spec and config checked."""
    name = meta.get("model", "")
    if name not in REGISTRY:
        raise ModelError(f"weights are for unknown model {name!r}; registered: {', '.join(model_names())}")
    cls = REGISTRY[name]
    try:
        spec = FeatureSpec.from_json(meta["spec"])
        config = config_from_json(cls.config_class, meta["config"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise ModelError(f"{name}: the stored spec or config is unreadable ({exc})") from None
    check_model_size(spec, config, name)
    if pristine is None:
        return cls(spec, config)
    return pristine.fresh((name, meta["spec"], meta["config"]), lambda: cls(spec, config))
