"""Count features (models/seen_counts.py): read before the batch, seen and clicked levelled by
log2, learned from, versioned, refused where they would be ignored."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from streamrec.models import create_model, model_from_bytes
from streamrec.stream.errors import ConfigError
from streamrec.stream.feature_spec import COUNT_LEVELS, FeatureSpec, SpecOptions
from streamrec.stream.featurizer import Featurizer


def _batch(featurizer: Featurizer, pairs: list[tuple[str, str]], labels: list[int] | None = None):
    return featurizer.build([u for u, _ in pairs], [i for _, i in pairs], [{"C3": "x"} for _ in pairs], labels)


def test_counts_are_read_before_the_batch_and_levelled_by_bit_length() -> None:
    spec = SpecOptions(crosses=(("user_id", "item_id"),), counts=("item_id", "user_id:item_id"),
                       count_rows=1 << 10).infer([{"C3": "x"}])
    assert spec.wide_rows == spec.field_rows + spec.cross_buckets + 2 * COUNT_LEVELS**2 + 1
    model = create_model("lr", spec)
    featurizer = Featurizer(spec)
    seen = model.seen
    assert seen is not None
    pairs = [("u1", "a")] * 3 + [("u2", "a"), ("u3", "b")]
    batch = _batch(featurizer, pairs, [1, 0, 1, 0, 0])
    levels = seen.ids(batch) - seen.first_level
    assert levels.tolist() == [[0, 0]] * 5  # nothing learned yet; an example never counts itself
    model.learn(batch)
    later = _batch(featurizer, [("u1", "a"), ("u2", "a"), ("u3", "b"), ("u4", "c")])
    # (seen level, clicked level) as seen * COUNT_LEVELS + clicked, levels 0, 1, 2..3, 4..7:
    # item a seen 4 times, clicked twice (3, 2); pair u1×a seen 3 times, clicked twice (2, 2);
    # u2×a and u3×b, and item b, seen once, not clicked (1, 0); u4×c and item c never seen
    assert (seen.ids(later) - seen.first_level).tolist() == [[98, 66], [98, 32], [32, 32], [0, 0]]
    assert int(seen.count.sum()) == 10 and int(seen.clicks.sum()) == 4
    # prediction reads the counts and changes nothing
    before = seen.count.clone()
    model.predict_proba(later)
    assert torch.equal(seen.count, before)


def test_learning_counts_the_batch_s_earlier_examples_so_batch_size_does_not_matter() -> None:
    spec = SpecOptions(crosses=(("user_id", "item_id"),), counts=("user_id:item_id", "item_id"),
                       count_rows=1 << 12).infer([{"C3": "x"}])
    featurizer = Featurizer(spec)
    seen = create_model("lr", spec).seen
    batch = _batch(featurizer, [("u1", "a")] * 3 + [("u2", "a")], [1, 0, 1, 0])
    # pair u1×a: (0, 0), (1, 1), (2→2, 1→1); item a: then also u2's, after two clicks (2→2, 2→2)
    assert (seen.ids(batch, learning=True) - seen.first_level).tolist() == [[0, 0], [33, 33], [65, 65], [0, 66]]
    assert (seen.ids(batch) - seen.first_level).tolist() == [[0, 0]] * 4  # scoring reads the tables only
    rng = random.Random(2)
    pairs = [(f"u{rng.randrange(8)}", f"i{rng.randrange(6)}") for _ in range(600)]
    labels = [rng.randrange(2) for _ in pairs]
    by_size = {}
    for size in (1, 7, 64):
        counts = create_model("lr", spec).seen
        levels = []
        for at in range(0, len(pairs), size):
            chunk = _batch(featurizer, pairs[at:at + size], labels[at:at + size])
            levels.append(counts.ids(chunk, learning=True))
            counts.record(chunk)
        by_size[size] = torch.cat(levels)
    assert torch.equal(by_size[1], by_size[7]) and torch.equal(by_size[1], by_size[64])
    assert int(((by_size[1] - seen.first_level) // COUNT_LEVELS).max()) >= 5  # counts grew past 16


def test_keyed_counts_give_each_value_a_row_of_its_own_within_the_budget() -> None:
    pairs = [(f"u{k}", f"i{k % 3000}") for k in range(6000)]  # 6,000 pairs once each, 3,000 items twice
    labels = [k % 2 for k in range(6000)]
    options = dict(crosses=(("user_id", "item_id"),), counts=("user_id:item_id", "item_id"), count_rows=1 << 10)
    by_kind = {}
    for keyed, settings in ((False, {}), (True, {"tables.max_rows": "-1"}), (True, {"tables.max_rows": "2048"})):
        spec = SpecOptions(keyed=keyed, **options).infer([{"C3": "x"}])
        featurizer = Featurizer(spec)
        model = create_model("lr", spec, settings=settings)
        for at in range(0, len(pairs), 500):
            model.learn(_batch(featurizer, pairs[at:at + 500], labels[at:at + 500]))
        by_kind[keyed, settings.get("tables.max_rows")] = model
    keys, count, _clicks = by_kind[False, None].seen.counted()
    assert len(keys) < 1024 + 3000 and count.max() > 2  # hashed: 6,000 pairs share 1,024 rows
    unbounded = by_kind[True, "-1"].seen
    keys, count, clicks = unbounded.counted()
    assert len(keys) == 6000 + 3000 and sorted(count.tolist()) == [1] * 6000 + [2] * 3000
    # u_k×i_k clicked when k is odd; item j (k = j and j + 3000) twice when j is odd
    assert sorted(clicks.tolist()) == [0] * 4500 + [1] * 3000 + [2] * 1500
    assert unbounded.table.evicted == 0
    bounded = by_kind[True, "2048"]
    table = bounded.keyed_tables()["seen"]
    assert table.live_rows <= 2048 and table.evicted > 0
    # the oldest pair was freed and reads "never seen"; once the budget is full a value needs a
    # second sighting to push another out (tables.admit_when_full): item i2999, seen again last, holds a row
    featurizer = Featurizer(bounded.spec)
    levels = bounded.seen.ids(_batch(featurizer, [("u0", "i0"), ("u5999", "i2999")])) - bounded.seen.first_level
    assert levels[0, 0] == 0 and levels[1, 1] > 0


def test_a_stream_where_repeats_click_is_learned_only_with_the_count() -> None:
    """Each (user, item) pair's first showing is not clicked and every later one is: a pair's own
    weight first learns the opposite of what comes next, the shared count level learns the rule."""
    rng = random.Random(5)
    pool = [(f"u{rng.randrange(3000)}", f"i{rng.randrange(3000)}") for _ in range(1500)]
    seen: set[tuple[str, str]] = set()
    pairs, labels = [], []
    for _ in range(20_000):
        pair = rng.choice(pool) if rng.random() < 0.5 else (f"u{rng.randrange(3000)}", f"i{rng.randrange(3000)}")
        labels.append(int(pair in seen))
        seen.add(pair)
        pairs.append(pair)
    aucs = {}
    for counts in ((), ("user_id:item_id",)):
        spec = SpecOptions(crosses=(("user_id", "item_id"),), counts=counts).infer([{"C3": "x"}])
        model = create_model("lr", spec, settings={"ftrl.alpha": "0.5", "ftrl.l1": "0.1"})
        featurizer = Featurizer(spec)
        predictions = np.concatenate([model.learn(_batch(featurizer, pairs[at:at + 100], labels[at:at + 100]))
                                      for at in range(0, len(pairs), 100)])
        aucs[counts] = roc_auc_score(labels[5000:], predictions[5000:])
    assert aucs[("user_id:item_id",)] > 0.99, aucs
    assert aucs[()] < 0.9, aucs


def test_counts_version_with_the_model(tmp_path: Path) -> None:
    spec = SpecOptions(crosses=(("user_id", "item_id"),), counts=("user_id:item_id",),
                       count_rows=1 << 10).infer([{"C3": "x"}])
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["counts"] == ["user_id:item_id"]
    model = create_model("wide_deep", spec, settings={"hidden": "8", "embedding.dim": "4"})
    featurizer = Featurizer(spec)
    batch = _batch(featurizer, [("u1", "a"), ("u1", "a"), ("u2", "b")], [1, 1, 0])
    model.learn(batch)
    loaded = model_from_bytes(model.to_bytes())
    assert torch.equal(loaded.seen.count, model.seen.count) and int(model.seen.count.sum()) == 3
    assert torch.equal(loaded.seen.clicks, model.seen.clicks) and int(model.seen.clicks.sum()) == 2
    np.testing.assert_array_equal(loaded.predict_proba(batch), model.predict_proba(batch))


def test_bad_count_keys_are_named() -> None:
    sample = [{"C3": "x"}]
    with pytest.raises(ConfigError, match="--count C9: must be a field or a cross"):
        SpecOptions(counts=("C9",)).infer(sample)
    with pytest.raises(ConfigError, match="--count user_id:C3: .*add --cross user_id:C3 first"):
        SpecOptions(counts=("user_id:C3",)).infer(sample)
    with pytest.raises(ConfigError, match="--count repeats a key"):
        SpecOptions(counts=("C3", "C3")).infer(sample)
    with pytest.raises(ConfigError, match="count_rows must be a power of two"):
        SpecOptions(counts=("C3",), count_rows=1000).infer(sample)
    with pytest.raises(ConfigError, match="--count C3: dcn has no wide part"):
        create_model("dcn", SpecOptions(counts=("C3",)).infer(sample))


def test_evaluate_cli_takes_counts_and_refuses_them_without_a_wide_part(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from streamrec.cli import cli
    from streamrec.producers.generator import generate, write_stream

    data = tmp_path / "s.tsv"
    write_stream(generate(2000, seed=2), data, seed=2)
    common = ["evaluate", str(data), "--format", "criteo", "--user-field", "C1", "--item-field", "C2",
              "--batch-size", "100", "--cross", "user_id:item_id", "--count", "user_id:item_id"]
    report_path = tmp_path / "r.json"
    result = CliRunner().invoke(cli, [*common, "--model", "lr", "--report-json", str(report_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(report_path.read_text())["examples"] == 2000
    refused = CliRunner().invoke(cli, [*common[:-4], "--count", "C3", "--model", "dcn"])
    assert isinstance(refused.exception, ConfigError) and "--count C3: dcn has no wide part" in str(refused.exception)
