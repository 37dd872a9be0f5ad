"""Prometheus plumbing: a worker's own registry served on ``/metrics``, and reading exposition text back
(the demo's live line, the dashboard and the tests share it).

A scrape becomes ``{"name{label=value,...}": value}`` with the ``model`` and ``worker`` labels
left out (they identify the worker, which the caller already knows) and labels sorted, so keys
are stable: ``streamrec_auc_ratio{window=recent}``, ``streamrec_examples_trained_total``.
"""

from __future__ import annotations

import threading
import urllib.request
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.parser import text_string_to_metric_families

from streamrec.stream.errors import StackError
from streamrec.stream.http_auth import bearer_header, bearer_ok

IDENTITY_LABELS = ("model", "worker")


def sample_key(name: str, labels: dict[str, str], drop: tuple[str, ...] = IDENTITY_LABELS) -> str:
    kept = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in drop)
    return f"{name}{{{kept}}}" if kept else name


def parse(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):  # counters' creation times, noise for every reader here
                continue
            out[sample_key(sample.name, sample.labels)] = sample.value
    return out


MAX_SCRAPE_BYTES = 16 * 1024 * 1024


def fetch_text(url: str, timeout_s: float = 1.0, token: str | None = None) -> str:
    """A URL's body as text (at most ``MAX_SCRAPE_BYTES``), sending the bearer ``token`` if one is set."""
    request = urllib.request.Request(url, headers=bearer_header(token))
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read(MAX_SCRAPE_BYTES).decode()


def scrape_url(url: str, timeout_s: float = 1.0, token: str | None = None) -> dict[str, float]:
    return parse(fetch_text(url, timeout_s, token))


def scrape(port: int, timeout_s: float = 1.0, token: str | None = None) -> dict[str, float]:
    """A worker's /metrics on this host."""
    return scrape_url(f"http://127.0.0.1:{port}/metrics", timeout_s, token)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Scrapes are not logged."""


class MetricsEndpoint:
    """A worker's own registry, served over HTTP on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._server: Any = None
        self.port: int | None = None

    def serve(self, port: int, addr: str = "127.0.0.1", auth_token: str | None = None) -> int:
        """Start the HTTP endpoint in a thread; ``port`` 0 picks a free one. With ``auth_token``
        a scrape must send ``Authorization: Bearer <token>`` (else 401). Returns the port."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            if not bearer_ok(environ.get("HTTP_AUTHORIZATION"), auth_token):
                start_response("401 Unauthorized", [("Content-Type", "text/plain")])
                return [b"send Authorization: Bearer <token> (STREAMREC_AUTH_TOKEN)\n"]
            return metrics_app(environ, start_response)

        try:
            self._server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
            threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        except OSError as exc:
            raise StackError(f"cannot serve metrics on {addr}:{port} ({exc.strerror}); choose another "
                             "--metrics-port (STREAMREC_METRICS_PORT), or 0 for any free port") from None
        self.port = int(self._server.server_address[1])
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
