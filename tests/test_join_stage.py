"""The join stage: join workers in one consumer group, killed at random, write every example once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest
import redis
from prometheus_client import generate_latest

from streamrec.consumers import example_messages
from streamrec.consumers.example_queue import ExampleQueue
from streamrec.consumers.join_worker import Shard, ShardCounters, state_finished
from streamrec.consumers.joiner import Example, Joiner
from streamrec.stream import events
from streamrec.stream.kafka_client import create_topics, make_consumer
from streamrec.stream.prometheus import parse
from streamrec.stream.redis_keys import join_checkpoint as checkpoint_key
from streamrec.stream.worker_registry import workers as registered
from tests.streams import (
    PARTITIONS,
    cli_env,
    expected_digest,
    replay_rows,
    settings_for,
    start_trainer,
    wait_for,
)


def _examples(n: int, start: int = 0) -> list[Example]:
    return [Example(f"i{k}", f"u{k % 7}", f"it{k % 5}", {"C3": f"c{k % 3}", "I1": k}, k % 2, float(k), k + 30.0)
            for k in range(start, start + n)]


def test_example_messages_round_trip_and_name_what_is_wrong():
    examples = _examples(5)
    partition, decoded, final = example_messages.decode(example_messages.encode(3, examples))
    assert (partition, final) == (3, False) and decoded == examples
    assert example_messages.decode(example_messages.encode_final(1)) == (1, [], True)
    for raw, reason in ((b"{", "not JSON"), (b'{"type": "impression"}', "not an examples message"),
                        (b'{"type": "examples", "schema": 9}', "unsupported schema"),
                        (b'{"type": "examples", "schema": 1, "partition": 0, "examples": [[1]]}', "an example must")):
        with pytest.raises(ValueError, match=reason):
            example_messages.decode(raw)


def test_example_queue_keeps_unread_examples_and_ended_partitions_across_a_restart():
    queue = ExampleQueue()
    queue.add(0, _examples(4), final=False)
    queue.add(1, _examples(2, start=10), final=True)
    assert queue.take(3) == _examples(3)
    assert not queue.finished(range(2)) and queue.watermark_time() == 33.0  # partition 0's newest label
    restored = ExampleQueue.from_state(orjson.loads(orjson.dumps(queue.state())))
    assert restored.take() == _examples(1, start=3) + _examples(2, start=10)
    restored.add(0, [], final=True)
    assert restored.finished(range(2)) and restored.watermark_time() == float("inf")


def test_a_partition_is_finished_only_when_its_owner_has_read_to_the_end():
    """A predecessor's final marker read back from <ns>.examples does not finish the partition:
    the new owner must still read the events after the checkpoint and count what they make."""
    shard = Shard(3, 1, Joiner(30.0), ShardCounters(), {}, 0, final_sent=True)
    assert not shard.finished
    shard.joiner.offer_message(3, "impressions", events.encode(events.watermark(100.0, final=True)))
    assert not shard.finished  # one topic only
    for kind in ("impressions", "clicks"):
        shard.joiner.offer_message(3, kind, events.encode(events.watermark(100.0, final=True)))
    assert shard.finished
    assert state_finished({"final_sent": True}) and not state_finished({"final_sent": True, "finished": False})


@pytest.mark.integration
def test_join_workers_killed_at_random_write_every_example_exactly_once(stack, namespace, learnable_rows, tmp_path):
    """Two join workers share the partitions. During a paced replay both are killed with SIGKILL while
    a partition has examples written past its checkpoint, then one at a time at random moments, and
    each is restarted. A trainer reading <ns>.examples must train every row exactly once."""
    rows = learnable_rows
    settings = settings_for(namespace, consumer_session_timeout_ms=2000)
    create_topics(stack.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                          settings.dead_letter_topic, settings.examples_topic], PARTITIONS)
    env = cli_env(stack, namespace, STREAMREC_PARTITIONS=str(PARTITIONS), STREAMREC_CONSUMER_SESSION_TIMEOUT_MS="2000")
    client = redis.Redis.from_url(stack.redis_url)
    workers: dict[str, subprocess.Popen] = {}
    logs = []

    def start(name: str) -> None:
        log = tmp_path / f"{name}-{len(logs)}.log"
        logs.append(log)
        with open(log, "wb") as handle:
            workers[name] = subprocess.Popen(
                [sys.executable, "-m", "streamrec", "join", "--worker-id", name, "--exit-at-end", "--metrics-port", "0",
                 "--checkpoint-every-s", "2", "--report-json", str(tmp_path / f"{name}.json")],
                env=env, stdout=subprocess.DEVNULL, stderr=handle)

    trainer = None
    try:
        start("a")
        start("b")
        # the trainer of one model: the one writer of its versions, reading the examples topic
        trainer = start_trainer(stack, settings, from_examples=True, publish_every_examples=2000)
        run = "j"
        replayer = threading.Thread(target=replay_rows, args=(stack, settings, rows, run), kwargs={"rate": 2500})
        replayer.start()
        rng = random.Random(20261124)
        kills = []
        reader = make_consumer(stack.kafka_bootstrap, f"probe-{namespace}")
        examples_end = [(settings.examples_topic, p) for p in range(PARTITIONS)]

        def written_after_checkpoint() -> bool:
            """Some partition has examples on the topic past its checkpoint's output offset."""
            ends = reader.end_offsets(examples_end)
            for (_topic, p), end in ends.items():
                raw = client.hget(checkpoint_key(namespace, p), "state")
                if raw is not None and end > orjson.loads(raw)["output_offset"]:
                    return True
            return False

        def frozen_while_ahead() -> bool:
            """Stop both workers; keep them stopped only if some partition is then ahead of its checkpoint.

            Frozen, neither can checkpoint between the look and the kill, so the successor of that
            partition must regenerate (and skip) what was written. The checkpoint names its last
            writer, not the owner now, so both are stopped rather than the one it names."""
            for process in workers.values():
                process.send_signal(signal.SIGSTOP)
            time.sleep(0.1)  # a checkpoint already on the wire lands before the look
            if written_after_checkpoint():
                return True
            for process in workers.values():
                process.send_signal(signal.SIGCONT)
            return False

        try:
            wait_for(frozen_while_ahead, 60, "examples written after a checkpoint", every_s=0.2)
        finally:
            reader.close()
        for name in sorted(workers):
            workers[name].send_signal(signal.SIGKILL)
            workers[name].wait()
            kills.append((name, time.monotonic()))
        for name in sorted(workers):
            start(name)
        for _ in range(2):
            # the others land at random moments, on one worker each
            time.sleep(rng.uniform(0.5, 2.0))
            name = rng.choice(sorted(workers))
            workers[name].send_signal(signal.SIGKILL)
            workers[name].wait()
            kills.append((name, time.monotonic()))
            start(name)
        replayer.join(120)
        report = trainer.wait(180)
        for name, process in workers.items():
            assert process.wait(60) == 0, f"join worker {name} failed"
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        if trainer is not None:
            trainer.stop()
    # every row once, with its label
    assert report["examples"] == len(rows)
    assert report["digest"] == expected_digest(run, rows)
    # the stage's own checkpointed counters agree, and a takeover did regenerate written examples
    states = [orjson.loads(client.hget(checkpoint_key(namespace, p), "state")) for p in range(PARTITIONS)]
    assert sum(s["counters"]["examples"] for s in states) == len(rows)
    assert f"{sum(s['counters']['digest'] for s in states) & ((1 << 64) - 1):016x}" == report["digest"]
    assert sum(s["counters"]["impressions_read"] for s in states) == len(rows)
    print("kills:", kills, "regenerated:", [s["counters"]["regenerated"] for s in states])
    assert sum(s["counters"]["regenerated"] for s in states) > 0
    finals = [json.loads((tmp_path / f"{name}.json").read_text()) for name in workers]
    assert all(f["finished"] for f in finals)
    status = subprocess.run([sys.executable, "-m", "streamrec", "join", "--status"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    lines = [line.split() for line in status.stdout.splitlines()[1:]]
    assert [int(line[0]) for line in lines] == list(range(PARTITIONS))
    assert sum(int(line[5]) for line in lines) == len(rows) and all(line[-1] == "yes" for line in lines)
    # each surviving worker registered for the dashboard and left its final /metrics there
    joiners = [w for w in registered(client, namespace) if w["role"] == "joiner"]
    assert sorted(w["worker"] for w in joiners) == ["a", "b"]
    for record in joiners:
        samples = parse(record["final_metrics"])
        # a worker restarted near the end may never be given a partition (the survivor took them
        # over and the stream ended first): then it has nothing to checkpoint
        if samples["streamrec_examples_emitted_total"] > 0:
            assert samples["streamrec_join_checkpoints_total"] > 0
        assert samples["streamrec_join_partitions"] == 0  # all handed back at the end
        # The last incarnation of each may have come up after the stream was all written (a
        # killed predecessor wrote it), so its counts can be zero; they cannot exceed the stream.
        assert 0 <= samples["streamrec_examples_emitted_total"] <= len(rows)


@pytest.mark.integration
def test_join_worker_survives_a_redis_outage_and_dead_letters_bad_events(stack, namespace, learnable_rows, tmp_path):
    """Redis dies mid-run and comes back: the worker keeps joining and writing, its checkpoints fail
    and are retried, and every example still reaches the trainer exactly once."""
    from streamrec.consumers.join_worker import JoinOptions, JoinWorker
    from streamrec.local_stack import free_port
    from streamrec.stream import events
    from streamrec.stream.kafka_client import make_producer
    from tests.streams import combine
    from tests.test_trainer import _start_redis

    rows = learnable_rows[:6000]
    first, second = rows[:3000], rows[3000:]
    settings = settings_for(namespace)
    create_topics(stack.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                          settings.dead_letter_topic, settings.examples_topic], PARTITIONS)
    producer = make_producer(stack.kafka_bootstrap)
    producer.send(settings.impressions_topic, b"{not json", b"u")
    producer.send(settings.clicks_topic, events.encode(events.impression("i", 1.7e9, "u", "a", {})), b"u")
    producer.close()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = _start_redis(port, tmp_path)
    worker = JoinWorker(settings, JoinOptions.from_settings(settings, worker_id="solo", exit_at_end=True,
                                                            join_checkpoint_every_s=0.2, metrics_port=None),
                        kafka_bootstrap=stack.kafka_bootstrap, redis_url=url)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(report=worker.run()), daemon=True)
    try:
        replay_rows(stack, settings, first, "a", final=False)
        thread.start()
        client = redis.Redis.from_url(url)

        def checkpointed() -> int:
            states = [client.hget(checkpoint_key(namespace, p), "state") for p in range(PARTITIONS)]
            return sum(orjson.loads(s)["counters"]["impressions_read"] for s in states if s is not None)

        wait_for(lambda: checkpointed() == len(first), 60, "checkpoints that hold the first half")
        os.kill(redis_proc.pid, signal.SIGKILL)
        redis_proc.wait()
        replay_rows(stack, settings, second, "b")
        wait_for(lambda: sum(s.counters.impressions_read for s in list(worker.shards.values())) == len(rows), 60,
                 "the second half joined while Redis is away")
        failures = "streamrec_join_checkpoint_failures_total"
        wait_for(lambda: parse(generate_latest(worker.metrics.registry).decode())[failures] >= 2, 30,
                 "failed checkpoints")
        assert thread.is_alive()
        redis_proc = _start_redis(port, tmp_path)
        thread.join(60)
        assert not thread.is_alive() and result["report"]["finished"]
        assert result["report"]["dead_letters"] == 2
        assert checkpointed() == len(rows)
    finally:
        worker.stop_event.set()
        thread.join(30) if thread.is_alive() else None
        worker.close()
        if redis_proc.poll() is None:
            redis_proc.kill()
            redis_proc.wait()
    trainer = start_trainer(stack, settings, from_examples=True, metrics_port=0)
    report, scraped = trainer.finish()
    assert report["examples"] == len(rows)
    assert report["digest"] == combine(expected_digest("a", first), expected_digest("b", second))
    assert scraped["streamrec_examples_trained_total"] == len(rows)
