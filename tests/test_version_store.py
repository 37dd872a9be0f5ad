"""Model versions in a real Redis: atomic publish, retention, pinning, fencing of a second writer."""

from __future__ import annotations

import pytest
import redis

from streamrec.stream.errors import StreamrecError
from streamrec.versions.meta import DeltaMeta, VersionMeta
from streamrec.versions.store import MissingShard, StagedShards, VersionConflict, VersionStore

pytestmark = pytest.mark.integration


def _publish(store: VersionStore, parent, keep=3, tag=b"w") -> int:
    return store.publish(parent=parent, meta=VersionMeta(examples_seen=1), weights=tag, quality_state=b"t",
                         source_state=b"{}", keep=keep)


def test_versions_chain_retain_and_announce(stack, namespace):
    client = redis.Redis.from_url(stack.redis_url)
    store = VersionStore(client, namespace, "lr")
    assert store.head() is None and store.live() is None
    parent = None
    for _ in range(5):
        parent = _publish(store, parent, tag=f"w{parent}".encode())
    assert store.head() == store.live() == 5
    assert store.versions() == [3, 4, 5]
    assert not client.exists(store.keys.version(2))
    version = store.load(4)
    assert version.weights == b"w3" and version.meta.parent == 3 and version.meta.version == 4
    with pytest.raises(StreamrecError, match="no version 2"):
        store.load(2)


def test_a_version_of_ranks_is_never_visible_with_a_shard_missing(stack, namespace):
    client = redis.Redis.from_url(stack.redis_url)
    store = VersionStore(client, namespace, "wide_deep")
    first = _publish(store, None)

    def publish_shards(cut: str, parent: int) -> int:
        return store.publish(parent=parent, meta=VersionMeta(examples_seen=2), weights=b"", quality_state=b"t",
                             source_state=b"{}", keep=2, shards=StagedShards(cut, 3))

    store.stage_shard("c1", 0, b"s0", ttl_s=60)
    store.stage_shard("c1", 2, b"s2", ttl_s=60)
    assert store.staged(StagedShards("c1", 3)) == 2
    with pytest.raises(MissingShard, match="1 of the 3 shards"):
        publish_shards("c1", first)
    assert store.head() == store.live() == first and store.versions() == [first]  # nothing was written
    assert not client.exists(store.keys.version(first + 1))
    store.stage_shard("c1", 1, b"s1", ttl_s=60)
    second = publish_shards("c1", first)
    version = store.load(second)
    assert version.shards == (b"s0", b"s1", b"s2") and version.meta.shards == 3 and version.weights == b""
    # the staged shards now belong to the version: moved, and kept as long as it is
    assert store.staged(StagedShards("c1", 3)) == 0
    assert all(client.ttl(store.keys.version_shard(second, r)) == -1 for r in range(3))
    assert store.load(first).shards == ()  # a version of one trainer is one blob, as before
    # pruned with its version
    for cut, parent in (("c2", second), ("c3", second + 1)):
        for r in range(3):
            store.stage_shard(cut, r, cut.encode(), ttl_s=60)
        publish_shards(cut, parent)
    assert store.versions() == [second + 1, second + 2]
    assert not any(client.exists(store.keys.version_shard(second, r)) for r in range(3))
    assert store.load(second + 2).shards == (b"c3",) * 3


def test_a_delta_of_ranks_is_announced_only_with_every_shard(stack, namespace):
    client = redis.Redis.from_url(stack.redis_url)
    store = VersionStore(client, namespace, "wide_deep")
    shards = StagedShards("delta-L-1", 2)
    store.stage_shard(shards.cut, 1, b"d1", ttl_s=60)
    with pytest.raises(MissingShard):
        store.publish_delta(DeltaMeta(lineage="L", seq=1), b"", ttl_s=60, shards=shards)
    assert store.delta_head() is None and store.load_delta("L", 1) is None
    store.stage_shard(shards.cut, 0, b"d0", ttl_s=60)
    store.publish_delta(DeltaMeta(lineage="L", seq=1), b"", ttl_s=30, shards=shards)
    record = store.load_delta("L", 1)
    assert record.shards == (b"d0", b"d1") and record.meta.shards == 2 and store.delta_head()["seq"] == 1
    assert 0 < client.ttl(store.keys.delta_shard("L", 1, 0)) <= 30  # they expire with the delta
    client.delete(store.keys.delta_shard("L", 1, 1))
    assert store.load_delta("L", 1) is None  # a shard gone is a gap, as a delta gone is


def test_a_second_writer_from_a_stale_parent_is_refused(stack, namespace):
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    _publish(store, None)
    _publish(store, 1)
    with pytest.raises(VersionConflict, match="at version 2"):
        _publish(store, 1)
    assert store.head() == 2


def test_pinned_live_version_stays_and_is_never_deleted(stack, namespace):
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    parent = None
    for _ in range(2):
        parent = _publish(store, parent, keep=2)
    store.set_live(1, pin=True)
    for _ in range(3):
        parent = _publish(store, parent, keep=2)
    assert store.head() == 5 and store.live() == 1
    assert store.versions() == [1, 4, 5]  # the newest two, plus the pinned live one
    store.set_live(5, pin=False)
    _publish(store, parent, keep=2)
    assert store.live() == 6
    with pytest.raises(StreamrecError, match="no version 42"):
        store.set_live(42, pin=True)


def test_a_store_that_lost_its_history_continues_upwards(stack, namespace):
    client = redis.Redis.from_url(stack.redis_url)
    store = VersionStore(client, namespace, "lr")
    _publish(store, None)
    _publish(store, 1)
    client.delete(*client.keys(f"{store.keys.prefix}:*"))  # as if Redis restarted empty
    assert _publish(store, 2) == 3
    assert store.meta(3).history_lost is True and store.head() == 3


def test_a_held_version_moves_head_but_not_live_and_is_kept_beside_it(stack, namespace):
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    assert store.publish(parent=None, meta=VersionMeta(), weights=b"w", quality_state=b"t", source_state=b"{}",
                         keep=2, promote=False) == 1
    assert store.head() == 1 and store.live() is None  # nothing held ever becomes live by itself
    _publish(store, 1, keep=2)
    for parent in (2, 3, 4):
        store.publish(parent=parent, meta=VersionMeta(), weights=b"w", quality_state=b"t", source_state=b"{}",
                         keep=2, promote=False)
    assert store.head() == 5 and store.live() == 2
    assert store.versions() == [2, 4, 5]  # the live one survives retention


def test_deltas_are_stored_in_order_and_expire(stack, namespace):
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    store.publish_delta(DeltaMeta(lineage="abc", seq=1, base_version=3), weights=b"d1", ttl_s=60)
    store.publish_delta(DeltaMeta(lineage="abc", seq=2, base_version=3), weights=b"d2", ttl_s=60)
    assert store.delta_head() == {"lineage": "abc", "seq": 2, "base_version": 3}
    record = store.load_delta("abc", 1)
    assert record.weights == b"d1" and record.meta.seq == 1 and record.meta.model == "lr"
    assert store.load_delta("abc", 3) is None
    assert 0 < store.client.ttl(store.keys.delta("abc", 2)) <= 60


def test_a_version_written_by_older_code_still_loads(stack, namespace):
    """Metas from before the typed records: no lineage, delta_seq, gate or join; unknown keys ignored."""
    import orjson

    client = redis.Redis.from_url(stack.redis_url)
    store = VersionStore(client, namespace, "lr")
    old_meta = {"model": "lr", "version": 1, "parent": None, "created_at": 1.0, "worker": "w", "examples_seen": 7,
                "offsets": {"t:0": 3}, "joiner_watermark": None, "metrics": {"auc": 0.61, "auc_window": None},
                "counters": {"examples": 7}, "retired_field": 1}
    client.hset(store.keys.version(1), mapping={"meta": orjson.dumps(old_meta), "weights": b"w", "trainer": b"t",
                                                "joiner": b"{}"})
    client.set(store.keys.head, 1)
    client.set(store.keys.live, 1)
    client.zadd(store.keys.versions, {"1": 1})
    meta = store.load(1).meta
    assert meta.examples_seen == 7 and meta.auc == 0.61 and meta.auc_window is None
    assert meta.lineage is None and meta.delta_seq == 0 and meta.gate is None and meta.promoted
    assert store.previous_promoted(2) == 1
    assert _publish(store, 1) == 2 and store.meta(2).parent == 1
