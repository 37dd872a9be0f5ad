"""Hostile and odd input: events, messages, requests and stored versions built to hurt. Each is
refused with a reason (dead letter, 4xx, ModelError), nothing else changes, and memory stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import orjson
import pytest
import redis
import torch

from streamrec.consumers.joiner import Joiner
from streamrec.models import create_model, model_from_bytes
from streamrec.models.base import FORMAT
from streamrec.stream import events
from streamrec.stream.errors import ModelError
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer
from streamrec.stream.kafka_client import KafkaSecurity
from streamrec.stream.settings import load_settings

NOW = time.time()


def _impression(n: int, t: float, features: dict | None = None, user: str = "u") -> dict:
    return events.impression(f"i{n}", t, user, f"a{n}", features if features is not None else {"C3": "x"})


# ------------------------------------------------------------------ messages and events


def test_oversized_and_overfull_events_are_dead_lettered_alone() -> None:
    good = [_impression(n, 100.0 + n) for n in range(3)]
    wide = _impression(10, 104.0, {f"k{i}": "v" for i in range(events.MAX_FEATURES + 1)})
    long_value = _impression(11, 105.0, {"C3": "x" * (events.MAX_EVENT_BYTES + 1)})
    long_id = events.impression("i" * (events.MAX_ID_CHARS + 1), 106.0, "u", "a", {})
    valid, dead = events.decode_events(orjson.dumps([good[0], wide, good[1], long_value, long_id, good[2]]))
    assert valid == good
    reasons = [reason for _raw, reason in dead]
    assert len(reasons) == 3
    assert "keys; at most" in reasons[0] and "bytes as JSON" in reasons[1] and "characters; at most" in reasons[2]


def test_a_message_over_the_limit_is_one_dead_letter_and_keeps_a_bounded_payload() -> None:
    raw = b"[" + b" " * events.MAX_MESSAGE_BYTES + b"]"
    valid, dead = events.decode_events(raw)
    assert valid == [] and len(dead) == 1 and "at most" in dead[0][1]
    record = orjson.loads(events.dead_letter(dead[0][0], dead[0][1], "t:0:0"))
    assert len(record["payload"]) == events.MAX_DEAD_LETTER_PAYLOAD and record["payload_bytes"] == len(raw)


def test_event_times_far_ahead_are_refused_and_move_nothing() -> None:
    joiner = Joiner(10.0, max_ahead_s=3600.0)

    def offer(kind: str, event: dict, partition: int = 0) -> tuple[dict, list]:
        return joiner.offer_message(partition, kind, orjson.dumps(event))

    assert offer("impressions", _impression(1, 1000.0))[0]["impression"] == 1
    # ten years ahead of the partition: dead-lettered, the partition's time stays
    taken, dead = offer("impressions", _impression(2, 1000.0 + 10 * 365 * 86400))
    assert taken["impression"] == 0 and "ahead of partition 0's impressions time" in dead[0][1]
    # on a fresh partition there is no partition time, but the machine's clock still bounds it
    taken, dead = offer("impressions", _impression(3, NOW + 10 * 365 * 86400), partition=1)
    assert taken["impression"] == 0 and "ahead of this machine's clock" in dead[0][1]
    # a watermark that jumps, and a "final" watermark older than what the partition saw
    assert offer("clicks", events.watermark(1000.0))[1] == []
    taken, dead = offer("impressions", events.watermark(1000.0 + 7200))
    assert taken["watermark"] == 0 and dead
    taken, dead = offer("impressions", events.watermark(1000.0 + 7200, final=True))
    assert taken["watermark"] == 0 and dead
    assert joiner.counts.refused_times == 4
    assert joiner.open_impressions == 1 and joiner.take() == []  # the good impression still waits
    # the legitimate end of the stream still ends it
    offer("impressions", events.watermark(1001.0, final=True))
    offer("clicks", events.watermark(1001.0, final=True))
    joiner.advance()
    assert [e.impression_id for e in joiner.take()] == ["i1"]


def test_eviction_stays_inside_the_partition_that_overflows() -> None:
    joiner = Joiner(10.0, max_pending=2)
    joiner.impression(0, _impression(1, 1.0))
    for n in range(2, 6):
        joiner.impression(1, _impression(n, float(n)))
    assert joiner.counts.evicted == 2
    assert {e.impression_id for e in joiner.take()} == {"i2", "i3"}  # partition 0's impression is not touched
    assert joiner.open_impressions == 3


def test_a_long_value_costs_its_own_length_not_the_batch_times_it(learnable_rows: list) -> None:
    rows = learnable_rows[:200]
    spec = SpecOptions().infer([r.features for r in rows])
    featurizer = Featurizer(spec)
    features = [dict(r.features) for r in rows]
    features[7]["C5"] = "x" * 1_000_000  # one 1M-character value among 200 rows
    tracemalloc.start()
    try:
        featurizer.build([r.user_id for r in rows], [r.item_id for r in rows], features)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a fixed-width string array would have been 200 x 1M characters x 4 bytes = 800 MB
    assert peak < 64 * 1024 * 1024, peak


def test_a_numeric_field_holding_text_is_refused_without_a_wide_array() -> None:
    spec = SpecOptions().infer([{"I1": 3}])
    featurizer = Featurizer(spec)
    with pytest.raises(Exception, match="non-number"):
        featurizer.build(["u"], ["i"], [{"I1": "9" * 100_000 + "x"}])


# ------------------------------------------------------------------ stored versions


def _forged_blob(spec_json: str, config_json: str = "{}") -> bytes:
    from safetensors.torch import save

    return save({"x": torch.zeros(1)}, metadata={"format": FORMAT, "model": "lr", "spec": spec_json,
                                                   "config": config_json})


def test_a_version_asking_for_huge_tables_is_refused_before_anything_is_built() -> None:
    spec = json.loads(SpecOptions(keyed=False).infer([{"C3": "x"}]).to_json())
    spec["fields"][0]["buckets"] = 1 << 40
    with pytest.raises(ModelError, match="at most"):
        model_from_bytes(_forged_blob(json.dumps(spec)))


def test_a_version_lacking_its_tensors_is_refused_with_their_name() -> None:
    for keyed in (True, False):
        spec = SpecOptions(keyed=keyed).infer([{"C3": "x"}]).to_json()
        with pytest.raises(ModelError, match="lack 'wide"):
            model_from_bytes(_forged_blob(spec))


def test_stored_rows_outside_the_table_are_refused(learnable_rows: list) -> None:
    from safetensors.torch import load, save

    spec = SpecOptions(cat_buckets=64, keyed=False).infer([r.features for r in learnable_rows[:50]])
    model = create_model("lr", spec)
    batch = Featurizer(spec).build([r.user_id for r in learnable_rows[:50]], [r.item_id for r in learnable_rows[:50]],
                                   [r.features for r in learnable_rows[:50]], [r.label for r in learnable_rows[:50]])
    model.learn(batch)
    blob = model.to_bytes()
    tensors = load(blob)
    tensors["wide@rows"] = tensors["wide@rows"] + 10**9
    from streamrec.models.base import read_metadata

    with pytest.raises(ModelError, match="outside"):
        model_from_bytes(save(tensors, metadata=read_metadata(blob)))


@pytest.mark.integration
def test_a_scorer_serves_the_newest_loadable_version_when_the_live_one_is_corrupt(stack, namespace,
                                                                                  learnable_rows) -> None:
    from streamrec.serving.scorer import Scorer
    from streamrec.versions.meta import VersionMeta
    from streamrec.versions.store import VersionStore

    rows = learnable_rows[:300]
    spec = SpecOptions().infer([r.features for r in rows])
    model = create_model("lr", spec)
    model.learn(Featurizer(spec).build([r.user_id for r in rows], [r.item_id for r in rows],
                                       [r.features for r in rows], [r.label for r in rows]))
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    good = store.publish(parent=None, meta=VersionMeta(examples_seen=1), weights=model.to_bytes(), quality_state=b"",
                         source_state=b"{}", keep=5)
    bad = store.publish(parent=good, meta=VersionMeta(examples_seen=2), weights=b"not safetensors at all",
                        quality_state=b"", source_state=b"{}", keep=5)
    with Scorer(stack.redis_url, namespace, "lr", poll_s=0.1) as scorer:
        assert scorer.served is not None and scorer.served.version == good
        assert ("lr", bad) in scorer.bad_versions
        events_ = [{"user_id": r.user_id, "item_id": r.item_id, "features": r.features} for r in rows[:5]]
        assert len(scorer.predict(events_).probabilities) == 5


# ------------------------------------------------------------------ requests


@pytest.fixture
def serving_app(stack, namespace, learnable_rows, tmp_path):
    """A real `streamrec serve` process with a token, serving an lr version."""
    import httpx

    from streamrec.versions.meta import VersionMeta
    from streamrec.versions.store import VersionStore
    from tests.streams import cli_env, cli_server

    rows = learnable_rows[:300]
    spec = SpecOptions().infer([r.features for r in rows])
    model = create_model("lr", spec)
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    store.publish(parent=None, meta=VersionMeta(examples_seen=1), weights=model.to_bytes(), quality_state=b"",
                  source_state=b"{}", keep=5)
    env = cli_env(stack, namespace, STREAMREC_AUTH_TOKEN="t0k")
    with cli_server(env, tmp_path, "serve", "--model", "lr") as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, {"user_id": rows[0].user_id, "item_id": rows[0].item_id, "features": rows[0].features}


@pytest.mark.integration
def test_predict_refuses_hostile_requests_with_4xx_and_serves_good_ones(serving_app) -> None:
    from streamrec.serving.http_app import MAX_BODY_BYTES

    client, event = serving_app
    auth = {"Authorization": "Bearer t0k"}
    assert client.post("/predict", json={"events": [event]}).status_code == 401
    assert client.post("/predict", json={"events": [event]}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics").status_code == 401 and client.get("/healthz").status_code == 200
    ok = client.post("/predict", json={"events": [event]}, headers=auth)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1
    too_big = client.post("/predict", content=b"[" + b" " * (MAX_BODY_BYTES + 10) + b"]", headers=auth)
    assert too_big.status_code == 413
    bad_shapes = [
        {"events": [{**event, "features": {"C3": ["a", "list"]}}]},
        {"events": [{**event, "features": {"C3": {"a": "dict"}}}]},
        {"events": [{**event, "features": {"C3": [[[[["deep"]]]]]}}]},
        {"events": [{**event, "user_id": "u" * 10_000}]},
        {"events": [{**event, "features": {"C3": "v" * 10_000}}]},
        {"events": [{**event, "history": [["nested"]]}]},
        {"events": [{"user_id": "u", "item_id": "i"}] * 10_001},
        {"events": []},
        [1, 2, 3],
    ]
    for payload in bad_shapes:
        response = client.post("/predict", content=orjson.dumps(payload), headers=auth)
        assert response.status_code in (400, 413), (payload if len(str(payload)) < 200 else "big", response.text)
        assert "error" in response.json()
    nested = b'{"events": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert client.post("/predict", content=nested, headers=auth).status_code == 400
    metrics = client.get("/metrics", headers=auth).text
    assert 'streamrec_predict_requests_total{status="unauthorized"} 3.0' in metrics
    assert 'streamrec_predict_requests_total{status="ok"} 1.0' in metrics


# ------------------------------------------------------------------ the dashboard and secure connections


def test_the_dashboard_scrapes_only_allowed_hosts() -> None:
    from streamrec.dashboard import HostAllowList

    default = HostAllowList()
    assert default.allows("http://127.0.0.1:9400/metrics") and default.allows("http://localhost:1/metrics")
    assert not default.allows("http://169.254.169.254/latest/meta-data")
    assert not default.allows("http://10.1.2.3:9400/metrics") and not default.allows("file:///etc/passwd")
    cluster = HostAllowList(("10.0.0.0/8", "trainer-0.streamrec"))
    assert cluster.allows("http://10.1.2.3:9400/metrics") and cluster.allows("http://trainer-0.streamrec:9400/")
    assert not cluster.allows("http://169.254.169.254/")
    assert HostAllowList(("*",)).allows("http://anything.example:1/")


@pytest.mark.integration
def test_a_registered_worker_on_a_foreign_host_is_not_fetched(stack, namespace) -> None:
    from streamrec.dashboard import WorkerSource
    from streamrec.stream.worker_registry import Heartbeat

    client = redis.Redis.from_url(stack.redis_url)
    beat = Heartbeat(client, namespace, role="trainer", model="lr", worker="evil",
                     url="http://169.254.169.254/latest/meta-data").start()
    try:
        (target, samples, error), = WorkerSource(client, namespace).sample()
        assert samples is None and "not allowed" in error
    finally:
        beat.close()


def test_kafka_security_settings_reach_both_clients_configurations() -> None:
    settings = load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                             kafka_sasl_username="svc", kafka_sasl_password="pw", kafka_ssl_ca_location="/ca.pem")
    security = KafkaSecurity.from_settings(settings)
    assert security.confluent() == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                    "sasl.username": "svc", "sasl.password": "pw", "ssl.ca.location": "/ca.pem"}
    assert security.kafka_python() == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                       "sasl_plain_username": "svc", "sasl_plain_password": "pw",
                                       "ssl_cafile": "/ca.pem"}
    assert KafkaSecurity.from_settings(load_settings()).confluent() == {}
    # librdkafka itself accepts the keys (it refuses an unknown one; SSL would open the CA file)
    from confluent_kafka import Producer

    sasl = KafkaSecurity.from_settings(load_settings(kafka_security_protocol="SASL_PLAINTEXT",
                                                     kafka_sasl_username="svc", kafka_sasl_password="pw"))
    Producer({"bootstrap.servers": "127.0.0.1:1", **sasl.confluent()})


def _wait_until_redis_answers(url: str, process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """PING ``url`` until the server ``process`` started answers (it may still be binding its port)."""
    from streamrec.stream.redis_connection import connect

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connect(url).ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.05)



@pytest.mark.integration
def test_redis_with_a_password_works_and_refuses_without_it(tmp_path) -> None:
    import subprocess

    from streamrec.local_stack import free_port, redis_binary
    from streamrec.stream.redis_connection import connect
    from streamrec.versions.meta import VersionMeta
    from streamrec.versions.store import VersionStore

    port = free_port()
    process = subprocess.Popen([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", "s3cret"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://:s3cret@127.0.0.1:{port}/0"
        _wait_until_redis_answers(url, process)
        store = VersionStore(connect(url), "secure", "lr")
        assert store.publish(parent=None, meta=VersionMeta(), weights=b"w", quality_state=b"", source_state=b"{}",
                             keep=2) == 1
        with pytest.raises(redis.AuthenticationError):
            VersionStore(connect(f"redis://127.0.0.1:{port}/0"), "secure", "lr").head()
    finally:
        process.terminate()
        process.wait(10)



@pytest.mark.integration
def test_the_trainer_dead_letters_hostile_events_and_trains_every_good_one_once(stack, namespace,
                                                                                learnable_rows) -> None:
    from streamrec.stream.kafka_client import create_topics, make_producer
    from tests.streams import expected_digest, replay_rows, settings_for, start_trainer

    rows = learnable_rows[:3000]
    settings = settings_for(namespace)
    create_topics(stack.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                          settings.dead_letter_topic], settings.partitions)
    hostile = [
        _impression(90, NOW + 10 * 365 * 86400),                                       # ten years ahead
        _impression(91, 1_700_000_000.0, {f"k{i}": "v" for i in range(50_000)}),        # 50k-key feature map
        _impression(92, 1_700_000_000.0, {"C3": "x" * 200_000}),                        # a 200 kB value
        events.impression("i" * 5000, 1_700_000_000.0, "u", "a", {}),                   # a 5000-character id
    ]
    producer = make_producer(stack.kafka_bootstrap)
    try:
        for n, event in enumerate(hostile):
            producer.send(settings.impressions_topic, orjson.dumps(event), partition=n % settings.partitions)
        producer.send(settings.impressions_topic, b"\xff not json", partition=0)
        producer.flush()
    finally:
        producer.close()
    replay_rows(stack, settings, rows, "hostile")
    report = start_trainer(stack, settings, model="lr").wait()
    assert report["examples"] == len(rows) and report["digest"] == expected_digest("hostile", rows)
    assert report["dead_letters"] == len(hostile) + 1
    assert report["join"]["refused_times"] == 1

def test_redis_over_tls_with_a_password_and_a_certificate_authority(tmp_path: Path, system_packages: None) -> None:
    """rediss:// against Debian's redis-server with TLS and requirepass: the CA in the URL is
    trusted, a connection without it is refused, and the CLI works through such a URL."""
    import shutil

    from streamrec.local_stack import free_port
    from streamrec.stream.redis_connection import connect
    from streamrec.versions.meta import VersionMeta
    from streamrec.versions.store import VersionStore

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=streamrec-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf")
    server = shutil.which("redis-server")
    assert server is not None
    port = free_port()
    process = subprocess.Popen([server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                                "--tls-cert-file", str(tmp_path / "server.crt"),
                                "--tls-key-file", str(tmp_path / "server.key"),
                                "--tls-ca-cert-file", str(tmp_path / "ca.crt"), "--tls-auth-clients", "no",
                                "--requirepass", "s3cret", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}"
        _wait_until_redis_answers(url, process)
        store = VersionStore(connect(url), "tls", "lr")
        assert store.publish(parent=None, meta=VersionMeta(), weights=b"w", quality_state=b"", source_state=b"{}",
                             keep=2) == 1
        with pytest.raises(redis.ConnectionError, match="certificate verify failed|CERTIFICATE_VERIFY_FAILED"):
            connect(f"rediss://:s3cret@127.0.0.1:{port}/0").ping()  # the server's CA is not trusted
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env.update({"STREAMREC_REDIS_URL": url, "STREAMREC_HOME": str(tmp_path / "home")})
        listed = subprocess.run([sys.executable, "-m", "streamrec", "--namespace", "tls", "models", "--model", "lr",
                                 "list"], env=env, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "v1" in listed.stdout, listed.stderr
    finally:
        process.terminate()
        process.wait(10)
