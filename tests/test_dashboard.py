"""`streamrec dashboard` in a real headless browser (Debian's chromium driven by playwright),
against real trainers on the real broker and Redis: the page loads without console errors, its
charts and tiles show exactly what the workers' /metrics say, they move while the stream
advances, and the version timeline marks a rollback."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

import pytest
import redis

from streamrec.consumers.example_source import JoinCounts
from streamrec.consumers.trainer_exporter import TrainerExporter, TrainerReadings
from streamrec.consumers.worker_counters import Counters
from streamrec.dashboard import TRAINER_VALUES, chart_values, keyed_tables, search_population
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.kafka_client import create_topics
from streamrec.stream.prometheus import parse, scrape
from streamrec.stream.worker_registry import Heartbeat, workers
from streamrec.versions.store import VersionStore
from tests.streams import (
    browser_page,
    cli_env,
    cli_server,
    replay_rows,
    settings_for,
    start_trainer,
    wait_for,
)

ASSETS = Path(__file__).resolve().parent.parent / "streamrec" / "dashboard_assets"


def test_vendored_assets_match_their_pinned_hashes():
    table = (ASSETS / "vendor" / "README.md").read_text()
    pinned = dict(re.findall(r"\| `([^`]+)` \|[^|]+\|[^|]+\| `([0-9a-f]{64})` \|", table))
    assert set(pinned) == {"uPlot.iife.min.js", "uPlot.min.css"}
    for name, digest in pinned.items():
        assert hashlib.sha256((ASSETS / "vendor" / name).read_bytes()).hexdigest() == digest, name
    page = (ASSETS / "index.html").read_text()
    assert "http" not in page.replace("http-equiv", ""), "the page must not load anything from the network"


def test_chart_values_read_every_trainer_series_from_a_real_registry():
    from prometheus_client import generate_latest

    metrics = TrainerExporter("lr", "w1")
    quality = {"examples": 10, "auc": 0.7, "auc_window": 0.71, "logloss": 0.5, "logloss_window": 0.49,
               "normalized_entropy": 0.9, "normalized_entropy_window": 0.89,
               "calibration": 1.0, "calibration_window": 1.01}
    metrics.attach(lambda: TrainerReadings(
        counters=Counters(examples=10), join=JoinCounts(positives=3, negatives=7), open_impressions=0,
        examples_per_second=float("nan"), impressions_topic="i", clicks_topic="c", quality=quality,
        lag={"a": 4, "b": 5}))
    values = chart_values("trainer", parse(generate_latest(metrics.registry).decode()))
    assert values["auc_window"] == 0.71 and values["auc_lifetime"] == 0.7 and values["logloss"] == 0.49
    assert values["positives"] == 3 and values["negatives"] == 7 and values["examples"] == 10
    assert values["lag"] == 9 and values["dead_letters"] == 0 and values["held"] == 0
    # Gauges with labels exist only once set: before the first publish the page shows "–".
    missing = sorted(name for name in TRAINER_VALUES if values[name] is None)
    # ... and the search's readings only from a trainer that searches
    assert missing == ["examples_per_second", "live_version", "search_challengers", "search_compute",
                       "search_promotions", "version"], missing
    assert search_population(parse(generate_latest(metrics.registry).decode())) == []
    quality.update(search_promotions=2.0, search_challengers=1.0, search_compute_multiple=2.5)
    population = [{"member": "+crosses user_id:item_id,A:B, ftrl.alpha x3", "examples": 4096, "auc": 0.71,
                   "champion_auc": 0.7, "z": 1.5}]
    metrics.attach(lambda: TrainerReadings(
        counters=Counters(examples=10), join=JoinCounts(positives=3, negatives=7), open_impressions=0,
        examples_per_second=float("nan"), impressions_topic="i", clicks_topic="c", quality=quality,
        lag={"a": 4, "b": 5}, population=population,
        tables={"wide": {"rows": 5000, "admitted": 9000, "not_admitted": 120, "evicted": 4000, "bytes": 1 << 20,
                         "capacity": 8192, "fields": {"user_id": 3000, "A:B": 1999}}},
        history={"keys": 70, "expired": 12, "ttl_seconds": 600.0}))
    samples = parse(generate_latest(metrics.registry).decode())
    assert keyed_tables(samples) == [{"table": "wide", "rows": 5000, "bytes": 1 << 20, "admitted": 9000,
                                      "not_admitted": 120, "evicted": 4000},
                                     {"table": "history", "rows": 70, "bytes": None, "admitted": None,
                                      "not_admitted": None, "evicted": 12}]
    assert samples["streamrec_table_field_rows{field=A:B,table=wide}"] == 1999
    values = chart_values("trainer", samples)
    assert (values["search_promotions"], values["search_challengers"], values["search_compute"]) == (2, 1, 2.5)
    # each challenger, its move's commas and colons kept, beside the champion on the same examples
    assert search_population(samples) == population


def test_the_ranks_of_a_trainer_are_one_model_on_the_dashboard():
    """Each rank exports its own partitions' counts and the whole model's quality and versions;
    the dashboard joins them into one worker: counts added up, quality and versions once."""
    from prometheus_client import generate_latest

    from streamrec.dashboard import join_ranks, rank_place

    assert rank_place({"streamrec_trainer_ranks{rank=1,trainer=pod,a=b}": 2.0}) == ("pod,a=b", 1, 2)

    quality = {"examples": 30, "auc": 0.7, "auc_window": 0.71, "logloss": 0.5, "logloss_window": 0.49,
               "normalized_entropy": 0.9, "normalized_entropy_window": 0.89, "calibration": 1.0,
               "calibration_window": 1.01}
    results = []
    for rank, (examples, positives, lag, rate) in enumerate(((10, 2, 4, 100.0), (20, 5, 6, 150.0))):
        metrics = TrainerExporter("deepfm", f"t-rank{rank}")
        metrics.mark_rank("t", rank, 2)
        metrics.attach(lambda e=examples, p=positives, g=lag, r=rate, k=rank: TrainerReadings(
            counters=Counters(examples=e), join=JoinCounts(positives=p), open_impressions=0,
            examples_per_second=r, impressions_topic="i", clicks_topic="c", quality=quality,
            lag={"i": g}, head_version=7 if k == 0 else 3))
        samples = parse(generate_latest(metrics.registry).decode())
        results.append(({"role": "trainer", "model": "deepfm", "worker": f"t-rank{rank}"}, samples, None))
    alone = TrainerExporter("lr", "solo")
    alone.attach(lambda: TrainerReadings(counters=Counters(examples=5), join=JoinCounts(), open_impressions=0,
                                         examples_per_second=1.0, impressions_topic="i", clicks_topic="c"))
    results.append(({"role": "trainer", "model": "lr", "worker": "solo"},
                    parse(generate_latest(alone.registry).decode()), None))
    joined = join_ranks(results[::-1])
    assert [(t["model"], t["worker"], t.get("ranks")) for t, _s, _e in joined] == [("lr", "solo", None),
                                                                                   ("deepfm", "t", 2)]
    target, samples, error = joined[1]
    values = chart_values("trainer", samples)
    assert (values["examples"], values["positives"], values["lag"], values["examples_per_second"]) == (30, 7, 10, 250)
    assert values["auc_window"] == 0.71 and values["version"] == 7 and error is None  # rank 0's, once
    # a rank that does not answer is named; the model still shows what the others said
    _target, samples, error = join_ranks(results[1:2])[0]
    assert chart_values("trainer", samples)["examples"] == 20 and error == "t: ranks [0] of 2 not scraped"


@pytest.mark.integration
def test_worker_registry_lists_live_workers_and_forgets_closed_ones(stack, namespace):
    client = redis.Redis.from_url(stack.redis_url)
    beat = Heartbeat(client, namespace, role="trainer", model="lr", worker="w1", url="http://h:1/metrics").start()
    try:
        assert [(w["role"], w["model"], w["worker"], w["metrics_url"]) for w in workers(client, namespace)] == [
            ("trainer", "lr", "w1", "http://h:1/metrics")]
        client.delete(beat.key)  # as if its TTL ran out: a dead worker drops out of the index too
        assert workers(client, namespace) == []
        beat.beat()
        assert len(workers(client, namespace)) == 1
    finally:
        beat.close()
    assert workers(client, namespace) == []
    client.close()


@pytest.mark.integration
def test_dashboard_in_a_browser_shows_the_workers_metrics_live(stack, namespace, learnable_rows, tmp_path,
                                                               system_packages):
    settings = settings_for(namespace)
    rows = learnable_rows[:9000]
    create_topics(stack.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                          settings.dead_letter_topic], settings.partitions)
    trainers = {name: start_trainer(stack, settings, model=name, worker_id=f"{name}-w", exit_at_end=False,
                                    metrics_port=0, publish_every_examples=1500, publish_every_s=60.0,
                                    spec_options=SpecOptions(keyed=name == "nfm"))  # nfm's tables are keyed
                for name in ("lr", "nfm")}
    replayer = threading.Thread(target=replay_rows, args=(stack, settings, rows, "dash"), kwargs={"rate": 1200},
                                daemon=True)
    try:
        with cli_server(cli_env(stack, namespace), tmp_path, "dashboard", "--interval-s", "0.5") as url, \
                browser_page(1600) as (page, problems):
            page.goto(url + "/")
            replayer.start()

            def value(key: str, name: str) -> float | None:
                raw = page.get_attribute(f'[data-testid="{key}:{name}"]', "data-value")
                return float(raw) if raw else None

            lr_key = "trainer/lr/lr-w"
            page.wait_for_selector(f'[data-testid="worker-{lr_key}"]', timeout=30_000)
            wait_for(lambda: (value(lr_key, "examples") or 0) > 0, 60, "the first examples on the page", 0.2)
            first_examples = value(lr_key, "examples")
            first_points = page.evaluate("() => window.streamrec.charts.get('examples_per_second').plot.data[0].length")
            # The charts move while the stream advances, without a reload.
            wait_for(lambda: (value(lr_key, "examples") or 0) > first_examples + 1000, 60,
                     "the examples tile to grow", 0.2)
            assert page.evaluate("() => window.streamrec.charts.get('examples_per_second').plot.data[0].length") \
                > first_points
            assert page.evaluate("() => window.streamrec.state.polls") > 2

            # Once the stream is drained the workers' metrics stop moving; the page must then
            # show exactly what each worker's /metrics says.
            replayer.join(60)
            for name, running in trainers.items():
                wait_for(lambda r=running: r.trainer.counters.examples == len(rows), 90, f"{name} to train all")

            def page_matches(name: str) -> bool:
                scraped = scrape(trainers[name].trainer.metrics.port)
                key = f"trainer/{name}/{name}-w"
                label = f"{name}/{name}-w auc_window"
                shown = page.evaluate(f"() => window.streamrec.lastValue('auc', {label!r})")
                return (shown == scraped["streamrec_auc_ratio{window=recent}"]
                        and value(key, "examples") == scraped["streamrec_examples_trained_total"] == len(rows)
                        and value(key, "auc_lifetime") == scraped["streamrec_auc_ratio{window=lifetime}"]
                        and value(key, "lag") == sum(v for k, v in scraped.items()
                                                     if k.startswith("streamrec_consumer_lag_messages"))
                        and value(key, "version") == scraped["streamrec_head_version"] > 0)

            for name in trainers:
                wait_for(lambda n=name: page_matches(n), 30, f"the page to match {name}'s /metrics", 0.25)

            # The online search's challengers: the trainer card lists those its /metrics names
            def population_matches() -> bool:
                scraped = search_population(scrape(trainers["lr"].trainer.metrics.port))
                shown = page.eval_on_selector_all('[data-testid="trainer/lr/lr-w:population"] tbody tr',
                                                  "rows => rows.map(r => r.dataset.member)")
                return bool(scraped) and shown == [m["member"] for m in scraped]

            wait_for(population_matches, 30, "the search's challengers on the page", 0.25)

            # nfm's keyed tables: the card shows the rows each holds, as its /metrics says
            def tables_match() -> bool:
                scraped = keyed_tables(scrape(trainers["nfm"].trainer.metrics.port))
                shown = page.eval_on_selector_all('[data-testid="trainer/nfm/nfm-w:tables"] tbody tr',
                                                  "rows => rows.map(r => [r.dataset.table, r.children[1].textContent])")
                return bool(scraped) and [t for t, _ in shown] == [t["table"] for t in scraped] \
                    and all(int(text.replace(",", "")) == t["rows"] for (_, text), t in zip(shown, scraped))

            wait_for(tables_match, 30, "nfm's keyed tables on the page", 0.25)
            # Champion and challenger are separate series on one AUC chart.
            labels = page.evaluate("() => window.streamrec.charts.get('auc').labels")
            assert {"lr/lr-w auc_window", "nfm/nfm-w auc_window", "lr/lr-w auc_lifetime"} <= set(labels)
            assert 0.55 < page.evaluate("() => window.streamrec.lastValue('auc', 'lr/lr-w auc_lifetime')") < 1

            # The timeline lists the published versions and marks a rollback made by hand.
            store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
            published = store.versions()
            assert len(published) >= 2
            wait_for(lambda: page.locator('#timeline tr[data-kind="published"]').count() >= len(published), 10,
                     "the published versions in the timeline", 0.2)
            store.set_live(published[0], pin=True, kind="rollback", reason="dashboard test")
            page.wait_for_selector('#timeline tr[data-kind="rollback"]', timeout=10_000)
            row = page.locator('#timeline tr[data-kind="rollback"]').first.inner_text()
            assert "lr" in row and str(published[0]) in row and "dashboard test" in row
            store.client.close()
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert problems == []
    finally:
        for running in trainers.values():
            running.stop()
