"""What every command shares: the console, settings from flags, progress bars, reports, HTTP listening."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamrec.producers.readers import FORMATS
from streamrec.stream.errors import StreamrecError
from streamrec.stream.settings import Settings, load_settings

console = Console(stderr=True)


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    """The settings: environment, then the root group's flags, then this command's (None: not given)."""
    base = dict(ctx.obj or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    return load_settings(**base)


@contextmanager
def progress_bar(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (nothing in a log); yields ``advance(n)``."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress:
        task = progress.add_task(label, total=total, rate="")

        def advance(n: int) -> None:
            progress.update(task, advance=n)
            speed = progress.tasks[task].speed
            if speed:
                progress.update(task, rate=f"{speed:,.0f}/s")

        yield advance


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file renamed into place): a reader polling for a
    --ready-file never sees it half written."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(report, indent=2, sort_keys=True))
        partial.replace(path)


def count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def parse_setting_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--set KEY=VALUE`` pairs → ``{key: value}``."""
    from streamrec.models import parse_settings

    return parse_settings(pairs)


_READER_OPTIONS = [
    click.option("--format", "fmt", required=True, type=click.Choice(FORMATS), help="Log format."),
    click.option("--user-field", help="Raw field that is the user id (formats without one)."),
    click.option("--item-field", help="Raw field that is the item id (formats without one)."),
    click.option("--columns", help="csv/jsonl mapping: label=COL,user=COL,item=COL,time=COL,features=A;B;C"),
    click.option("--numeric-columns", help="csv/jsonl: comma-separated feature columns that are numeric."),
    click.option("--strict", is_flag=True, help="Fail on the first malformed row instead of counting it."),
    click.option("--limit", type=click.IntRange(min=1), help="Read at most N rows."),
]


def with_reader_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_READER_OPTIONS):
        func = option(func)
    return func


def listen(host: str, port: int, flag: str) -> socket.socket:
    """A bound, listening socket, so port 0 resolves before the server starts and a busy port is a
    clear error. IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
    TCP, and without it every response waits for a delayed ACK (Nagle)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # listening now, not when uvicorn starts: a client told the port (--ready-file) may connect
        # at once, and a bound socket that does not listen yet refuses it
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StreamrecError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another {flag}, "
                             "or 0 for any free one") from None
    return sock


def run_http(app: Any, sock: socket.socket, on_exit: Callable[[], None]) -> None:
    """Serve ``app`` (ASGI) on ``sock`` with uvicorn until stopped; then ``on_exit``."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        on_exit()
        sock.close()
