"""``streamrec dashboard``: a live web page of what the trainers and scorers are doing.

A collector thread samples every worker once per ``interval_s`` and keeps the last
``history`` points per worker in memory; the page (``streamrec/dashboard_assets/``) asks
``/api/metrics?since=T`` for the points after T once a second and extends its charts, so it
never reloads. Two sources:

* workers (default): each trainer and scorer announces its ``/metrics`` URL in Redis
  (stream/worker_registry.py), plus any ``--scrape URL``; the collector scrapes them itself.
* Prometheus (``--prometheus URL``): one instant query ``{__name__=~"streamrec_.+"}`` per tick,
  so the page works where only Prometheus can reach the workers (a cluster).

The version timeline (published, held, promote, rollback, pin) comes from each model's event
log in Redis (versions/store.py ``P:events``). Front-end code is vendored in the
package (uPlot, pinned), so the page works offline.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from streamrec.dashboard_history import HistorySettings, SampleHistory
from streamrec.stream import redis_keys
from streamrec.stream.errors import ConfigError, StreamrecError
from streamrec.stream.http_auth import bearer_ok
from streamrec.stream.prometheus import fetch_text, parse, sample_key
from streamrec.stream.worker_registry import workers
from streamrec.versions.meta import VersionMeta
from streamrec.versions.operator_actions import ACTIONS, apply_action, check_annotation
from streamrec.versions.store import VersionStore, champion

log = logging.getLogger(__name__)

# What the page charts, per worker: name → the scraped sample it reads (summed when a list).
TRAINER_VALUES: dict[str, str | tuple[str, ...]] = {
    "auc_window": "streamrec_auc_ratio{window=recent}",
    "auc_lifetime": "streamrec_auc_ratio{window=lifetime}",
    "logloss": "streamrec_logloss_nats{window=recent}",
    "normalized_entropy": "streamrec_normalized_entropy_ratio{window=recent}",
    "calibration": "streamrec_calibration_ratio{window=recent}",
    "examples_per_second": "streamrec_examples_per_second",
    "examples": "streamrec_examples_trained_total",
    "dead_letters": "streamrec_dead_letters_total",
    "version": "streamrec_head_version",
    "live_version": "streamrec_live_version",
    "rollbacks": "streamrec_rollbacks_total",
    "positives": "streamrec_join_outcomes_total{outcome=positives}",
    "negatives": "streamrec_join_outcomes_total{outcome=negatives}",
    "late_clicks": "streamrec_join_outcomes_total{outcome=late_clicks}",
    "orphan_clicks": "streamrec_join_outcomes_total{outcome=orphan_clicks}",
    "search_promotions": "streamrec_search_promotions",
    "search_challengers": "streamrec_search_challengers",
    "search_compute": "streamrec_search_compute_ratio",
}
SCORER_VALUES: dict[str, str | tuple[str, ...]] = {
    "served_version": "streamrec_served_version",
    "served_delta_seq": "streamrec_served_delta_seq",
    "predictions": "streamrec_predictions_total",
    "model_age_seconds": "streamrec_served_model_age_seconds",
}
SUMMED_PREFIXES = {"lag": "streamrec_consumer_lag_messages", "held": "streamrec_versions_held_total"}


def chart_values(role: str, samples: dict[str, float]) -> dict[str, float | None]:
    """The page's named values from one worker's samples (None where the worker has none)."""
    # join workers (`streamrec join`) export the trainer's event-side series under the same names
    names = SCORER_VALUES if role == "scorer" else TRAINER_VALUES
    out: dict[str, float | None] = {name: _finite(samples.get(key)) for name, key in names.items()}  # type: ignore[arg-type]
    if role == "joiner":
        out["examples_emitted"] = _finite(samples.get("streamrec_examples_emitted_total"))
    if role != "scorer":
        for name, prefix in SUMMED_PREFIXES.items():
            parts = [v for k, v in samples.items() if k.startswith(prefix + "{") or k == prefix]
            out[name] = _finite(sum(parts)) if parts else None
    return out


# A trainer run as ranks (docs/distributed.md) is one model: its ranks' samples are joined into
# one worker's. Quality, versions and the search are the whole model's on every rank (taken
# from the lowest rank); what each rank counts of its own partitions is added up.
RANKS_PREFIX = "streamrec_trainer_ranks{"
SUMMED_OVER_RANKS = ("streamrec_examples_trained_total", "streamrec_dead_letters_total",
                     "streamrec_events_consumed_total", "streamrec_join_outcomes_total",
                     "streamrec_join_open_impressions", "streamrec_consumer_lag_messages",
                     "streamrec_examples_per_second", "streamrec_table_")


def rank_place(samples: dict[str, float]) -> tuple[str, int, int] | None:
    """(trainer, rank, ranks) when the samples are one rank's of a trainer run as ranks."""
    for key, value in samples.items():
        if key.startswith(RANKS_PREFIX):
            # labels in name order: rank, then the trainer's id, which may hold any character
            rank, trainer = key[len(RANKS_PREFIX):-1].split(",trainer=", 1)
            return trainer, int(rank.removeprefix("rank=")), int(value)
    return None


Sampled = tuple[dict[str, Any], dict[str, float] | None, str | None]


def join_ranks(results: list[Sampled]) -> list[Sampled]:
    """The sources' results with each trainer run as ranks joined into one worker (``worker``:
    the trainer's id, ``ranks``: how many), its samples the lowest rank's with the per-rank
    counts added up; a rank that did not answer is named in the joined worker's error."""
    out: list[Sampled] = []
    groups: dict[tuple[str, str], list[tuple[int, int, Sampled]]] = {}
    for result in results:
        target, samples, _error = result
        place = rank_place(samples) if samples is not None and target.get("role") == "trainer" else None
        if place is None:
            out.append(result)
            continue
        trainer, rank, ranks = place
        groups.setdefault((target["model"], trainer), []).append((rank, ranks, result))
    for (_model, trainer), members in groups.items():
        members.sort(key=lambda member: member[0])
        ranks = max(member[1] for member in members)
        lead_target, lead_samples, _ = members[0][2]
        samples = {k: v for k, v in lead_samples.items() if not k.startswith(SUMMED_OVER_RANKS)}
        for _rank, _ranks, (_target, rank_samples, _error) in members:
            for key, value in rank_samples.items():
                if key.startswith(SUMMED_OVER_RANKS):
                    samples[key] = samples.get(key, 0.0) + value
        present = [member[0] for member in members]
        errors = [error for _r, _n, (_t, _s, error) in members if error]
        missing = [rank for rank in range(ranks) if rank not in present]
        if missing:
            errors.append(f"{trainer}: ranks {missing} of {ranks} not scraped")
        target = {**lead_target, "worker": trainer, "ranks": ranks,
                  "stopped": all(t.get("stopped") for _r, _n, (t, _s, _e) in members)}
        out.append((target, samples, "; ".join(errors) or None))
    return out


SERVED_MODEL_PREFIX = "streamrec_served_model_info{served_model="


def served_model(samples: dict[str, float]) -> str | None:
    """The model a scorer's samples say it serves (``streamrec_served_model_info``), if any."""
    for key, value in samples.items():
        if key.startswith(SERVED_MODEL_PREFIX) and value == 1:
            return key[len(SERVED_MODEL_PREFIX):].rstrip("}")
    return None


# The online search's population: one series per challenger, labelled by its move.
MEMBER_SERIES = {"examples": "streamrec_search_member_examples", "auc": "streamrec_search_member_auc_ratio",
                 "champion_auc": "streamrec_search_member_champion_auc_ratio", "z": "streamrec_search_member_z"}


def search_population(samples: dict[str, float]) -> list[dict[str, Any]]:
    """A trainer's search challengers from its samples: move, examples, AUC beside the champion's, z."""
    return _by_label(samples, MEMBER_SERIES, "member")


def _by_label(samples: dict[str, float], series: dict[str, str], label: str) -> list[dict[str, Any]]:
    """One row per value of ``label`` (the only label left after model and worker: the rest of the
    key is its value, commas and colons included), with each of ``series``' values, sorted by it."""
    rows: dict[str, dict[str, Any]] = {}
    for field_name, name in series.items():
        prefix = name + "{" + label + "="
        for key, value in samples.items():
            if key.startswith(prefix):
                rows.setdefault(key[len(prefix):-1], {})[field_name] = _finite(value)
    return [{label: value, **values} for value, values in sorted(rows.items())]


# Keyed tables (models/keyed_rows.py): one row per table.
TABLE_SERIES = {"rows": "streamrec_table_rows", "bytes": "streamrec_table_bytes",
                "admitted": "streamrec_table_admitted_total", "not_admitted": "streamrec_table_not_admitted_total",
                "evicted": "streamrec_table_evicted_total"}


def keyed_tables(samples: dict[str, float]) -> list[dict[str, Any]]:
    """A trainer's keyed tables from its samples: rows held, bytes, keys admitted, sightings not
    admitted, rows evicted; a sequence model's histories are one more row (keys held, keys expired)."""
    tables = _by_label(samples, TABLE_SERIES, "table")
    if "streamrec_history_keys" in samples:
        tables.append({"table": "history", "rows": _finite(samples["streamrec_history_keys"]), "bytes": None,
                       "admitted": None, "not_admitted": None,
                       "evicted": _finite(samples.get("streamrec_history_expired_total"))})
    return tables


def _finite(value: float | None) -> float | None:
    return None if value is None or value != value or value in (float("inf"), float("-inf")) else float(value)


@dataclass
class WorkerSeries:
    """The sampled points of one worker, newest last (every tick, and one per coarse step for the
    longer past), and whether it has stopped."""

    role: str
    model: str
    worker: str
    url: str
    points: deque = field(default_factory=lambda: deque(maxlen=3600))
    coarse: deque = field(default_factory=lambda: deque(maxlen=2880))
    error: str | None = None
    stopped: bool = False
    serves: str | None = None  # a scorer's served model (a champion follower's changes)
    population: list[dict[str, Any]] = field(default_factory=list)  # a trainer's search challengers
    tables: list[dict[str, Any]] = field(default_factory=list)  # a trainer's keyed tables
    ranks: int = 0  # a trainer run as ranks: how many (their samples joined, join_ranks)

    def points_since(self, since: float) -> list[list[Any]]:
        """Points newer than ``since``: coarse ones where the fine ones no longer reach."""
        fine_from = self.points[0][0] if self.points else float("inf")
        older = [[t, v] for t, v in self.coarse if since < t < fine_from]
        return older + [[t, v] for t, v in self.points if t > since]

    @property
    def key(self) -> str:
        return f"{self.role}/{self.model}/{self.worker}"


class HostAllowList:
    """Which hosts the dashboard may scrape: loopback, plus names, addresses and networks given
    (``--allow-host``, ``STREAMREC_DASHBOARD_ALLOW_HOSTS``); ``*`` allows any. Workers register
    their own URLs in Redis, so without this anyone who can write there could make the dashboard
    fetch any URL (server-side request forgery)."""

    def __init__(self, entries: tuple[str, ...] = ()) -> None:
        self.any = "*" in entries
        self.names = {e.lower() for e in entries if e and e != "*" and not _is_network(e)}
        self.networks = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
        self.networks += [ipaddress.ip_network(e, strict=False) for e in entries if _is_network(e)]

    def allows(self, url: str) -> bool:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            return False
        host = parsed.hostname.lower()
        if self.any or host in self.names or host == "localhost":
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            try:
                address = ipaddress.ip_address(socket.gethostbyname(host))
            except OSError:
                return False
        return any(address in network for network in self.networks)


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


class WorkerSource:
    """Scrape the workers registered in Redis (on allowed hosts) and any fixed URLs."""

    name = "workers"

    def __init__(self, client: redis.Redis | None, namespace: str, urls: tuple[str, ...] = (),
                 timeout_s: float = 1.0, token: str | None = None, allow: HostAllowList | None = None) -> None:
        self.client, self.namespace, self.urls, self.timeout_s = client, namespace, urls, timeout_s
        self.token = token
        self.allow = allow if allow is not None else HostAllowList()

    def targets(self) -> list[dict[str, Any]]:
        found = workers(self.client, self.namespace) if self.client is not None else []
        known = {w["metrics_url"] for w in found}
        for i, url in enumerate(u for u in self.urls if u not in known):
            found.append({"role": "", "model": "", "worker": f"scrape-{i}", "metrics_url": url, "given": True})
        return found

    def sample(self) -> list[tuple[dict[str, Any], dict[str, float] | None, str | None]]:
        out = []
        for target in self.targets():
            if "final_metrics" in target:  # stopped cleanly: its last numbers, kept in Redis
                out.append(({**target, "stopped": True}, parse(target["final_metrics"]), None))
                continue
            if not target.get("given") and not self.allow.allows(str(target["metrics_url"])):
                out.append((target, None, f"{target['metrics_url']}: not scraped, its host is not allowed "
                                          "(streamrec dashboard --allow-host)"))
                continue
            try:
                text = fetch_text(target["metrics_url"], self.timeout_s, self.token)
            except OSError as exc:
                out.append((target, None, f"{target['metrics_url']}: {exc}"))
                continue
            samples = parse(text)
            if not target["role"]:  # a fixed URL: learn who it is from its own labels
                target = {**target, **_identity(text, samples)}
            out.append((target, samples, None))
        return out


def _identity(text: str, samples: dict[str, float]) -> dict[str, str]:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "model" in sample.labels and "worker" in sample.labels:
                return {"role": "trainer", "model": sample.labels["model"], "worker": sample.labels["worker"]}
    return {"role": "scorer" if "streamrec_served_version" in samples else "trainer", "model": "?"}


class PrometheusSource:
    """Read the same samples back from a Prometheus server's query API."""

    name = "prometheus"
    QUERY = '{__name__=~"streamrec_.+"}'

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def sample(self) -> list[tuple[dict[str, Any], dict[str, float] | None, str | None]]:
        query = urllib.parse.urlencode({"query": self.QUERY})
        try:
            body = json.loads(fetch_text(f"{self.url}/api/v1/query?{query}", self.timeout_s))
        except (OSError, ValueError) as exc:
            return [({"role": "", "model": "", "worker": "prometheus", "metrics_url": self.url}, None,
                     f"{self.url}: {exc}")]
        grouped: dict[tuple[str, str], dict[str, float]] = {}
        for item in body.get("data", {}).get("result", []):
            labels = dict(item["metric"])
            name = labels.pop("__name__")
            if name.endswith("_created"):
                continue
            model = labels.pop("model", None) or labels.get("job", "?")
            worker = labels.pop("worker", None) or labels.get("instance", "?")
            drop = ("job", "instance")
            grouped.setdefault((model, worker), {})[sample_key(name, labels, drop)] = float(item["value"][1])
        out = []
        for (model, worker), samples in sorted(grouped.items()):
            role = "scorer" if "streamrec_served_version" in samples else "trainer"
            out.append(({"role": role, "model": model, "worker": worker, "metrics_url": self.url}, samples, None))
        return out


class Collector:
    """Samples the source every ``interval_s`` from a daemon thread; thread-safe reads. With a
    Redis client its points are kept there too (streamrec/dashboard_history.py) and loaded back
    on start, so the page's past survives a restart of the dashboard."""

    def __init__(self, source: WorkerSource | PrometheusSource, client: redis.Redis | None, namespace: str,
                 interval_s: float = 1.0, history: HistorySettings | None = None) -> None:
        self.source, self.client, self.namespace = source, client, namespace
        self.interval_s = interval_s
        self.history_settings = history or HistorySettings()
        self.history = SampleHistory(client, namespace, self.history_settings) if client is not None else None
        self.series: dict[str, WorkerSeries] = {}
        self.errors: list[str] = []
        self.timeline: dict[str, list[dict[str, Any]]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.champion: str | None = None
        self.ticks = 0
        self.restored = 0
        self._last_coarse = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-collector", daemon=True)

    def start(self) -> Collector:
        self.restore()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.history is not None:
            self.history.release()

    def restore(self) -> int:
        """Load the stored past (both resolutions); return how many ticks were loaded."""
        if self.history is None:
            return 0
        try:
            coarse = self.history.load("coarse")
            fine = self.history.load("fine")
        except redis.RedisError as exc:
            log.warning("dashboard history not loaded: %s", exc)
            return 0
        with self._lock:
            for resolution, ticks in (("coarse", coarse), ("fine", fine)):
                for at, rows in ticks:
                    for key, (role, model, worker, url, stopped, values) in rows.items():
                        series = self._series(key, role, model, worker, url)
                        series.stopped = bool(stopped)
                        (series.coarse if resolution == "coarse" else series.points).append((at, values))
            if coarse:
                self._last_coarse = coarse[-1][0]
            self.restored = len(coarse) + len(fine)
        return self.restored

    def _series(self, key: str, role: str, model: str, worker: str, url: str) -> WorkerSeries:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = WorkerSeries(role, model, worker, url,
                                                     deque(maxlen=self.history_settings.fine_points),
                                                     deque(maxlen=self.history_settings.coarse_points))
        return series

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:
                log.exception("dashboard tick failed")
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def tick(self) -> None:
        now = time.time()
        results = join_ranks(self.source.sample())
        errors = [error for _target, _samples, error in results if error]
        timeline, models, champ = self._read_versions(
            {t["model"] for t, _s, _e in results if t.get("role") == "trainer"}, errors)
        coarse = now - self._last_coarse >= self.history_settings.coarse_step_s
        rows: dict[str, list[Any]] = {}
        with self._lock:
            for target, samples, error in results:
                if samples is None:
                    continue
                key = f"{target['role']}/{target['model']}/{target['worker']}"
                series = self._series(key, target["role"], target["model"], target["worker"], target["metrics_url"])
                series.error = error
                series.stopped = bool(target.get("stopped"))
                series.ranks = int(target.get("ranks") or 0)
                series.serves = served_model(samples) if target["role"] == "scorer" else None
                series.population = search_population(samples) if target["role"] == "trainer" else []
                series.tables = keyed_tables(samples) if target["role"] == "trainer" else []
                values = chart_values(target["role"], samples)
                series.points.append((now, values))
                if coarse:
                    series.coarse.append((now, values))
                rows[key] = [series.role, series.model, series.worker, series.url, series.stopped, values]
            self.errors, self.timeline, self.models, self.champion = errors, timeline, models, champ
            self.ticks += 1
        if coarse:
            self._last_coarse = now
        if self.history is not None and rows:
            self.history.append(now, rows, coarse)

    def _read_versions(self, models: set[str], errors: list[str]
                       ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]], str | None]:
        if self.client is None:
            return {}, {}, None
        try:
            for key in self.client.scan_iter(match=redis_keys.model_events_pattern(self.namespace), count=100):
                models.add(redis_keys.model_of_events_key(key.decode()))
            stores = [VersionStore(self.client, self.namespace, m) for m in sorted(models)]
            timeline = {store.model: store.events(200) for store in stores}
            return timeline, {store.model: model_panel(store) for store in stores}, champion(self.client, self.namespace)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            errors.append(f"redis: {exc}")
            return self.timeline, self.models, self.champion

    def known_models(self) -> set[str]:
        """The models with versions or events in the namespace, as of the last tick."""
        with self._lock:
            return set(self.models)

    def snapshot(self, since: float = 0.0) -> dict[str, Any]:
        with self._lock:
            return {
                "now": time.time(), "source": self.source.name, "namespace": self.namespace,
                "interval_s": self.interval_s, "ticks": self.ticks, "errors": list(self.errors),
                "champion": self.champion, "timeline": self.timeline, "models": self.models,
                "restored": self.restored,
                "workers": [{"key": s.key, "role": s.role, "model": s.model, "worker": s.worker, "url": s.url,
                             "stopped": s.stopped, "serves": s.serves, "population": s.population, "tables": s.tables,
                             "ranks": s.ranks,
                             "points": s.points_since(since)}
                            for s in sorted(self.series.values(), key=lambda s: s.key)],
            }


PANEL_VERSIONS = 12


def model_panel(store: VersionStore) -> dict[str, Any]:
    """A model's pointers and its newest kept versions (gate outcome, annotation) for the page's
    model panel; the versions' fields are read in one pipelined round trip."""
    live, head, pinned = store.pointers()
    numbers = store.versions()[-PANEL_VERSIONS:]
    with store.client.pipeline(transaction=False) as pipe:
        for number in numbers:
            pipe.hmget(store.keys.version(number), ["meta", "annotation"])
        fields = pipe.execute()
    versions = []
    for number, (meta, annotation) in zip(reversed(numbers), reversed(fields)):
        if meta is None:
            continue
        meta = VersionMeta.from_dict(orjson.loads(meta))
        versions.append({"version": number, "created_at": meta.created_at, "examples_seen": meta.examples_seen,
                         "auc": meta.auc, "auc_window": meta.auc_window, "promoted": meta.promoted,
                         "gate_reason": None if meta.gate is None else meta.gate.reason,
                         "annotation": None if annotation is None else orjson.loads(annotation)})
    return {"live": live, "head": head, "pinned": pinned, "versions": versions}


ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
}


TOKEN_COOKIE = "streamrec_token"


ACTION_HEADER = "X-Streamrec-Action"
MAX_OPERATOR_CHARS = 64
MAX_REASON_CHARS = 300


def create_app(collector: Collector, auth_token: str | None = None) -> Starlette:
    """The page and its API. With ``auth_token`` every request needs ``Authorization: Bearer
    <token>`` or the cookie a visit to ``/?token=<token>`` sets (browsers cannot send the header).

    ``POST /api/actions`` moves a model's pointers (versions/operator_actions.py) and is on only
    with a token and Redis: without a token anyone who reaches the port could roll a model back.
    It also needs the ``X-Streamrec-Action`` header, which a page on another origin cannot send
    without a CORS preflight this app never answers (so a foreign page cannot use the cookie)."""
    root = resources.files("streamrec") / "dashboard_assets"
    bodies = {path: ((root / name).read_bytes(), kind) for path, (name, kind) in ASSETS.items()}
    actions_off = None if auth_token and collector.client is not None else (
        "actions are off: start the dashboard with --auth-token (STREAMREC_AUTH_TOKEN)" if not auth_token
        else "actions are off: the dashboard has no Redis")

    def refused(request: Request) -> Response | None:
        if not auth_token or bearer_ok(request.headers.get("authorization"), auth_token):
            return None
        if bearer_ok(f"Bearer {request.cookies.get(TOKEN_COOKIE, '')}", auth_token):
            return None
        if request.method == "GET" and bearer_ok(f"Bearer {request.query_params.get('token', '')}", auth_token):
            response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie(TOKEN_COOKIE, auth_token, httponly=True, samesite="strict")
            return response
        return JSONResponse({"error": "open /?token=<token> once, or send Authorization: Bearer <token>"},
                            status_code=401)

    def asset(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        body, kind = bodies[request.url.path]
        return Response(body, media_type=kind, headers={"Cache-Control": "no-cache"})

    def metrics_api(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        try:
            since = float(request.query_params.get("since", "0"))
        except ValueError:
            return JSONResponse({"error": "since must be a number (unix seconds)"}, status_code=400)
        body = {**collector.snapshot(since), "actions": {"enabled": actions_off is None, "why_not": actions_off}}
        return Response(orjson.dumps(body), media_type="application/json")

    async def actions_api(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        if actions_off is not None:
            return JSONResponse({"error": actions_off}, status_code=403)
        if request.headers.get(ACTION_HEADER) != "1":
            return JSONResponse({"error": f"send the header {ACTION_HEADER}: 1"}, status_code=403)
        try:
            body = orjson.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return JSONResponse({"error": f"the body must be a JSON object ({exc})"}, status_code=400)
        try:
            action = _parse_action(body, collector.known_models())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        host = request.client.host if request.client else "?"
        store = VersionStore(collector.client, collector.namespace, action.pop("model"))
        by = f"dashboard {action.pop('by')} ({host})"
        try:
            result = await run_in_threadpool(lambda: apply_action(store, by=by, **action))
        except StreamrecError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except redis.RedisError as exc:
            return JSONResponse({"error": f"redis: {exc}"}, status_code=503)
        log.info("dashboard action by %s: %s", host, result.message)
        return JSONResponse({"ok": True, "message": result.message, "live": result.live, "pinned": result.pinned,
                             "champion": result.champion})

    def favicon(_request: Request) -> Response:
        return Response(status_code=204)

    routes = [Route(path, asset) for path in bodies]
    routes += [Route("/api/metrics", metrics_api), Route("/api/actions", actions_api, methods=["POST"]),
               Route("/favicon.ico", favicon)]
    return Starlette(routes=routes)


def _parse_action(body: dict[str, Any], known_models: Collection[str]) -> dict[str, Any]:
    """The keyword arguments of :func:`apply_action` from a request body, naming a bad key."""
    action = body.get("action")
    if action not in ACTIONS:
        raise ValueError(f"action: one of {', '.join(ACTIONS)}")
    model = body.get("model")
    if not isinstance(model, str) or model not in known_models:
        raise ValueError(f"model: one of the namespace's models ({', '.join(sorted(known_models)) or 'none yet'})")
    version = body.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError("version: a positive integer or null")
    operator = body.get("by")
    if not isinstance(operator, str) or not operator.strip() or len(operator) > MAX_OPERATOR_CHARS \
            or not operator.isprintable():
        raise ValueError(f"by: your name, 1-{MAX_OPERATOR_CHARS} printable characters")
    reason = body.get("reason")
    if action != "annotate" and (not isinstance(reason, str) or not reason.strip()):
        raise ValueError("reason: say why (it goes on the timeline)")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS
                               or not reason.isprintable()):
        raise ValueError(f"reason: at most {MAX_REASON_CHARS} printable characters")
    out: dict[str, Any] = {"model": model, "action": action, "version": version, "by": operator.strip(),
                           "reason": reason.strip() if reason else None}
    if action == "annotate":
        tags = body.get("tags") or []
        description = body.get("description")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("tags: a list of strings")
        if description is not None and not isinstance(description, str):
            raise ValueError("description: text")
        try:
            check_annotation(description or None, tags)
        except ConfigError as exc:
            raise ValueError(str(exc).replace("--description", "description").replace("--tag", "tags")) from None
        out.update(description=description or None, tags=tags)
    return out
