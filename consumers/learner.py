"""The learner process: owns the model and the streaming metrics of one trainer worker.

The worker's own process polls Kafka, decodes, joins and featurises: pure-Python work that
holds the GIL. Learning runs here, in a second process, so the two overlap on two cores (a
thread could not: measured, a learner thread gained nothing because both halves need the GIL).

Messages go over a pipe as raw bytes, never pickle: one opcode byte, a JSON header, then the
arrays' bytes. The pipe is ordered, so a ``snapshot`` or ``quality`` request is answered after
every batch sent before it has been learned, which is exactly what a consistent checkpoint needs.
Batches get no answer; an error in learning is reported at the next request. The process exits
when its pipe closes, so a worker killed with SIGKILL takes its learner with it.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import signal
import struct
import sys
import threading
import time
import traceback
import types
import uuid
from collections import deque
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Iterator

import numpy as np

from streamrec.stream.errors import StreamrecError
from streamrec.stream.paired_window import PAIRED_KEYS, PairedWindow, no_reference

_INIT, _RESUME, _BATCH, _SNAPSHOT, _DELTA, _QUALITY, _PROBE, _REFERENCE, _STOP = (
    b"I", b"R", b"B", b"S", b"D", b"Q", b"T", b"F", b"X")
_OK, _ERROR = b"o", b"e"
OUTBOX_DEPTH = 8

# The other core polls and joins. Predictions compared bit for bit with the learner's must use
# the same count: on some CPUs (seen on an AVX-512/AMX Xeon) MKL splits a matrix-vector product's
# reduction across threads, and 1 and 2 threads then differ in the last bit of float32.
LEARNER_THREADS = 1


class LearnerError(StreamrecError):
    """The learner process failed or went away."""


@dataclass(frozen=True)
class Snapshot:
    """The learner's half of a version: the model and metrics as of every batch sent before the request."""

    weights: bytes          # safetensors of the model (models/base.py)
    metrics: bytes          # safetensors of the streaming metrics (stream/quality_metrics.py)
    quality: dict[str, float]
    probe: np.ndarray | None  # predictions for the probe batch at the snapshot, if one is set
    finite: bool            # every weight is a finite number
    lineage: str            # this learner's delta sequence ...
    delta_seq: int          # ... and the last delta whose changes the snapshot holds


@dataclass(frozen=True)
class Delta:
    """The rows (and, every few seconds, dense weights) the learner changed since its previous delta."""

    weights: bytes          # models/base.py delta_bytes
    lineage: str
    seq: int                # 1, 2, ... within the lineage
    base_version: int | None  # the version this learner started from (deltas apply on top of it)
    dense: bool
    probe: np.ndarray | None


def _pack(op: bytes, header: dict[str, Any], arrays: list[np.ndarray] = (), blobs: list[bytes] = ()) -> bytes:
    header = {**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays], "blobs": [len(b) for b in blobs]}
    head = json.dumps(header).encode()
    parts = [op, struct.pack("<I", len(head)), head]
    parts += [np.ascontiguousarray(a).tobytes() for a in arrays]
    parts += list(blobs)
    return b"".join(parts)


def _unpack(message: bytes) -> tuple[bytes, dict[str, Any], list[np.ndarray], list[bytes]]:
    op = message[:1]
    (size,) = struct.unpack_from("<I", message, 1)
    header = json.loads(message[5 : 5 + size])
    at = 5 + size
    arrays = []
    for dtype, shape in header.pop("arrays"):
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        arrays.append(np.frombuffer(message, dtype=dt, count=count, offset=at).reshape(shape))
        at += count * dt.itemsize
    blobs = []
    for length in header.pop("blobs"):
        blobs.append(message[at : at + length])
        at += length
    return op, header, arrays, blobs


def _batch_message(op: bytes, batch: Any, labels: bool = True) -> bytes:
    arrays = [batch.ids.numpy(), batch.cross_ids.numpy(), batch.dense.numpy()]
    has_labels = labels and batch.labels is not None
    if has_labels:
        arrays.append(batch.labels.numpy())
    if batch.history is not None:
        arrays.append(batch.history.numpy())
    if batch.event_time is not None:
        arrays.append(batch.event_time.numpy())
    return _pack(op, {"labels": has_labels, "history": batch.history is not None,
                      "event_time": batch.event_time is not None}, arrays)


def batch_of(header: dict[str, Any], arrays: list[np.ndarray]) -> Any:
    """The :class:`SparseBatch` a ``_batch_message`` carries (in a learner process: imports torch)."""
    import torch

    from streamrec.stream.sparse_batch import SparseBatch

    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    labels = tensors.pop(3) if header.get("labels") else None
    history = tensors.pop(3) if header.get("history") else None
    event_time = tensors.pop(3) if header.get("event_time") else None
    return SparseBatch(tensors[0], tensors[1], tensors[2], labels, history, event_time)


# ------------------------------------------------------------------------------ child process


# the online search, when on (models/online_search.py): NaN without one
SEARCH_KEYS = ("search_promotions", "search_challengers", "search_compute_multiple")
QUALITY_KEYS = ("examples", "positives", "auc", "auc_error_bound", "auc_window", "logloss", "logloss_window",
                "normalized_entropy", "normalized_entropy_window", "calibration", "calibration_window",
                *PAIRED_KEYS, *SEARCH_KEYS)
POST_EVERY_S = 0.5
POPULATION_BYTES = 8192  # the search's population as JSON, beside the numbers (a few challengers)
TABLES_BYTES = 16384  # keyed tables' summaries as JSON (rows per field of two tables)
TABLES_EVERY_S = 5.0  # counting rows per field reads every key: less often than the numbers


def _post(board: Any, snapshot: dict[str, float], seconds: float, population: Any = None,
          members: list[dict[str, Any]] | None = None) -> None:
    with board.get_lock():
        for i, key in enumerate(QUALITY_KEYS):
            board[i] = snapshot[key]
        board[len(QUALITY_KEYS)] = seconds
    if population is not None:
        text = json.dumps(members or []).encode()
        if len(text) >= POPULATION_BYTES:  # long move names (many crosses) cut to fit: 16 short ones always do
            text = json.dumps([{**m, "member": m["member"][:80]} for m in (members or [])[:16]]).encode()
        with population.get_lock():  # whole, never cut: the reader parses it
            population.value = text


def _post_tables(tables: Any, summary: dict[str, Any]) -> None:
    text = json.dumps(summary).encode()
    if len(text) >= TABLES_BYTES:  # very many fields: the totals always fit
        text = json.dumps({group: {**t, "fields": {}} for group, t in summary.items()}).encode()
    with tables.get_lock():  # whole, never cut: the reader parses it
        tables.value = text


def population_of(search: Any) -> list[dict[str, Any]]:
    """The online search's challengers as the dashboard and /metrics show them: each one's move,
    examples since it joined (caught-up ones included), progressive AUC beside the champion's on
    the same examples, and z (standard errors better than the champion)."""
    if search is None:
        return []
    out = []
    for member in search.challengers:
        summary = member.summary()
        out.append({"member": summary["move"], "examples": summary["examples"], "auc": summary["auc"],
                    "champion_auc": summary["champion_auc"], "z": summary["z"]})
    return out


def _child(conn: Connection, board: Any, population: Any = None, tables: Any = None) -> None:
    # The worker decides when to stop (it publishes a last version first); Ctrl-C in a terminal
    # reaches the whole process group, so this process ignores it and leaves when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from streamrec.models import create_model, model_from_stored
    from streamrec.models.base import read_metadata
    from streamrec.models.keyed_rows import table_summary
    from streamrec.models.online_search import OnlineSearch, SearchSettings, batch_for
    from streamrec.models.progressive import progressive_step
    from streamrec.stream.feature_spec import FeatureSpec
    from streamrec.stream.quality_metrics import StreamingMetrics, load_metrics, metrics_blob

    torch.set_num_threads(LEARNER_THREADS)
    model = quality = probe = None
    search: OnlineSearch | None = None  # when on, ``model`` is its champion
    # A frozen copy of the live version predicting the same examples (stream/paired_window.py).
    reference: Any = None
    paired: PairedWindow | None = None
    lineage, delta_seq, base_version = "", 0, None
    seconds = 0.0
    posted = tables_posted = 0.0
    failure: str | None = None

    def snapshot_of_quality() -> dict[str, float]:
        searching = {key: float("nan") for key in SEARCH_KEYS}
        if search is not None:
            searching = {"search_promotions": float(len(search.promotions)),
                         "search_challengers": float(len(search.challengers)),
                         "search_compute_multiple": search.compute_multiple}
        return {**quality.snapshot(), **(paired.summary() if paired is not None else no_reference()), **searching}

    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        op, header, arrays, blobs = _unpack(message)
        if op == _STOP:
            return
        if op == _BATCH:
            if failure is None:
                try:
                    started = time.perf_counter()
                    batch = batch_of(header, arrays)
                    reference_p = (reference.predict_proba(batch_for(reference, batch)) if reference is not None
                                   else None)
                    probabilities = progressive_step(search or model, quality, batch)
                    if search is not None and search.champion is not model:
                        # A new champion (or the model widened by the search's candidates) shares
                        # no delta history with what scorers hold: its deltas start a new lineage,
                        # which scorers take up from the next full version.
                        model = search.champion
                        lineage, delta_seq, base_version = uuid.uuid4().hex[:12], 0, None
                    if paired is not None:
                        paired.update(probabilities, reference_p, batch.labels.numpy())
                    seconds += time.perf_counter() - started
                    if started - posted >= POST_EVERY_S:  # for dashboards, without a round trip
                        _post(board, snapshot_of_quality(), seconds, population, population_of(search))
                        posted = started
                    if tables is not None and model.keyed_tables() and started - tables_posted >= TABLES_EVERY_S:
                        _post_tables(tables, table_summary(model))
                        tables_posted = started
                except Exception:  # noqa: BLE001 - reported at the next request
                    failure = traceback.format_exc()
            continue
        if op == _REFERENCE:  # like a batch: no answer, a failure is reported at the next request
            if failure is None:
                try:
                    if header.get("version") is None:
                        reference = paired = None
                    else:
                        reference = model_from_stored(blobs[0], blobs[1:])
                        paired = PairedWindow(int(header["version"]), int(header["window"]))
                except Exception:  # noqa: BLE001
                    failure = traceback.format_exc()
            continue
        try:
            if failure is not None:
                raise RuntimeError(failure)
            if op in (_INIT, _RESUME):
                searching = header.get("search")
                if op == _INIT:
                    model = create_model(header["model"], FeatureSpec.from_json(header["spec"]),
                                         seed=header["seed"], settings=header.get("settings") or {})
                    quality = StreamingMetrics(header["window"])
                    search = OnlineSearch(model, SearchSettings(**searching)) if searching else None
                else:
                    model = model_from_stored(blobs[0], blobs[2:])
                    quality = (load_metrics(blobs[1], header["window"]) if blobs[1]
                               else StreamingMetrics(header["window"]))
                    state = read_metadata(blobs[0]).get("search") if blobs[0] else None
                    search = (OnlineSearch.resumed(model, SearchSettings(**searching),
                                                   json.loads(state) if state else None) if searching else None)
                # A new delta sequence starts from this state: deltas apply on top of base_version.
                lineage, delta_seq, base_version = uuid.uuid4().hex[:12], 0, header.get("base_version")
                reference = paired = None
                reply = _pack(_OK, {"lineage": lineage})

            elif op == _SNAPSHOT:
                # The probe's predictions are the model's at this very point, for checks that a
                # stored version reproduces them.
                probe_out = [model.predict_proba(batch_for(model, probe))] if probe is not None else []
                extra = {"search": json.dumps(search.state())} if search is not None else None
                reply = _pack(_OK, {"quality": snapshot_of_quality(), "finite": model.all_finite(),
                                    "lineage": lineage, "delta_seq": delta_seq}, arrays=probe_out,
                              blobs=[model.to_bytes(extra), metrics_blob(quality)])
            elif op == _DELTA:
                delta_seq += 1
                probe_out = [model.predict_proba(batch_for(model, probe))] if probe is not None else []
                blob = model.delta_bytes(header["dense"])
                reply = _pack(_OK, {"lineage": lineage, "seq": delta_seq, "base_version": base_version,
                                    "dense": header["dense"]}, arrays=probe_out, blobs=[blob])
            elif op == _PROBE:
                probe = batch_of(header, arrays)
                reply = _pack(_OK, {})
            elif op == _QUALITY:
                snapshot = snapshot_of_quality()
                _post(board, snapshot, seconds, population, population_of(search))  # exact after an exact answer
                if tables is not None and model is not None and model.keyed_tables():
                    _post_tables(tables, table_summary(model))
                reply = _pack(_OK, {"snapshot": snapshot, "seconds": seconds,
                                    "search": search.report() if search is not None else None})
            else:
                raise RuntimeError(f"unknown learner request {op!r}")
        except Exception:  # noqa: BLE001 - sent back to the worker, which raises it
            reply = _pack(_ERROR, {"traceback": failure or traceback.format_exc()})
        conn.send_bytes(reply)


# ------------------------------------------------------------------------------ worker side


@contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Spawn re-runs the parent's main script in the child (as ``__mp_main__``) so that objects
    defined there can be unpickled, which re-imports everything the script imports. The
    learner's code is all importable by name, so the child is started while ``__main__`` is a
    bare module: spawn then has no script to re-run."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class LearnerProcess:
    """The worker's handle on its learner process."""

    def __init__(self, target: Any = None, extra: tuple[Any, ...] = ()) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with librdkafka threads
        self._conn, child_conn = context.Pipe(duplex=True)
        # The learner posts its latest metrics here every half second: readable without waiting
        # for the batches in flight (the exact, ordered answer is quality()).
        self._board = context.Array("d", [float("nan")] * len(QUALITY_KEYS) + [0.0])  # NaN: nothing posted yet
        self._population = context.Array("c", POPULATION_BYTES)  # the search's challengers, JSON
        self._tables = context.Array("c", TABLES_BYTES)  # keyed tables' summaries, JSON
        # ``target``: another learner loop with the same protocol (consumers/rank_learner.py), given
        # ``extra`` shared values after the usual ones
        self._process = context.Process(target=target or _child,
                                        args=(child_conn, self._board, self._population, self._tables, *extra),
                                        name="streamrec-learner",
                                        daemon=True)
        with _main_script_hidden():
            self._process.start()
        child_conn.close()
        self.ready = False
        self.reference_version: int | None = None  # the live version the learner compares with
        self.search_report: dict[str, Any] | None = None  # the online search's, at the last quality()
        # Snapshots and deltas are asked for without waiting; their replies come in request order.
        self._awaiting: deque[bytes] = deque()
        self._replies: dict[bytes, deque[tuple[dict[str, Any], list[np.ndarray], list[bytes]]]] = {
            _SNAPSHOT: deque(), _DELTA: deque()}
        # Sends go through a thread with a queue, so the worker never waits for the learner to
        # take a batch off the (small) pipe buffer; requests queue behind batches, keeping order.
        self._outbox: queue.Queue[bytes | None] = queue.Queue(maxsize=OUTBOX_DEPTH)
        self._send_error: BaseException | None = None
        self._sender = threading.Thread(target=self._send_loop, name="streamrec-learner-send", daemon=True)
        self._sender.start()
        # Replies are read as soon as they come: a learner writing a large snapshot into a full
        # pipe while the worker waits to send it batches would otherwise deadlock both.
        self._inbox: queue.Queue[bytes | BaseException] = queue.Queue()
        self._receiver = threading.Thread(target=self._receive_loop, name="streamrec-learner-recv", daemon=True)
        self._receiver.start()

    def _receive_loop(self) -> None:
        while True:
            try:
                self._inbox.put(self._conn.recv_bytes())
            except (EOFError, OSError) as exc:
                self._inbox.put(exc)
                return

    def _send_loop(self) -> None:
        while True:
            message = self._outbox.get()
            if message is None:
                return
            try:
                self._conn.send_bytes(message)
            except (OSError, BrokenPipeError) as exc:
                self._send_error = exc
                return

    def _send(self, message: bytes) -> None:
        while True:
            if self._send_error is not None:
                raise LearnerError(f"the learner process (pid {self.pid}) went away: {self._send_error!r}")
            try:
                self._outbox.put(message, timeout=0.5)
                return
            except queue.Full:
                # a learner that died with the pipe full leaves nothing to take from the outbox
                if not self._process.is_alive():
                    raise LearnerError(f"the learner process (pid {self.pid}) went away; "
                                       f"exit code {self._process.exitcode}") from None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def raise_if_gone(self) -> None:
        """Raise :class:`LearnerError` (with the learner's own traceback, if it sent one) once the
        learner process has exited: a worker with nothing to send would otherwise never learn of it."""
        if self._process.is_alive():
            return
        while not self._inbox.empty():
            message = self._inbox.get()
            if isinstance(message, BaseException):
                break
            op, header, _arrays, _blobs = _unpack(message)
            if op == _ERROR:
                raise LearnerError(f"the learner process failed:\n{header['traceback']}")
        raise LearnerError(f"the learner process (pid {self.pid}) exited with code {self._process.exitcode}")

    def _reply(self) -> tuple[dict[str, Any], list[np.ndarray], list[bytes]]:
        message = self._inbox.get()
        if isinstance(message, BaseException):
            self._inbox.put(message)  # every later request fails the same way
            self._process.join(1)
            raise LearnerError(f"the learner process (pid {self.pid}) went away: {message!r}; "
                               f"exit code {self._process.exitcode}")
        op, header, arrays, blobs = _unpack(message)
        if op == _ERROR:
            raise LearnerError(f"the learner process failed:\n{header['traceback']}")
        return header, arrays, blobs

    def _collect(self, block: bool) -> None:
        """Move the replies of asynchronous requests that have arrived (``block``: all of them)."""
        while self._awaiting and (block or not self._inbox.empty()):
            kind = self._awaiting.popleft()
            reply = self._reply()  # raises the learner's error, an init's included
            if kind != _INIT:
                self._replies[kind].append(reply)

    def _request(self, message: bytes) -> tuple[dict[str, Any], list[np.ndarray], list[bytes]]:
        self._collect(block=True)  # replies come in order: those already asked for are first
        self._send(message)
        return self._reply()

    def init(self, model: str, spec_json: str, seed: int, window: int, settings: dict[str, str] | None = None,
             search: dict[str, int] | None = None) -> None:
        """Create the model, without waiting: batches queue behind the request (the pipe is
        ordered), and a failure is raised by the next request that waits. ``search``: the online
        search's settings (models/online_search.py), None for none."""
        self._send(_pack(_INIT, {"model": model, "spec": spec_json, "seed": seed, "window": window,
                                 "settings": settings or {}, "search": search}))
        self._awaiting.append(_INIT)
        self.ready = True
        self.reference_version = None

    def resume(self, weights: bytes, metrics: bytes | None, window: int, base_version: int,
               search: dict[str, int] | None = None, shards: Sequence[bytes] = ()) -> None:
        """Go on from a version (``shards``: its weights, when ranks wrote it); the search (if
        any) goes on from where the version's says it was."""
        self._request(_pack(_RESUME, {"window": window, "base_version": base_version, "search": search},
                            blobs=[weights, metrics or b"", *shards]))
        self.ready = True
        self.reference_version = None

    def set_reference(self, version: int | None, weights: bytes = b"", window: int = 10_000,
                      shards: Sequence[bytes] = ()) -> None:
        """Compare the learning model from now on with ``weights`` (the live version ``version``;
        ``shards`` when ranks wrote it) on the same examples; None stops comparing. Takes effect
        after every batch sent before it."""
        self._send(_pack(_REFERENCE, {"version": version, "window": window},
                         blobs=[weights, *shards] if weights or shards else []))
        self.reference_version = version

    def learn(self, batch: Any) -> None:
        self._send(_batch_message(_BATCH, batch))

    def _ask(self, kind: bytes, header: dict[str, Any], blobs: list[bytes] = ()) -> None:
        if kind in self._awaiting or self._replies[kind]:
            raise LearnerError(f"a {'snapshot' if kind == _SNAPSHOT else 'delta'} is already requested "
                               "and not yet taken")
        self._send(_pack(kind, header, blobs=blobs))
        self._awaiting.append(kind)

    def _take(self, kind: bytes, block: bool) -> tuple[dict[str, Any], list[np.ndarray], list[bytes]] | None:
        if kind in self._awaiting:
            self._collect(block)
        replies = self._replies[kind]
        return replies.popleft() if replies else None

    @property
    def snapshot_requested(self) -> bool:
        return _SNAPSHOT in self._awaiting or bool(self._replies[_SNAPSHOT])

    @property
    def delta_requested(self) -> bool:
        return _DELTA in self._awaiting or bool(self._replies[_DELTA])

    def request_snapshot(self) -> None:
        """Ask for a snapshot of the state after every batch sent so far, without waiting for it;
        collect it with :meth:`take_snapshot`. Batches sent afterwards are not in it."""
        self._ask(_SNAPSHOT, {})

    def take_snapshot(self, block: bool) -> Snapshot | None:
        """The requested snapshot, or None if none is requested or (``block`` False) not ready yet."""
        reply = self._take(_SNAPSHOT, block)
        if reply is None:
            return None
        header, arrays, blobs = reply
        return Snapshot(blobs[0], blobs[1], header["quality"], arrays[0].copy() if arrays else None,
                        header["finite"], header["lineage"], header["delta_seq"])

    def request_delta(self, dense: bool) -> None:
        """Ask for the changes since the previous delta (``dense``: with the dense weights)."""
        self._ask(_DELTA, {"dense": dense})

    def take_delta(self, block: bool) -> Delta | None:
        reply = self._take(_DELTA, block)
        if reply is None:
            return None
        header, arrays, blobs = reply
        return Delta(blobs[0], header["lineage"], header["seq"], header["base_version"], header["dense"],
                     arrays[0].copy() if arrays else None)

    def set_probe(self, batch: Any) -> None:
        """Predict this batch at every snapshot (returned as ``Snapshot.probe``)."""
        self._request(_batch_message(_PROBE, batch, labels=False))

    def quality(self) -> tuple[dict[str, float], float]:
        """(streaming-metrics snapshot, seconds spent learning) after every batch sent so far."""
        header, _arrays, _blobs = self._request(_pack(_QUALITY, {}))
        self.search_report = header.get("search")
        return header["snapshot"], header["seconds"]

    def latest_quality(self) -> tuple[dict[str, float], float]:
        """The metrics the learner posted last (up to half a second old), without waiting."""
        with self._board.get_lock():
            values = list(self._board)
        return dict(zip(QUALITY_KEYS, values)), values[-1]

    def latest_population(self) -> list[dict[str, Any]]:
        """The online search's challengers as last posted (:func:`population_of`; [] without one)."""
        with self._population.get_lock():
            raw = self._population.value
        return json.loads(raw) if raw else []

    def latest_tables(self) -> dict[str, Any]:
        """The keyed tables' summaries as last posted (models/keyed_rows.py ``table_summary``; {}
        with hashed tables)."""
        with self._tables.get_lock():
            raw = self._tables.value
        return json.loads(raw) if raw else {}

    def close(self, timeout_s: float = 10.0) -> None:
        stop = [_pack(_STOP, {})] if self._process.is_alive() and self._send_error is None else []
        for message in [*stop, None]:
            try:
                self._outbox.put(message, timeout=timeout_s if self._process.is_alive() else 0.1)
            except queue.Full:  # a learner that is gone or stuck: it is killed below
                break
        self._sender.join(timeout_s)
        if self._process.is_alive():
            self._process.join(timeout_s)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._receiver.join(timeout_s)  # ends at the pipe's EOF, now that the learner is gone
        self._conn.close()
