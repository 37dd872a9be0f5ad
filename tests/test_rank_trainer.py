"""A trainer run as ranks (``streamrec train --ranks N``): one model, every example once, versions
that resume on any rank count, and ranks killed at random instants losing and repeating nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from streamrec.consumers.example_queue import ExampleQueue
from streamrec.consumers.example_source import Example
from streamrec.consumers.joiner import Joiner
from streamrec.consumers.rank_trainer import merge_halves
from streamrec.consumers.source_shards import ranks_state, source_from_state
from streamrec.consumers.version_publisher import WorkerCut
from streamrec.consumers.worker_counters import Counters
from streamrec.stream.settings import load_settings
from streamrec.versions.store import VersionStore
from tests.streams import combine, expected_digest, head_examples, replay_rows, run_into_the_stream

PARTITIONS = 4  # so that 2 and 3 ranks each read a different share


# ---------------------------------------------------------------------------- without a stack


def _joiner_with(partitions: list[int], ready: int) -> Joiner:
    joiner = Joiner(60.0)
    for p in partitions:
        joiner.impression(p, {"event_id": f"i{p}", "event_time": 10.0 + p, "user_id": "u", "item_id": "x",
                              "features": {"f": "a"}})
    joiner._ready.extend(Example(f"r{k}", "u", "x", {"f": "b"}, 1, 1.0) for k in range(ready))
    joiner.counts.impressions += len(partitions) + ready
    return joiner


def test_a_version_of_ranks_is_dealt_to_any_number_of_readers_each_partition_once():
    first, second = _joiner_with([0, 2], ready=3), _joiner_with([1, 3], ready=2)
    state = json.loads(orjson.dumps(ranks_state([([0, 2], first.state()), ([1, 3], second.state())])))
    whole = source_from_state(state)
    assert sorted(whole._partitions) == [0, 1, 2, 3] and whole.ready == 5 and whole.open_impressions == 4
    assert whole.counts.impressions == first.counts.impressions + second.counts.impressions
    # three readers: each partition's open impressions go to its reader; the waiting examples and the
    # counts to the first alone, so each is trained and counted once
    readers = [source_from_state(state, [p for p in range(4) if p % 3 == r], lead=r == 0) for r in range(3)]
    assert [sorted(s._partitions) for s in readers] == [[0, 3], [1], [2]]
    assert [s.ready for s in readers] == [5, 0, 0] and [s.open_impressions for s in readers] == [2, 1, 1]
    assert sum(s.counts.impressions for s in readers) == whole.counts.impressions
    queue = ExampleQueue()
    queue.add(1, [Example("e", "u", "x", {"f": "a"}, 0, 1.0, 2.0)], final=True)
    dealt = source_from_state(ranks_state([([1], json.loads(orjson.dumps(queue.state())))]), [0], lead=False)
    assert dealt.ready == 0 and not dealt.finished([1]) and dealt.kind == ExampleQueue.kind


def test_the_halves_of_a_version_add_up():
    from streamrec.consumers.example_source import JoinCounts
    from streamrec.consumers.rank_trainer import _half

    def cut(rank: int, examples: int, digest: int, watermark: float | None) -> bytes:
        counters = Counters(examples=examples, positives=1, digest=digest)
        source = orjson.dumps(_joiner_with([rank], ready=1).state())
        return _half(rank, [rank], WorkerCut({("imp", rank): 10 + rank}, counters, JoinCounts(impressions=2), source,
                                             None, watermark, 5.0 + rank, 100.0 + rank))

    merged = merge_halves([cut(0, 7, (1 << 64) - 1, 3.0), cut(1, 5, 2, 4.0)])
    assert merged.counters.examples == 12 and merged.counters.positives == 2 and merged.counters.digest == 1
    assert merged.positions == {("imp", 0): 10, ("imp", 1): 11} and merged.join.impressions == 4
    assert merged.watermark == 3.0 and merged.event_time == 6.0 and merged.ingested_at == 101.0
    assert sorted(source_from_state(orjson.loads(merged.source_state))._partitions) == [0, 1]
    assert merge_halves([cut(0, 1, 0, None), cut(1, 1, 0, 2.0)]).watermark is None


def test_rank_zero_cuts_a_version_for_what_any_rank_learned():
    from streamrec.consumers.rank_trainer import RankPublisher
    from streamrec.consumers.trainer_exporter import TrainerExporter
    from streamrec.consumers.version_publisher import PublishOptions
    from streamrec.versions.quality_gate import GateOptions

    options = PublishOptions(100, 3600.0, 5, 0.0, 5.0, GateOptions(False, 0.02, 0.05), "w")
    publisher = RankPublisher(None, options, TrainerExporter("m", "w"), lambda _positions: None, rank=0)
    publisher.learned_at_cut = 1000.0  # what the resumed version held
    assert not publisher.due_for(1000.0) and not publisher.due_for(float("nan"))  # nothing new anywhere
    assert not publisher.due_for(1099.0)  # fewer than publish_every_examples, and not yet time
    assert publisher.due_for(1100.0)  # the other ranks learned them while rank 0 read nothing
    assert not publisher.unpublished


def test_ranks_refuse_what_they_do_not_do_yet_by_name(tmp_path):
    from click.testing import CliRunner

    from streamrec.cli import cli

    for flags, named in ((["--search"], "--search"), (["--model", "din"], "sequence model"),
                         (["--model", "lr"], "not an embedding model")):
        # refused before anything starts: there is no broker or Redis here to reach
        result = CliRunner().invoke(cli, ["train", "--ranks", "2", *flags], env={"STREAMREC_HOME": str(tmp_path)})
        assert result.exit_code != 0 and named in str(result.exception), (flags, result.exception)


# ---------------------------------------------------------------------------- on the stack


def _env(stack, namespace: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "TORCHELASTIC", "RANK"))}
    env.update({"STREAMREC_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "STREAMREC_REDIS_URL": stack.redis_url,
                "STREAMREC_NAMESPACE": namespace, "STREAMREC_PARTITIONS": str(PARTITIONS),
                "STREAMREC_HOME": str(tmp_path / "home"), "STREAMREC_RANK_TIMEOUT_S": "30"})
    return env


def _train(ranks: int | None, report: Path, *extra: str) -> list[str]:
    # with a count feature: its counts are sharded by value too, and resume with the rest
    return [sys.executable, "-m", "streamrec", "train", "--model", "wide_deep", "--no-search", "--count", "C3",
            "--delta-every-s", "0", "--batch-size", "256", "--metrics-port", "0",
            "--report-json", str(report), *(("--ranks", str(ranks)) if ranks else ()), *extra]


def _stop_when_settled(process: subprocess.Popen, store: VersionStore, least: int, timeout_s: float = 120) -> None:
    """SIGTERM ``process`` once its newest version holds at least ``least`` examples and stays put
    (the rest wait in the join for event time to pass), then wait for its clean exit."""
    deadline, last, since = time.monotonic() + timeout_s, -1, time.monotonic()
    while process.poll() is None and time.monotonic() < deadline:
        seen = head_examples(store)
        if seen != last:
            last, since = seen, time.monotonic()
        elif seen >= least and time.monotonic() - since > 1.0:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)


@pytest.mark.integration
def test_ranks_learn_every_example_once_and_resume_on_another_rank_count(stack, namespace, learnable_rows, tmp_path):
    # one log growing in event time: 2 ranks learn its first part, 3 ranks the next from their
    # version, one trainer (no ranks, FTRL per example) the next from theirs, and 2 ranks again
    # (FTRL per global batch from the same state) to the end
    parts = [(2, "a", learnable_rows[:3500]), (3, "b", learnable_rows[3500:7000]),
             (None, "c", learnable_rows[7000:10000]), (2, "d", learnable_rows[10000:])]
    settings = load_settings(namespace=namespace, partitions=PARTITIONS)
    env = _env(stack, namespace, tmp_path)
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "wide_deep")
    for ranks, run_id, part in parts:
        last = run_id == "d"
        replay_rows(stack, settings, part, run_id, final=last)
        report = tmp_path / f"report-{run_id}.json"
        command = _train(ranks, report, "--publish-every-s", "0.5", *(["--exit-at-end"] if last else []))
        with open(tmp_path / f"train-{run_id}.log", "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            if last:
                process.wait(timeout=240)
            else:  # a clean stop (SIGTERM) of every rank: one last version from all of them
                _stop_when_settled(process, store, head_examples(store) + 1)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0, (tmp_path / f"train-{run_id}.log").read_text(errors="replace")[-4000:]
        meta = store.meta(store.head())
        assert len(meta.offsets) == 2 * PARTITIONS  # every partition of both topics, whoever read it
        summary = json.loads(report.read_text())
        assert summary["examples"] == meta.examples_seen == meta.counters["examples"] > 0
        # the metrics are the whole model's: every rank's predictions, each example once
        assert meta.metrics["examples"] == meta.examples_seen
        # ranks write a shard each, one trainer one blob; either resumes the other
        assert meta.shards == (ranks or 0)
        if ranks:
            assert summary["ranks"] == ranks and summary["partitions"] == [0, ranks]  # rank 0's share
            # the gate judged the version on the whole global batches' evidence against live
            assert meta.gate is not None
            if run_id == "b":  # resumed: compared with the live version from its first steps
                assert meta.metrics["paired_version"] is not None and meta.metrics["paired_examples"] > 100
    # every example once, with its label, whichever rank count read it
    rows = learnable_rows
    assert meta.counters["examples"] == len(rows) and meta.join["orphan_clicks"] == 0
    assert f"{meta.counters['digest']:016x}" == combine(*(expected_digest(r, p) for _n, r, p in parts))
    # the count feature's tables, sharded by value and carried through every resume, counted each
    # example once: their counts add up to the examples, their clicks to the positives
    from streamrec.models import model_from_stored

    final = store.load(store.head())
    _values, counted, clicked = model_from_stored(final.weights, final.shards).seen.counted()
    assert int(counted.sum()) == len(rows) and int(clicked.sum()) == sum(r.label for r in rows)
    # the version is one whole model, whoever wrote it: a scorer serves its shards as one model,
    # answering what the version predicts when rebuilt from Redis alone
    from streamrec.serving.scorer import Scorer, predict_offline

    assert meta.shards == 2
    store.set_live(store.head(), pin=False)  # served, whatever the gate decided of it
    rows = learnable_rows[-50:]
    events = [{"user_id": r.user_id, "item_id": r.item_id, "features": r.features} for r in rows]
    with Scorer(stack.redis_url, namespace, "wide_deep", poll_s=0.1) as scorer:
        answer = scorer.predict(events)
    assert answer.served.version == store.head()
    expected = predict_offline(store, answer.served, [r.user_id for r in rows], [r.item_id for r in rows],
                               [r.features for r in rows])
    assert len(set(expected.round(6))) > 10  # a learned model, not a constant
    np.testing.assert_array_equal(answer.probabilities, expected)


@pytest.mark.integration
def test_a_scorer_follows_the_deltas_every_rank_writes(stack, namespace, learnable_rows, tmp_path):
    """Deltas on ranks: at one step every rank stages its shard, rank 0 announces the delta once
    all are in, and a scorer applying them answers exactly what the version and its deltas,
    rebuilt from Redis alone, predict."""
    import threading

    from streamrec.serving.scorer import Scorer, predict_offline

    settings = load_settings(namespace=namespace, partitions=PARTITIONS)
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "wide_deep")
    report = tmp_path / "report.json"
    command = [*_train(2, report, "--exit-at-end", "--no-gate", "--publish-every-examples", "1000",
                       "--keep-versions", "100")]  # the version served stays, to be rebuilt at the end
    command[command.index("--delta-every-s") + 1] = "0.3"
    probe = learnable_rows[-50:]
    events = [{"user_id": r.user_id, "item_id": r.item_id, "features": r.features} for r in probe]
    rows = learnable_rows[:9000]
    with open(tmp_path / "train.log", "wb") as log:
        process = subprocess.Popen(command, env=_env(stack, namespace, tmp_path), stdout=subprocess.DEVNULL, stderr=log)
    try:
        # the ranks are up and learning (a first version) before the rest of the stream flows,
        # paced, so that they publish deltas while it does
        replay_rows(stack, settings, rows[:5000], "a", final=False)  # its first 20 s of event time pass the join
        deadline = time.monotonic() + 180
        while store.head() is None:
            assert time.monotonic() < deadline and process.poll() is None, "no first version"
            time.sleep(0.1)
        replayed = threading.Thread(target=replay_rows, args=(stack, settings, rows[5000:], "b"),
                                    kwargs={"final": True, "rate": 800}, daemon=True)
        replayed.start()
        with Scorer(stack.redis_url, namespace, "wide_deep", poll_s=0.1) as scorer:
            while scorer.served is None or scorer.served.deltas_applied == 0:
                assert time.monotonic() < deadline and process.poll() is None, "no delta was applied"
                time.sleep(0.05)
            answer = scorer.predict(events)
        replayed.join(timeout=120)
        process.wait(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, (tmp_path / "train.log").read_text(errors="replace")[-4000:]
    served = answer.served
    assert served.deltas_applied > 0 and store.meta(served.version).shards == 2
    record = store.load_delta(served.lineage, served.delta_seq)
    assert record is not None and record.meta.shards == 2 and len(record.shards) == 2
    expected = predict_offline(store, served, [r.user_id for r in probe], [r.item_id for r in probe],
                               [r.features for r in probe])
    np.testing.assert_array_equal(answer.probabilities, expected)
    summary = json.loads(report.read_text())
    assert summary["examples"] == store.meta(store.head()).examples_seen == len(rows)  # each once


def _rank_pids(launcher: int) -> list[int]:
    """The rank processes torch's agent (the ``train --ranks`` process) runs now."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if b"streamrec" in args and b"train" in args:
            pids.append(int(entry.name))
    return pids


@pytest.mark.integration
def test_a_rank_killed_at_random_instants_loses_nothing_and_repeats_nothing(stack, namespace, learnable_rows,
                                                                           tmp_path):
    rows = learnable_rows[:8000]
    settings = load_settings(namespace=namespace, partitions=PARTITIONS)
    produced = replay_rows(stack, settings, rows, "k")
    # the first fault is a rank that hangs (SIGSTOP): found by the ranks' timeout, not by a death
    env = {**_env(stack, namespace, tmp_path), "STREAMREC_RANK_TIMEOUT_S": "10"}
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "wide_deep")
    report = tmp_path / "report.json"
    command = _train(2, report, "--exit-at-end", "--batch-size", "64", "--publish-every-examples", "500", "--publish-every-s", "0.2",
                     "--max-restarts", "10")
    rng = random.Random(20261201)

    kills: list[int] = []
    with open(tmp_path / "ranks.log", "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    launcher = process.pid
    try:
        while len(kills) < 3 and process.poll() is None:
            run_into_the_stream(process, store, len(rows), rng, (0.1, 0.3), 0.1)
            pids = _rank_pids(launcher)
            if process.poll() is not None or len(pids) < 2 or head_examples(store) >= len(rows):
                break
            os.kill(rng.choice(pids), signal.SIGKILL if kills else signal.SIGSTOP)
            kills.append(head_examples(store))
            # the agent tears the group down and starts a new one
            deadline = time.monotonic() + 120
            while process.poll() is None and set(_rank_pids(launcher)) & set(pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not set(_rank_pids(launcher)) & set(pids), f"the group was not restarted after fault {len(kills)}"
        returncode = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log_text = (tmp_path / "ranks.log").read_text(errors="replace")
    assert returncode == 0, log_text[-4000:]
    print("examples in the head version at each kill:", kills)
    assert len(kills) >= 2 and any(0 < n < len(rows) for n in kills), kills
    meta = store.meta(store.head())
    assert meta.counters["examples"] == meta.examples_seen == len(rows)
    assert meta.counters["positives"] == sum(r.label for r in rows) == produced.clicks
    assert f"{meta.counters['digest']:016x}" == expected_digest("k", rows)
    summary = json.loads(report.read_text())
    assert summary["examples"] == len(rows) and summary["examples_this_run"] < len(rows)  # a restart resumed
