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
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from streamrec.stream import redis_keys
from streamrec.stream.http_auth import bearer_ok
from streamrec.stream.prometheus import fetch_text, parse, sample_key
from streamrec.stream.worker_registry import workers
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


def _finite(value: float | None) -> float | None:
    return None if value is None or value != value or value in (float("inf"), float("-inf")) else float(value)


@dataclass
class WorkerSeries:
    """The sampled points of one worker, newest last, and whether it has stopped."""

    role: str
    model: str
    worker: str
    url: str
    points: deque = field(default_factory=lambda: deque(maxlen=3600))
    error: str | None = None
    stopped: bool = False

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
    """Samples the source every ``interval_s`` from a daemon thread; thread-safe reads."""

    def __init__(self, source: WorkerSource | PrometheusSource, client: redis.Redis | None, namespace: str,
                 interval_s: float = 1.0, history: int = 3600) -> None:
        self.source, self.client, self.namespace = source, client, namespace
        self.interval_s, self.history = interval_s, history
        self.series: dict[str, WorkerSeries] = {}
        self.errors: list[str] = []
        self.timeline: dict[str, list[dict[str, Any]]] = {}
        self.champion: str | None = None
        self.ticks = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-collector", daemon=True)

    def start(self) -> Collector:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

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
        results = self.source.sample()
        errors = [error for _target, _samples, error in results if error]
        timeline, champ = self._read_versions({t["model"] for t, _s, _e in results if t.get("role") == "trainer"},
                                              errors)
        with self._lock:
            for target, samples, error in results:
                if samples is None:
                    continue
                key = f"{target['role']}/{target['model']}/{target['worker']}"
                series = self.series.get(key)
                if series is None:
                    series = self.series[key] = WorkerSeries(target["role"], target["model"], target["worker"],
                                                             target["metrics_url"],
                                                             deque(maxlen=self.history))
                series.error = error
                series.stopped = bool(target.get("stopped"))
                series.points.append((now, chart_values(target["role"], samples)))
            self.errors, self.timeline, self.champion = errors, timeline, champ
            self.ticks += 1

    def _read_versions(self, models: set[str], errors: list[str]) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
        if self.client is None:
            return {}, None
        try:
            for key in self.client.scan_iter(match=redis_keys.model_events_pattern(self.namespace), count=100):
                models.add(redis_keys.model_of_events_key(key.decode()))
            timeline = {m: VersionStore(self.client, self.namespace, m).events(200) for m in sorted(models)}
            return timeline, champion(self.client, self.namespace)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            errors.append(f"redis: {exc}")
            return self.timeline, self.champion

    def snapshot(self, since: float = 0.0) -> dict[str, Any]:
        with self._lock:
            return {
                "now": time.time(), "source": self.source.name, "namespace": self.namespace,
                "interval_s": self.interval_s, "ticks": self.ticks, "errors": list(self.errors),
                "champion": self.champion, "timeline": self.timeline,
                "workers": [{"key": s.key, "role": s.role, "model": s.model, "worker": s.worker, "url": s.url,
                             "stopped": s.stopped, "points": [[t, v] for t, v in s.points if t > since]}
                            for s in sorted(self.series.values(), key=lambda s: s.key)],
            }


ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
}


TOKEN_COOKIE = "streamrec_token"


def create_app(collector: Collector, auth_token: str | None = None) -> Starlette:
    """The page and its API. With ``auth_token`` every request needs ``Authorization: Bearer
    <token>`` or the cookie a visit to ``/?token=<token>`` sets (browsers cannot send the header)."""
    root = resources.files("streamrec") / "dashboard_assets"
    bodies = {path: ((root / name).read_bytes(), kind) for path, (name, kind) in ASSETS.items()}

    def refused(request: Request) -> Response | None:
        if not auth_token or bearer_ok(request.headers.get("authorization"), auth_token):
            return None
        if bearer_ok(f"Bearer {request.cookies.get(TOKEN_COOKIE, '')}", auth_token):
            return None
        if bearer_ok(f"Bearer {request.query_params.get('token', '')}", auth_token):
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
        return Response(orjson.dumps(collector.snapshot(since)), media_type="application/json")

    def favicon(_request: Request) -> Response:
        return Response(status_code=204)

    routes = [Route(path, asset) for path in bodies]
    routes += [Route("/api/metrics", metrics_api), Route("/favicon.ico", favicon)]
    return Starlette(routes=routes)
