"""Prometheus plumbing: a worker's own registry served on ``/metrics``, and reading exposition text back
(the demo's live line, the dashboard and the tests share it).

A scrape becomes ``{"name{label=value,...}": value}`` with the ``model`` and ``worker`` labels
left out (they identify the worker, which the caller already knows) and labels sorted, so keys
are stable: ``streamrec_auc_ratio{window=recent}``, ``streamrec_examples_trained_total``.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from streamrec.stream.errors import StackError

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


def fetch_text(url: str, timeout_s: float = 1.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode()


def scrape_url(url: str, timeout_s: float = 1.0) -> dict[str, float]:
    return parse(fetch_text(url, timeout_s))


def scrape(port: int, timeout_s: float = 1.0) -> dict[str, float]:
    """A worker's /metrics on this host."""
    return scrape_url(f"http://127.0.0.1:{port}/metrics", timeout_s)


class MetricsEndpoint:
    """A worker's own registry, served over HTTP on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._server: Any = None
        self.port: int | None = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Start the HTTP endpoint; ``port`` 0 picks a free one. Returns the port."""
        try:
            self._server, _thread = start_http_server(port, addr=addr, registry=self.registry)
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
