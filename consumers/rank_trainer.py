"""One rank of a trainer that learns one model as many processes (``streamrec train --ranks N``, or
``torchrun --nproc-per-node N -m streamrec train ...``).

Each rank is a :class:`~streamrec.consumers.trainer.Trainer` with three differences:

* **Its own partitions.** Rank ``r`` of ``R`` reads partitions ``p`` with ``p % R == r`` of every
  input topic, assigned, not subscribed: no group rebalance can move a partition between ranks
  in the middle of a step. Impressions and clicks of a user share a partition, so each rank joins
  its own partitions as one trainer would.
* **Its learner is a rank** (consumers/rank_learner.py): the learners learn one model together in
  lockstep, each step's global batch made of every rank's share (``batch_size / R`` each).
* **One version for all ranks.** Rank 0 decides when a version is due; every rank cuts its half
  (offsets of its partitions, its example source, its counters) at a batch boundary, the
  learners meet at one global step, each rank stages its own shard of the model in Redis, and
  rank 0 publishes a single version with every rank's half (consumers/source_shards.py) and
  every staged shard, atomically, once all are in (versions/store.py). A version written by R
  ranks resumes on any number of ranks, or on one trainer, and a scorer loads its shards as one
  model: each reader takes what it needs.

Counters add up: rank 0 resumes with the version's totals and the others from zero, so the sum
of the halves is the model's count and digest (tests/test_rank_trainer.py kills ranks at random
and checks both exactly). The quality gate runs as with one trainer, on the whole global batch's
evidence; the online search and deltas do not run on ranks yet, and are refused by name.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from streamrec.consumers.example_source import JoinCounts
from streamrec.consumers.learner import Delta, LearnerProcess
from streamrec.consumers.rank_learner import RankDelta, RankLearnerProcess, RankSnapshot, die_with_parent
from streamrec.consumers.source_shards import ranks_state, source_from_state
from streamrec.consumers.trainer import Trainer, TrainerOptions
from streamrec.consumers.version_publisher import VersionPublisher, WorkerCut
from streamrec.consumers.worker_counters import MASK64, Counters
from streamrec.stream.errors import ConfigError, StreamrecError
from streamrec.stream.feature_spec import FeatureSpec
from streamrec.stream.featurizer import Featurizer
from streamrec.stream.kafka_client import TopicPartitionKey
from streamrec.stream.settings import Settings
from streamrec.versions.meta import DeltaMeta
from streamrec.versions.store import MissingShard, StagedShards

log = logging.getLogger(__name__)
PARTITIONS_WAIT_S = 0.5  # between looks for the input topics, before they exist
SHARD_POLL_S = 0.01  # rank 0, between looks for the other ranks' staged shards
STAGED_TTL_S = 3600  # a staged shard no version took (its group died before publishing) expires


@dataclass(frozen=True)
class RankPlace:
    """Which rank this process is, of how many (torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

    rank: int
    world: int
    local_rank: int = 0  # among the ranks on this host: each serves /metrics on its own port
    run_id: str = ""  # the rendezvous' name, the same on every rank: what their metrics are grouped by
    agent_pid: int | None = None  # the elastic agent that started this process (its parent)

    @classmethod
    def from_environment(cls) -> RankPlace | None:
        """This process's place when torch's launcher started it, else None."""
        if "TORCHELASTIC_RUN_ID" not in os.environ or "RANK" not in os.environ:
            return None
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)),
                   os.environ["TORCHELASTIC_RUN_ID"], os.getppid())


def refuse_on_ranks(options: TrainerOptions) -> None:
    """What one trainer does that ranks do not do yet, refused by its setting's name."""
    if options.search:
        raise ConfigError("search: not available when a trainer runs as ranks yet (--no-search; docs/distributed.md)")
    if options.spec_options.history_length or options.spec_options.history_fields:
        raise ConfigError("sequence models' histories are not sharded across ranks yet")


def _half(rank: int, partitions: list[int], cut: WorkerCut) -> bytes:
    """A rank's half of a version as JSON (its source state spliced in as it is)."""
    meta = orjson.dumps({
        "rank": rank, "partitions": partitions,
        "positions": {f"{t}:{p}": o for (t, p), o in sorted(cut.positions.items())},
        "counters": dataclasses.asdict(cut.counters), "join": dataclasses.asdict(cut.join),
        "watermark": cut.watermark, "event_time": cut.event_time, "ingested_at": cut.ingested_at})
    return b'{"meta":' + meta + b',"source":' + cut.source_state + b"}"


def merge_halves(halves: list[bytes]) -> WorkerCut:
    """Every rank's half of one version as the one worker half a version holds."""
    parts = [orjson.loads(h) for h in halves]
    metas = [part["meta"] for part in parts]
    counters = Counters()
    join = JoinCounts()
    positions: dict[TopicPartitionKey, int] = {}
    for meta in metas:
        for name, value in meta["counters"].items():
            setattr(counters, name, getattr(counters, name) + value)
        for name, value in meta["join"].items():
            setattr(join, name, getattr(join, name) + value)
        for key, offset in meta["positions"].items():
            topic, partition = key.rsplit(":", 1)
            positions[(topic, int(partition))] = int(offset)
    counters.digest &= MASK64
    watermarks = [meta["watermark"] for meta in metas]
    times = [meta["event_time"] for meta in metas if meta["event_time"] is not None]
    ingested = [meta["ingested_at"] for meta in metas if meta["ingested_at"] is not None]
    return WorkerCut(
        positions=positions, counters=counters, join=join,
        source_state=orjson.dumps(ranks_state([(meta["partitions"], part["source"])
                                               for meta, part in zip(metas, parts)])),
        history=None,
        # every label before the slowest rank's watermark is in the version
        watermark=None if any(w is None for w in watermarks) else min(watermarks),
        event_time=max(times) if times else None, ingested_at=max(ingested) if ingested else None)


class RankPublisher(VersionPublisher):
    """Versions of a trainer's ranks: every rank cuts its half, rank 0 publishes them all."""

    def __init__(self, *args: Any, rank: int, shard_timeout_s: float = 120.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank = rank
        self.partitions: list[int] = []
        self.merged: WorkerCut | None = None  # rank 0: the newest version's whole worker half
        self.last_quality: dict[str, float] | None = None  # the whole model's metrics at the last meeting
        self.bytes_sent = 0  # by every rank's learner into collectives, as of the last meeting
        self.learned_at_cut = 0.0  # the whole model's examples at the last cut (rank 0)
        self.learned_at_delta = 0.0  # ... and as last seen when deciding on a delta
        self._final = False  # the cut being taken is this worker's last
        self._snapshot: RankSnapshot | None = None  # the pending cut's, once the learners met
        self._staged = False  # this rank's shard of it is in Redis
        self._waiting_since: float | None = None  # rank 0: since when it waits for the others' shards
        self._published_cut: str | None = None  # the cut of the newest version these ranks published
        self.shard_timeout_s = shard_timeout_s

    def delta_due(self, learner: LearnerProcess, waiting: int = 0) -> bool:
        # what every rank learned since the last delta, not only rank 0's own examples
        learned = learner.latest_quality()[0]["examples"] if learner.ready else float("nan")
        if learned == learned and learned > self.learned_at_delta:
            self.learned_since_delta += int(learned - self.learned_at_delta)
            self.learned_at_delta = learned
        return super().delta_due(learner, waiting)

    def due_for(self, learned: float) -> bool:
        """Rank 0: a version is due, counting what every rank learned (``learned``: the whole
        model's examples, as the learner last posted them), not only rank 0's own examples."""
        return self.due((learned if learned == learned else 0) - self.learned_at_cut)  # NaN: nothing posted yet

    def cut(self, learner: LearnerProcess, worker: WorkerCut, final: bool = False) -> None:  # type: ignore[override]
        self._final = final
        super().cut(learner, worker)

    def request_snapshot(self, learner: LearnerProcess, worker: WorkerCut) -> None:
        assert isinstance(learner, RankLearnerProcess)
        learned = learner.latest_quality()[0]["examples"]
        self.learned_at_cut = learned if learned == learned else self.learned_at_cut
        learner.request_snapshot(self._final, _half(self.rank, self.partitions, worker))

    def complete(self, learner: LearnerProcess, block: bool) -> int | None:
        """Take this rank's snapshot and stage its shard; rank 0 then publishes the version once
        every rank's shard is staged (each call looks again; ``block`` waits, up to the ranks'
        timeout). The cut stays pending until then, so no other cut starts."""
        if self._pending is None:
            return None
        if self._snapshot is None:
            snapshot = learner.take_snapshot(block)
            if snapshot is None:
                return None
            assert isinstance(snapshot, RankSnapshot)
            self._snapshot = snapshot
            self.last_quality = snapshot.quality
            self.bytes_sent = snapshot.bytes_sent
            if self.rank == 0:
                self.merged = merge_halves(snapshot.halves)
        snapshot = self._snapshot
        if snapshot.weights and not self._staged:
            self._staged = self._stage(snapshot, block)
            if not self._staged:
                return None
        if self.rank != 0 or not snapshot.weights:  # no rank has had an example yet: nothing to publish
            self._pending = self._snapshot = None
            self._staged = False
            return None
        shards = StagedShards(snapshot.cut, snapshot.shards)
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        while not self._all_staged(shards):
            if time.monotonic() - self._waiting_since > self.shard_timeout_s:
                # a rank that took part in the meeting never wrote its shard: the group starts again
                raise StreamrecError(f"the ranks' shards of cut {shards.cut} were not all staged within "
                                     f"{self.shard_timeout_s:.0f} s (STREAMREC_RANK_TIMEOUT_S)")
            if not block:
                return None
            time.sleep(SHARD_POLL_S)
        pending = self._pending
        self._pending = self._snapshot = self._waiting_since = None
        self._staged = False
        self._published_cut = snapshot.cut
        return self.publish_cut(learner, pending, self.merged, snapshot, shards=shards)

    def _all_staged(self, shards: StagedShards) -> bool:
        try:
            return self.store.staged(shards) == shards.count
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("could not look for the staged shards of cut %s: %s", shards.cut, exc)
            return False

    def _stage(self, snapshot: RankSnapshot, block: bool) -> bool:
        """Write this rank's shard of the cut to Redis; False (retried later) while Redis is away."""
        while True:
            try:
                self.store.stage_shard(snapshot.cut, snapshot.shard, snapshot.weights, ttl_s=STAGED_TTL_S)
                return True
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("staging shard %d of cut %s failed (%s); retrying", snapshot.shard, snapshot.cut, exc)
                if not block:
                    return False
                time.sleep(SHARD_POLL_S * 10)

    def store_delta(self, meta: DeltaMeta, delta: Delta) -> None:
        """Announce the delta whose shards every rank staged (a gap if one could not)."""
        assert isinstance(delta, RankDelta)
        if not delta.staged:
            raise MissingShard(f"a rank could not stage its shard of delta {delta.lineage}:{delta.seq}")
        self.store.publish_delta(meta, b"", ttl_s=self.options.delta_ttl_s, shards=StagedShards(delta.cut, delta.shards))

    def sync_reference(self, learner: LearnerProcess, published: int | None = None,
                       weights: bytes | None = None, moved_on: bool = False) -> None:
        """The version these ranks just published is compared with as each rank's own shard of it
        (nothing travels); another live version is loaded and sent whole, to be split."""
        live = self.reference_due(learner, moved_on)
        if live is not None and live == published and self._published_cut is not None:
            assert isinstance(learner, RankLearnerProcess)
            learner.set_reference_cut(live, self._published_cut, self.options.paired_window)
            return
        super().sync_reference(learner, published, None, moved_on)


class RankTrainer(Trainer):
    """One rank of a trainer running as ranks; see the module docstring."""

    learner_class = RankLearnerProcess

    def __init__(self, settings: Settings, options: TrainerOptions, place: RankPlace, **kwargs: Any) -> None:
        refuse_on_ranks(options)
        if place.agent_pid is not None:
            # a rank outliving its agent (killed with SIGKILL) would learn on with nobody to
            # restart or stop it: it goes with the agent; the versions keep what it learned
            die_with_parent(place.agent_pid)
        port = options.metrics_port
        options = dataclasses.replace(
            options, worker_id=f"{options.worker_id}-rank{place.rank}",
            batch_size=max(1, -(-options.batch_size // place.world)),
            metrics_port=port + place.local_rank if port else port)
        super().__init__(settings, options, **kwargs)
        self.place = place
        self.metrics.mark_rank(place.run_id or options.worker_id, place.rank, place.world)
        self.publisher = RankPublisher(self.store, options.publish_options(), self.metrics, self._commit,
                                       on_publish=self.publisher.on_publish, rank=place.rank,
                                       shard_timeout_s=settings.rank_timeout_s)
        self.own: list[int] = []
        self._stored_source: dict[str, Any] | None = None
        self._input_finished = False

    def start(self) -> None:
        super().start()
        assert isinstance(self.learner, RankLearnerProcess)
        self.learner.delta_target = {"redis_url": self.redis_url, "namespace": self.settings.namespace,
                                     "model": self.options.model, "ttl_s": self.options.delta_ttl_s}

    # ------------------------------------------------------------------ resume and partitions

    def _resume_source(self, state: dict[str, Any]) -> None:
        self._stored_source = state  # split once this rank's partitions are known (attach)

    def resume(self) -> int | None:
        head = super().resume()
        if head is not None and self.featurizer is not None:
            spec = self.featurizer.spec
            if spec.history_length:
                raise ConfigError(f"version {head} of {self.options.model} has behaviour histories, which ranks "
                                  "do not shard yet: go on with one trainer, or train a new model name on ranks")
        if head is not None and self.place.rank != 0:
            self.counters = Counters()  # rank 0 carries the version's totals; the others add to them
        self.publisher.learned_at_cut = float(self.counters.examples)  # rank 0: the version's, learned before
        self.publisher.learned_at_delta = self.publisher.learned_at_cut
        return head

    def attach(self) -> None:
        """Assign this rank's partitions of every input topic at the resumed offsets."""
        assert self.consumer is not None
        topic = next(iter(self.topics))
        count = self.consumer.partition_count(topic)
        while not count and not self.stop_event.wait(PARTITIONS_WAIT_S):
            count = self.consumer.partition_count(topic)
        self.own = [p for p in range(count) if p % self.place.world == self.place.rank]
        self.publisher.partitions = self.own
        mine = {(t, p) for t in self.topics for p in self.own}
        self.positions = {tp: offset for tp, offset in self.positions.items() if tp in mine}
        if self._stored_source is not None:
            self.source = source_from_state(self._stored_source, self.own, lead=self.place.rank == 0)
            self._stored_source = None
        self.assigned = mine
        self._partition_count = count
        if mine:
            self.consumer.assign_at({tp: self.positions.get(tp, 0) for tp in sorted(mine)})
        log.info("rank %d of %d reads partitions %s of %s", self.place.rank, self.place.world, self.own,
                 sorted(self.topics))
        self.subscribed()

    # ------------------------------------------------------------------ learning and versions

    def _ensure_model(self, examples: list[Any]) -> None:
        assert isinstance(self.learner, RankLearnerProcess)
        if self.featurizer is None:
            agreed = self.learner.propose(self.options.model, self._proposed_spec(examples).to_json(), self.options.seed,
                                          self.options.window_examples, self.options.model_settings)
            self.featurizer = Featurizer(FeatureSpec.from_json(agreed))
        elif not self.learner.ready:
            self._start_learning()

    def _step_versions(self) -> None:
        learner = self.learner
        assert isinstance(learner, RankLearnerProcess)
        if self.publisher.cutting:
            self.publisher.complete(learner, block=False)
        elif self.place.rank == 0:
            # the other ranks may be learning while rank 0's own partitions are quiet
            if learner.ready and not learner.all_finished and self.publisher.due_for(learner.latest_quality()[0]["examples"]):
                self.publisher.cut(learner, self._worker_cut())
        elif learner.cut_wanted:
            self.publisher.cut(learner, self._worker_cut())

    def _own_finished(self) -> bool:
        # a rank without partitions (more ranks than partitions) has nothing to wait for
        return bool(self._partition_count) and self.source.finished(self.own) and self._read_to_the_end()

    def tick(self) -> bool:
        learner = self.learner
        assert isinstance(learner, RankLearnerProcess)
        if self.options.exit_at_end and (self._input_finished or self._own_finished()):
            if not self._input_finished:
                self.source.advance()
                self._train_ready(flush=True)
                learner.finish_input()
                self._input_finished = True
            if learner.all_finished and not self.publisher.cutting:
                return True
        self._step_versions()
        if self.place.rank == 0:  # rank 0 asks for deltas; every rank writes its shard of each
            if self.publisher.delta_pending:
                self.publisher.complete_delta(learner, block=False)
            if not learner.all_finished and self.publisher.delta_due(learner, waiting=self.source.ready):
                self._request_delta()
        self._every_second(check_rollback=self.place.rank == 0)  # rank 0 publishes, so it rolls back
        return False

    def finish(self, finished: bool) -> dict[str, Any]:
        """One last meeting of every rank: each cuts its final half (or completes the cut it is in)."""
        learner = self.learner
        assert isinstance(learner, RankLearnerProcess)
        self.publisher.complete_delta(learner, block=True)
        if not self.publisher.cutting:
            self.publisher.cut(learner, self._worker_cut(), final=True)
        self.publisher.complete(learner, block=True)
        self._measure_lag()
        return self.report(finished)

    def final_quality(self) -> tuple[dict[str, float], float]:
        # the last meeting's: after it the other ranks may be gone, and the group with them
        quality = self.publisher.last_quality
        if self.learner is None or quality is None:
            return super().final_quality()
        return quality, self.learner.latest_quality()[1]

    def report(self, finished: bool) -> dict[str, Any]:
        report = super().report(finished)
        report.update(rank=self.place.rank, ranks=self.place.world, partitions=self.own)
        merged = self.publisher.merged
        if merged is not None:  # rank 0: the whole model's counts, as of its last version
            c = merged.counters
            this_run = c.examples - self._examples_at_start
            wall = report["wall_seconds"]
            report.update(examples=c.examples, examples_this_run=this_run, digest=f"{c.digest:016x}",
                          dead_letters=c.dead_letters, events_consumed=c.impressions_read + c.clicks_read,
                          join=dataclasses.asdict(merged.join),
                          examples_per_second=this_run / wall if wall > 0 else float("nan"),
                          bytes_sent_per_example=self.publisher.bytes_sent / max(this_run, 1))
        return report


__all__ = ["RankPlace", "RankPublisher", "RankTrainer", "merge_halves", "refuse_on_ranks"]
