"""The long-running processes: ``streamrec train``, ``join``, ``serve`` and ``dashboard``."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import click

from streamrec.cli.common import console, listen, run_http, settings_from, write_report
from streamrec.stream.errors import StreamrecError
from streamrec.stream.feature_spec import DEFAULT_CAT_BUCKETS
from streamrec.stream.settings import Settings


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and Ctrl-C ask the worker to stop cleanly (it publishes or checkpoints first)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())


@click.command()
@click.option("--model", help="Registered model name (STREAMREC_MODEL).")
@click.option("--worker-id", default=None, help="Label of this worker in metrics and versions (default: host-pid).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Examples per step (STREAMREC_BATCH_SIZE).")
@click.option("--attribution-window-s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds of event time an impression waits for its click (STREAMREC_ATTRIBUTION_WINDOW_S).")
@click.option("--publish-every-examples", type=click.IntRange(min=1),
              help="Publish a version after this many examples (STREAMREC_PUBLISH_EVERY_EXAMPLES).")
@click.option("--publish-every-s", type=click.FloatRange(min=0, min_open=True),
              help="... or after this many seconds (STREAMREC_PUBLISH_EVERY_S).")
@click.option("--keep-versions", type=click.IntRange(min=1), help="Versions kept in Redis (STREAMREC_KEEP_VERSIONS).")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535),
              help="Prometheus port, 0 = any free one (STREAMREC_METRICS_PORT).")
@click.option("--exit-at-end", is_flag=True,
              help="Stop once every partition reached its final watermark (one worker replaying a log).")
@click.option("--cross", "crosses", multiple=True, help="Wide-part feature cross A:B (repeatable; new models only).")
@click.option("--count", "counts", multiple=True, metavar="KEY",
              help="Wide-part count feature of a field or a --cross A:B (repeatable; new models only).")
@click.option("--buckets", type=click.IntRange(min=2),
              help=f"Fixed hashing: hash buckets per categorical field (implies --tables hashed; default "
                   f"{DEFAULT_CAT_BUCKETS}; new models only).")
@click.option("--tables", type=click.Choice(["keyed", "hashed"]),
              help="Per-id state: keyed tables with admission, expiry and a row budget (--set tables.*; the "
                   "default), or fixed hashing (--buckets). New models only.")
@click.option("--set", "model_settings", multiple=True, metavar="KEY=VALUE",
              help="Model setting, e.g. ftrl.alpha=0.5 (repeatable; new models only).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--positives", type=click.Choice(["click", "window"]),
              help="Release a positive at its click or at the window's end (STREAMREC_POSITIVES).")
@click.option("--delta-every-s", type=click.FloatRange(min=0),
              help="Publish changed rows this often; 0 = full versions only (STREAMREC_DELTA_EVERY_S).")
@click.option("--dense-every-s", type=click.FloatRange(min=0),
              help="Include the dense weights in a delta this often (STREAMREC_DENSE_EVERY_S).")
@click.option("--gate/--no-gate", default=None,
              help="Quality gate: hold non-finite versions and versions worse than live on the same recent "
                   "examples; roll back when the served model falls behind (STREAMREC_GATE; docs/serving.md).")
@click.option("--gate-margin", type=click.FloatRange(min=0),
              help="AUC a new version may lose against live, on the same recent examples, and still go live "
                   "(STREAMREC_GATE_MARGIN).")
@click.option("--rollback-drop", type=click.FloatRange(min=0, min_open=True),
              help="AUC the served model may fall behind the frozen live version, on the same examples, before "
                   "it rolls back (STREAMREC_ROLLBACK_DROP).")
@click.option("--history-field", "history_fields", multiple=True, metavar="FIELD",
              help="Sequence models: remember this categorical field of each clicked item too, e.g. its "
                   "category (repeatable; new models only).")
@click.option("--history-length", type=click.IntRange(min=1),
              help="Sequence models: how many of each user's latest clicks they read (new models only; "
                   "default: the model's own, see docs/sequence-models.md).")
@click.option("--search/--no-search", default=None,
              help="Search settings, crosses and count features online and publish the best so far "
                   "(STREAMREC_SEARCH, default on; docs/online-search.md). --no-search learns exactly the "
                   "configuration given.")
@click.option("--metrics-host", help="Address /metrics listens on; 0.0.0.0 for a cluster (STREAMREC_METRICS_HOST).")
@click.option("--from-examples", is_flag=True,
              help="Read labelled examples from <ns>.examples, written by `streamrec join` workers, instead of "
                   "joining impressions and clicks in this worker.")
@click.option("--ready-file", type=click.Path(path_type=Path), help="Write {pid, metrics_port} here once serving.")
@click.option("--report-json", type=click.Path(path_type=Path), help="Write the final report here.")
@click.option("--ranks", type=click.IntRange(min=1),
              help="Learn one model as this many local processes (torch.distributed ranks, each reading its "
                   "share of the partitions; started and restarted by torch's elastic agent; "
                   "docs/distributed.md). Under torchrun each process is a rank without this flag.")
@click.option("--max-restarts", type=click.IntRange(min=0), default=3, show_default=True,
              help="With --ranks: times the group is restarted from the newest version after a rank fails.")
@click.pass_context
def train(ctx: click.Context, model: str | None, worker_id: str | None, batch_size: int | None,
          attribution_window_s: float | None, publish_every_examples: int | None, publish_every_s: float | None,
          keep_versions: int | None, metrics_port: int | None, exit_at_end: bool, crosses: tuple[str, ...],
          counts: tuple[str, ...], buckets: int | None, tables: str | None, model_settings: tuple[str, ...], seed: int, positives: str | None,
          delta_every_s: float | None, dense_every_s: float | None, gate: bool | None, gate_margin: float | None,
          rollback_drop: float | None, history_fields: tuple[str, ...], history_length: int | None,
          search: bool | None, metrics_host: str | None,
          from_examples: bool, ready_file: Path | None, report_json: Path | None, ranks: int | None,
          max_restarts: int) -> None:
    """Run a trainer worker: join impressions and clicks, learn, publish versions to Redis."""
    from streamrec.api import checked_settings, keyed_tables, parse_cross
    from streamrec.consumers.rank_trainer import RankPlace, RankTrainer, refuse_on_ranks
    from streamrec.consumers.trainer import Trainer, TrainerOptions
    from streamrec.local_stack import resolve_endpoints
    from streamrec.models import parse_settings
    from streamrec.stream.feature_spec import SpecOptions

    place = RankPlace.from_environment()
    if ranks is not None or place is not None:
        # what ranks do not do yet, refused when asked for; off where it is only the default
        if search:
            raise StreamrecError("--search: not available when a trainer runs as ranks yet (docs/distributed.md)")
        search = False
    settings = settings_from(ctx, model=model, batch_size=batch_size, attribution_window_s=attribution_window_s,
                             publish_every_examples=publish_every_examples, publish_every_s=publish_every_s,
                             keep_versions=keep_versions, metrics_port=metrics_port, positives=positives,
                             delta_every_s=delta_every_s, dense_every_s=dense_every_s, gate=gate,
                             gate_margin=gate_margin, rollback_drop=rollback_drop, metrics_host=metrics_host,
                             search=search)
    pairs = tuple(parse_cross(c) for c in crosses)
    keyed = keyed_tables(tables, buckets)
    parsed = checked_settings(settings.model, parse_settings(model_settings), pairs, counts)
    on_ranks = ranks is not None or place is not None
    if on_ranks:
        from streamrec.sharded_evaluation import sharded_settings, unshardable

        refused = unshardable(settings.model)
        if refused:
            raise StreamrecError(f"--ranks: {refused}")
        parsed = sharded_settings(settings.model, parsed)  # FTRL steps once per global batch
    options = TrainerOptions.from_settings(
        settings, worker_id=worker_id or _default_worker_id(), exit_at_end=exit_at_end, seed=seed,
        spec_options=SpecOptions(cat_buckets=buckets or DEFAULT_CAT_BUCKETS, crosses=pairs, counts=counts,
                                 seed=seed, history_fields=history_fields, history_length=history_length or 0,
                                 keyed=keyed),
        model_settings=parsed, from_examples=from_examples)
    if on_ranks:
        refuse_on_ranks(options)  # before any rank starts, each of which would fail the same way
    endpoints = resolve_endpoints(settings)
    if from_examples:
        from streamrec.stream.kafka_client import KafkaSecurity, create_topics, partition_count

        # subscribing to a topic that does not exist yet would wait for a metadata refresh (minutes)
        security = KafkaSecurity.from_settings(settings)
        partitions = partition_count(endpoints.kafka_bootstrap, settings.impressions_topic, security=security)
        create_topics(endpoints.kafka_bootstrap, [settings.examples_topic], partitions, security=security)
    if ranks is not None and place is None:
        _launch_ranks(ranks, max_restarts, options.worker_id)
        return

    def published(n: int, meta: Any, _probe: Any) -> None:
        console.print(f"published {settings.model} v{n}: {meta.examples_seen:,} examples, "
                      f"AUC {meta.auc or float('nan'):.4f}")

    common = {"kafka_bootstrap": endpoints.kafka_bootstrap, "redis_url": endpoints.redis_url, "on_publish": published}
    trainer = (Trainer(settings, options, **common) if place is None
               else RankTrainer(settings, options, place, **common))
    lead = place is None or place.rank == 0  # of ranks, the first writes the files
    threading.Thread(target=_status_lines, args=(trainer,), daemon=True).start()
    report = _run_worker(trainer, options.metrics_host, ready_file if lead else None)
    console.print(f"{report['model']}: {report['examples']:,} examples, AUC {report['auc']:.4f} "
                  f"(window {report['auc_window']:.4f}), {report['versions_published']} versions, "
                  f"{report['examples_per_second']:,.0f} ex/s")
    click.echo(json.dumps(report, sort_keys=True))
    if lead:
        write_report(report_json, report)


def _launch_ranks(ranks: int, max_restarts: int, run_id: str) -> None:
    """Run this same command as ``ranks`` local processes under torch's elastic agent (torchrun),
    which restarts them all, from the newest version, when one fails."""
    import sys

    from torch.distributed.run import main as torchrun

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--ranks", "--max-restarts"):
            skip = True
        elif not arg.startswith(("--ranks=", "--max-restarts=")):
            argv.append(arg)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    console.print(f"training as {ranks} ranks (torchrun, up to {max_restarts} restarts)")
    try:
        # --standalone's rendezvous on a free local port, named after the trainer (its ranks'
        # TORCHELASTIC_RUN_ID: what their metrics are grouped by) instead of a random id
        torchrun(["--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", f"--rdzv-id={run_id}",
                  f"--nproc-per-node={ranks}", f"--max-restarts={max_restarts}",
                  "--monitor-interval=0.5", "-m", "streamrec", *argv])
    except SignalException as exc:
        # SIGTERM or Ctrl-C: the agent stopped the ranks, which published their last version first
        console.print(f"stopped ({exc.sigval.name}): the ranks published their last version")
    except ChildFailedError as exc:
        raise StreamrecError(f"the ranks failed {max_restarts + 1} times; the last failure:\n{exc}") from None


def _run_worker(worker: Any, metrics_host: str, ready_file: Path | None) -> dict[str, Any]:
    """A Kafka worker's life under the CLI: stop cleanly on SIGTERM/Ctrl-C, serve /metrics before
    the (possibly slow) resume so supervisors see it at once, write the ready file, run, close."""
    _stop_on_signals(worker.stop_event)
    try:
        port = worker.serve_metrics()  # run() leaves a server that is already up alone
        console.print(f"metrics on http://{metrics_host}:{port}/metrics")
        if ready_file is not None:
            write_report(ready_file, {"pid": os.getpid(), "metrics_port": port})
        return worker.run()
    finally:
        worker.close()


def _status_lines(trainer: Any, every_s: float = 5.0) -> None:
    """A status line every few seconds for an operator watching a plain terminal."""
    while not trainer.stop_event.wait(every_s):
        c = trainer.counters
        console.print(f"[dim]{c.examples:,} examples, {trainer.source.open_impressions:,} open impressions, "
                      f"head v{trainer.head}, {c.dead_letters} dead letters[/]")


@click.command()
@click.option("--worker-id", default=None, help="Label of this worker in metrics (default: host-pid).")
@click.option("--attribution-window-s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds of event time an impression waits for its click (STREAMREC_ATTRIBUTION_WINDOW_S).")
@click.option("--positives", type=click.Choice(["click", "window"]),
              help="Release a positive at its click or at the window's end (STREAMREC_POSITIVES).")
@click.option("--checkpoint-every-s", type=click.FloatRange(min=0, min_open=True),
              help="Store each owned partition's state this often (STREAMREC_JOIN_CHECKPOINT_EVERY_S).")
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
    from streamrec.consumers.join_worker import JoinOptions, JoinWorker
    from streamrec.local_stack import resolve_endpoints
    from streamrec.stream.kafka_client import KafkaSecurity, create_topics, partition_count

    settings = settings_from(ctx, attribution_window_s=attribution_window_s, positives=positives,
                             join_checkpoint_every_s=checkpoint_every_s, metrics_port=metrics_port,
                             metrics_host=metrics_host)
    endpoints = resolve_endpoints(settings)
    # examples:p holds what events of partition p became, so it has the sources' partition count
    security = KafkaSecurity.from_settings(settings)
    partitions = partition_count(endpoints.kafka_bootstrap, settings.impressions_topic, security=security)
    if show_status:
        _print_join_status(settings, endpoints.redis_url, partitions)
        return
    create_topics(endpoints.kafka_bootstrap, [settings.examples_topic, settings.dead_letter_topic], partitions,
                  security=security)
    options = JoinOptions.from_settings(settings, worker_id=worker_id or _default_worker_id(), exit_at_end=exit_at_end)
    worker = JoinWorker(settings, options, kafka_bootstrap=endpoints.kafka_bootstrap, redis_url=endpoints.redis_url)
    report = _run_worker(worker, options.metrics_host, ready_file)
    console.print(f"join worker {report['worker']}: {report['examples']:,} examples from partitions "
                  f"{report['partitions']}, {report['dead_letters']} dead letters")
    click.echo(json.dumps(report, sort_keys=True))
    write_report(report_json, report)


def _print_join_status(settings: Settings, redis_url: str, partitions: int) -> None:
    from streamrec.consumers.join_worker import read_checkpoints, state_finished
    from streamrec.stream.redis_connection import connect

    client = connect(redis_url)
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
                       f"{counters['examples']:>9} {counters['positives']:>9}  {'yes' if state_finished(state) else 'no'}")
    finally:
        client.close()


@click.command()
@click.option("--model", help="Serve this model; default: the namespace's champion (`streamrec models champion`); "
                             "503 while none is named.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), help="HTTP port, 0 = any free one (STREAMREC_SERVE_PORT).")
@click.option("--no-deltas", is_flag=True, help="Serve full versions only, without the trainer's deltas.")
@click.option("--poll-s", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Check Redis this often when no announcement arrives (the pub/sub fallback).")
@click.option("--auth-token", help="Require Authorization: Bearer TOKEN on /predict and /metrics "
                                   "(STREAMREC_AUTH_TOKEN).")
@click.option("--ready-versions", type=click.IntRange(min=0), default=2, show_default=True,
              help="Keep this many recent versions (live, the promoted one before it) loaded in the background, so "
                   "a pin or rollback swaps without building the model; each costs one more model in memory.")
@click.option("--ready-file", type=click.Path(path_type=Path), help="Write {pid, port} here once listening.")
@click.pass_context
def serve(ctx: click.Context, model: str | None, host: str, port: int | None, no_deltas: bool, poll_s: float,
          auth_token: str | None, ready_versions: int, ready_file: Path | None) -> None:
    """Serve predictions over HTTP (/predict, /healthz, /metrics), hot-swapping live versions."""
    from streamrec.api import check_model_name
    from streamrec.local_stack import resolve_redis_url
    from streamrec.serving.http_app import create_app
    from streamrec.serving.scorer import Scorer
    from streamrec.stream.worker_registry import Heartbeat, metrics_url

    settings = settings_from(ctx, serve_port=port, auth_token=auth_token)
    if model is not None:
        check_model_name(model)
    scorer = Scorer(resolve_redis_url(settings), settings.namespace, model, deltas=not no_deltas, poll_s=poll_s,
                    ready_versions=ready_versions)
    scorer.start()
    served = scorer.served
    console.print(f"serving {served.model} v{served.version}" if served else
                  f"waiting for a live version of {model or 'the champion model'} in {settings.namespace}")
    try:
        sock = listen(host, settings.serve_port, "--port (STREAMREC_SERVE_PORT)")
    except StreamrecError:
        scorer.close()
        raise
    bound = sock.getsockname()[1]
    console.print(f"listening on http://{host}:{bound} (/predict, /healthz, /metrics)")
    if ready_file is not None:
        write_report(ready_file, {"pid": os.getpid(), "port": bound})
    heartbeat = Heartbeat(scorer.client, settings.namespace, role="scorer", model=model or "champion",
                          worker=_default_worker_id(), url=metrics_url(host, bound)).start()

    def stop() -> None:
        heartbeat.close()
        scorer.close()

    run_http(create_app(scorer, auth_token=settings.auth_token or None), sock, on_exit=stop)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8500, show_default=True,
              help="HTTP port, 0 = any free one.")
@click.option("--prometheus", "prometheus_url", metavar="URL",
              help="Read metrics from this Prometheus server instead of scraping the workers.")
@click.option("--scrape", "scrape_urls", multiple=True, metavar="URL",
              help="Also scrape this /metrics URL (repeatable); workers in Redis are found by themselves.")
@click.option("--interval-s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Sample every this many seconds.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST|NETWORK",
              help="Also scrape registered workers on this host or network, e.g. 10.0.0.0/8; '*' for any "
                   "(STREAMREC_DASHBOARD_ALLOW_HOSTS, comma-separated; default: loopback only).")
@click.option("--auth-token", help="Require this token to see the page (open /?token=TOKEN once) and send it "
                                   "when scraping workers (STREAMREC_AUTH_TOKEN).")
@click.option("--ready-file", type=click.Path(path_type=Path), help="Write {pid, port} here once listening.")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, prometheus_url: str | None, scrape_urls: tuple[str, ...],
              interval_s: float, allow_hosts: tuple[str, ...], auth_token: str | None, ready_file: Path | None) -> None:
    """Serve a live dashboard of the namespace's trainers and scorers (open the printed URL)."""
    import redis

    from streamrec.dashboard import Collector, HostAllowList, PrometheusSource, WorkerSource, create_app
    from streamrec.local_stack import resolve_redis_url
    from streamrec.stream.errors import StackError
    from streamrec.stream.redis_connection import connect

    settings = settings_from(ctx, auth_token=auth_token)
    token = settings.auth_token or None
    allowed = HostAllowList((*filter(None, settings.dashboard_allow_hosts.split(",")), *allow_hosts))
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
    source = (PrometheusSource(prometheus_url) if prometheus_url
              else WorkerSource(client, settings.namespace, scrape_urls, token=token, allow=allowed))
    collector = Collector(source, client, settings.namespace, interval_s=interval_s).start()
    sock = listen(host, port, "--port")
    bound = sock.getsockname()[1]
    console.print(f"dashboard on http://{host}:{bound}/ (namespace {settings.namespace}, source {source.name})")
    if ready_file is not None:
        write_report(ready_file, {"pid": os.getpid(), "port": bound})
    run_http(create_app(collector, auth_token=token), sock, on_exit=collector.close)
