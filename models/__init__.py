"""Online CTR models and the registry that names them (``create_model``, ``model_from_bytes``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from models.base import OnlineModel, config_from_json, load_tensors_blob, read_metadata
from models.lr import LogisticRegressionFTRL
from models.wide_deep import WideDeep
from stream.errors import ModelError
from stream.features import FeatureSpec

REGISTRY: dict[str, type[OnlineModel]] = {cls.name: cls for cls in (LogisticRegressionFTRL, WideDeep)}


def model_names() -> list[str]:
    return sorted(REGISTRY)


def create_model(name: str, spec: FeatureSpec, seed: int = 0, **overrides: Any) -> OnlineModel:
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(model_names())}")
    cls = REGISTRY[name]
    config = dataclasses.replace(cls.config_class(), seed=seed, **overrides)
    return cls(spec, config)


def model_from_bytes(blob: bytes) -> OnlineModel:
    """Rebuild a model from a safetensors blob written by :meth:`OnlineModel.to_bytes`."""
    meta = read_metadata(blob)
    name = meta.get("model", "")
    if name not in REGISTRY:
        raise ModelError(f"weights are for unknown model {name!r}; registered: {', '.join(model_names())}")
    cls = REGISTRY[name]
    model = cls(FeatureSpec.from_json(meta["spec"]), config_from_json(cls.config_class, meta["config"]))
    model.load_row_sparse(load_tensors_blob(blob))
    return model
