"""The learner process of one rank of a trainer that runs as many ranks (``streamrec train --ranks``).

Each rank is a trainer worker (polling its own partitions, joining, featurizing) with a learner
process, as one trainer is; the ranks' learner processes form a torch.distributed (gloo) group
and learn one model together (models/sharded.py: tables split by id, the network replicated).
The pipe protocol is the one-process learner's (consumers/learner.py); what changes is that a
learner no longer waits for its own worker alone. It runs global steps in lockstep with the other
ranks, each step:

1. reads its pipe until it has a batch (its share of the step) or a snapshot request, answering
   other requests in order (so ``quality`` still comes after every batch sent before it);
2. exchanges a small header with every rank: share size, whether it has a model, a model
   proposal, a snapshot request (a *marker*), whether its worker has finished its stream;
3. if any rank has a share, every rank learns its share (an empty one included) and the
   predictions and labels of the whole global batch go to every rank's streaming metrics, so the
   metrics are the whole model's and the same on every rank.

**Versions.** Rank 0's worker decides a version is due and sends a marker; the header tells the
other ranks, whose learners ask their workers to cut too (``control[CUT_WANTED]``). A learner
with a marker stops reading its pipe and takes part in steps with empty shares until every rank
has one; then, at that one step, each rank writes its own shard of the model
(``ShardedModel.shard_bytes``) for its worker to stage in Redis under the cut's name (broadcast by
rank 0), and every worker's half of the version (offsets, example source, counters) is gathered
on rank 0, whose worker publishes one version holding every half and every staged shard. No
process ever holds the whole model to write it, and a version is visible whole or not at all: a
rank killed at any instant fails the collectives of the others, its shard is never staged, and
the group restarts from the newest version.

**The gate.** Rank 0's publisher sets the live version to compare with (``set_reference``);
the header tells every rank, which takes it at the same step from rank 0. The reference is
sharded like the model: the version these ranks just published is each rank's own shard of it,
kept from the cut; another version is loaded whole and split. Each rank predicts its own share
with it (a collective, as learning is), and the paired window gets the whole global batch on
every rank.

**Deltas.** Rank 0's worker asks its learner for a delta; the header tells every rank, and at
that step each writes the rows it changed since the group's previous delta and stages them in
Redis itself (``delta_meeting``); rank 0's worker announces the delta once every shard is in.

**The model.** On a fresh start, the first worker to see examples proposes its spec; the header
says which rank proposed first, that rank's proposal is broadcast, and every rank builds the same
model from it (every worker featurizes with the agreed spec). A resumed rank loads the head
version; the header checks that all ranks resumed from the same one.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from streamrec.consumers.learner import (
    _BATCH,
    _DELTA,
    _ERROR,
    _INIT,
    _OK,
    _PROBE,
    _QUALITY,
    _REFERENCE,
    _RESUME,
    _SNAPSHOT,
    _STOP,
    SEARCH_KEYS,
    Delta,
    LearnerProcess,
    Snapshot,
    _pack,
    _post,
    _post_tables,
    _unpack,
    batch_of,
)
from streamrec.stream.paired_window import no_reference

_FINISHED = b"Z"  # the worker has read its partitions to their end: after its last batch
CUT_WANTED, ALL_FINISHED = 0, 1  # control[...] the learner posts for its worker
IDLE_WAIT_S = 0.02  # how long an idle group waits for a batch before its next (empty) step
TIMEOUT_ENV = "STREAMREC_RANK_TIMEOUT_S"  # Settings.rank_timeout_s, read here from the environment
# header columns
_SIZE, _HAS_MODEL, _PROPOSING, _MARKER, _FINAL, _DONE, _BASE, _REF, _DELTA_ASKED = range(9)


class _Stop(Exception):
    """The worker asked the learner to stop."""


@dataclass(frozen=True)
class RankSnapshot(Snapshot):
    """A snapshot taken by every rank at the same global step: ``weights`` is this rank's shard of
    the model (empty everywhere before any rank had examples), to be staged under ``cut``; on rank
    0 the metrics and every rank's worker half (JSON, in rank order); ``final``: every rank's
    marker was its worker's last."""

    cut: str  # the ranks' name for this cut, which their staged shards carry
    shard: int
    shards: int
    halves: list[bytes]
    final: bool
    bytes_sent: int  # payload every rank's learner has put into collectives since it started


@dataclass(frozen=True)
class RankDelta(Delta):
    """A delta every rank wrote at one step, each its own shard staged in Redis under ``cut``
    (``staged``: all of them are); ``weights`` is empty."""

    cut: str
    shards: int
    staged: bool


class _RankLoop:
    """One rank's learner: see the module docstring."""

    def __init__(self, conn: Connection, board: Any, population: Any, tables: Any, control: Any,
                 timeout_s: float = 120.0) -> None:
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        self.conn, self.board, self.population, self.tables, self.control = conn, board, population, tables, control
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.sharded: Any = None
        self.last_shard: tuple[str, bytes] | None = None  # (cut, this rank's shard of it): the reference to be
        self.quality: Any = None
        self.empty: Any = None  # an empty share of the model's widths
        self.base_version = -1
        self.spec_json = ""
        self.proposal: dict[str, Any] | None = None  # this worker's INIT, answered once a model is agreed
        # the live version the gate compares with (stream/paired_window.py): sharded like the
        # model, each rank predicting its own share; set by rank 0's worker, taken by all at one step
        self.pending_reference: tuple[dict[str, Any], list[bytes]] | None = None
        self.reference: Any = None
        self.paired: Any = None
        self.share: Any = None
        self.marker: tuple[bool, bytes] | None = None  # (the worker's last?, its half of the version)
        self.delta_request: dict[str, Any] | None = None  # rank 0's worker asked for a delta
        self.delta_seq = 0  # deltas of the group's lineage so far (every rank counts them in step)
        self.redis: Any = None  # where each rank stages its shard of a delta (from rank 0's request)
        self.finished_input = False
        self.timeout_s = timeout_s  # the longest a cut may wait for a rank's worker
        self.cut_since: float | None = None  # since when some ranks' markers wait for the others'
        self.left = False  # the final meeting is over: no more steps
        self.lineage = uuid.uuid4().hex[:12]
        self.seconds = 0.0
        self.bytes_sent = 0  # this loop's own collectives (the model's are ShardedModel.bytes_sent)
        self.posted = self.tables_posted = 0.0

    # ------------------------------------------------------------------ the pipe

    def reply(self, header: dict[str, Any], arrays: list[np.ndarray] = (), blobs: list[bytes] = ()) -> None:
        self.conn.send_bytes(_pack(_OK, header, arrays, blobs))

    def read(self, wait_s: float | None) -> None:
        """Take messages until this step's share or a marker (waiting up to ``wait_s`` for the first)."""
        while self.share is None and self.marker is None and self.delta_request is None:
            if not self.conn.poll(wait_s):
                return
            wait_s = 0.0
            try:
                message = self.conn.recv_bytes()
            except (EOFError, OSError):
                raise _Stop from None
            op, header, arrays, blobs = _unpack(message)
            if op == _STOP:
                raise _Stop
            if op == _BATCH:
                self.share = batch_of(header, arrays)
            elif op == _SNAPSHOT:
                self.marker = (bool(header.get("final")), blobs[0])
            elif op == _FINISHED:
                self.finished_input = True
            elif op == _INIT:
                self.proposal = header
                if self.sharded is not None:
                    self.answer_proposal()
            elif op == _RESUME:
                self.resume(header, blobs)
                self.reply({"lineage": self.lineage})
            elif op == _QUALITY:
                snapshot = self.snapshot_of_quality()
                self.post(snapshot)
                self.reply({"snapshot": snapshot, "seconds": self.seconds, "search": None})
            elif op == _REFERENCE:  # rank 0's publisher: every rank takes it at the same step
                self.pending_reference = (header, blobs)
            elif op == _PROBE:  # probes are not predicted by ranks: acknowledged unused
                self.reply({})
            elif op == _DELTA:  # rank 0's publisher: every rank writes its shard at the next step
                self.delta_request = header
            else:
                raise RuntimeError(f"unknown learner request {op!r}")

    # ------------------------------------------------------------------ the model

    def build(self, whole: Any, quality: Any, base_version: int) -> None:
        from streamrec.models.sharded import ShardedModel
        from streamrec.stream.featurizer import Featurizer

        self.spec_json = whole.spec.to_json()
        self.sharded = ShardedModel(_stepping_per_batch(whole))
        self.quality = quality
        self.base_version = base_version
        self.empty = Featurizer(whole.spec).build([], [], [], [], None, [])

    def create(self, header: dict[str, Any]) -> None:
        from streamrec.models import create_model
        from streamrec.stream.feature_spec import FeatureSpec
        from streamrec.stream.quality_metrics import StreamingMetrics

        whole = create_model(header["model"], FeatureSpec.from_json(header["spec"]), seed=header["seed"],
                             settings=header.get("settings") or {})
        self.build(whole, StreamingMetrics(header["window"]), -1)

    def resume(self, header: dict[str, Any], blobs: list[bytes]) -> None:
        from streamrec.models import model_from_stored
        from streamrec.stream.quality_metrics import StreamingMetrics, load_metrics

        if header.get("search"):
            raise RuntimeError("the online search does not run on ranks")
        window = header["window"]
        quality = load_metrics(blobs[1], window) if blobs[1] else StreamingMetrics(window)
        self.build(model_from_stored(blobs[0], blobs[2:]), quality, int(header.get("base_version") or 0))

    def answer_proposal(self) -> None:
        self.proposal = None
        self.reply({"spec": self.spec_json, "lineage": self.lineage})

    def snapshot_of_quality(self) -> dict[str, float]:
        from streamrec.stream.quality_metrics import StreamingMetrics

        quality = self.quality if self.quality is not None else StreamingMetrics()
        paired = self.paired.summary() if self.paired is not None else no_reference()
        return {**quality.snapshot(), **paired, **{k: float("nan") for k in SEARCH_KEYS}}

    def take_reference(self) -> None:
        """Every rank takes the reference rank 0's worker set (the header said one is pending): the
        version just published is each rank's own shard of it; another is sent whole and split."""
        from streamrec.models import model_from_stored
        from streamrec.models.sharded import ShardedModel
        from streamrec.stream.paired_window import PairedWindow

        header, blobs = self.pending_reference if self.rank == 0 and self.pending_reference else ({}, [])
        header = json.loads(self.broadcast_bytes(json.dumps({**header, "blobs": len(blobs)}).encode(), src=0))
        self.pending_reference = None
        self.reference = self.paired = None
        if header.get("version") is None:
            return
        if header.get("cut") is not None:
            if self.last_shard is None or self.last_shard[0] != header["cut"]:
                raise RuntimeError(f"the reference is cut {header['cut']}, which this rank did not take")
            self.reference = self.sharded.copy_from_shard(self.last_shard[1])
        else:
            blobs = [self.broadcast_bytes(blobs[k] if self.rank == 0 else b"", src=0) for k in range(header["blobs"])]
            whole = model_from_stored(blobs[0], blobs[1:])
            if whole.spec.to_json() != self.spec_json:
                print(f"live version {header['version']} has another feature spec: not compared", file=sys.stderr)
                return
            self.reference = ShardedModel(_stepping_per_batch(whole))
        self.paired = PairedWindow(int(header["version"]), int(header["window"]))

    def broadcast_bytes(self, data: bytes, src: int) -> bytes:
        """``data`` of rank ``src`` on every rank (the others pass anything)."""
        torch = self.torch
        size = torch.tensor([len(data)], dtype=torch.int64)
        self.dist.broadcast(size, src=src)
        buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.rank == src and data
                  else torch.empty(int(size), dtype=torch.uint8))
        self.dist.broadcast(buffer, src=src)
        return bytes(buffer.numpy())

    def post(self, snapshot: dict[str, float] | None = None) -> None:
        _post(self.board, snapshot or self.snapshot_of_quality(), self.seconds, self.population, [])

    # ------------------------------------------------------------------ a global step

    def header(self) -> Any:
        torch = self.torch
        row = torch.zeros(9, dtype=torch.int64)
        row[_SIZE] = 0 if self.share is None else len(self.share)
        row[_HAS_MODEL] = self.sharded is not None
        row[_PROPOSING] = self.proposal is not None and self.sharded is None
        row[_MARKER] = self.marker is not None
        row[_FINAL] = self.marker is not None and self.marker[0]
        row[_DONE] = self.finished_input and self.share is None
        row[_BASE] = self.base_version
        row[_REF] = self.pending_reference is not None
        row[_DELTA_ASKED] = self.delta_request is not None
        rows = [torch.empty_like(row) for _ in range(self.world)]
        self.dist.all_gather(rows, row)
        self.bytes_sent += row.numel() * row.element_size()
        return torch.stack(rows)

    def step(self) -> bool:
        """One global step with every rank; True if it did anything (else the next read waits)."""
        heads = self.header()
        sizes = heads[:, _SIZE]
        if not bool(heads[:, _HAS_MODEL].all()):
            proposers = (heads[:, _PROPOSING] > 0).nonzero().flatten()
            if bool(heads[:, _HAS_MODEL].any()):
                return False  # a rank is still loading the version the others resumed from
            if len(proposers):
                self.agree(int(proposers[0]))
                return True
            # no rank has had an example yet: versions and the end carry no model
            return self.markers_and_end(heads)
        if len(set(heads[:, _BASE].tolist())) > 1:
            raise RuntimeError(f"ranks resumed from different versions: {heads[:, _BASE].tolist()}")
        acted = False
        if bool(heads[0, _REF]):
            self.take_reference()
            acted = True
        if int(sizes.sum()) > 0:
            self.learn(sizes)
            acted = True
        if bool(heads[0, _DELTA_ASKED]):
            self.delta_meeting()
            acted = True
        return self.markers_and_end(heads) or acted

    def markers_and_end(self, heads: Any) -> bool:
        """Snapshot when every rank has a marker; tell the worker whether rank 0 is cutting and
        whether every rank has finished. True if a snapshot was taken."""
        taken = False
        if bool(heads[:, _MARKER].all()):
            self.snapshot(final=bool(heads[:, _FINAL].all()))
            taken = True
            self.cut_since = None
        elif bool(heads[:, _MARKER].any()):
            # a worker that hangs leaves its learner stepping with empty shares, so no collective
            # times out: a cut that some ranks never join fails the group, for the agent to restart
            now = time.monotonic()
            self.cut_since = self.cut_since or now
            if now - self.cut_since > self.timeout_s:
                missing = (heads[:, _MARKER] == 0).nonzero().flatten().tolist()
                raise RuntimeError(f"ranks {missing} did not cut their half of a version within {self.timeout_s:.0f} s "
                                   f"({TIMEOUT_ENV}): their workers hang")
        self.control[CUT_WANTED] = int(self.rank != 0 and bool(heads[0, _MARKER]) and self.marker is None)
        if bool(heads[:, _DONE].all()) and not bool(heads[:, _MARKER].any()):
            self.control[ALL_FINISHED] = 1
        return taken

    def agree(self, proposer: int) -> None:
        """Every rank builds the model ``proposer``'s worker proposed."""
        text = json.dumps(self.proposal).encode() if self.rank == proposer else b""
        self.create(json.loads(self.broadcast_bytes(text, src=proposer)))
        if self.proposal is not None:
            self.answer_proposal()

    def learn(self, sizes: Any) -> None:
        from streamrec.models.sharded import gather_rows

        torch = self.torch
        started = time.perf_counter()
        batch = self.share if self.share is not None else self.empty
        self.share = None
        reference = torch.zeros(len(batch), dtype=torch.float64)
        if self.reference is not None:  # every rank predicts with it, an empty share included
            reference = torch.from_numpy(np.asarray(self.reference.predict(batch), dtype=np.float64))
        probabilities = torch.from_numpy(np.asarray(self.sharded.learn(batch), dtype=np.float64))
        labels = batch.labels.to(torch.float64)
        # the whole global batch's predictions (and the live version's), in rank order, for the
        # same metrics and the same gate evidence on every rank
        mine = torch.stack([probabilities, reference, labels], dim=1)
        every = torch.cat(gather_rows(mine))
        self.bytes_sent += mine.numel() * mine.element_size()
        self.quality.update(every[:, 0].numpy(), every[:, 2].numpy())
        if self.paired is not None:
            self.paired.update(every[:, 0].numpy(), every[:, 1].numpy(), every[:, 2].numpy())
        self.seconds += time.perf_counter() - started
        if started - self.posted >= 0.5:
            self.post()
            self.posted = started
        model = self.sharded.model
        if self.tables is not None and model.keyed_tables() and started - self.tables_posted >= 5.0:
            from streamrec.models.keyed_rows import table_summary

            _post_tables(self.tables, table_summary(model))
            self.tables_posted = started

    def delta_meeting(self) -> None:
        """Every rank's rows changed since the group's previous delta, as of this step: each rank
        stages its shard in Redis itself (no worker waits for it), and rank 0 answers its worker
        with whether every shard is in, for it to publish the delta."""
        torch, dist = self.torch, self.dist
        asked = self.delta_request if self.rank == 0 else None
        text = json.dumps({**asked, "lineage": self.lineage}).encode() if asked is not None else b""
        header = json.loads(self.broadcast_bytes(text, src=0))
        self.delta_request = None
        self.lineage = header["lineage"]  # the group's is rank 0's
        self.delta_seq += 1
        blob = self.sharded.shard_delta_bytes(bool(header["dense"]))
        staged = torch.tensor([int(self.stage_delta(header, blob))])
        dist.all_reduce(staged, op=dist.ReduceOp.MIN)
        if self.rank == 0:
            self.reply({"lineage": self.lineage, "seq": self.delta_seq,
                        "base_version": self.base_version if self.base_version >= 0 else None,
                        "dense": bool(header["dense"]), "shards": self.world, "staged": bool(staged),
                        "cut": delta_cut(self.lineage, self.delta_seq)})

    def stage_delta(self, header: dict[str, Any], blob: bytes) -> bool:
        """Write this rank's shard of a delta to Redis; False if Redis did not take it (the
        delta is then not published: a gap scorers cross by loading the next version)."""
        import redis

        from streamrec.stream.redis_connection import connect
        from streamrec.versions.store import VersionStore

        try:
            if self.redis is None:
                self.redis = connect(header["redis_url"])
            VersionStore(self.redis, header["namespace"], header["model"]).stage_shard(
                delta_cut(self.lineage, self.delta_seq), self.rank, blob, ttl_s=header["ttl_s"])
            return True
        except redis.RedisError as exc:
            print(f"rank {self.rank}: delta {self.lineage}:{self.delta_seq} not staged: {exc}", file=sys.stderr)
            return False

    def snapshot(self, final: bool) -> None:
        from streamrec.models.sharded import gather_rows
        from streamrec.stream.quality_metrics import metrics_blob

        torch, dist = self.torch, self.dist
        assert self.marker is not None
        _last, half = self.marker
        cut = self.broadcast_bytes(uuid.uuid4().hex.encode() if self.rank == 0 else b"", src=0).decode()
        shard = self.sharded.shard_bytes() if self.sharded is not None else b""
        finite = torch.tensor([int(self.sharded is None or self.sharded.model.all_finite())])
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        halves = gather_rows(torch.frombuffer(bytearray(half), dtype=torch.uint8) if half
                             else torch.zeros(0, dtype=torch.uint8))
        sent = torch.tensor([self.bytes_sent + (self.sharded.bytes_sent if self.sharded is not None else 0)])
        dist.all_reduce(sent)
        self.marker = None
        self.left = final
        self.control[CUT_WANTED] = 0
        self.last_shard = (cut, shard)
        quality = self.snapshot_of_quality()
        blobs = [shard, metrics_blob(self.quality) if self.rank == 0 and self.sharded is not None else b""]
        if self.rank == 0:
            blobs += [bytes(h.numpy()) for h in halves]
        self.reply({"quality": quality, "finite": bool(finite), "lineage": self.lineage, "delta_seq": self.delta_seq,
                    "final": final, "bytes_sent": int(sent), "cut": cut, "shard": self.rank,
                    "shards": self.world}, blobs=blobs)

    def run(self) -> None:
        wait = 0.0
        while not self.left:
            self.read(wait)
            wait = 0.0 if self.step() else IDLE_WAIT_S
        # every rank's last meeting is over and the group may be gone: answer requests until the stop
        while True:
            self.read(None)
            self.share = self.marker = None


def delta_cut(lineage: str, seq: int) -> str:
    """The name the ranks stage their shards of delta ``seq`` of ``lineage`` under."""
    return f"delta-{lineage}-{seq}"


def _stepping_per_batch(whole: Any) -> Any:
    """``whole`` with its FTRL part stepping once per global batch, as ranks learn: a version of
    one trainer goes on with the same z and n, stepped another way from here."""
    if getattr(whole, "wide", None) is not None and whole.wide.config.per_example:
        import dataclasses

        from streamrec.models import replace_setting

        whole.config = replace_setting(whole.config, "ftrl.per_example", False)
        whole.wide.reconfigure(dataclasses.replace(whole.wide.config, per_example=False))
    return whole


def die_with_parent(parent: int) -> None:
    """Be killed when the parent process dies (Linux; elsewhere nothing): ``parent`` is its pid as
    this process saw it first, to tell whether it died before the kill was arranged."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


def _die_with_parent() -> None:
    """A learner is killed when its worker dies: one left behind by a killed worker would keep the
    group's store and addresses alive into the restarted group's rendezvous (elsewhere than
    Linux the learner still leaves at its pipe's end)."""
    if os.getppid() == 1:  # the worker died before this process got here
        os._exit(1)
    die_with_parent(os.getppid())


def _rank_child(conn: Connection, board: Any, population: Any, tables: Any, control: Any) -> None:
    # The worker decides when to stop; Ctrl-C, and torch's agent stopping the group with SIGTERM,
    # reach the whole process group, so this process ignores both and leaves when its pipe closes
    # (a killed worker takes its learner with it), after the ranks' last version.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # ranks with more threads each than the machine has cores crawl
    from streamrec.stream.settings import Settings

    timeout = float(os.environ.get(TIMEOUT_ENV) or Settings.model_fields["rank_timeout_s"].default)
    loop = None
    try:
        # the launcher's rendezvous (torchrun's MASTER_ADDR/PORT, RANK, WORLD_SIZE) reaches this
        # process through its environment
        from torch.distributed.rendezvous import rendezvous

        store, rank, world = next(rendezvous("env://", timeout=timedelta(seconds=timeout)))
        # keys of this attempt only: a restarted group must not read a dead one's addresses
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("gloo", store=dist.PrefixStore(f"streamrec-ranks/{attempt}", store), rank=rank,
                                world_size=world, timeout=timedelta(seconds=timeout))
        loop = _RankLoop(conn, board, population, tables, control, timeout)
        loop.run()
    except _Stop:
        pass
    except Exception:  # noqa: BLE001 - the worker raises it at its next request; this rank leaves the group
        text = traceback.format_exc()
        print(f"rank learner failed:\n{text}", file=sys.stderr, flush=True)  # under torchrun, in its log
        try:
            conn.send_bytes(_pack(_ERROR, {"traceback": text}))
        except OSError:
            pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class RankLearnerProcess(LearnerProcess):
    """A rank's handle on its learner process (module docstring)."""

    def __init__(self) -> None:
        import multiprocessing

        self._control = multiprocessing.get_context("spawn").Array("q", [0, 0], lock=False)
        super().__init__(_rank_child, (self._control,))
        # where the ranks stage their shards of a delta: {redis_url, namespace, model, ttl_s}
        self.delta_target: dict[str, Any] = {}

    def propose(self, model: str, spec_json: str, seed: int, window: int, settings: dict[str, str]) -> str:
        """Propose this worker's model; the spec every rank learns with (the first proposal's)."""
        header, _arrays, _blobs = self._request(_pack(_INIT, {"model": model, "spec": spec_json, "seed": seed,
                                                              "window": window, "settings": settings}))
        self.ready = True
        self.reference_version = None
        return header["spec"]

    def request_snapshot(self, final: bool = False, half: bytes = b"") -> None:  # type: ignore[override]
        """Mark this point of the worker's batches with its half of the next version."""
        self._ask(_SNAPSHOT, {"final": final}, [half])

    def take_snapshot(self, block: bool) -> RankSnapshot | None:
        reply = self._take(_SNAPSHOT, block)
        if reply is None:
            return None
        header, _arrays, blobs = reply
        return RankSnapshot(blobs[0], blobs[1], header["quality"], None, header["finite"], header["lineage"],
                            header["delta_seq"], header["cut"], int(header["shard"]), int(header["shards"]),
                            list(blobs[2:]), bool(header["final"]), int(header["bytes_sent"]))

    def request_delta(self, dense: bool) -> None:
        """Ask every rank for its rows changed since the group's previous delta, staged in Redis
        at ``delta_target`` (rank 0's worker only)."""
        self._ask(_DELTA, {"dense": dense, **self.delta_target})

    def take_delta(self, block: bool) -> Delta | None:
        reply = self._take(_DELTA, block)
        if reply is None:
            return None
        header, _arrays, _blobs = reply
        return RankDelta(b"", header["lineage"], header["seq"], header["base_version"], header["dense"], None,
                         header["cut"], int(header["shards"]), bool(header["staged"]))

    def set_reference_cut(self, version: int, cut: str, window: int) -> None:
        """Compare with ``version``, which these ranks published from cut ``cut``: each rank takes
        its own shard of that cut (rank 0's worker only)."""
        self._send(_pack(_REFERENCE, {"version": version, "window": window, "cut": cut}))
        self.reference_version = version

    def finish_input(self) -> None:
        """The worker has nothing more to send (its partitions' end): ordered after its batches."""
        self._send(_pack(_FINISHED, {}))

    @property
    def cut_wanted(self) -> bool:
        """Rank 0 is cutting a version: this rank's worker should cut its half now."""
        return bool(self._control[CUT_WANTED])

    @property
    def all_finished(self) -> bool:
        """Every rank's worker has finished its partitions and every batch is learned."""
        return bool(self._control[ALL_FINISHED])


__all__ = ["RankDelta", "RankLearnerProcess", "RankSnapshot", "TIMEOUT_ENV", "delta_cut", "die_with_parent"]
