"""``streamrec generate``, ``replay`` and ``evaluate``: streams from files and files through models."""

from __future__ import annotations

import json
from pathlib import Path

import click

from streamrec.cli.common import (
    console,
    count_lines,
    progress_bar,
    settings_from,
    with_reader_options,
    write_report,
)
from streamrec.stream.errors import ConfigError, StackError, StreamrecError


@click.command()
@click.option("--rows", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Criteo-format TSV to write.")
@click.option("--behaviour", is_flag=True,
              help="A behaviour stream: clicks follow the categories of each user's last clicks "
                   "(producers/behaviour_generator.py); writes its history-blind AUC beside the oracle's.")
@click.option("--match-strength", type=float, help="--behaviour: logit of a match with the latest click's category (2.0).")
@click.option("--recency-decay", type=click.FloatRange(0, 1), help="--behaviour: weight of the k-th latest click, "
                                                                    "decay**k (0.7).")
@click.option("--history-length", type=click.IntRange(min=1), help="--behaviour: recent clicks the truth reads (5).")
@click.option("--recent-share", type=click.FloatRange(0, 1),
              help="--behaviour: share of candidates drawn from recent clicks' categories (0.3).")
@click.option("--categories", type=click.IntRange(min=2), help="--behaviour: item categories (40).")
@click.option("--long-tail", is_flag=True,
              help="A long-tail stream: ten fields whose values follow a Zipf law over up to millions of values "
                   "(producers/long_tail_generator.py), to measure per-id state (--tables, docs/keyed-tables.md).")
@click.option("--values", type=click.IntRange(min=100), help="--long-tail: values of the widest field (2,000,000).")
@click.option("--zipf", type=click.FloatRange(min=0.5), help="--long-tail: popularity ~ rank^-zipf (1.05).")
@click.option("--churn", type=click.FloatRange(min=0),
              help="--long-tail: times the value at every popularity rank is replaced over the stream (0).")
def generate(rows: int, seed: int, out: Path, behaviour: bool, match_strength: float | None,
             recency_decay: float | None, history_length: int | None, recent_share: float | None,
             categories: int | None, long_tail: bool, values: int | None, zipf: float | None,
             churn: float | None) -> None:
    """Write a synthetic Criteo-format stream with a known click probability, and its oracle AUC."""
    from streamrec.producers.generator import generate as make
    from streamrec.producers.generator import oracle_path, write_stream

    given = {k: v for k, v in (("match_strength", match_strength), ("recency_decay", recency_decay),
                               ("history_length", history_length), ("recent_share", recent_share),
                               ("categories", categories)) if v is not None}
    if given and not behaviour:
        raise ConfigError(f"--{next(iter(given)).replace('_', '-')} shapes a behaviour stream: add --behaviour")
    tail = {k: v for k, v in (("values", values), ("zipf", zipf), ("churn", churn)) if v is not None}
    if tail and not long_tail:
        raise ConfigError(f"--{next(iter(tail))} shapes a long-tail stream: add --long-tail")
    if long_tail and behaviour:
        raise ConfigError("--long-tail and --behaviour make different streams: choose one")
    with console.status(f"generating {rows:,} rows"):
        if long_tail:
            from streamrec.producers.long_tail_generator import LongTailSettings, generate_long_tail

            stream = generate_long_tail(rows, seed, LongTailSettings(**tail))
        elif behaviour:
            from streamrec.producers.behaviour_generator import BehaviourSettings, generate_behaviour

            stream = generate_behaviour(rows, seed, BehaviourSettings(**given))
        else:
            stream = make(rows, seed)
        summary = write_stream(stream, out, seed)
    blind = f", history-blind AUC {summary['blind_auc']:.4f}" if "blind_auc" in summary else ""
    console.print(f"wrote {out} ({rows:,} rows, click rate {summary['positive_rate']:.3f}); "
                  f"oracle AUC {summary['oracle_auc']:.4f}{blind} in {oracle_path(out)}")
    hint = (" (sequence models: --history-field C3)" if behaviour
            else " (fixed hashing, to compare: --tables hashed)" if long_tail else "")
    console.print(f"replay it with: --format criteo --user-field C1 --item-field C2{hint}")


@click.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@with_reader_options
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Events per second.")
@click.option("--speedup", type=click.FloatRange(min=0, min_open=True), help="Pace by event time, X times faster.")
@click.option("--click-delay-mean-s", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True)
@click.option("--click-delay-max-s", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True)
@click.option("--watermark-every-s", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Event-time seconds between watermarks on every partition.")
@click.option("--watermark-min-rows", type=click.IntRange(min=0), default=None,
              help="Rows between watermarks at least [default: unpaced, --events-per-message x partitions, "
                   "so that messages fill up; paced, 0].")
@click.option("--partitions", type=click.IntRange(min=1), help="Partitions per topic if they must be created.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the click delays.")
@click.option("--events-per-message", type=click.IntRange(min=1), default=256, show_default=True,
              help="Events of one partition per Kafka message; 1 sends each event as a keyed JSON message "
                   "of its own.")
@click.option("--encoding", type=click.Choice(["columns", "json"]), default="columns", show_default=True,
              help="How a message's events travel: Arrow IPC columns, or a JSON array (docs/events.md).")
@click.option("--run-id", help="Impression ids are RUN_ID-<row>; default: a random id (printed).")
@click.option("--resume", is_flag=True,
              help="Continue replay --run-id after a crash: send only what did not reach each partition.")
@click.option("--report-json", type=click.Path(path_type=Path), help="Write the report here.")
@click.pass_context
def replay(ctx: click.Context, path: Path, fmt: str, user_field: str | None, item_field: str | None,
           columns: str | None, numeric_columns: str | None, strict: bool, limit: int | None,
           rate: float | None, speedup: float | None, click_delay_mean_s: float, click_delay_max_s: float,
           watermark_every_s: float, watermark_min_rows: int | None, partitions: int | None, seed: int, events_per_message: int, encoding: str,
           run_id: str | None, resume: bool, report_json: Path | None) -> None:
    """Replay a log as impression and click events onto Kafka."""
    import itertools
    import uuid

    from streamrec.local_stack import resolve_endpoints
    from streamrec.producers.column_replay import replay_columns
    from streamrec.producers.columns import columnar_fields, first_rows, read_columns
    from streamrec.producers.readers import ReaderOptions, ReadStats, parse_mapping, read_rows
    from streamrec.producers.replay import ReplayOptions, resume_positions
    from streamrec.producers.replay import replay as run_replay
    from streamrec.stream.kafka_client import (
        KafkaSecurity,
        create_topics,
        make_consumer,
        make_producer,
        partition_count,
    )

    if rate is not None and speedup is not None:
        raise ConfigError("--rate and --speedup exclude each other")
    if resume and not run_id:
        raise ConfigError("--resume needs the --run-id of the replay to continue")
    if run_id is not None and (not run_id or "-" in run_id or len(run_id) > 64):
        raise ConfigError("--run-id must be 1-64 characters without '-'")
    run_id = run_id or uuid.uuid4().hex[:8]
    settings = settings_from(ctx, partitions=partitions)
    endpoints = resolve_endpoints(settings)
    security = KafkaSecurity.from_settings(settings)
    if partitions is None:
        # topics made before (`streamrec topics create --partitions N`) keep their count
        try:
            existing = partition_count(endpoints.kafka_bootstrap, settings.impressions_topic, security=security)
        except StackError:
            existing = 0
        if existing:
            settings = settings.model_copy(update={"partitions": existing})
    create_topics(endpoints.kafka_bootstrap,
                  [settings.impressions_topic, settings.clicks_topic, settings.dead_letter_topic],
                  settings.partitions, security=security)
    stats = ReadStats()
    options = ReaderOptions(user_field=user_field, item_field=item_field, strict=strict,
                            mapping=parse_mapping(columns, numeric_columns))
    rows = read_rows(path, fmt, options, stats)
    if limit:
        rows = itertools.islice(rows, limit)
    topic_partitions = partition_count(endpoints.kafka_bootstrap, settings.impressions_topic, security=security)
    positions = None
    if resume:
        reader = make_consumer(endpoints.kafka_bootstrap, f"{settings.namespace}-replay-resume", settings.kafka_client,
                               security=security)
        try:
            positions = resume_positions(reader, (settings.impressions_topic, settings.clicks_topic),
                                         topic_partitions, run_id)
        finally:
            reader.close()
        console.print(f"resuming run {run_id}: {positions.events_found} of {2 * topic_partitions} partitions "
                      "already hold some of its events")
    else:
        console.print(f"run id {run_id} (continue it after a crash with --run-id {run_id} --resume)")
    producer = make_producer(endpoints.kafka_bootstrap, settings.kafka_client, security)
    total = limit or count_lines(path)
    replay_options = ReplayOptions(rate=rate, speedup=speedup, click_delay_mean_s=click_delay_mean_s,
                                   click_delay_max_s=click_delay_max_s, seed=seed, watermark_every_s=watermark_every_s,
                                   watermark_min_rows=watermark_min_rows,
                                   events_per_message=events_per_message, run_id=run_id, resume=positions,
                                   encoding=encoding)
    # the topic's own count: batches are placed by murmur2 modulo it
    topics = {"impressions_topic": settings.impressions_topic, "clicks_topic": settings.clicks_topic,
              "dead_letter_topic": settings.dead_letter_topic, "partitions": topic_partitions}
    try:
        with progress_bar("replay", total) as advance:
            if (encoding == "columns" and rate is None and speedup is None and events_per_message > 1
                    and columnar_fields(fmt, options)):
                # the same events from column chunks: no Python object per value (producers/column_replay.py)
                chunks = read_columns(path, fmt, options, stats)
                if limit:
                    chunks = first_rows(chunks, limit)
                report = replay_columns(chunks, producer, options=replay_options, on_progress=advance, **topics)
            else:
                report = run_replay(rows, producer, options=replay_options, on_progress=advance, **topics)
    finally:
        producer.close()
    result = {**report.as_dict(), "malformed_rows": stats.malformed}
    for error in stats.errors:
        console.print(f"[yellow]malformed[/]: {error}")
    console.print(f"{report.impressions:,} impressions, {report.clicks:,} clicks, {report.dead_letters} dead letters, "
                  f"{stats.malformed} malformed rows; {report.events_per_second:,.0f} events/s")
    write_report(report_json, result)


@click.command()
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
@click.option("--history-length", type=click.IntRange(min=1),
              help="Sequence models: how many of each user's latest clicks they read (new models only; "
                   "default: the model's own, see docs/sequence-models.md).")
@click.option("--search/--no-search", default=None,
              help="Search settings, crosses and count features online while learning, and predict with the "
                   "best so far (docs/online-search.md; the default with one rank); --no-search learns exactly "
                   "the configuration given.")
@click.option("--search-budget", type=click.FloatRange(min=1), default=3.0, show_default=True,
              help="The search's members learn at most this many examples per example of the stream.")
@click.option("--tables", type=click.Choice(["keyed", "hashed"]), default="keyed", show_default=True,
              help="Per-id state: keyed tables that give each id that earns it a row of its own (admission, "
                   "expiry, budget: --set tables.admit_after=N, tables.ttl=N, tables.max_rows=N), or fixed "
                   "hashing.")
@click.option("--ranks", type=click.IntRange(min=1), default=1, show_default=True,
              help="Learn one model with this many local processes (gloo ranks, one thread each): tables "
                   "sharded by id, the network replicated, FTRL one step per global batch of --batch-size "
                   "(docs/distributed.md). No search, count features or sequence models yet.")
@click.option("--report-json", type=click.Path(path_type=Path), help="Write the report here.")
def evaluate(path: Path, fmt: str, user_field: str | None, item_field: str | None, columns: str | None,
             numeric_columns: str | None, strict: bool, limit: int | None, model: str, batch_size: int,
             window: int, crosses: tuple[str, ...], counts: tuple[str, ...], settings: tuple[str, ...], seed: int,
             history_fields: tuple[str, ...], history_length: int | None, search: bool, search_budget: float,
             tables: str, ranks: int, report_json: Path | None) -> None:
    """One prequential pass (predict, measure, learn) of a model over a log file."""
    from streamrec import api
    from streamrec.models import parse_settings

    if ranks > 1:
        if search:
            raise click.UsageError("--search: the online search runs in one process; drop it, or --ranks")
        _evaluate_on_ranks(path, fmt, user_field, item_field, columns, numeric_columns, strict, limit, model,
                           batch_size, crosses, counts, parse_settings(settings), seed, tables, ranks, report_json)
        return
    search = True if search is None else search

    errors: list[str] = []
    run = dict(format=fmt, model=model, user_field=user_field, item_field=item_field, columns=columns,
               numeric_columns=numeric_columns, limit=limit, batch_size=batch_size, window=window, crosses=crosses,
               counts=counts, settings=parse_settings(settings), history_fields=history_fields,
               history_length=history_length or 0, seed=seed, strict=strict, search=search, search_budget=search_budget,
               tables=tables, read_errors=errors)
    # checked before the bar appears, so a wrong flag is the only output
    api.checked_settings(model, run["settings"], tuple(api.parse_cross(c) for c in crosses), counts)
    with progress_bar(f"evaluate {model}", limit or count_lines(path)) as advance:
        report = api.evaluate(path, on_progress=advance, **run)
    for error in errors:
        console.print(f"[yellow]malformed[/]: {error}")
    console.print(f"{model}: {report['examples']:,} examples  AUC {report['auc']:.4f} (window {report['auc_window']:.4f})  "
                  f"logloss {report['logloss']:.4f}  NE {report['normalized_entropy']:.4f}  "
                  f"calibration {report['calibration']:.3f}  {report['examples_per_second']:,.0f} ex/s")
    if "search" in report:
        console.print(search_summary(report["search"], batch_size))
    for line in table_lines(report.get("tables", {})):
        console.print(line)
    click.echo(json.dumps(report, sort_keys=True))
    write_report(report_json, report)


def _evaluate_on_ranks(path: Path, fmt: str, user_field: str | None, item_field: str | None, columns: str | None,
                       numeric_columns: str | None, strict: bool, limit: int | None, model: str, batch_size: int,
                       crosses: tuple[str, ...], counts: tuple[str, ...], settings: dict[str, str], seed: int,
                       tables: str, ranks: int, report_json: Path | None) -> None:
    """``evaluate --ranks N``: one model learned by N local gloo ranks (streamrec/sharded_evaluation.py)."""
    import torch.multiprocessing as mp

    from streamrec import api
    from streamrec.producers.readers import ReaderOptions, parse_mapping
    from streamrec.sharded_evaluation import ShardedRun, evaluate_sharded, sharded_settings, unshardable

    parsed = tuple(api.parse_cross(c) for c in crosses)
    api.checked_settings(model, settings, parsed, counts)  # the model's name first, then its settings
    refused = unshardable(model)
    if refused:
        raise click.UsageError(f"--ranks: {refused}")
    sharded_settings(model, settings)  # refuses ftrl.per_example=true before any rank starts
    reader = ReaderOptions(user_field=user_field, item_field=item_field, strict=strict,
                           mapping=parse_mapping(columns, numeric_columns))
    run = ShardedRun(str(path), fmt, model, ranks, batch_size=batch_size, reader=reader, settings=settings, seed=seed,
                     tables=tables, crosses=parsed, counts=counts, rows=limit)
    with progress_bar(f"evaluate {model} on {ranks} ranks", limit or count_lines(path)) as advance:
        try:
            report = evaluate_sharded(run, on_progress=advance)
        except mp.ProcessRaisedException as exc:
            # the rank's own error, not the launcher's traceback around it
            raise StreamrecError(f"a rank failed: {str(exc).strip().splitlines()[-1]}") from None
    report.pop("predictions")
    console.print(f"{model} on {ranks} ranks: {report['examples']:,} examples  AUC {report['auc']:.4f}  "
                  f"logloss {report['logloss']:.4f}  {report['examples_per_second']:,.0f} ex/s  "
                  f"{report['bytes_sent_per_example']:,.0f} bytes exchanged per example")
    click.echo(json.dumps(report, sort_keys=True))
    write_report(report_json, report)


def table_lines(tables: dict) -> list[str]:
    """A line per keyed table: rows held, admitted, evicted, memory, and the fields holding most."""
    lines = []
    for group, t in tables.items():
        top = sorted(t["fields"].items(), key=lambda item: -item[1])[:4]
        lines.append(f"{group} table: {t['rows']:,} rows held ({t['bytes'] / 2**20:,.1f} MiB), {t['admitted']:,} keys "
                     f"admitted, {t.get('not_admitted', 0):,} sightings not admitted, {t['evicted']:,} rows evicted; most rows: "
                     + ", ".join(f"{name} {rows:,}" for name, rows in top))
    return lines


def search_summary(search: dict, batch_size: int) -> str:
    """What the online search chose, as the flags that pin it, and what it tried (``batch_size``:
    the run's, which the chosen configuration may learn in smaller steps)."""
    chosen = search["configuration"]
    # a counted cross must be given with --cross too (it then also has wide weights of its own)
    crosses = chosen["crosses"] + [k for k in chosen["counts"] if ":" in k and k not in chosen["crosses"]]
    flags = [f"--cross {c}" for c in crosses] + [f"--count {c}" for c in chosen["counts"]]
    flags += [f"--set {key}={value:.4g}" for key, value in chosen["settings"].items()]
    if chosen.get("steps_per_batch", 1) > 1:
        flags.append(f"--batch-size {max(1, batch_size // chosen['steps_per_batch'])}")
    lines = [f"search: {len(search['promotions'])} promotions, {len(search['dropped'])} changes dropped, "
             f"{search['compute_multiple']:.2f}x one model's examples learned, CPU "
             f"{search['learning_multiple']:.2f}x its learning ({search['cpu_multiple']:.2f}x with proposals and copies)"]
    lines += [f"  at {p['at']:,}: {p['move']} (over {p['examples']:,} examples: AUC {p['auc']:.4f} against the "
              f"champion's {p['champion_auc']:.4f}, logloss {p['logloss_change']:+.5f}, z {p['z']:.1f})"
              for p in search["promotions"]]
    lines.append("  chosen: " + (" ".join(flags) if flags else "the defaults") + "  (pin it with --no-search)")
    return "\n".join(lines)

