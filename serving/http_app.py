"""``streamrec serve``: the scorer over HTTP (Starlette, run by uvicorn).

* ``POST /predict`` — body ``{"events": [{"user_id", "item_id", "features": {...}}, ...]}`` (or
  the bare list). Answer: ``{"predictions": [...], "model", "version", "lineage", "delta_seq",
  "deltas_applied", "event_time"}``, all from one model state. 400 names what is wrong with a
  request, 413 refuses a body over ``max_body_bytes``; 503 while no version is live.
* ``GET /healthz`` — 200 with the served state once a version is loaded, else 503.
* ``GET /metrics`` — Prometheus text: requests, latency, the served version and
  ``streamrec_served_model_age_seconds`` (seconds since the trainer learned the newest example
  the served model reflects) and ``streamrec_served_event_time_age_seconds`` (now minus that
  example's label time, meaningful where the stream's clock is the wall clock).

With an ``auth_token`` (``--auth-token``, ``STREAMREC_AUTH_TOKEN``) ``/predict`` and ``/metrics``
answer 401 unless the request carries ``Authorization: Bearer <token>``; ``/healthz`` stays open
for probes. Scoring runs in Starlette's thread pool, so a request never blocks the event loop.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamrec.serving.scorer import BadRequest, NotReady, Scorer
from streamrec.stream.http_auth import bearer_ok


class ScorerMetrics:
    """The scorer's Prometheus series (requests, latency, served state, swaps), in its own registry."""

    def __init__(self, scorer: Scorer) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("streamrec_predict_requests", "Predict requests by outcome", ("status",), registry=r)
        self.predictions = Counter("streamrec_predictions", "Events scored", registry=r)
        self.latency = Histogram("streamrec_predict_latency_seconds", "Time to answer one predict request",
                                 registry=r, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1))
        age = Gauge("streamrec_served_model_age_seconds",
                    "Now minus the label time of the newest example reflected in the served model", registry=r)
        age.set_function(scorer.model_age_seconds)
        event_age = Gauge("streamrec_served_event_time_age_seconds",
                          "Now minus the label time (event time) of the newest example reflected", registry=r)
        event_age.set_function(scorer.event_time_age_seconds)
        version = Gauge("streamrec_served_version", "The version being served", registry=r)
        version.set_function(lambda: math.nan if scorer.served is None else scorer.served.version)
        delta = Gauge("streamrec_served_delta_seq", "The last delta applied to the served version", registry=r)
        delta.set_function(lambda: math.nan if scorer.served is None else scorer.served.delta_seq)
        swaps = Gauge("streamrec_scorer_swaps", "Model swaps since start", ("kind",), registry=r)
        for kind in ("full", "delta", "rebase"):
            swaps.labels(kind=kind).set_function(lambda k=kind: scorer.swaps[k])
        gaps = Gauge("streamrec_scorer_delta_gaps", "Gaps seen in the delta sequence since start", registry=r)
        gaps.set_function(lambda: scorer.gaps)
        bad = Gauge("streamrec_scorer_bad_versions", "Versions that could not be loaded (corrupt or too large)",
                    registry=r)
        bad.set_function(lambda: len(scorer.bad_versions))
        for status in ("ok", "bad_request", "not_ready"):
            self.requests.labels(status=status)
        r.register(_ServedModelInfo(scorer))


class _ServedModelInfo:
    """``streamrec_served_model_info{served_model="..."} 1``: which model a champion-following
    scorer serves right now (the dashboard names it on the scorer's card)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("streamrec_served_model_info", "The model being served (label served_model)",
                                   labels=("served_model",))
        served = self.scorer.served
        if served is not None:
            family.add_metric([served.model], 1.0)
        yield family


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


MAX_BODY_BYTES = 4 * 1024 * 1024


class _TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    """The request body, read at most ``limit`` bytes far (a larger one is refused unread)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(scorer: Scorer, *, auth_token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    metrics = ScorerMetrics(scorer)
    for status in ("too_large", "unauthorized"):
        metrics.requests.labels(status=status)

    def denied(request: Request) -> Response | None:
        if bearer_ok(request.headers.get("authorization"), auth_token):
            return None
        metrics.requests.labels(status="unauthorized").inc()
        return _json({"error": "send Authorization: Bearer <token> (streamrec serve --auth-token)"}, 401)

    async def predict(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        started = time.perf_counter()
        try:
            try:
                payload = orjson.loads(await _body(request, max_body_bytes))
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"body is not JSON: {exc}") from None
            result = await run_in_threadpool(scorer.predict, payload)
        except _TooLarge:
            metrics.requests.labels(status="too_large").inc()
            return _json({"error": f"request body over {max_body_bytes} bytes; send fewer events per request"}, 413)
        except BadRequest as exc:
            metrics.requests.labels(status="bad_request").inc()
            return _json({"error": str(exc)}, 400)
        except NotReady as exc:
            metrics.requests.labels(status="not_ready").inc()
            return _json({"error": str(exc)}, 503)
        metrics.requests.labels(status="ok").inc()
        metrics.predictions.inc(len(result.probabilities))
        metrics.latency.observe(time.perf_counter() - started)
        return _json({"predictions": result.probabilities.tolist(), **result.served.as_dict()})

    async def healthz(_request: Request) -> Response:
        served = scorer.served
        if served is None:
            return _json({"status": "waiting for a live version", "namespace": scorer.namespace}, 503)
        return _json({"status": "ok", **served.as_dict(), "model_age_seconds": scorer.model_age_seconds(),
                      "event_time_age_seconds": scorer.event_time_age_seconds()})

    async def prometheus(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/healthz", healthz),
                             Route("/metrics", prometheus)])
