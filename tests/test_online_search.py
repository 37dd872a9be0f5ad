"""The online search over settings, crosses and count features (models/online_search.py): its
candidates come from the stream's statistics, a widened or retuned model keeps its state exactly,
a switched-off input changes nothing, and on a stream with a planted interaction the search finds
it and beats the defaults it started from."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from streamrec.evaluation import evaluate_rows
from streamrec.models import create_model, spec_for
from streamrec.models.online_search import (
    Member,
    Move,
    OnlineSearch,
    SearchSettings,
    configuration_of,
    learn_in_steps,
    propose,
    retune,
    widen,
)
from streamrec.producers.readers import Row
from streamrec.stream.errors import ConfigError
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer


def _interaction_rows(n: int, seed: int) -> list[Row]:
    """Clicks driven by an interaction of A and B (neither tells alone) and by a many-valued id
    with its own click rate; C is noise."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.integers(0, 6, n), rng.integers(0, 6, n), rng.integers(0, 6, n)
    ids = rng.zipf(1.3, n) % 3000
    id_rate = np.random.default_rng(99).normal(0, 1.2, 3000)
    logit = -1.0 + 2.2 * np.where((a + b) % 3 == 0, 1.0, -1.0) + id_rate[ids]
    labels = rng.random(n) < 1 / (1 + np.exp(-logit))
    return [Row(int(y), f"u{i % 500}", f"id{k}", float(i), {"A": f"a{x}", "B": f"b{w}", "C": f"c{v}"})
            for i, (y, k, x, w, v) in enumerate(zip(labels, ids, a, b, c))]


def _batches(spec, rows, size=512):
    featurizer = Featurizer(spec)
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        yield featurizer.build([r.user_id for r in chunk], [r.item_id for r in chunk], [r.features for r in chunk],
                               [r.label for r in chunk])


def test_candidates_are_the_planted_interaction_and_the_many_valued_id():
    rows = _interaction_rows(20_000, 1)
    spec = SpecOptions().infer([r.features for r in rows[:1000]])
    batch = next(_batches(spec, rows, size=20_000))
    found = propose(spec, batch.ids.numpy(), batch.labels.numpy(), SearchSettings())
    assert found.crosses[0] == ("A", "B")  # the one pair that tells more than its fields added
    assert "item_id" in found.counts and not {"A", "B", "C"} & set(found.counts)  # few values: weights suffice


@pytest.mark.parametrize("name", ["lr", "wide_deep"])
def test_a_widened_model_predicts_what_it_did_and_a_retuned_copy_leaves_the_original_alone(name):
    rows = _interaction_rows(6_000, 2)
    spec = spec_for(name, SpecOptions(crosses=(("A", "C"),), counts=("user_id",)).infer([r.features for r in rows]))
    model = create_model(name, spec)
    batches = list(_batches(spec, rows))
    for batch in batches[:-1]:
        model.learn(batch)
    wide_spec = spec_for(name, SpecOptions(crosses=(("A", "C"), ("A", "B")), counts=("user_id", "A:B", "item_id"))
                         .infer([r.features for r in rows]))
    wider = widen(model, wide_spec)
    assert wider.config.ftrl.ignored == ("A:B", "count:A:B", "count:item_id")
    last = Featurizer(wide_spec).recross(batches[-1])
    # the new crosses and counts are switched off: the same coordinates, the same predictions
    np.testing.assert_allclose(wider.predict_proba(last), model.predict_proba(batches[-1]), rtol=1e-6)
    faster = retune(wider, {"ftrl.alpha": 0.5, "ftrl.ignored": ()})
    assert faster.config.ftrl.alpha == 0.5 and wider.config.ftrl.alpha == model.config.ftrl.alpha
    # FTRL's settings change how it learns from now on, not the weights it has: the same predictions
    steadier = retune(wider, {"ftrl.alpha": 0.5, "ftrl.l1": 0.1, "ftrl.l2": 3.0})
    np.testing.assert_allclose(steadier.predict_proba(last), wider.predict_proba(last), rtol=1e-9)
    before = wider.predict_proba(last)
    faster.learn(last)
    np.testing.assert_array_equal(wider.predict_proba(last), before)  # the copy learned, not the original
    with pytest.raises(ConfigError, match="ftrl.ignored: X:Y"):
        retune(model, {"ftrl.ignored": ("X:Y",)})


def test_the_search_finds_the_interaction_and_beats_its_defaults():
    rows = _interaction_rows(60_000, 3)
    plain, _ = evaluate_rows(rows, "lr")
    searched, model = evaluate_rows(rows, "lr", search=SearchSettings(sample=5_000))
    report = searched["search"]
    assert any(p["move"].startswith("+crosses") or p["move"] == "+cross A:B" for p in report["promotions"])
    assert "A:B" in report["configuration"]["crosses"]
    assert searched["auc"] > plain["auc"] + 0.02, (searched["auc"], plain["auc"])
    assert 1.0 < report["compute_multiple"] <= SearchSettings().live
    # the champion is the model returned: it reads the cross it adopted
    assert "A:B" not in model.config.ftrl.ignored and ("A", "B") in model.spec.crosses
    json.dumps(report)  # the report goes into --report-json as it is
    # its count tables hold exactly the stream's counts, as if counted from the first example by
    # one model: filled from the sample when the candidates came, then counted once per batch
    counted = SpecOptions(crosses=model.spec.crosses, counts=model.spec.counts)
    _report, alone = evaluate_rows(rows, "lr", spec_options=counted)
    assert model.spec.counts
    for searched_counts, alone_counts in zip(model.seen.counted(), alone.seen.counted()):
        np.testing.assert_array_equal(searched_counts, alone_counts)


def test_a_caught_up_challenger_is_the_model_its_configuration_makes_from_the_first_example():
    rows = _interaction_rows(4_000, 7)
    spec = spec_for("lr", SpecOptions().infer([r.features for r in rows[:1000]]))
    never = SearchSettings(sample=2_000, judge_after=10**9, give_up_after=10**9, budget=1e9)  # nobody judged here
    search = OnlineSearch(create_model("lr", spec), never)
    batches = list(_batches(spec, rows))
    for count, batch in enumerate(batches, 1):
        search.learn(batch)
        if search.challengers:
            break
    first, faster = search.challengers
    assert first.move.name == "+crosses+counts" and faster.move.name == "+crosses+counts, ftrl.alpha x3"
    assert first.caught_up == first.seen == search.examples == count * 512
    assert faster.model.config.ftrl.alpha == 3 * search.champion.config.ftrl.alpha
    # the same as a model built with that configuration, learning the same batches from the first
    alone = retune(create_model("lr", search.champion.spec), first.move.changes)
    featurizer = Featurizer(search.champion.spec)
    for batch in batches[:count]:
        alone.learn(featurizer.recross(batch))
    following = featurizer.recross(batches[count])
    np.testing.assert_allclose(first.model.predict_proba(following), alone.predict_proba(following), rtol=1e-9)
    assert first.model.seen is search.champion.seen  # and it reads the shared count tables from now on
    for alone_counts, shared_counts in zip(alone.seen.counted(), search.champion.seen.counted()):
        np.testing.assert_array_equal(alone_counts, shared_counts)


def test_the_budget_bounds_the_search_cpu_time():
    rows = _interaction_rows(20_000, 8)
    spec = spec_for("lr", SpecOptions().infer([r.features for r in rows[:1000]]))
    # a budget of one model: no warm challengers at all; the candidates' own catch-up still runs
    search = OnlineSearch(create_model("lr", spec), SearchSettings(sample=2_000, judge_after=1_000, budget=1.0))
    for batch in _batches(spec, rows):
        search.learn(batch)
        assert all(m.caught_up for m in search.challengers) and len(search.challengers) <= 1
    report = search.report()
    assert report["compute_multiple"] > 1.0 and report["cpu_multiple"] > report["learning_multiple"] > 1.0
    assert all(p["caught_up"] for p in report["promotions"] + report["dropped"])
    with pytest.raises(ConfigError, match="search.budget"):
        SearchSettings(budget=0.5)


def test_a_sibling_caught_up_with_one_more_change_challenges_the_promoted_one_on_paired_evidence():
    from streamrec.models.online_search import _against

    labels = np.array([1.0, 0.0, 1.0, 0.0])
    switched = Member(Move("+crosses", {"ftrl.ignored": ()}), model=None, predictions=[])
    sibling = Member(Move("+crosses, ftrl.alpha x3", {"ftrl.ignored": (), "ftrl.alpha": 0.15}), model=None,
                     predictions=[])
    other = Member(Move("ftrl.alpha x3", {"ftrl.alpha": 0.15}), model=None)
    champion = np.full(4, 0.5)
    switched.record(np.array([0.7, 0.3, 0.6, 0.4]), champion, labels)
    sibling.record(np.array([0.8, 0.2, 0.7, 0.3]), champion, labels)
    again = _against(sibling, switched)
    assert again.move == Move("ftrl.alpha x3", {"ftrl.alpha": 0.15}) and again.seen == 4
    assert again.mean < 0 and again.z > 0  # better than the promoted one on the same four examples
    assert _against(other, switched) is None and _against(switched, switched) is None


def test_a_round_catches_up_both_variants_although_challengers_ran_up_to_the_budget():
    rows = _interaction_rows(9_000, 8)
    spec = spec_for("lr", SpecOptions().infer([r.features for r in rows[:1000]]))
    search = OnlineSearch(create_model("lr", spec), SearchSettings(sample=2_000, judge_after=10**9,
                                                                   give_up_after=10**9))
    at_rounds = []
    for batch in _batches(spec, rows):
        before = search._rounds_left
        search.learn(batch)
        if search._rounds_left < before:
            at_rounds.append([m.move.name for m in search.challengers if m.caught_up])
    # the second round comes after challengers learned beside the champion all along (the multiple
    # is at the budget then): its catch-up overdraws it and is paid back before the next round
    assert len(at_rounds) == 2 and all(len(names) == 2 for names in at_rounds), at_rounds
    assert any(", ftrl.alpha" in name for name in at_rounds[1])
    assert search.compute_multiple > SearchSettings().budget  # overdrawn now ...
    assert not [m for m in search.challengers if not m.caught_up]  # ... so no warm challenger starts


def _fixed_member(name: str, changes: dict, model, diffs: np.ndarray, caught_up: int = 0) -> Member:
    member = Member(Move(name, changes), model, caught_up=caught_up, predictions=[] if caught_up else None)
    labels = np.ones(len(diffs))
    champion = np.full(len(diffs), 0.5)
    member.record(champion * np.exp(-diffs), champion, labels)  # its logloss: the champion's + diffs
    return member


def test_a_challenger_ahead_keeps_its_place_past_give_up_while_no_other_change_waits():
    spec = spec_for("lr", SpecOptions().infer([r.features for r in _interaction_rows(500, 1)]))
    settings = SearchSettings(judge_after=100, give_up_after=1_000)
    search = OnlineSearch(create_model("lr", spec), settings)
    search.examples = 5_000
    rng = np.random.default_rng(0)
    ahead = _fixed_member("ftrl.alpha x3", {"ftrl.alpha": 0.15}, None, rng.normal(-0.001, 0.1, 1_200))
    assert 0 < ahead.z < settings.z  # better, not yet by enough
    search.challengers = [ahead]
    search._retry_at = {m.name: 10**9 for m in search.moves() if m.name != ahead.move.name}  # nothing else may start
    search._judge()
    assert search.challengers == [ahead] and not search.dropped
    search._retry_at = {}  # another change waits for the slot: the overdue one makes room
    ahead.looks = 0
    search._judge()
    assert search.challengers == [] and search.dropped[0]["move"] == "ftrl.alpha x3"


def test_of_two_caught_up_winners_the_one_with_fewer_changes_is_promoted_and_the_other_challenges_it():
    spec = spec_for("lr", SpecOptions().infer([r.features for r in _interaction_rows(500, 1)]))
    search = OnlineSearch(create_model("lr", spec), SearchSettings(judge_after=100))
    search.examples = 3_000
    plain, faster = object(), object()
    rng = np.random.default_rng(1)
    gain = np.clip(rng.normal(-0.05, 0.3, 3_000), -0.6, 1.0)
    switched = _fixed_member("+crosses", {"ftrl.ignored": ()}, plain, gain, caught_up=3_000)
    sibling = _fixed_member("+crosses, ftrl.alpha x3", {"ftrl.ignored": (), "ftrl.alpha": 0.15}, faster,
                            gain - 0.02 + rng.normal(0, 0.02, 3_000), caught_up=3_000)
    assert sibling.z > switched.z > SearchSettings().z  # the sibling is ahead of the old champion by more
    search.challengers = [switched, sibling]
    search._judge()
    assert search.champion is plain and search.adopted == ["+crosses"]
    (left,) = search.challengers
    assert left.model is faster and left.move.name == "ftrl.alpha x3" and left.seen == 3_000


def test_a_member_learning_a_batch_in_steps_is_the_model_learning_smaller_batches():
    rows = _interaction_rows(2_048, 3)
    spec = spec_for("wide_deep", SpecOptions().infer([r.features for r in rows[:1000]]))
    stepped, small = create_model("wide_deep", spec, seed=1), create_model("wide_deep", spec, seed=1)
    predicted = [learn_in_steps(stepped, batch, 4) for batch in _batches(spec, rows, size=512)]
    expected = [small.learn(batch) for batch in _batches(spec, rows, size=128)]
    np.testing.assert_allclose(np.concatenate(predicted), np.concatenate(expected), rtol=1e-6)
    following = next(_batches(spec, _interaction_rows(256, 4)))
    np.testing.assert_allclose(stepped.predict_proba(following), small.predict_proba(following), rtol=1e-6)


def test_the_batch_is_searched_for_networks_and_a_promoted_one_is_kept_in_the_state():
    from streamrec.models.online_search import STEPS

    rows = _interaction_rows(500, 1)
    for name, offered in (("lr", False), ("wide_deep", True)):
        spec = spec_for(name, SpecOptions().infer([r.features for r in rows]))
        search = OnlineSearch(create_model(name, spec))
        assert ("batch /4" in [m.name for m in search.moves()]) is offered
    smaller = next(m for m in search.moves() if m.name == "batch /4")
    member = _fixed_member("batch /4", smaller.changes, retune(search.champion, smaller.changes),
                           np.clip(np.random.default_rng(2).normal(-0.05, 0.3, 3_000), -0.6, 1.0))
    member.steps = smaller.changes[STEPS]
    search.examples, search.challengers = 3_000, [member]
    search._judge()
    assert search.champion is member.model and search.steps == 4
    assert search.configuration()["steps_per_batch"] == 4
    assert "batch x4" in [m.name for m in search.moves()]
    resumed = OnlineSearch.resumed(search.champion, SearchSettings(), json.loads(json.dumps(search.state())))
    assert resumed.steps == 4


def _changing_rows() -> list[Row]:
    """12,000 rows whose clicks follow A and B, then 18,000 whose clicks follow A and C."""
    early, late = _interaction_rows(12_000, 9), _interaction_rows(18_000, 10)
    return early + [Row(r.label, r.user_id, r.item_id, r.event_time,
                        {"A": r.features["B"].replace("b", "a"), "B": r.features["C"].replace("c", "b"),
                         "C": r.features["A"].replace("a", "c")}) for r in late]


def test_an_interaction_that_appears_after_the_rounds_is_proposed_and_adopted():
    rows = _changing_rows()  # the rounds (at 1,000 and 4,000) see none of A x C
    spec = spec_for("lr", SpecOptions().infer([r.features for r in rows[:1000]]))
    settings = SearchSettings(sample=1_000, rounds=2, later_every=6_000, judge_after=1_000)
    search = OnlineSearch(create_model("lr", spec), settings)
    for batch in _batches(spec, rows):
        search.learn(batch)
    report = search.report()
    assert "A:B" in report["candidates"] and "A:C" in report["candidates"], report["candidates"]
    later = [p for p in report["promotions"] if p["at"] > 12_000 and "A:C" in p["move"]]
    assert later and "A:C" in report["configuration"]["crosses"] + report["configuration"]["counts"], report
    never = OnlineSearch(create_model("lr", spec), dataclasses.replace(settings, later_every=0))
    for batch in _batches(spec, rows):
        never.learn(batch)
    assert "A:C" not in never.report()["candidates"]
    with pytest.raises(ConfigError, match="search.later_every"):
        SearchSettings(later_every=-1)


def test_a_change_of_the_stream_is_seen_and_brings_the_next_proposal_forward():
    rows = _changing_rows()
    spec = spec_for("lr", SpecOptions().infer([r.features for r in rows[:1000]]))
    # proposals after the rounds only every million examples: only the change can bring one
    settings = SearchSettings(sample=1_000, rounds=2, later_every=10**6, judge_after=1_000)
    search = OnlineSearch(create_model("lr", spec), settings)
    for batch in _batches(spec, rows):
        search.learn(batch)
    assert len(search.changes) == 1 and 12_000 < search.changes[0] <= 14_500, search.changes
    assert "A:C" in search.report()["candidates"]
    assert any("A:C" in p["move"] for p in search.promotions if p["at"] > search.changes[0])
    assert OnlineSearch.resumed(search.champion, settings, json.loads(json.dumps(search.state()))).changes \
        == search.changes
    steady = OnlineSearch(create_model("lr", spec), settings)  # the same stream without the change
    for batch in _batches(spec, _interaction_rows(30_000, 9)):
        steady.learn(batch)
    assert steady.changes == []


def test_a_challenger_that_is_worse_is_dropped_and_the_champion_predicts():
    rows = _interaction_rows(30_000, 4)
    spec = spec_for("lr", SpecOptions().infer([r.features for r in rows[:1000]]))
    search = OnlineSearch(create_model("lr", spec), SearchSettings(sample=2_000, judge_after=1_000))
    for batch in _batches(spec, rows):
        p = search.learn(batch)
        assert p.shape == (len(batch),)
    report = search.report()
    assert report["promotions"] or report["dropped"]
    for dropped in report["dropped"]:
        assert dropped["z"] <= -SearchSettings().z \
            or dropped["examples"] - dropped["caught_up"] >= SearchSettings().give_up_after
        # tried again only once the stream has doubled at least
        assert search.state()["retry_at"][dropped["move"]] >= 2 * dropped["at"]
    assert len(search.challengers) <= SearchSettings().live - 1
    with pytest.raises(ConfigError, match="search.give_up_after"):
        SearchSettings(judge_after=10, give_up_after=5)


def test_evaluate_searches_by_default_and_no_search_pins_the_configuration(tmp_path):
    from click.testing import CliRunner

    from streamrec.cli import cli

    rows = _interaction_rows(14_000, 5)
    data = tmp_path / "s.jsonl"
    data.write_text("".join(json.dumps({"click": r.label, "user": r.user_id, "item": r.item_id, **r.features}) + "\n"
                            for r in rows))
    common = ["evaluate", str(data), "--format", "jsonl", "--columns", "label=click,user=user,item=item",
              "--model", "lr"]
    searched = CliRunner().invoke(cli, [*common, "--report-json", str(tmp_path / "a.json")])
    assert searched.exit_code == 0, searched.output
    assert "search:" in searched.output and "pin it with --no-search" in searched.output
    assert "search" in json.loads((tmp_path / "a.json").read_text())
    pinned = CliRunner().invoke(cli, [*common, "--no-search", "--report-json", str(tmp_path / "b.json")])
    assert pinned.exit_code == 0, pinned.output
    assert "search" not in json.loads((tmp_path / "b.json").read_text())


@pytest.mark.integration
def test_a_trainer_searches_publishes_its_champion_and_a_resumed_one_goes_on(stack, namespace):
    from streamrec.models import model_from_bytes
    from streamrec.models.base import read_metadata
    from streamrec.versions.store import VersionStore
    from tests.streams import replay_rows, settings_for, start_trainer

    rows = _interaction_rows(16_000, 6)
    settings = settings_for(namespace, search_sample=2_000)
    replay_rows(stack, settings, rows[:12_000], "s")
    running = start_trainer(stack, settings, model="lr", publish_every_examples=3_000)
    try:
        first = running.wait()
    finally:
        running.stop()
    assert first["search"]["promotions"], first["search"]  # the planted interaction wins
    import redis

    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    version = store.load(store.head())
    state = json.loads(read_metadata(version.weights)["search"])
    champion = model_from_bytes(version.weights)
    # the version is the champion: its configuration is the one the search chose, the planted pair in it
    chosen = {**configuration_of(champion.spec, champion.config), "steps_per_batch": state["steps"]}
    assert chosen == first["search"]["configuration"] and ("A:B" in chosen["crosses"] or "A:B" in chosen["counts"])
    assert state["adopted"] == first["search"]["adopted"]
    shown = subprocess.run([sys.executable, "-m", "streamrec", "models", "--model", "lr", "show", str(store.head())],
                           env={**os.environ, "STREAMREC_REDIS_URL": stack.redis_url, "STREAMREC_NAMESPACE": namespace},
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    shown_json = json.loads(shown.stdout)
    assert shown_json["configuration"] == chosen and shown_json["search"]["adopted"] == state["adopted"]
    # a worker started again resumes the champion and the search's state, and goes on
    replay_rows(stack, settings, rows[12_000:], "s2")
    again = start_trainer(stack, settings, model="lr", publish_every_examples=3_000)
    try:
        report = again.wait()
    finally:
        again.stop()
    assert report["examples"] == 16_000
    assert report["search"]["examples"] > state["examples"] and report["search"]["adopted"][:len(state["adopted"])] \
        == state["adopted"]


def test_the_trainer_passes_its_search_settings_and_a_bad_one_is_named(monkeypatch):
    from streamrec.consumers.trainer import TrainerOptions
    from streamrec.stream.settings import load_settings

    monkeypatch.setenv("STREAMREC_SEARCH_LATER_EVERY", "24000")
    monkeypatch.setenv("STREAMREC_SEARCH_CHANGE_Z", "0")
    given = TrainerOptions.from_settings(load_settings()).search_settings()
    settings = SearchSettings(**given)
    assert settings.later_every == 24_000 and settings.change_z == 0.0
    monkeypatch.setenv("STREAMREC_SEARCH_CHANGE_Z", "-1")
    with pytest.raises(ConfigError, match="search_change_z"):
        load_settings()
