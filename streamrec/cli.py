"""The ``streamrec`` command line. Errors map to exit codes (stream/errors.py)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamrec.stream.errors import StreamrecError
from streamrec.stream.settings import Settings, load_settings

console = Console(stderr=True)


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    base = dict(ctx.obj or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    return load_settings(**base)


@contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
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


def _write_report(path: Path | None, report: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file renamed into place): a reader polling for a
    --ready-file never sees it half written."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(report, indent=2, sort_keys=True))
        partial.replace(path)


def _check_model(name: str) -> None:
    from streamrec.models import REGISTRY, model_names
    from streamrec.stream.errors import ConfigError

    if name not in REGISTRY:
        raise ConfigError(f"--model {name!r} is not registered; choose one of {', '.join(model_names())}")


def _checked_settings(model: str, pairs: tuple[str, ...], crosses: tuple[tuple[str, str], ...] = (),
                      counts: tuple[str, ...] = ()) -> dict[str, str]:
    """Parse --set pairs and check them, the crosses and the count features against the model now,
    before any work starts."""
    from streamrec.models import REGISTRY, apply_settings, check_wide_options, parse_settings

    parsed = parse_settings(pairs)
    check_wide_options(model, parsed, crosses, counts)
    apply_settings(REGISTRY[model].config_class(), parsed, model)
    return parsed


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


reader_options = [
    click.option("--format", "fmt", required=True,
                 type=click.Choice(["criteo", "avazu", "libsvm", "libfm", "csv", "jsonl"]), help="Log format."),
    click.option("--user-field", help="Raw field that is the user id (formats without one)."),
    click.option("--item-field", help="Raw field that is the item id (formats without one)."),
    click.option("--columns", help="csv/jsonl mapping: label=COL,user=COL,item=COL,time=COL,features=A;B;C"),
    click.option("--numeric-columns", help="csv/jsonl: comma-separated feature columns that are numeric."),
    click.option("--strict", is_flag=True, help="Fail on the first malformed row instead of counting it."),
    click.option("--limit", type=click.IntRange(min=1), help="Read at most N rows."),
]


def with_reader_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(reader_options):
        func = option(func)
    return func


def _reader(fmt: str, user_field: str | None, item_field: str | None, columns: str | None,
            numeric_columns: str | None, strict: bool) -> Any:
    from streamrec.producers.readers import ReaderOptions, parse_mapping

    return ReaderOptions(user_field=user_field, item_field=item_field, strict=strict,
                         mapping=parse_mapping(columns, numeric_columns))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), help="State directory (STREAMREC_HOME, default ~/.streamrec).")
@click.option("--kafka-bootstrap", help="Kafka bootstrap servers (STREAMREC_KAFKA_BOOTSTRAP); empty = local stack.")
@click.option("--redis-url", help="Redis URL (STREAMREC_REDIS_URL); empty = local stack.")
@click.option("--kafka-client", type=click.Choice(["auto", "confluent", "kafka-python"]),
              help="Kafka client library (STREAMREC_KAFKA_CLIENT).")
@click.option("--namespace", help="Topic prefix (STREAMREC_NAMESPACE).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="streamrec")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, kafka_bootstrap: str | None, redis_url: str | None,
        kafka_client: str | None, namespace: str | None, verbose: bool) -> None:
    """streamrec: streaming online learning for click-through-rate prediction."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = {"home": home, "kafka_bootstrap": kafka_bootstrap, "redis_url": redis_url,
               "kafka_client": kafka_client, "namespace": namespace}


# ------------------------------------------------------------------------------------------ stack


@cli.group()
def stack() -> None:
    """Start, stop or inspect the embedded local broker and Redis."""


@stack.command("up")
@click.pass_context
def stack_up(ctx: click.Context) -> None:
    """Start Tansu and redis-server on free local ports (no-op if already running)."""
    from streamrec.local_stack import stack_status, start_stack, stop_stack

    settings = _settings(ctx)
    status = stack_status(settings.home)
    if status.get("running"):
        console.print(f"already running: kafka {status['kafka_bootstrap']}  redis {status['redis_url']}")
        return
    if "broker_pid" in status:
        stop_stack(settings.home)
    state = start_stack(settings.home)
    console.print(f"kafka {state.kafka_bootstrap} (pid {state.broker_pid})  "
                  f"redis {state.redis_url} (pid {state.redis_pid})  state {settings.home / 'stack.json'}")


@stack.command("down")
@click.pass_context
def stack_down(ctx: click.Context) -> None:
    """Stop exactly the processes `stack up` started."""
    from streamrec.local_stack import stop_stack

    stopped = stop_stack(_settings(ctx).home)
    console.print(f"stopped pids {stopped}" if stopped else "no local stack was running")


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def stack_status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show whether the local stack runs and where; exit 1 if it does not."""
    from streamrec.local_stack import stack_status

    status = stack_status(_settings(ctx).home)
    if as_json:
        click.echo(json.dumps(status, indent=2))
    elif status.get("running"):
        click.echo(f"running: kafka {status['kafka_bootstrap']} (pid {status['broker_pid']}), "
                   f"redis {status['redis_url']} (pid {status['redis_pid']})")
    else:
        click.echo("not running")
    sys.exit(0 if status.get("running") else 1)


# ------------------------------------------------------------------------------------------ topics


@cli.group()
def topics() -> None:
    """Manage the stream's topics."""


@topics.command("create")
@click.option("--partitions", type=click.IntRange(min=1), help="Partitions per topic (STREAMREC_PARTITIONS).")
@click.pass_context
def topics_create(ctx: click.Context, partitions: int | None) -> None:
    """Create <ns>.impressions, <ns>.clicks, <ns>.dead-letter and <ns>.examples with equal partition counts."""
    from streamrec.local_stack import resolve_endpoints
    from streamrec.stream.kafka_client import create_topics

    settings = _settings(ctx, partitions=partitions)
    endpoints = resolve_endpoints(settings)
    names = [settings.impressions_topic, settings.clicks_topic, settings.dead_letter_topic, settings.examples_topic]
    created = create_topics(endpoints.kafka_bootstrap, names, settings.partitions)
    for name in names:
        click.echo(f"{name}: {'created' if name in created else 'exists'} ({settings.partitions} partitions)")


# ------------------------------------------------------------------------------------------ data


@cli.command()
@click.option("--rows", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Criteo-format TSV to write.")
def generate(rows: int, seed: int, out: Path) -> None:
    """Write a synthetic Criteo-format stream with a known click probability, and its oracle AUC."""
    from streamrec.producers.generator import generate as make
    from streamrec.producers.generator import oracle_path, write_stream

    with console.status(f"generating {rows:,} rows"):
        summary = write_stream(make(rows, seed), out, seed)
    console.print(f"wrote {out} ({rows:,} rows, click rate {summary['positive_rate']:.3f}); "
                  f"oracle AUC {summary['oracle_auc']:.4f} in {oracle_path(out)}")
    console.print("replay it with: --format criteo --user-field C1 --item-field C2")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@with_reader_options
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Events per second.")
@click.option("--speedup", type=click.FloatRange(min=0, min_open=True), help="Pace by event time, X times faster.")
@click.option("--click-delay-mean-s", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True)
@click.option("--click-delay-max-s", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True)
@click.option("--watermark-every-s", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Event-time seconds between watermarks on every partition.")
@click.option("--partitions", type=click.IntRange(min=1), help="Partitions per topic if they must be created.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the click delays.")
@click.option("--events-per-message", type=click.IntRange(min=1), default=256, show_default=True,
              help="Events of one partition per Kafka message (a JSON array); 1 sends each event as a keyed "
                   "message of its own.")
@click.option("--report-json", type=click.Path(path_type=Path), help="Write the report here.")
@click.pass_context
def replay(ctx: click.Context, path: Path, fmt: str, user_field: str | None, item_field: str | None,
           columns: str | None, numeric_columns: str | None, strict: bool, limit: int | None,
           rate: float | None, speedup: float | None, click_delay_mean_s: float, click_delay_max_s: float,
           watermark_every_s: float, partitions: int | None, seed: int, events_per_message: int,
           report_json: Path | None) -> None:
    """Replay a log as impression and click events onto Kafka."""
    import itertools

    from streamrec.local_stack import resolve_endpoints
    from streamrec.producers.readers import ReadStats, read_rows
    from streamrec.producers.replay import ReplayOptions
    from streamrec.producers.replay import replay as run_replay
    from streamrec.stream.errors import ConfigError
    from streamrec.stream.kafka_client import create_topics, make_producer, partition_count

    if rate is not None and speedup is not None:
        raise ConfigError("--rate and --speedup exclude each other")
    settings = _settings(ctx, partitions=partitions)
    endpoints = resolve_endpoints(settings)
    create_topics(endpoints.kafka_bootstrap,
                  [settings.impressions_topic, settings.clicks_topic, settings.dead_letter_topic],
                  settings.partitions)
    stats = ReadStats()
    rows = read_rows(path, fmt, _reader(fmt, user_field, item_field, columns, numeric_columns, strict), stats)
    if limit:
        rows = itertools.islice(rows, limit)
    producer = make_producer(endpoints.kafka_bootstrap, settings.kafka_client)
    total = limit or _count_lines(path)
    try:
        with _progress("replay", total) as advance:
            report = run_replay(rows, producer, impressions_topic=settings.impressions_topic,
                                clicks_topic=settings.clicks_topic, dead_letter_topic=settings.dead_letter_topic,
                                # the topic's own count: batches are placed by murmur2 modulo it
                                partitions=partition_count(endpoints.kafka_bootstrap, settings.impressions_topic),
                                options=ReplayOptions(rate=rate, speedup=speedup, click_delay_mean_s=click_delay_mean_s,
                                                      click_delay_max_s=click_delay_max_s, seed=seed,
                                                      watermark_every_s=watermark_every_s,
                                                      events_per_message=events_per_message),
                                on_progress=advance)
    finally:
        producer.close()
    result = {**report.as_dict(), "malformed_rows": stats.malformed}
    for error in stats.errors:
        console.print(f"[yellow]malformed[/]: {error}")
    console.print(f"{report.impressions:,} impressions, {report.clicks:,} clicks, {report.dead_letters} dead letters, "
                  f"{stats.malformed} malformed rows; {report.events_per_second:,.0f} events/s")
    _write_report(report_json, result)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@with_reader_options
@click.option("--model", default="wide_deep", show_default=True, help="Registered model name.")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--window", type=click.IntRange(min=10), default=10_000, show_default=True,
              help="Examples in the window AUC.")
@click.option("--cross", "crosses", multiple=True, help="Wide-part feature cross A:B (repeatable).")
@click.option("--count", "counts", multiple=True, metavar="KEY",
              help="Wide-part count feature: how often KEY's value (KEY a field, or a cross A:B also given "
                   "with --cross) was seen and clicked before, in log2 levels (repeatable).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Model setting, e.g. ftrl.alpha=0.5 or hidden=128,64 (repeatable; a wrong key lists the known ones).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--history-field", "history_fields", multiple=True, metavar="FIELD",
              help="Sequence models: remember this categorical field of each clicked item too, e.g. its "
                   "category (repeatable; new models only).")
@click.option("--report-json", type=click.Path(path_type=Path), help="Write the report here.")
def evaluate(path: Path, fmt: str, user_field: str | None, item_field: str | None, columns: str | None,
             numeric_columns: str | None, strict: bool, limit: int | None, model: str, batch_size: int,
             window: int, crosses: tuple[str, ...], counts: tuple[str, ...], settings: tuple[str, ...], seed: int,
             history_fields: tuple[str, ...], report_json: Path | None) -> None:
    """One prequential pass (predict, measure, learn) of a model over a log file."""
    from streamrec.evaluation import evaluate_file
    from streamrec.producers.readers import ReadStats
    from streamrec.stream.feature_spec import SpecOptions

    _check_model(model)
    pairs = _parse_crosses(crosses)
    model_settings = _checked_settings(model, settings, pairs, counts)
    stats = ReadStats()
    total = limit or _count_lines(path)
    with _progress(f"evaluate {model}", total) as advance:
        report, _ = evaluate_file(path, fmt, model, limit=limit, stats=stats,
                                  reader_options=_reader(fmt, user_field, item_field, columns, numeric_columns, strict),
                                  batch_size=batch_size, window=window, seed=seed, model_settings=model_settings,
                                  spec_options=SpecOptions(crosses=tuple(pairs), counts=counts, seed=seed,
                                                           history_fields=history_fields),
                                  on_batch=advance)
    for error in stats.errors:
        console.print(f"[yellow]malformed[/]: {error}")
    console.print(f"{model}: {report['examples']:,} examples  AUC {report['auc']:.4f} (window {report['auc_window']:.4f})  "
                  f"logloss {report['logloss']:.4f}  NE {report['normalized_entropy']:.4f}  "
                  f"calibration {report['calibration']:.3f}  {report['examples_per_second']:,.0f} ex/s")
    click.echo(json.dumps(report, sort_keys=True))
    _write_report(report_json, report)


# ------------------------------------------------------------------------------------------ models


@cli.group()
@click.option("--model", help="Model name (STREAMREC_MODEL).")
@click.pass_context
def models(ctx: click.Context, model: str | None) -> None:
    """List, inspect and move the live pointer of a model's versions in Redis (no restart needed)."""
    ctx.obj = {**(ctx.obj or {}), "model": model}


def _store(ctx: click.Context) -> Any:
    from streamrec.local_stack import resolve_redis_url
    from streamrec.stream.redis_connection import connect
    from streamrec.versions.store import VersionStore

    settings = _settings(ctx)
    return VersionStore(connect(resolve_redis_url(settings)), settings.namespace, settings.model)


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    """Kept versions, newest first, with lineage and metrics at publish."""
    store = _store(ctx)
    head, live, pinned = store.head(), store.live(), store.pinned()
    rows = []
    for number in reversed(store.versions()):
        meta = store.meta(number)
        rows.append({"version": number, "parent": meta.get("parent"), "examples_seen": meta.get("examples_seen"),
                     "auc": (meta.get("metrics") or {}).get("auc"),
                     "auc_window": (meta.get("metrics") or {}).get("auc_window"),
                     "created_at": meta.get("created_at"), "live": number == live, "head": number == head,
                     "gate": meta.get("gate")})
    if as_json:
        click.echo(json.dumps({"model": store.model, "namespace": store.namespace, "head": head, "live": live,
                               "pinned": pinned, "versions": rows}, indent=2))
        return
    if not rows:
        click.echo(f"no versions of {store.model!r} in namespace {store.namespace!r}")
        return
    import time as _time

    click.echo(f"{store.model} in {store.namespace}: head v{head}, live v{live}{' (pinned)' if pinned else ''}")
    for row in rows:
        held = row["gate"] and not row["gate"].get("promoted")
        marks = ",".join(m for m in ("live" if row["live"] else "", "head" if row["head"] else "",
                                     f"held ({row['gate']['reason']})" if held else "") if m)
        auc = "-" if row["auc"] is None else f"{row['auc']:.4f}"
        window = "-" if row["auc_window"] is None else f"{row['auc_window']:.4f}"
        when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(row["created_at"] or 0))
        click.echo(f"  v{row['version']:<5} parent v{row['parent']}  {row['examples_seen']:>12,} examples  "
                   f"AUC {auc} (window {window})  {when}  {marks}")


@models.command("show")
@click.argument("version", type=int)
@click.pass_context
def models_show(ctx: click.Context, version: int) -> None:
    """The metadata of one version (JSON)."""
    click.echo(json.dumps(_store(ctx).meta(version), indent=2, sort_keys=True))


@models.command("promote")
@click.argument("version", type=int)
@click.pass_context
def models_promote(ctx: click.Context, version: int) -> None:
    """Serve VERSION now, and make this model the namespace's champion (what `streamrec serve`
    without --model serves). The trainer's next version goes live again unless pinned."""
    from streamrec.versions.store import set_champion

    store = _store(ctx)
    store.set_live(version, pin=store.pinned(), reason="by hand (streamrec models promote)")
    set_champion(store.client, store.namespace, store.model)
    click.echo(f"{store.model}: live v{version}{' (pinned)' if store.pinned() else ''}; champion of {store.namespace}")


@models.command("champion")
@click.argument("name", required=False)
@click.pass_context
def models_champion(ctx: click.Context, name: str | None) -> None:
    """Show the champion model (served by `streamrec serve` without --model), or make NAME it."""
    from streamrec.versions.store import champion, set_champion

    store = _store(ctx)
    if name is None:
        current = champion(store.client, store.namespace)
        click.echo(current or f"no champion in namespace {store.namespace!r} (`streamrec models promote` sets one)")
        return
    _check_model(name)
    set_champion(store.client, store.namespace, name)
    click.echo(f"champion of {store.namespace}: {name}")


@models.command("rollback")
@click.argument("version", type=int, required=False)
@click.pass_context
def models_rollback(ctx: click.Context, version: int | None) -> None:
    """Serve VERSION (default: the newest kept version before the live one that the quality gate
    promoted) and pin it."""
    store = _store(ctx)
    if version is None:
        live = store.live()
        version = None if live is None else store.previous_promoted(live)
        if version is None:
            raise StreamrecError(f"{store.model}: no promoted version older than live v{live} "
                                 f"(kept: {store.versions()})")
    store.set_live(version, pin=True, kind="rollback", reason="by hand (streamrec models rollback)")
    click.echo(f"{store.model}: rolled back to v{version}, pinned (`streamrec models unpin` resumes promotion)")


@models.command("pin")
@click.argument("version", type=int, required=False)
@click.pass_context
def models_pin(ctx: click.Context, version: int | None) -> None:
    """Keep serving VERSION (default: the live one) whatever the trainer publishes."""
    store = _store(ctx)
    version = store.live() if version is None else version
    if version is None:
        raise StreamrecError(f"{store.model}: no live version to pin")
    store.set_live(version, pin=True, kind="pin", reason="by hand (streamrec models pin)")
    click.echo(f"{store.model}: live v{version}, pinned")


@models.command("unpin")
@click.pass_context
def models_unpin(ctx: click.Context) -> None:
    """Let the trainer's next version go live again."""
    store = _store(ctx)
    store.unpin()
    click.echo(f"{store.model}: unpinned; the next published version goes live")


@cli.command()
@click.option("--model", help="Serve this model; default: the namespace's champion (`streamrec models champion`), "
                             "or STREAMREC_MODEL while none is named.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), help="HTTP port, 0 = any free one (STREAMREC_SERVE_PORT).")
@click.option("--no-deltas", is_flag=True, help="Serve full versions only, without the trainer's deltas.")
@click.option("--poll-s", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Check Redis this often when no announcement arrives (the pub/sub fallback).")
@click.option("--ready-file", type=click.Path(path_type=Path), help="Write {pid, port} here once listening.")
@click.pass_context
def serve(ctx: click.Context, model: str | None, host: str, port: int | None, no_deltas: bool, poll_s: float,
          ready_file: Path | None) -> None:
    """Serve predictions over HTTP (/predict, /healthz, /metrics), hot-swapping live versions."""
    import os
    import socket

    from streamrec.local_stack import resolve_redis_url
    from streamrec.serving.http_app import create_app
    from streamrec.serving.scorer import Scorer
    from streamrec.stream.worker_registry import Heartbeat, metrics_url

    settings = _settings(ctx, serve_port=port)
    if model is not None:
        _check_model(model)
    scorer = Scorer(resolve_redis_url(settings), settings.namespace, model, deltas=not no_deltas, poll_s=poll_s,
                    default_model=settings.model)
    scorer.start()
    served = scorer.served
    console.print(f"serving {served.model} v{served.version}" if served else
                  f"waiting for a live version of {model or 'the champion model'} in {settings.namespace}")
    try:
        sock = _listen(host, settings.serve_port, "--port (STREAMREC_SERVE_PORT)")
    except StreamrecError:
        scorer.close()
        raise
    bound = sock.getsockname()[1]
    console.print(f"listening on http://{host}:{bound} (/predict, /healthz, /metrics)")
    if ready_file is not None:
        _write_report(ready_file, {"pid": os.getpid(), "port": bound})
    heartbeat = Heartbeat(scorer.client, settings.namespace, role="scorer", model=model or "champion",
                          worker=f"{socket.gethostname()}-{os.getpid()}", url=metrics_url(host, bound)).start()

    def stop() -> None:
        heartbeat.close()
        scorer.close()

    _run_http(create_app(scorer), sock, on_exit=stop)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8500, show_default=True,
              help="HTTP port, 0 = any free one.")
@click.option("--prometheus", "prometheus_url", metavar="URL",
              help="Read metrics from this Prometheus server instead of scraping the workers.")
@click.option("--scrape", "scrape_urls", multiple=True, metavar="URL",
              help="Also scrape this /metrics URL (repeatable); workers in Redis are found by themselves.")
@click.option("--interval-s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Sample every this many seconds.")
@click.option("--ready-file", type=click.Path(path_type=Path), help="Write {pid, port} here once listening.")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, prometheus_url: str | None, scrape_urls: tuple[str, ...],
              interval_s: float, ready_file: Path | None) -> None:
    """Serve a live dashboard of the namespace's trainers and scorers (open the printed URL)."""
    import os

    import redis

    from streamrec.dashboard import Collector, PrometheusSource, WorkerSource, create_app
    from streamrec.local_stack import resolve_redis_url
    from streamrec.stream.errors import StackError
    from streamrec.stream.redis_connection import connect

    settings = _settings(ctx)
    client: Any = None
    try:
        client = connect(resolve_redis_url(settings))
        client.ping()
    except (StackError, redis.RedisError) as exc:
        if not (prometheus_url or scrape_urls):
            raise StreamrecError(f"the dashboard finds workers through Redis, which is not reachable ({exc}); "
                                 "set STREAMREC_REDIS_URL, run `streamrec stack up`, or pass --prometheus/--scrape")
        console.print(f"[yellow]no Redis ({exc}): no version timeline, only the given targets[/]")
        client = None
    source = PrometheusSource(prometheus_url) if prometheus_url else WorkerSource(client, settings.namespace,
                                                                                   scrape_urls)
    collector = Collector(source, client, settings.namespace, interval_s=interval_s).start()
    sock = _listen(host, port, "--port")
    bound = sock.getsockname()[1]
    console.print(f"dashboard on http://{host}:{bound}/ (namespace {settings.namespace}, source {source.name})")
    if ready_file is not None:
        _write_report(ready_file, {"pid": os.getpid(), "port": bound})
    _run_http(create_app(collector), sock, on_exit=collector.close)


def _listen(host: str, port: int, flag: str) -> Any:
    """A bound socket, so port 0 resolves before the server starts and a busy port is a clear error.
    proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    without it every response waited 40 ms for a delayed ACK (Nagle)."""
    import socket

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


def _run_http(app: Any, sock: Any, on_exit: Callable[[], None]) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        on_exit()
        sock.close()


def _parse_crosses(crosses: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    from streamrec.stream.errors import ConfigError

    pairs = []
    for cross in crosses:
        a, sep, b = cross.partition(":")
        if not sep or not a or not b:
            raise ConfigError(f"--cross {cross!r} must look like FIELD_A:FIELD_B")
        pairs.append((a, b))
    return tuple(pairs)


@cli.command()
@click.option("--model", help="Registered model name (STREAMREC_MODEL).")
@click.option("--worker-id", default=None, help="Label of this worker in metrics and versions (default: host-pid).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Examples per step (STREAMREC_BATCH_SIZE).")
@click.option("--attribution-window-s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds of event time an impression waits for its click (STREAMREC_ATTRIBUTION_WINDOW_S).")
@click.option("--publish-every-examples", type=click.IntRange(min=1),
              help="Publish a version after this many examples (STREAMREC_PUBLISH_INTERVAL_EXAMPLES).")
@click.option("--publish-every-s", type=click.FloatRange(min=0, min_open=True),
              help="... or after this many seconds (STREAMREC_PUBLISH_INTERVAL_S).")
@click.option("--keep-versions", type=click.IntRange(min=1), help="Versions kept in Redis (STREAMREC_KEEP_VERSIONS).")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535),
              help="Prometheus port, 0 = any free one (STREAMREC_METRICS_PORT).")
@click.option("--exit-at-end", is_flag=True,
              help="Stop once every partition reached its final watermark (one worker replaying a log).")
@click.option("--cross", "crosses", multiple=True, help="Wide-part feature cross A:B (repeatable; new models only).")
@click.option("--count", "counts", multiple=True, metavar="KEY",
              help="Wide-part count feature of a field or a --cross A:B (repeatable; new models only).")
@click.option("--buckets", type=click.IntRange(min=2), default=1 << 16, show_default=True,
              help="Hash buckets per categorical field (new models only).")
@click.option("--set", "model_settings", multiple=True, metavar="KEY=VALUE",
              help="Model setting, e.g. ftrl.alpha=0.5 (repeatable; new models only).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--positives", type=click.Choice(["click", "window"]),
              help="Release a positive at its click or at the window's end (STREAMREC_POSITIVES).")
@click.option("--delta-every-s", type=click.FloatRange(min=0),
              help="Publish changed rows this often; 0 = full versions only (STREAMREC_DELTA_INTERVAL_S).")
@click.option("--dense-every-s", type=click.FloatRange(min=0),
              help="Include the dense weights in a delta this often (STREAMREC_DENSE_INTERVAL_S).")
@click.option("--gate/--no-gate", default=None,
              help="Quality gate: hold non-finite or worse versions, roll back on an AUC drop (STREAMREC_GATE).")
@click.option("--gate-margin", type=click.FloatRange(min=0),
              help="Window AUC a new version may lose against live and still go live (STREAMREC_GATE_MARGIN).")
@click.option("--rollback-drop", type=click.FloatRange(min=0, min_open=True),
              help="Served window AUC drop that rolls back automatically (STREAMREC_ROLLBACK_DROP).")
@click.option("--history-field", "history_fields", multiple=True, metavar="FIELD",
              help="Sequence models: remember this categorical field of each clicked item too, e.g. its "
                   "category (repeatable; new models only).")
@click.option("--metrics-host", help="Address /metrics listens on; 0.0.0.0 for a cluster (STREAMREC_METRICS_HOST).")
@click.option("--from-examples", is_flag=True,
              help="Read labelled examples from <ns>.examples, written by `streamrec join` workers, instead of "
                   "joining impressions and clicks in this worker.")
@click.option("--ready-file", type=click.Path(path_type=Path), help="Write {pid, metrics_port} here once serving.")
@click.option("--report-json", type=click.Path(path_type=Path), help="Write the final report here.")
@click.pass_context
def train(ctx: click.Context, model: str | None, worker_id: str | None, batch_size: int | None,
          attribution_window_s: float | None, publish_every_examples: int | None, publish_every_s: float | None,
          keep_versions: int | None, metrics_port: int | None, exit_at_end: bool, crosses: tuple[str, ...],
          counts: tuple[str, ...], buckets: int, model_settings: tuple[str, ...], seed: int, positives: str | None,
          delta_every_s: float | None, dense_every_s: float | None, gate: bool | None, gate_margin: float | None,
          rollback_drop: float | None, history_fields: tuple[str, ...], metrics_host: str | None,
          from_examples: bool, ready_file: Path | None, report_json: Path | None) -> None:
    """Run a trainer worker: join impressions and clicks, learn, publish versions to Redis."""
    import os
    import signal
    import socket
    import threading

    from streamrec.consumers.trainer import Trainer, TrainerOptions
    from streamrec.local_stack import resolve_endpoints
    from streamrec.stream.feature_spec import SpecOptions
    from streamrec.versions.quality_gate import GateOptions

    settings = _settings(ctx, model=model, batch_size=batch_size, attribution_window_s=attribution_window_s,
                         publish_interval_examples=publish_every_examples, publish_interval_s=publish_every_s,
                         keep_versions=keep_versions, metrics_port=metrics_port, positives=positives,
                         delta_interval_s=delta_every_s, dense_interval_s=dense_every_s, gate=gate,
                         gate_margin=gate_margin, rollback_drop=rollback_drop, metrics_host=metrics_host)
    _check_model(settings.model)
    parsed_crosses = _parse_crosses(crosses)
    parsed_settings = _checked_settings(settings.model, model_settings, parsed_crosses, counts)
    endpoints = resolve_endpoints(settings)
    if from_examples:
        from streamrec.stream.kafka_client import create_topics, partition_count

        # subscribing to a topic that does not exist yet would wait for a metadata refresh (minutes)
        partitions = partition_count(endpoints.kafka_bootstrap, settings.impressions_topic)
        create_topics(endpoints.kafka_bootstrap, [settings.examples_topic], partitions)
    options = TrainerOptions(
        model=settings.model, worker_id=worker_id or f"{socket.gethostname()}-{os.getpid()}",
        batch_size=settings.batch_size, window_s=settings.attribution_window_s,
        publish_every_examples=settings.publish_interval_examples, publish_every_s=settings.publish_interval_s,
        keep_versions=settings.keep_versions, max_pending=settings.max_pending_impressions,
        window_examples=settings.window_examples, exit_at_end=exit_at_end, metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        seed=seed, spec_options=SpecOptions(cat_buckets=buckets, crosses=parsed_crosses, counts=counts, seed=seed,
                                 history_fields=history_fields),
        model_settings=parsed_settings, positives=settings.positives, delta_every_s=settings.delta_interval_s,
        dense_every_s=settings.dense_interval_s,
        gate=GateOptions(settings.gate, settings.gate_margin, settings.rollback_drop), from_examples=from_examples)
    trainer = Trainer(settings, options, kafka_bootstrap=endpoints.kafka_bootstrap, redis_url=endpoints.redis_url,
                      on_publish=lambda n, meta, _probe: console.print(
                          f"published {settings.model} v{n}: {meta['examples_seen']:,} examples, "
                          f"AUC {meta['metrics']['auc'] or float('nan'):.4f}"))

    def _stop(_signum: int, _frame: Any) -> None:
        trainer.stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    try:
        if options.metrics_port is not None:
            # Serve before the (possibly slow) resume so supervisors see the worker at once;
            # run() leaves a server that is already up alone.
            port = trainer.metrics.serve(options.metrics_port, options.metrics_host)
            console.print(f"metrics on http://{options.metrics_host}:{port}/metrics")
            if ready_file is not None:
                _write_report(ready_file, {"pid": os.getpid(), "metrics_port": port})
        ticker = threading.Thread(target=_status_lines, args=(trainer,), daemon=True)
        ticker.start()
        report = trainer.run()
    finally:
        trainer.close()
    console.print(f"{report['model']}: {report['examples']:,} examples, AUC {report['auc']:.4f} "
                  f"(window {report['auc_window']:.4f}), {report['versions_published']} versions, "
                  f"{report['examples_per_second']:,.0f} ex/s")
    click.echo(json.dumps(report, sort_keys=True))
    _write_report(report_json, report)


@cli.command()
@click.option("--worker-id", default=None, help="Label of this worker in metrics (default: host-pid).")
@click.option("--attribution-window-s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds of event time an impression waits for its click (STREAMREC_ATTRIBUTION_WINDOW_S).")
@click.option("--positives", type=click.Choice(["click", "window"]),
              help="Release a positive at its click or at the window's end (STREAMREC_POSITIVES).")
@click.option("--checkpoint-every-s", type=click.FloatRange(min=0, min_open=True),
              help="Store each owned partition's state this often (STREAMREC_JOIN_CHECKPOINT_INTERVAL_S).")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535),
              help="Prometheus port, 0 = any free one (STREAMREC_METRICS_PORT).")
@click.option("--metrics-host", help="Address /metrics listens on; 0.0.0.0 for a cluster (STREAMREC_METRICS_HOST).")
@click.option("--exit-at-end", is_flag=True,
              help="Stop once every partition's replay has ended and its examples are written (by any worker).")
@click.option("--status", "show_status", is_flag=True,
              help="Print each partition's checkpoint (owner, epoch, offsets, examples) and exit.")
@click.option("--ready-file", type=click.Path(path_type=Path), help="Write {pid, metrics_port} here once serving.")
@click.option("--report-json", type=click.Path(path_type=Path), help="Write the final report here.")
@click.pass_context
def join(ctx: click.Context, worker_id: str | None, attribution_window_s: float | None, positives: str | None,
         checkpoint_every_s: float | None, metrics_port: int | None, metrics_host: str | None, exit_at_end: bool,
         show_status: bool, ready_file: Path | None, report_json: Path | None) -> None:
    """Run a join worker: label impressions with their clicks for every trainer (scale out: start more).

    Workers share the partitions of one consumer group; each example is written once to
    <ns>.examples, which `streamrec train --from-examples` reads."""
    import os
    import signal
    import socket

    from streamrec.consumers.join_worker import JoinOptions, JoinWorker
    from streamrec.local_stack import resolve_endpoints
    from streamrec.stream.kafka_client import create_topics, partition_count

    settings = _settings(ctx, attribution_window_s=attribution_window_s, positives=positives,
                         join_checkpoint_interval_s=checkpoint_every_s, metrics_port=metrics_port,
                         metrics_host=metrics_host)
    endpoints = resolve_endpoints(settings)
    # examples:p holds what events of partition p became, so it has the sources' partition count
    partitions = partition_count(endpoints.kafka_bootstrap, settings.impressions_topic)
    if show_status:
        _print_join_status(settings, endpoints.redis_url, partitions)
        return
    create_topics(endpoints.kafka_bootstrap, [settings.examples_topic, settings.dead_letter_topic], partitions)
    options = JoinOptions(worker_id=worker_id or f"{socket.gethostname()}-{os.getpid()}",
                          window_s=settings.attribution_window_s, max_pending=settings.max_pending_impressions,
                          positives=settings.positives, checkpoint_every_s=settings.join_checkpoint_interval_s,
                          exit_at_end=exit_at_end, metrics_port=settings.metrics_port,
                          metrics_host=settings.metrics_host)
    worker = JoinWorker(settings, options, kafka_bootstrap=endpoints.kafka_bootstrap, redis_url=endpoints.redis_url)

    def _stop(_signum: int, _frame: Any) -> None:
        worker.stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    try:
        port = worker.metrics.serve(options.metrics_port, options.metrics_host)
        console.print(f"metrics on http://{options.metrics_host}:{port}/metrics")
        if ready_file is not None:
            _write_report(ready_file, {"pid": os.getpid(), "metrics_port": port})
        report = worker.run()
    finally:
        worker.close()
    console.print(f"join worker {report['worker']}: {report['examples']:,} examples from partitions "
                  f"{report['partitions']}, {report['dead_letters']} dead letters")
    click.echo(json.dumps(report, sort_keys=True))
    _write_report(report_json, report)


def _print_join_status(settings: Settings, redis_url: str, partitions: int) -> None:
    import redis

    from streamrec.consumers.join_worker import read_checkpoints

    client = redis.Redis.from_url(redis_url)
    try:
        states = read_checkpoints(client, settings.namespace, partitions)
        click.echo(f"{'partition':>9}  {'owner':<24} {'epoch':>5} {'impressions':>11} {'clicks':>9} "
                   f"{'examples':>9} {'positives':>9}  ended")
        for p in range(partitions):
            state = states.get(p)
            if state is None:
                click.echo(f"{p:>9}  (no checkpoint yet)")
                continue
            counters = state["counters"]
            click.echo(f"{p:>9}  {state.get('worker', '?'):<24} {state.get('epoch', 0):>5} "
                       f"{state['offsets'].get('impressions', 0):>11} {state['offsets'].get('clicks', 0):>9} "
                       f"{counters['examples']:>9} {counters['positives']:>9}  {'yes' if state['final_sent'] else 'no'}")
    finally:
        client.close()


def _status_lines(trainer: Any, every_s: float = 5.0) -> None:
    """A status line every few seconds for an operator watching a plain terminal."""
    while not trainer.stop_event.wait(every_s):
        c = trainer.counters
        console.print(f"[dim]{c.examples:,} examples, {trainer.joiner.open_impressions:,} open impressions, "
                      f"head v{trainer.head}, {c.dead_letters} dead letters[/]")


@cli.command()
@click.option("--events", type=click.IntRange(min=100), default=200_000, show_default=True,
              help="Impressions to generate (or to read from --data).")
@click.option("--model", default="wide_deep", show_default=True, help="Registered model name.")
@click.option("--data", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Replay this log instead.")
@click.option("--format", "fmt", default="criteo", show_default=True,
              type=click.Choice(["criteo", "avazu", "libsvm", "libfm", "csv", "jsonl"]))
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
    import contextlib
    import threading
    import time

    from rich.live import Live
    from rich.text import Text

    from streamrec.demo import run_demo
    from streamrec.producers.readers import ReaderOptions

    _check_model(model)
    settings = _settings(ctx)
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
        _print_demo_summary(model, report)
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
        _print_demo_summary(model, report)
    click.echo(json.dumps(report, sort_keys=True))
    _write_report(report_json, report)


def _print_demo_summary(model: str, report: dict[str, Any]) -> None:
    oracle = f" (oracle {report['oracle_auc']:.4f})" if report.get("oracle_auc") else ""
    console.print(
        f"[bold]{model}[/]: {report['examples']:,} examples trained exactly once, "
        f"AUC {report['auc']:.4f}{oracle}, window AUC {report['auc_window']:.4f}, logloss {report['logloss']:.4f}, "
        f"calibration {report['calibration']:.3f}; {report['versions_published']} versions published "
        f"(live v{report['head_version']}); {report['examples_per_second']:,.0f} examples/s end to end; "
        f"{report['dead_letters']} dead letters")


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except StreamrecError as exc:
        console.print(f"[red]error[/]: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
