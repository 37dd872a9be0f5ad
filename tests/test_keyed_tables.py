"""Keyed tables (models/keyed_rows.py, models/key_index.py): the index, admission, expiry, the row
budget, and the model contract over every registered model with keyed tables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.evaluation import batched, evaluate_rows
from streamrec.models import REGISTRY, PristineModels, create_model, has_wide_part, model_from_bytes, spec_for
from streamrec.models.base import read_delta
from streamrec.models.embedding import EmbeddingConfig, SparseEmbedding, key_normals
from streamrec.models.ftrl import FTRLProximal
from streamrec.models.key_index import KeyIndex
from streamrec.models.keyed_rows import FREE, KeyedRows, TableConfig
from streamrec.producers.generator import generate, write_stream
from streamrec.producers.long_tail_generator import LongTailSettings, generate_long_tail
from streamrec.producers.readers import ReaderOptions, read_rows
from streamrec.stream.errors import ConfigError, ModelError
from streamrec.stream.feature_spec import KEY_SPACE, SpecOptions
from streamrec.stream.featurizer import Featurizer

MODELS = sorted(REGISTRY)
FIELD = np.int64(KEY_SPACE)  # the second region's first key


class _Rows:
    """A table owning rows: remembers what it was asked to reset."""

    def __init__(self) -> None:
        self.size = 1024
        self.resets: list[tuple[list[int], list[int]]] = []

    def grow_rows(self, rows: int) -> None:
        self.size = rows

    def reset_rows(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        self.resets.append((rows.tolist(), keys.tolist()))

    def rows_loaded(self, rows: int) -> None:
        self.size = rows


def _table(**settings) -> tuple[KeyedRows, _Rows]:
    owner = _Rows()
    return KeyedRows(TableConfig(**settings), np.array([0, FIELD]), 2 * FIELD, owner), owner


def _keys(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def test_the_index_matches_a_dict_through_inserts_deletes_and_rebuilds() -> None:
    rng = np.random.default_rng(0)
    index, reference = KeyIndex(), {}
    for step in range(60):
        new = np.setdiff1d(np.unique(rng.integers(-(1 << 50), 1 << 50, rng.integers(1, 2000))),
                           np.fromiter(reference, dtype=np.int64, count=len(reference)))
        rows = rng.integers(0, 1 << 30, len(new))
        index.insert(new, rows)
        reference.update(zip(new.tolist(), rows.tolist()))
        if step % 3 == 2:
            gone = rng.choice(np.fromiter(reference, dtype=np.int64), len(reference) // 2, replace=False)
            index.delete(np.concatenate([gone, rng.integers(0, 1 << 50, 10)]))  # absent keys are ignored
            for key in gone.tolist():
                del reference[key]
        asked = np.concatenate([np.fromiter(reference, dtype=np.int64), rng.integers(0, 1 << 50, 500)])
        expected = np.array([reference.get(k, -1) for k in asked.tolist()])
        np.testing.assert_array_equal(index.get(asked), expected)
        assert len(index) == len(reference)
    assert index.slots <= 8 * max(len(reference), 64)  # rebuilt to fit what is live


def test_adding_absent_keys_gives_each_one_row_in_first_occurrence_order() -> None:
    index = KeyIndex()
    index.insert(np.arange(0, 3000, 3), np.arange(1000))
    index.delete(np.arange(0, 1500, 3))  # tombstones an added key may take
    keys = np.array([7, 3000, 7, 1503, 9, 3000, 9, 5], dtype=np.int64)  # 1503 is held; the rest are not
    rows = np.full(len(keys), -1, dtype=np.int64)
    rows[3] = index.get(np.array([1503]))[0]
    added = index.add_absent(keys, rows, np.array([100, 101, 102, 103, 104, 105, 106], dtype=np.int64))
    np.testing.assert_array_equal(added, [7, 3000, 9, 5])
    np.testing.assert_array_equal(rows, [100, 101, 100, 501, 102, 101, 102, 103])
    np.testing.assert_array_equal(index.get(np.array([7, 3000, 9, 5, 1503, 3])), [100, 101, 102, 103, 501, -1])
    assert len(index) == 500 + 4


def test_a_key_gets_its_own_row_after_admit_after_sightings_and_reads_the_shared_row_before() -> None:
    table, owner = _table(admit_after=3)
    first = table.learn_rows(_keys(5), 1)
    second = table.learn_rows(_keys(5), 1)
    shared = table.index.get(np.array([-2]))[0]  # region 0's "not admitted yet" row
    assert int(first[0]) == int(second[0]) == shared
    third = table.learn_rows(_keys(5, 5), 1)  # the third and fourth sightings: admitted now
    assert int(third[0]) == int(third[1]) != shared and table.keys[int(third[0])] == 5
    assert table.admitted == 1
    # two sightings in one batch count twice; another region has its own shared row
    assert table.learn_rows(_keys(FIELD + 1, FIELD + 1), 1)[0] == table.index.get(np.array([-3]))[0]
    assert table.learn_rows(_keys(FIELD + 1), 1)[0] != table.index.get(np.array([-3]))[0]
    # scoring never admits: an unknown key reads its region's shared row
    assert int(table.rows(_keys(77))[0]) == shared
    assert owner.resets[0][1] == [-2]  # every row handed out was reset for its key first


def test_probabilistic_admission_admits_about_its_share_at_first_sight_and_repeats() -> None:
    def admitted(probability: float) -> int:
        table, _ = _table(admit_after=100, admit_probability=probability)
        table.learn_rows(torch.arange(10_000, dtype=torch.int64), 1)
        return table.admitted

    assert admitted(0.0) == 0 and admitted(1.0) == 10_000
    share = admitted(0.3) / 10_000
    assert 0.27 < share < 0.33, share
    assert admitted(0.3) == admitted(0.3)  # a hash of the key and its count, not a random draw


def test_idle_rows_expire_after_their_ttl_and_the_freed_rows_are_reset_and_reused() -> None:
    table, owner = _table(admit_after=1, ttl=100)
    old = int(table.learn_rows(_keys(1), 1)[0])
    kept = int(table.learn_rows(_keys(2), 1)[0])
    for _ in range(30):  # key 2 stays in use, key 1 goes idle
        table.learn_rows(_keys(2), 10)
    assert table.keys[old] == FREE and table.keys[kept] == 2 and table.evicted == 1
    assert ([old], [FREE]) in owner.resets  # freed rows are reset
    again = int(table.learn_rows(_keys(3), 1)[0])
    assert again == old  # the lowest free row is handed out first
    assert int(table.learn_rows(_keys(1), 1)[0]) not in (old, kept)  # key 1 is a new key again


def _at(table: KeyedRows, time: float, *keys: int) -> int:
    table.observe_time(time)
    return int(table.learn_rows(_keys(*keys), len(keys))[0])


def test_rows_idle_for_more_than_ttl_seconds_of_event_time_expire_and_late_events_do_not_turn_time_back() -> None:
    table, owner = _table(admit_after=1, ttl_seconds=100.0)
    old = _at(table, 0.0, 1)
    for t in range(10, 110, 10):  # key 2 stays in use
        _at(table, float(t), 2)
    assert table.keys[old] == 1 and table.evicted == 0  # idle for 100 s at most: kept
    recent = _at(table, 160.0, 3)
    for t in range(170, 240, 10):
        _at(table, float(t), 2)
    assert table.keys[old] == FREE and ([old], [FREE]) in owner.resets  # idle for over 100 s: freed and reset
    assert table.keys[recent] == 3  # used at 160 s: idle for 70 s
    _at(table, 50.0, 2)  # a late event: the watermark stays
    assert table.watermark == 230.0
    for step in range(200):  # examples without time passing: nothing expires, however many
        _at(table, 230.0, 2)
    assert table.keys[recent] == 3
    stored = table.state("t")
    twin, _ = _table(admit_after=1, ttl_seconds=100.0)
    twin.load("t", {**table.row_tensors("t"), **stored})
    for t in (300.0, 400.0):
        assert _at(table, t, 2) == _at(twin, t, 2)
    assert table.keys[recent] == FREE and twin.keys[recent] == FREE and table.evicted == twin.evicted
    with pytest.raises(ConfigError, match="tables.ttl_seconds"):
        TableConfig(ttl_seconds=-1.0)
    forged = {**table.row_tensors("t"), **stored, "t.table.time": torch.zeros(3, dtype=torch.float64)}
    with pytest.raises(ModelError, match="t.table.time"):
        twin.load("t", forged)


def test_expiry_by_event_time_needs_examples_with_times(stream_rows) -> None:
    rows = stream_rows[0][:600]
    spec = _spec("lr", rows)
    model = create_model("lr", spec, seed=1, settings={"tables.ttl_seconds": "2"})
    with pytest.raises(ConfigError, match="tables.ttl_seconds expires rows by event time"):
        model.learn(_batches(spec, rows, 300)[0])
    for batch in _batches(spec, rows, 100, times=True):  # 6 s of event time: rows idle for 2 s go
        model.learn(batch)
    assert model.wide.table.evicted > 0


def test_over_budget_the_least_recently_used_rows_go_first() -> None:
    table, _ = _table(admit_after=1, admit_when_full=1, max_rows=1024)
    for key in range(1020):
        table.learn_rows(_keys(key), 1)
    table.learn_rows(_keys(*range(0, 100)), 1)  # the first hundred are used again: now the newest
    table.learn_rows(torch.arange(5000, 5100, dtype=torch.int64), 1)  # over budget
    held = set(table.keys[table.keys >= 0].tolist())
    assert table.live_rows <= 1024 and table.evicted > 0
    assert set(range(100)) <= held  # recently used survive
    assert 100 not in held and 101 not in held  # the oldest are gone
    assert set(range(5000, 5100)) <= held


def test_once_the_budget_is_reached_a_key_needs_admit_when_full_sightings() -> None:
    table, _ = _table(admit_after=1, admit_when_full=2, max_rows=1024)
    table.learn_rows(torch.arange(1000, dtype=torch.int64), 1)  # room: every key at first sight
    assert table.admitted == 1000 and table.evicted == 0
    once = table.learn_rows(torch.arange(5000, 5100, dtype=torch.int64), 1)  # would pass the budget
    shared = table.index.get(np.array([-2]))[0]  # region 0's "not admitted yet" row
    assert (once == shared).all() and table.evicted == 0 and table.admitted == 1000
    assert table.not_admitted == 100  # each sighting that read the shared row is counted
    twice = table.learn_rows(torch.arange(5000, 5100, dtype=torch.int64), 1)  # seen again: they earn rows
    assert (twice != shared).all() and table.admitted == 1100 and table.live_rows <= 1024
    assert table.evicted > 0 and set(range(5000, 5100)) <= set(table.keys[table.keys >= 0].tolist())
    with pytest.raises(ConfigError, match="tables.admit_when_full"):
        TableConfig(admit_when_full=0)


def test_memory_stays_bounded_on_a_stream_of_new_ids() -> None:
    table, owner = _table(admit_after=1, admit_when_full=1, max_rows=2048)
    rng = np.random.default_rng(1)
    for step in range(200):
        table.learn_rows(torch.from_numpy(rng.integers(0, 1 << 39, 300)), 300)
    assert table.live_rows <= 2048 and owner.size <= 2049 and table.capacity <= 2049
    assert table.index.slots <= 16_384 and table.evicted >= 200 * 300 - 2048 - 2


def test_freed_and_readmitted_rows_start_from_their_keys_values() -> None:
    embedding = SparseEmbedding(0, EmbeddingConfig(dim=4), torch.Generator(),
                                (TableConfig(admit_after=1, ttl=10), np.array([0]), 1 << 60, 0), seed=3)
    keys = _keys(11, 12)
    unique, inverse, leaf = embedding.gather(keys, 1)
    (leaf.sum() * 100).backward()
    embedding.step(unique, inverse, leaf)
    row = int(embedding.table.index.get(np.array([11]))[0])
    assert not torch.allclose(embedding.weight[row], key_normals(_keys(11), 4, 3)[0] * 0.01)
    for _ in range(20):
        embedding.gather(_keys(99), 1)
    assert embedding.table.keys[row] == FREE and torch.all(embedding.weight[row] == 0)
    assert embedding.accum[row] == embedding.config.adagrad_init and embedding.counts[row] == 0
    embedding.gather(_keys(11), 1)
    again = int(embedding.table.index.get(np.array([11]))[0])
    torch.testing.assert_close(embedding.weight[again], key_normals(_keys(11), 4, 3)[0] * 0.01)
    wide = FTRLProximal(0, keyed=(TableConfig(admit_after=1), np.array([0]), 1 << 60, 0))
    state = wide.gather(_keys(7).view(1, 1))
    wide.step_examples(state, torch.tensor([0.5]))
    assert wide.z[int(state.ids[0])] != 0
    wide.table._free_rows(state.ids.numpy())
    assert wide.z[int(state.ids[0])] == 0 and wide.n[int(state.ids[0])] == 0


def test_bad_table_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="tables.admit_after"):
        TableConfig(admit_after=0)
    with pytest.raises(ConfigError, match="tables.max_rows"):
        TableConfig(max_rows=10)
    with pytest.raises(ConfigError, match="does not apply to keyed tables"):
        SpecOptions(keyed=True, bucket_overrides={"C3": 8}).infer([{"C3": "a"}])


@pytest.fixture(scope="module")
def stream_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, float]:
    path = tmp_path_factory.mktemp("keyed") / "s.tsv"
    summary = write_stream(generate(12_000, seed=21), path, seed=21)
    return list(read_rows(path, "criteo", ReaderOptions(user_field="C1", item_field="C2"))), summary["oracle_auc"]


def _spec(name: str, rows: list):
    wide = dict(crosses=(("C5", "C6"),), counts=("C3", "C5:C6"), count_rows=1 << 12) if has_wide_part(name) else {}
    return spec_for(name, SpecOptions(keyed=True, **wide).infer([r.features for r in rows[:500]]))


def _batches(spec, rows: list, size: int, times: bool = False) -> list:
    featurizer = Featurizer(spec)
    return [featurizer.build([r.user_id for r in c], [r.item_id for r in c], [r.features for r in c],
                             [r.label for r in c], event_times=[r.event_time for r in c] if times else None)
            for c in batched(rows, size)]


@pytest.mark.parametrize("name", MODELS)
def test_keyed_contract_repeats_round_trips_resumes_and_deltas_carry_evictions(name: str, stream_rows) -> None:
    rows = stream_rows[0][:3500]
    spec = _spec(name, rows)
    batches = _batches(spec, rows, 250, times=True)
    # evicts on every batch, and expires rows idle for 8 s of the stream's 35 s of event time
    tight = {"tables.max_rows": "1500", "tables.admit_after": "1", "tables.ttl_seconds": "8"}
    trainer, twin = create_model(name, spec, seed=5, settings=tight), create_model(name, spec, seed=5, settings=tight)
    trainer.learn(batches[0]), twin.learn(batches[0])
    trainer.delta_bytes(include_dense=True)
    pristine = PristineModels(keep=1)
    scorer = model_from_bytes(trainer.to_bytes(), pristine)
    for step, batch in enumerate(batches[1:-2], start=1):
        np.testing.assert_array_equal(trainer.learn(batch), twin.learn(batch))  # seeded runs repeat bit for bit
        scorer.apply_delta(read_delta(trainer.delta_bytes(include_dense=step % 2 == 0)))
        if step == 6:
            blob = trainer.to_bytes()
            resumed = model_from_bytes(blob)  # a version mid-stream, then both go on
            kept = model_from_bytes(blob, pristine)  # as a scorer loads it: into a copy of a kept fresh model
            assert all(torch.equal(kept.tensors()[k], v) for k, v in resumed.tensors().items())
    scorer.apply_delta(read_delta(trainer.delta_bytes(include_dense=True)))
    probe = batches[-1]
    np.testing.assert_array_equal(scorer.predict_proba(probe), trainer.predict_proba(probe))
    tables = trainer.keyed_tables()
    assert tables and all(t.evicted > 0 and t.live_rows <= 1500 for t in tables.values())
    for batch in batches[7:-2]:
        resumed.learn(batch)
    np.testing.assert_array_equal(resumed.learn(batches[-2]), trainer.learn(batches[-2]))
    p = trainer.predict_proba(_batches(spec, [dataclasses.replace(rows[0], user_id="never-seen", item_id="never")], 1)[0])
    assert np.all((p > 0) & (p < 1))


# every model learns with keyed tables, the default, in tests/test_models.py; fixed hashing is the
# same code with ids for rows: a model of each kind (wide only, wide and deep, sequence, ids only)
@pytest.mark.parametrize("name", ["lr", "wide_deep", "din", "neuralcf"])
def test_fixed_hashing_learns_as_keyed_tables_do(name: str, stream_rows) -> None:
    rows, oracle = stream_rows
    keyed, model = evaluate_rows(rows, name, batch_size=256, window=4000)
    hashed, hashed_model = evaluate_rows(rows, name, batch_size=256, window=4000,
                                         spec_options=SpecOptions(keyed=False))
    assert model.spec.keyed and model.keyed_tables() and not hashed_model.keyed_tables()
    if model.reads_context:
        assert hashed["auc_window"] >= 0.5 + 0.3 * (oracle - 0.5), hashed
    assert keyed["auc_window"] >= hashed["auc_window"] - 0.015 and hashed["auc_window"] > 0.505, (keyed, hashed)


def test_a_hashed_version_does_not_load_as_keyed_rows(stream_rows) -> None:
    rows = stream_rows[0][:600]
    spec = _spec("lr", rows)
    model = create_model("lr", spec)
    model.learn(_batches(spec, rows, 300)[0])
    hashed_spec = spec_for("lr", SpecOptions(keyed=False).infer([r.features for r in rows[:500]]))
    hashed = create_model("lr", hashed_spec)
    hashed.learn(_batches(hashed_spec, rows, 300)[0])
    loaded = model_from_bytes(hashed.to_bytes())
    assert not loaded.spec.keyed and not loaded.keyed_tables()
    stored = {k: v for k, v in model.tensors().items()}
    stored["wide@rows"] = torch.tensor([KEY_SPACE], dtype=torch.int64)
    with pytest.raises(ModelError, match="not rows of a keyed table"):
        create_model("lr", spec).load_row_sparse(stored)


def test_the_long_tail_stream_has_a_long_tail_and_its_popular_values_churn(tmp_path: Path) -> None:
    stream = generate_long_tail(60_000, seed=2, settings=LongTailSettings(values=500_000, churn=4.0))
    values, counts = np.unique(stream.cats[0], return_counts=True)
    assert len(values) > 15_000 and (counts == 1).sum() > 0.5 * len(values)  # most values seen once
    head = set(stream.cats[0][:20_000]) & set(stream.cats[0][-20_000:])
    fixed = generate_long_tail(60_000, seed=2, settings=LongTailSettings(values=500_000))
    kept = set(fixed.cats[0][:20_000]) & set(fixed.cats[0][-20_000:])
    assert len(head) < 0.5 * len(kept)  # churn replaces the popular values
    assert 0.6 < stream.oracle_auc < 0.9 and 0.15 < stream.labels.mean() < 0.25


@pytest.mark.integration
def test_a_keyed_trainer_versions_its_tables_exports_them_and_resumes_with_them(stack, namespace, learnable_rows,
                                                                               tmp_path):
    import json
    import os
    import subprocess
    import sys

    import redis

    from streamrec.versions.store import VersionStore
    from tests.streams import replay_rows, settings_for, start_trainer

    rows = learnable_rows[:6000]
    first, second = rows[:3000], rows[3000:]
    settings = settings_for(namespace, search=False)
    options = dict(model="wide_deep", publish_every_examples=1000, metrics_port=0,
                   spec_options=SpecOptions(keyed=True),
                   model_settings={"tables.max_rows": "2048", "tables.admit_after": "1", "tables.ttl_seconds": "5"})
    replay_rows(stack, settings, first, "a")
    report, metrics = start_trainer(stack, settings, **options).finish()
    assert report["examples"] == len(first)
    assert metrics['streamrec_table_rows{table=embedding}'] <= 2048
    assert metrics['streamrec_table_evicted_total{table=wide}'] > 0
    assert metrics['streamrec_table_not_admitted_total{table=embedding}'] > 0  # keys seen once, the budget full
    assert metrics['streamrec_table_admitted_total{table=embedding}'] > 2048
    assert metrics['streamrec_table_field_rows{field=user_id,table=embedding}'] > 0
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "wide_deep")
    head = store.head()
    stored = model_from_bytes(store.load(head).weights)
    assert stored.spec.keyed and stored.config.tables.max_rows == 2048
    # the examples' event times reached the learner process: its tables' watermark is the newest
    assert stored.keyed_tables()["wide"].watermark == pytest.approx(max(r.event_time for r in first))
    evicted = stored.keyed_tables()["embedding"].evicted
    shown = subprocess.run([sys.executable, "-m", "streamrec", "models", "--model", "wide_deep", "show", str(head)],
                           env={**os.environ, "STREAMREC_REDIS_URL": stack.redis_url, "STREAMREC_NAMESPACE": namespace},
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    tables = json.loads(shown.stdout)["tables"]
    assert tables["embedding"]["rows"] <= 2048 and tables["embedding"]["evicted"] == evicted
    # a worker started again resumes the keyed tables (keys, last uses, filter, clock) and goes on evicting
    replay_rows(stack, settings, second, "b")
    report = start_trainer(stack, settings, **options).finish()[0]
    assert report["examples"] == len(rows)
    resumed = model_from_bytes(store.load(store.head()).weights)
    assert resumed.keyed_tables()["embedding"].evicted > evicted
    assert resumed.keyed_tables()["embedding"].live_rows <= 2048
    assert resumed.keyed_tables()["wide"].watermark == pytest.approx(max(r.event_time for r in rows))


def test_the_python_api_learns_saves_and_loads_keyed_tables(tmp_path: Path) -> None:
    import random

    import streamrec

    rng = random.Random(1)
    model = streamrec.Model("wide_deep", tables="keyed", settings={"tables.max_rows": "2048"})
    examples = [{"user_id": f"u{rng.randint(0, 5000)}", "item_id": f"i{rng.randint(0, 300)}", "C1": rng.choice("abc")}
                for _ in range(6000)]
    labels = [rng.randint(0, 1) for _ in examples]
    for start in range(0, len(examples), 500):
        model.learn_many(examples[start:start + 500], labels[start:start + 500])
    loaded = streamrec.load(model.save(tmp_path / "m.safetensors"))
    assert loaded.online.spec.keyed and loaded.online.keyed_tables()["embedding"].evicted > 0
    np.testing.assert_array_equal(loaded.predict_proba_many(examples[:50]), model.predict_proba_many(examples[:50]))
    with pytest.raises(ConfigError, match="--tables 'bogus'"):
        streamrec.Model("wide_deep", tables="bogus")
