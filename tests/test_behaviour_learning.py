"""Sequence models on behaviour streams (producers/behaviour_generator.py): they must capture most
of the gap between the history-blind AUC and the oracle in one pass; histories kept encoded must
equal the raw ones featurized; and a trainer's version, served by a scorer with a user's history
in the request, predicts exactly what the offline path (featurize, then the same model) predicts
for that history."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch

from streamrec.evaluation import evaluate_rows
from streamrec.models import model_from_bytes, spec_for
from streamrec.producers.behaviour_generator import BehaviourSettings, generate_behaviour
from streamrec.producers.generator import write_stream
from streamrec.producers.readers import ReaderOptions, read_rows
from streamrec.stream.behaviour_history import BehaviourHistory
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer
from tests.streams import learner_threads, replay_rows, settings_for, start_trainer

FIELDS = SpecOptions(history_fields=("C3",))


def _behaviour_rows(tmp_path, rows: int, seed: int, **settings):
    out = tmp_path / f"behaviour-{seed}.tsv"
    summary = write_stream(generate_behaviour(rows, seed, BehaviourSettings(users_per_row=1 / 100, **settings)),
                           out, seed)
    return list(read_rows(out, "criteo", ReaderOptions(user_field="C1", item_field="C2"))), summary


def test_the_generator_knows_its_bounds_and_its_settings_change_the_stream(tmp_path):
    rows, summary = _behaviour_rows(tmp_path, 20_000, 3)
    assert 0.55 < summary["blind_auc"] < summary["oracle_auc"] < 0.99
    assert summary["settings"]["match_strength"] == 2.0 and summary["history_field"] == "C3"
    _rows, weaker = _behaviour_rows(tmp_path, 20_000, 4, match_strength=0.3)
    # a weak sequence term leaves less for the history to add
    assert weaker["oracle_auc"] - weaker["blind_auc"] < summary["oracle_auc"] - summary["blind_auc"]


@pytest.mark.parametrize("model", ["din", "dien"])
def test_sequence_models_capture_most_of_the_gap_in_one_pass(tmp_path, model):
    rows, summary = _behaviour_rows(tmp_path, 30_000, 5)
    blind, oracle = summary["blind_auc"], summary["oracle_auc"]
    report, _ = evaluate_rows(rows, model, spec_options=FIELDS)
    gap = (report["auc"] - blind) / (oracle - blind)
    assert gap > 0.6, (model, report["auc"], blind, oracle)
    # the history is what carries it: the same model without a history field matches no category
    # (the item alone rarely repeats), and a linear model over the static fields gets nothing
    lr_report, _ = evaluate_rows(rows, "lr")
    assert (lr_report["auc"] - blind) / (oracle - blind) < 0.1


def test_encoded_histories_equal_the_raw_ones_featurized(tmp_path):
    rows, _summary = _behaviour_rows(tmp_path, 6_000, 7)
    spec = spec_for("din", FIELDS.infer([r.features for r in rows[:500]]))
    featurizer = Featurizer(spec)
    encoded = BehaviourHistory(spec.history_kind, spec.history_length, fields=spec.history_fields)
    encoded.attach_encoder(featurizer.history_rows)
    raw = BehaviourHistory(spec.history_kind, spec.history_length, fields=spec.history_fields)
    for start in range(0, len(rows), 300):
        if start == 3000:  # a worker resuming from a version: histories encoded when first read
            encoded = BehaviourHistory.from_state(orjson.loads(orjson.dumps(encoded.state())))
            encoded.attach_encoder(featurizer.history_rows)
        chunk = rows[start:start + 300]
        users, items, labels = [r.user_id for r in chunk], [r.item_id for r in chunk], [r.label for r in chunk]
        features = [r.features for r in chunk]
        fast = encoded.rows_before_learning(users, items, labels, features)
        slow = featurizer.build(users, items, features, labels, raw.before_learning(users, items, labels, features))
        assert torch.equal(torch.from_numpy(fast), slow.history)
        encoded.after(users, items, labels, features)
        raw.after(users, items, labels, features)
    # in stream order inside a batch: a user's click earlier in the batch is already in the history
    users, items, labels = ["new-user"] * 3, ["a", "b", "c"], [1, 1, 0]
    features = [{"C3": "x"}, {"C3": "y"}, {"C3": "z"}]
    assert raw.before_learning(users, items, labels, features) == [[], [["a", "x"]], [["a", "x"], ["b", "y"]]]


@pytest.mark.integration
def test_a_scorer_predicts_what_the_offline_path_predicts_for_the_same_history(stack, namespace, tmp_path):
    from streamrec.serving.scorer import Scorer
    from streamrec.versions.store import VersionStore

    rows, _summary = _behaviour_rows(tmp_path, 4_000, 8)
    settings = settings_for(namespace)
    replay_rows(stack, settings, rows, "b")
    running = start_trainer(stack, settings, model="din", spec_options=FIELDS, publish_every_examples=1000)
    try:
        running.wait()
    finally:
        running.stop()
    scorer = Scorer(stack.redis_url, namespace, "din", follow=False)
    try:
        scorer.refresh()
        store = VersionStore(scorer.client, namespace, "din")
        version = store.load(scorer.served.version)
        history = BehaviourHistory.from_state(orjson.loads(version.history))
        users = [r.user_id for r in rows[-40:]]
        entries = history.before(users, [""] * len(users))
        assert sum(1 for e in entries if e) > 10  # most of these users have clicked before
        events = [{"user_id": r.user_id, "item_id": r.item_id, "features": r.features,
                   "history": [{"item_id": item, "C3": c3} for item, c3 in e]}
                  for r, e in zip(rows[-40:], entries)]
        with learner_threads():
            served = scorer.predict(events).probabilities
            model = model_from_bytes(version.weights)
            featurizer = Featurizer(model.spec)
            offline = model.predict_proba(featurizer.build(users, [r.item_id for r in rows[-40:]],
                                                           [r.features for r in rows[-40:]], histories=entries))
        np.testing.assert_array_equal(served, offline)
        # and the history matters: without it the same events score differently
        bare = scorer.predict([{k: v for k, v in e.items() if k != "history"} for e in events]).probabilities
        assert not np.array_equal(bare, served)
    finally:
        scorer.close()


def test_generate_behaviour_from_the_command_line(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "b.tsv"
    done = subprocess.run([sys.executable, "-m", "streamrec", "generate", "--behaviour", "--rows", "3000",
                           "--match-strength", "1.5", "--categories", "12", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "b.tsv.oracle.json").read_text())
    assert summary["settings"]["match_strength"] == 1.5 and summary["settings"]["categories"] == 12
    assert summary["blind_auc"] < summary["oracle_auc"] and "history-blind" in done.stdout + done.stderr
    assert len(out.read_text().splitlines()) == 3000
    refused = subprocess.run([sys.executable, "-m", "streamrec", "generate", "--rows", "10", "--match-strength", "1",
                              "--out", str(tmp_path / "x.tsv")], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--match-strength" in refused.stderr and "--behaviour" in refused.stderr


def test_dien_reads_the_latest_clicks_with_its_grus_and_is_exact_when_histories_are_short(tmp_path):
    from streamrec.models import create_model

    rows, _summary = _behaviour_rows(tmp_path, 3_000, 9)
    # fixed hashing: every history item reads a seeded row at once (a fresh keyed table reads zeros)
    spec = spec_for("dien", SpecOptions(history_fields=("C3",), keyed=False).infer([r.features for r in rows[:500]]))
    featurizer = Featurizer(spec)
    window, whole = (create_model("dien", spec, settings={"recurrent_length": k}) for k in ("4", "0"))
    users, items = [r.user_id for r in rows[:64]], [r.item_id for r in rows[:64]]
    features, labels = [r.features for r in rows[:64]], [r.label for r in rows[:64]]
    short = [[[f"i{u}-{j}", f"c{j}"] for j in range(int(u[-1:], 16) % 5)] for u in users]  # 0 to 4 clicks
    batch = featurizer.build(users, items, features, labels, short)
    # no history is longer than the window: the GRUs read the same steps, the predictions are equal
    np.testing.assert_allclose(window.predict_proba(batch), whole.predict_proba(batch), rtol=1e-6)
    long = [[[f"i{u}-{j}", f"c{j}"] for j in range(12)] for u in users]
    batch = featurizer.build(users, items, features, labels, long)
    assert not np.allclose(window.predict_proba(batch), whole.predict_proba(batch))
    # the window is the latest clicks: changing the oldest ones moves only the whole-history GRUs
    # (the match term reads every click, so a click unlike the candidate's fields is changed)
    older = [[[f"other-{j}", f"d{j}"] if j < 4 else e for j, e in enumerate(h)] for h in long]
    changed = featurizer.build(users, items, features, labels, older)
    window.deep.match.weight.data.zero_()
    np.testing.assert_allclose(window.predict_proba(batch), window.predict_proba(changed), rtol=1e-6)
    window.learn(batch)  # the auxiliary loss reads the same window
    assert window.deep.latest is not None and window.deep.latest.shape == (64, 4)


def test_history_length_is_a_setting_of_new_sequence_models(tmp_path):
    rows, _summary = _behaviour_rows(tmp_path, 2_000, 10)
    report, model = evaluate_rows(rows, "din", spec_options=SpecOptions(history_fields=("C3",), history_length=7))
    assert model.spec.history_length == 7 and report["examples"] == 2_000
    _report, plain = evaluate_rows(rows, "wide_deep", spec_options=SpecOptions(history_length=7))
    assert plain.spec.history_length == 0  # a model that reads no history keeps none
