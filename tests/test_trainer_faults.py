"""A trainer killed with SIGKILL at random moments loses no example and trains none twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest
import redis

from streamrec.versions.store import VersionStore
from tests.streams import (
    PARTITIONS,
    expected_digest,
    head_examples,
    replay_rows,
    run_into_the_stream,
    settings_for,
)

pytestmark = pytest.mark.integration


def test_sigkill_at_random_moments_loses_nothing_and_repeats_nothing(stack, namespace, learnable_rows, tmp_path):
    rows = learnable_rows
    settings = settings_for(namespace)
    produced = replay_rows(stack, settings, rows, "r")
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({"STREAMREC_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "STREAMREC_REDIS_URL": stack.redis_url,
                "STREAMREC_NAMESPACE": namespace, "STREAMREC_PARTITIONS": str(PARTITIONS),
                "STREAMREC_HOME": str(tmp_path / "home"),
                # a restarted trainer waits for its killed predecessor's session to lapse
                "STREAMREC_CONSUMER_SESSION_TIMEOUT_MS": "2000"})
    # Small batches, small tables and frequent versions spread the run over seconds and put many
    # publish/commit windows in reach of a random kill. Keyed tables under a row budget and a ttl,
    # so kills also land between admissions and evictions, which a resumed worker must continue.
    command = [sys.executable, "-m", "streamrec", "train", "--model", "lr", "--exit-at-end", "--batch-size", "32",
               "--tables", "keyed", "--set", "tables.max_rows=2048", "--set", "tables.ttl=3000",
               "--publish-every-examples", "400", "--publish-every-s", "0.1",
               "--metrics-port", "0", "--report-json", str(tmp_path / "report.json")]
    rng = random.Random(20261124)
    # Kill points: random places in the stream, then a random extra delay, so kills land while
    # training, while publishing, and between a publish and its offset commit.
    kills = 5
    progress_at_kill = []

    for attempt in range(kills + 1):
        log_path = tmp_path / f"trainer-{attempt}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            if attempt < kills:
                run_into_the_stream(process, store, len(rows), rng, (0.05, 0.25), 0.05)
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    progress_at_kill.append(head_examples(store))
                    continue
            returncode = process.wait(timeout=180)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert returncode == 0, log_path.read_text()[-3000:]
        break
    print("examples in the head version at each kill:", progress_at_kill)
    # the kills must have hit runs in progress, not only start-up or the very end
    in_progress = {n for n in progress_at_kill if 0 < n < len(rows)}
    assert len(progress_at_kill) == kills and len(in_progress) >= 3, progress_at_kill
    meta = store.meta(store.head())
    assert meta.counters["examples"] == meta.examples_seen == len(rows)
    assert meta.counters["positives"] == sum(r.label for r in rows) == produced.clicks
    assert f"{meta.counters['digest']:016x}" == expected_digest("r", rows)
    assert meta.join["late_clicks"] == meta.join["orphan_clicks"] == meta.join["duplicate_clicks"] == 0
    from streamrec.models import model_from_bytes

    tables = model_from_bytes(store.load(store.head()).weights).keyed_tables()
    assert tables["wide"].evicted > 0 and tables["wide"].live_rows <= 2048 and tables["wide"].clock == len(rows)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["examples"] == len(rows) and report["examples_this_run"] < len(rows)  # it resumed
