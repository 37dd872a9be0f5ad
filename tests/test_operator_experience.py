"""What an operator sees: idle trainers fall quiet, the README's topics-then-replay order works,
`models list` reads cleanly, and `promote` does not silently move the champion."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamrec.producers.generator import generate, write_stream
from streamrec.stream.prometheus import scrape
from tests.streams import cli_env, replay_rows, settings_for, start_trainer, wait_for

pytestmark = pytest.mark.integration


def test_an_idle_trainer_publishes_no_deltas_and_its_rate_falls_to_zero(stack, namespace, learnable_rows) -> None:
    rows = learnable_rows[:6000]  # a minute of event time: longer than the 30 s attribution window
    settings = settings_for(namespace)
    replay_rows(stack, settings, rows, "idle", final=False)
    running = start_trainer(stack, settings, model="lr", exit_at_end=False, metrics_port=0, delta_every_s=0.1,
                            batch_size=64)
    try:
        # the last attribution window stays open (no final watermark): wait for what can be trained
        wait_for(lambda: running.trainer.counters.examples > 0 and running.trainer.publisher.deltas_published > 0,
                 60, "the first deltas")
        wait_for(lambda: scrape(running.trainer.metrics.port).get("streamrec_examples_per_second", 1) == 0.0, 30,
                 "the rate to fall to zero", every_s=0.5)
        before = running.trainer.publisher.deltas_published
        time.sleep(1.5)  # fifteen delta periods with nothing new
        assert running.trainer.publisher.deltas_published == before
    finally:
        running.stop()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamrec", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_replay_uses_the_partition_count_of_topics_made_before(stack, namespace, tmp_path: Path) -> None:
    data = tmp_path / "small.tsv"
    write_stream(generate(500, seed=3), data, seed=3)
    env = cli_env(stack, namespace)
    assert _cli(env, "topics", "create", "--partitions", "4").returncode == 0
    report = tmp_path / "replay.json"
    replayed = _cli(env, "replay", str(data), "--format", "criteo", "--user-field", "C1", "--item-field", "C2",
                    "--report-json", str(report))
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(report.read_text())["impressions"] == 500


def test_served_model_age_counts_from_ingest_not_from_the_streams_own_clock(stack, namespace,
                                                                            learnable_rows) -> None:
    import redis

    from streamrec.models import create_model
    from streamrec.serving.scorer import Scorer
    from streamrec.stream.feature_spec import SpecOptions
    from streamrec.versions.meta import VersionMeta
    from streamrec.versions.store import VersionStore

    spec = SpecOptions().infer([r.features for r in learnable_rows[:100]])
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    # a replay of a years-old log: event time far behind the wall clock, learned five seconds ago
    store.publish(parent=None, meta=VersionMeta(examples_seen=1, event_time=1.0e9, ingested_at=time.time() - 5.0),
                  weights=create_model("lr", spec).to_bytes(), quality_state=b"", source_state=b"{}", keep=3)
    with Scorer(stack.redis_url, namespace, "lr", follow=False) as scorer:
        assert 5.0 <= scorer.model_age_seconds() < 60.0
        assert scorer.event_time_age_seconds() > 1e8


def test_a_trainers_versions_record_when_their_newest_example_was_learned(stack, namespace, learnable_rows) -> None:
    import redis

    from streamrec.versions.store import VersionStore

    rows = learnable_rows[:1500]
    settings = settings_for(namespace)
    replay_rows(stack, settings, rows, "age")
    before = time.time()
    report = start_trainer(stack, settings, model="lr").wait()
    meta = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr").meta(report["head_version"])
    assert meta.ingested_at is not None and before <= meta.ingested_at <= time.time()
