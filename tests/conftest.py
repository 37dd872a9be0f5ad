"""Shared fixtures. Integration tests use a real broker and Redis: the ones named by
STREAMREC_TEST_KAFKA_BOOTSTRAP / STREAMREC_TEST_REDIS_URL, or an embedded stack started once per
session (Tansu + redis-server from wheels) and stopped by pid when the session ends."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamrec.local_stack import Endpoints, StackState, start_stack, stop_stack

# The embedded stack this session started (None when tests use configured endpoints).
STARTED: dict[str, StackState] = {}


@pytest.fixture(autouse=True)
def _clean_streamrec_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide their own settings; a developer's STREAMREC_* variables must not leak in."""
    for key in list(os.environ):
        if key.startswith("STREAMREC_") and not key.startswith("STREAMREC_TEST_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    bootstrap = os.environ.get("STREAMREC_TEST_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("STREAMREC_TEST_REDIS_URL")
    if bootstrap and redis_url:
        yield Endpoints(bootstrap, redis_url)
        return
    home = tmp_path_factory.mktemp("stack-home")
    state = start_stack(home, tied=True)  # gone with pytest, even if it is killed
    STARTED["stack"] = state
    try:
        yield Endpoints(bootstrap or state.kafka_bootstrap, redis_url or state.redis_url)
    finally:
        STARTED.pop("stack", None)
        stop_stack(home)


@pytest.fixture
def namespace() -> str:
    """A fresh topic namespace per test, so tests never see each other's events."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def learnable_rows() -> list:
    """12,000 rows of the synthetic stream (known signal), read back as Rows."""
    import tempfile

    from streamrec.producers.generator import generate, write_stream
    from streamrec.producers.readers import ReaderOptions, read_rows

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "learnable.tsv"
        write_stream(generate(12_000, seed=11), path, seed=11)
        return list(read_rows(path, "criteo", ReaderOptions(user_field="C1", item_field="C2")))


@pytest.fixture
def criteo_file(tmp_path: Path) -> Path:
    from streamrec.producers.generator import generate, write_stream

    path = tmp_path / "stream.tsv"
    write_stream(generate(3000, seed=5), path, seed=5)
    return path


@pytest.fixture(scope="session")
def system_packages() -> None:
    """Debian's chromium, prometheus and redis-server (with TLS) for the browser, Prometheus and
    Redis TLS tests, installed if missing (tests/system_packages.sh; .ci/run runs it up front)."""
    import shutil
    import subprocess

    if all(shutil.which(b) for b in ("chromium", "prometheus", "promtool", "redis-server", "openssl")):
        return
    script = Path(__file__).with_name("system_packages.sh")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"could not install Debian's chromium, prometheus and redis-server (run {script} as root): "
                    f"{done.stderr.strip()[-2000:]}")
