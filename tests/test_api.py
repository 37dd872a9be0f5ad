"""The Python API (``import streamrec``): its doctests, the batch forms it takes, save/load, evaluation,
and a version published by a real trainer loaded back from Redis."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import streamrec
from streamrec import api
from streamrec.evaluation import evaluate_file
from streamrec.producers.readers import ReaderOptions
from streamrec.stream.errors import ConfigError, ModelError


def test_the_doctests_run() -> None:
    results = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert results.attempted >= 5 and results.failed == 0, results
    package = doctest.testmod(streamrec)
    assert package.failed == 0


def test_the_package_exposes_the_api_lazily() -> None:
    assert streamrec.Model is api.Model and streamrec.evaluate is api.evaluate
    assert "wide_deep" in streamrec.model_names()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = streamrec.nope


def _rows(learnable_rows: list, n: int) -> tuple[list[dict], list[int]]:
    rows = learnable_rows[:n]
    return [{"user_id": r.user_id, "item_id": r.item_id, **r.features} for r in rows], [r.label for r in rows]


def test_dicts_dataframes_and_arrow_tables_give_the_same_model(learnable_rows: list) -> None:
    records, labels = _rows(learnable_rows, 1200)
    table = pa.Table.from_pylist(records)
    by_form = {}
    for form, batches in (("dicts", records), ("arrow", table)):
        model = streamrec.Model("wide_deep", settings={"ftrl.alpha": 0.2}, crosses=["user_id:C3"], seed=3)
        for start in range(0, 1200, 300):
            part = batches[start:start + 300] if form == "dicts" else batches.slice(start, 300)
            model.learn_many(part, labels[start:start + 300])
        by_form[form] = model.predict_proba_many(records[:100])
        assert model.examples == 1200 and 0.0 < model.quality()["auc"] <= 1.0
    np.testing.assert_array_equal(by_form["dicts"], by_form["arrow"])


def test_learning_one_at_a_time_finds_the_signal(learnable_rows: list) -> None:
    records, labels = _rows(learnable_rows, 3000)
    model = streamrec.Model("lr")
    for record, label in zip(records, labels):
        model.learn_one(record, label)
    assert model.quality()["auc"] > 0.6


def test_save_and_load_predict_identically_and_keep_histories(tmp_path: Path, learnable_rows: list) -> None:
    records, labels = _rows(learnable_rows, 900)
    for name in ("wide_deep", "din"):
        model = streamrec.Model(name)
        model.learn_many(records, labels)
        loaded = streamrec.load(model.save(tmp_path / f"{name}.safetensors"))
        np.testing.assert_array_equal(loaded.predict_proba_many(records[:50]), model.predict_proba_many(records[:50]))
        # a loaded model goes on learning exactly as the original does
        model.learn_many(records[:100], labels[:100])
        loaded.learn_many(records[:100], labels[:100])
        np.testing.assert_array_equal(loaded.predict_proba_many(records[:50]), model.predict_proba_many(records[:50]))


def test_bad_input_is_named(learnable_rows: list) -> None:
    with pytest.raises(ConfigError, match="not registered"):
        streamrec.Model("no_such_model")
    with pytest.raises(ConfigError, match="no such setting"):
        streamrec.Model("lr", settings={"ftrl.gamma": 1})
    with pytest.raises(ConfigError, match="FIELD_A:FIELD_B"):
        streamrec.Model("lr", crosses=["user_id"])
    model = streamrec.Model("lr")
    with pytest.raises(ConfigError, match="needs 'user_id' and 'item_id'"):
        model.learn_one({"country": "fr"}, 1)
    with pytest.raises(ConfigError, match="2 examples but 1 labels"):
        model.learn_many([{"user_id": "u", "item_id": "i"}] * 2, [1])
    with pytest.raises(ModelError, match="nothing to save"):
        model.save("/nonexistent/never.safetensors")


def test_evaluate_gives_the_file_paths_report(criteo_file: Path) -> None:
    report = streamrec.evaluate(criteo_file, "criteo", "lr", user_field="C1", item_field="C2", batch_size=256)
    direct, _model = evaluate_file(criteo_file, "criteo", "lr", batch_size=256,
                                   reader_options=ReaderOptions(user_field="C1", item_field="C2"))
    assert report["examples"] == direct["examples"] == 3000
    assert report["auc"] == direct["auc"] and report["logloss"] == direct["logloss"]
    with pytest.raises(ConfigError, match="--format"):
        streamrec.evaluate(criteo_file, "parquet")


@pytest.mark.integration
def test_a_published_version_loads_as_a_model(stack, namespace, learnable_rows) -> None:
    from tests.streams import learner_threads, replay_rows, settings_for, start_trainer

    rows = learnable_rows[:4000]
    settings = settings_for(namespace)
    replay_rows(stack, settings, rows, "api")
    probe = rows[:64]
    at_publish: dict[int, np.ndarray] = {}
    running = start_trainer(stack, settings, model="wide_deep", publish_every_examples=1000, keep_versions=10,
                            on_publish=lambda n, _m, p: at_publish.update({n: p}), probe=[(r.user_id, r.item_id, r.features) for r in probe])
    report = running.wait()
    running.stop()
    head = report["head_version"]
    records = [{"user_id": r.user_id, "item_id": r.item_id, **r.features} for r in probe]
    with learner_threads():
        live = streamrec.load_version(stack.redis_url, namespace, "wide_deep")
        # the trainer's own predictions when it cut the version
        np.testing.assert_array_equal(live.predict_proba_many(records), at_publish[head])
        assert len(at_publish) >= 2
        first = streamrec.load_version(stack.redis_url, namespace, "wide_deep", version=min(at_publish))
        np.testing.assert_array_equal(first.predict_proba_many(records), at_publish[min(at_publish)])
    assert live.name == "wide_deep"
    with pytest.raises(ModelError, match="no live version"):
        streamrec.load_version(stack.redis_url, namespace, "lr")
