"""Every Redis key and channel streamrec uses, built here and nowhere else.

All keys of a namespace start with ``streamrec:<namespace>:``::

    model:<model>:version:<n>            hash: one immutable version (versions/store.py)
    model:<model>:head | live | pinned   the newest version, the served one, the pin flag
    model:<model>:versions               sorted set of the versions kept
    model:<model>:delta:<lineage>:<seq>  hash: rows changed since the previous delta (expires)
    model:<model>:delta_head             the newest delta
    model:<model>:events                 list: pointer events, newest first (the dashboard's timeline)
    model:<model>:announce               pub/sub: a version, pointer move or delta happened
    champion, champion:announce          the model a champion-following scorer serves, and its channel
    join:<partition>                     hash: a join-stage partition's epoch and checkpoint
    workers, worker:<role>:<model>:<id>  the worker registry (stream/worker_registry.py)
    dashboard:samples:<fine|coarse>      streams: the dashboard's sampled points (its history)
    dashboard:writer                     which dashboard writes them (a lease)
"""

from __future__ import annotations

from dataclasses import dataclass


def namespace_prefix(namespace: str) -> str:
    return f"streamrec:{namespace}"


@dataclass(frozen=True)
class ModelKeys:
    """The keys of one model's versions, pointers, deltas and events in a namespace."""

    namespace: str
    model: str

    @property
    def prefix(self) -> str:
        return f"{namespace_prefix(self.namespace)}:model:{self.model}"

    def version(self, number: int) -> str:
        return f"{self.prefix}:version:{number}"

    def version_shard(self, number: int, shard: int) -> str:
        """One shard of the weights of a version learned by ranks."""
        return f"{self.prefix}:version:{number}:shard:{shard}"

    def staged_shard(self, cut: str, shard: int) -> str:
        """A rank's shard written before its version is published (it expires unless published)."""
        return f"{self.prefix}:staged:{cut}:shard:{shard}"

    @property
    def head(self) -> str:
        return f"{self.prefix}:head"

    @property
    def live(self) -> str:
        return f"{self.prefix}:live"

    @property
    def pinned(self) -> str:
        return f"{self.prefix}:pinned"

    @property
    def versions(self) -> str:
        return f"{self.prefix}:versions"

    @property
    def announce(self) -> str:
        return f"{self.prefix}:announce"

    @property
    def delta_head(self) -> str:
        return f"{self.prefix}:delta_head"

    def delta(self, lineage: str, seq: int) -> str:
        return f"{self.prefix}:delta:{lineage}:{seq}"

    def delta_shard(self, lineage: str, seq: int, shard: int) -> str:
        """One shard of a delta of ranks."""
        return f"{self.prefix}:delta:{lineage}:{seq}:shard:{shard}"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"


def model_events_pattern(namespace: str) -> str:
    """A SCAN pattern matching every model's event list in the namespace."""
    return f"{namespace_prefix(namespace)}:model:*:events"


def model_of_events_key(key: str) -> str:
    """The model name in a key that :func:`model_events_pattern` matched."""
    return key.split(":model:", 1)[1].rsplit(":events", 1)[0]


def champion(namespace: str) -> str:
    return f"{namespace_prefix(namespace)}:champion"


def champion_channel(namespace: str) -> str:
    return f"{namespace_prefix(namespace)}:champion:announce"


def join_checkpoint(namespace: str, partition: int) -> str:
    return f"{namespace_prefix(namespace)}:join:{partition}"


def workers_index(namespace: str) -> str:
    return f"{namespace_prefix(namespace)}:workers"


def worker(namespace: str, role: str, model: str, worker_id: str) -> str:
    return f"{namespace_prefix(namespace)}:worker:{role}:{model}:{worker_id}"


def dashboard_samples(namespace: str, resolution: str) -> str:
    return f"{namespace_prefix(namespace)}:dashboard:samples:{resolution}"


def dashboard_writer(namespace: str) -> str:
    return f"{namespace_prefix(namespace)}:dashboard:writer"
