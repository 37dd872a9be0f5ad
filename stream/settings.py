"""The one settings object: environment (prefix ``STREAMREC_``) overridden by CLI flags.

Unknown ``STREAMREC_*`` variables are rejected rather than ignored, so a typo such as
``STREAMREC_PARTITONS=4`` fails loudly and names the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamrec.stream.errors import ConfigError
from streamrec.stream.kafka_client import KafkaClientName


class Settings(BaseSettings):
    """Every setting of streamrec, each under one name: ``STREAMREC_<NAME>`` in the environment,
    ``--<name>`` on the command line (underscores as dashes) where a command takes it."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="forbid", frozen=True)

    home: Path = Field(default_factory=lambda: Path.home() / ".streamrec")
    # Empty means "use the embedded local stack" (started by `streamrec stack up` or `demo`).
    kafka_bootstrap: str = ""
    redis_url: str = ""
    kafka_client: KafkaClientName = "auto"
    namespace: str = "streamrec"
    partitions: int = Field(default=2, ge=1, le=1024)
    # Tansu completes a group join only after about half the session timeout, so a short one
    # makes workers start at once instead of after tens of seconds (docs/kafka.md).
    consumer_session_timeout_ms: int = Field(default=6000, ge=1000)
    model: str = "wide_deep"
    batch_size: int = Field(default=512, ge=1)
    attribution_window_s: float = Field(default=30.0, gt=0)
    publish_every_examples: int = Field(default=50_000, ge=1)
    publish_every_s: float = Field(default=5.0, gt=0)
    keep_versions: int = Field(default=5, ge=1)
    # open impressions per partition; past it the partition's oldest is closed early (evicted)
    max_pending_impressions: int = Field(default=1_000_000, ge=1)
    # 0 picks a free port (printed, and written to --ready-file).
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    # 0.0.0.0 lets Prometheus on another host (a cluster) scrape the worker.
    metrics_host: str = "127.0.0.1"
    window_examples: int = Field(default=10_000, ge=10)
    # A positive reaches the model at its click ("click") or at the end of the window ("window").
    positives: Literal["click", "window"] = "window"
    # Rows changed since the last delta are published this often (0 = only full versions), and
    # the dense weights with the first delta after dense_every_s.
    delta_every_s: float = Field(default=0.5, ge=0)
    dense_every_s: float = Field(default=5.0, ge=0)
    # The quality gate (versions/quality_gate.py).
    gate: bool = True
    gate_margin: float = Field(default=0.02, ge=0)
    rollback_drop: float = Field(default=0.05, gt=0)
    # The online search over settings, crosses and count features (models/online_search.py): on
    # for new and resumed models; members learning at once (in models); how many examples propose
    # the candidates; examples all members learn per example of the stream, at most; examples
    # between proposals after the rounds (0: none); standard errors of a worse normalized entropy
    # that mean the stream changed (0: not looked for).
    search: bool = True
    search_live: int = Field(default=3, ge=1)
    search_sample: int = Field(default=3_000, ge=100)
    search_budget: float = Field(default=3.0, ge=1)
    search_later_every: int = Field(default=48_000, ge=0)
    search_change_z: float = Field(default=4.0, ge=0)
    # A trainer run as ranks (train --ranks): seconds a collective waits for the other ranks
    # before this rank fails (a rank that hangs fails the group, which then restarts).
    rank_timeout_s: float = Field(default=120.0, gt=0)
    # How often a join worker makes its partitions' state durable (streamrec join).
    join_checkpoint_every_s: float = Field(default=1.0, gt=0)
    # The scorer's HTTP port (streamrec serve); 0 picks a free one.
    serve_port: int = Field(default=8400, ge=0, le=65535)
    # When set, serve's /predict and /metrics, the dashboard and every worker's /metrics ask for
    # "Authorization: Bearer <token>" (stream/http_auth.py); the dashboard sends it when it scrapes.
    auth_token: str = ""
    # Hosts the dashboard may scrape, besides loopback: names, addresses or networks
    # ("10.0.0.0/8"), comma-separated; "*" allows any (workers register their URLs in Redis).
    dashboard_allow_hosts: str = ""
    # An event more than this many seconds past its partition's time, or this machine's clock,
    # is dead-lettered instead of moving event time (consumers/joiner.py).
    max_event_time_ahead_s: float = Field(default=86_400.0, gt=0)
    # Kafka security, passed to both clients (docs/security.md): PLAINTEXT, SSL, SASL_PLAINTEXT or
    # SASL_SSL; SASL mechanism PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; CA, client certificate and key files.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_ca_location: str = ""
    kafka_ssl_certificate_location: str = ""
    kafka_ssl_key_location: str = ""

    @field_validator("namespace")
    @classmethod
    def _namespace_is_topic_safe(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "._-" for c in value):
            raise ValueError("must be non-empty and use only letters, digits, '.', '_' or '-'")
        return value

    @property
    def impressions_topic(self) -> str:
        return f"{self.namespace}.impressions"

    @property
    def clicks_topic(self) -> str:
        return f"{self.namespace}.clicks"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.namespace}.dead-letter"

    @property
    def examples_topic(self) -> str:
        """Labelled examples written by the join stage (`streamrec join`) for trainers to read."""
        return f"{self.namespace}.examples"


_KNOWN = {name.upper() for name in Settings.model_fields}


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, then apply non-None ``overrides`` (CLI flags win).

    Raises :class:`ConfigError` naming the offending key.
    """
    for key in os.environ:
        if key.startswith("STREAMREC_") and key[len("STREAMREC_") :] not in _KNOWN:
            raise ConfigError(
                f"unknown setting {key}; known settings: "
                + ", ".join(sorted(f"STREAMREC_{k}" for k in _KNOWN))
            )
    flags = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**flags)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "?"
            problems.append(f"{key} (STREAMREC_{key.upper()}): {err['msg']}")
        raise ConfigError("bad setting: " + "; ".join(problems)) from None
