"""``streamrec demo``: the whole loop on the embedded stack, with a live line (streamrec/demo.py runs it)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import click

from streamrec.cli.common import console, settings_from, write_report
from streamrec.producers.readers import FORMATS


@click.command()
@click.option("--events", type=click.IntRange(min=100), default=200_000, show_default=True,
              help="Impressions to generate (or to read from --data).")
@click.option("--model", default="wide_deep", show_default=True, help="Registered model name.")
@click.option("--data", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Replay this log instead.")
@click.option("--format", "fmt", default="criteo", show_default=True, type=click.Choice(FORMATS))
@click.option("--user-field", help="Raw field that is the user id (with --data).")
@click.option("--item-field", help="Raw field that is the item id (with --data).")
@click.option("--report-json", type=click.Path(path_type=Path), help="Write the summary here.")
@click.option("--dashboard", "with_dashboard", is_flag=True,
              help="Also serve the live dashboard, and keep it (and the stack) up after the run until Ctrl-C.")
@click.option("--dashboard-port", type=click.IntRange(min=0, max=65535), default=8500, show_default=True)
@click.option("--linger-s", type=click.FloatRange(min=0),
              help="With --dashboard: stop this many seconds after the run instead of waiting for Ctrl-C.")
@click.option("--join-workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run the join as a stage of this many `streamrec join` workers (docs/scaling.md); 0 = in the trainer.")
@click.pass_context
def demo(ctx: click.Context, events: int, model: str, data: Path | None, fmt: str, user_field: str | None,
         item_field: str | None, report_json: Path | None, with_dashboard: bool, dashboard_port: int,
         linger_s: float | None, join_workers: int) -> None:
    """Run the local loop end to end on the embedded stack, then stop what it started."""
    from rich.live import Live
    from rich.text import Text

    from streamrec.api import check_model_name
    from streamrec.demo import run_demo
    from streamrec.producers.readers import ReaderOptions

    check_model_name(model)
    settings = settings_from(ctx)
    last_print = [0.0]
    view = Live(Text("waiting for the trainer…"), console=console, auto_refresh=False)

    def live(line: str) -> None:
        if console.is_terminal:
            view.update(Text(line), refresh=True)
        elif time.monotonic() - last_print[0] >= 5:  # a log, not a screen: one line every 5 s
            last_print[0] = time.monotonic()
            console.print(line)

    def linger(url: str, report: dict[str, Any]) -> None:
        if console.is_terminal:
            view.stop()
        _print_summary(model, report)
        write_report(report_json, report)  # now, in case the linger ends with a signal
        until = "for " + f"{linger_s:g}s" if linger_s is not None else "until Ctrl-C"
        console.print(f"the dashboard stays up at {url} {until}; the stack stops after it")
        try:
            time.sleep(linger_s) if linger_s is not None else threading.Event().wait()
        except KeyboardInterrupt:
            pass

    with view if console.is_terminal else contextlib.nullcontext():
        report = run_demo(settings, events=events, model=model, data=data, fmt=fmt,
                          reader_options=ReaderOptions(user_field=user_field, item_field=item_field),
                          say=lambda line: console.print(line), live=live,
                          dashboard_port=dashboard_port if with_dashboard else None, linger=linger,
                          join_workers=join_workers)
    if not with_dashboard:
        _print_summary(model, report)
    click.echo(json.dumps(report, sort_keys=True))
    write_report(report_json, report)


def _print_summary(model: str, report: dict[str, Any]) -> None:
    oracle = f" (oracle {report['oracle_auc']:.4f})" if report.get("oracle_auc") else ""
    console.print(
        f"[bold]{model}[/]: {report['examples']:,} examples trained exactly once, "
        f"AUC {report['auc']:.4f}{oracle}, window AUC {report['auc_window']:.4f}, logloss {report['logloss']:.4f}, "
        f"calibration {report['calibration']:.3f}; {report['versions_published']} versions published "
        f"(live v{report['head_version']}); {report['examples_per_second']:,.0f} examples/s end to end; "
        f"{report['dead_letters']} dead letters")
