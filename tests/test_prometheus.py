"""A real Prometheus server (Debian's package) scrapes a running trainer with deploy/'s rules;
streamrec_ series come back through its HTTP query API equal to the worker's own /metrics, the
recording rules evaluate, and the dashboard's Prometheus source reads the same values."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from streamrec.dashboard import Collector, PrometheusSource
from streamrec.local_stack import free_port
from streamrec.stream.kafka_client import create_topics
from streamrec.stream.prometheus import scrape
from tests.streams import replay_rows, settings_for, start_trainer, wait_for

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def test_promtool_accepts_the_config_and_rules(system_packages):
    for args in (["check", "config", str(DEPLOY / "prometheus.yml")],
                 ["check", "config", str(DEPLOY / "prometheus-compose.yml")],
                 ["check", "rules", str(DEPLOY / "rules.yml")]):
        done = subprocess.run([shutil.which("promtool") or "promtool", *args], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.integration
def test_prometheus_scrapes_a_trainer_and_answers_queries(stack, namespace, learnable_rows, tmp_path, system_packages):
    settings = settings_for(namespace)
    rows = learnable_rows[:6000]
    # topics first, as `streamrec topics create` would: a consumer subscribed to missing topics
    # may not see them appear for a while
    create_topics(stack.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                          settings.dead_letter_topic], settings.partitions)
    running = start_trainer(stack, settings, model="lr", worker_id="prom-w", exit_at_end=False, metrics_port=0,
                            publish_every_examples=1500, publish_every_s=60.0)
    prometheus = None
    try:
        wait_for(lambda: running.trainer.metrics.port is not None, 30, "the metrics endpoint")
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{json.dumps(str(DEPLOY / 'rules.yml'))}]\n"
            "scrape_configs:\n"
            "  - job_name: streamrec-trainer\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{running.trainer.metrics.port}']}}]\n")
        with open(tmp_path / "prometheus.log", "w") as log:
            prometheus = subprocess.Popen(
                [shutil.which("prometheus") or "prometheus", f"--config.file={config}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return [r["value"][1] for r in _query(base, 'up{job="streamrec-trainer"}')] == ["1"]
            except OSError:
                assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
                return False

        wait_for(up, 60, "Prometheus to scrape the trainer", 0.3)
        replay = threading.Thread(target=replay_rows, args=(stack, settings, rows, "prom"), daemon=True)
        replay.start()
        replay.join(120)
        wait_for(lambda: scrape(running.trainer.metrics.port)["streamrec_examples_trained_total"] == len(rows), 90,
                 "the trainer to train every row", 0.2)
        scraped = scrape(running.trainer.metrics.port)

        def series(expr: str) -> dict[str, float]:
            return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in _query(base, expr)}

        def caught_up() -> bool:
            return list(series('streamrec_examples_trained_total{model="lr"}').values()) == [float(len(rows))]

        wait_for(caught_up, 30, "Prometheus to see every example", 0.3)
        (labels, examples), = series('streamrec_examples_trained_total{model="lr"}').items()
        assert json.loads(labels)["worker"] == "prom-w" and examples == scraped["streamrec_examples_trained_total"]

        def same_auc() -> bool:
            # the worker counts examples as it sends them; the learner posts their AUC a moment later
            nonlocal scraped
            scraped = scrape(running.trainer.metrics.port)
            auc = series('streamrec_auc_ratio{model="lr",window="recent"}')
            return list(auc.values()) == [scraped["streamrec_auc_ratio{window=recent}"]]

        wait_for(same_auc, 30, "Prometheus and the trainer to show the same AUC", 0.5)
        joins = series('streamrec_join_outcomes_total{model="lr"}')
        by_outcome = {json.loads(k)["outcome"]: v for k, v in joins.items()}
        assert by_outcome["positives"] + by_outcome["negatives"] == len(rows)
        # A recording rule from deploy/prometheus/rules.yml, evaluated by Prometheus itself.
        lag = sum(v for k, v in scraped.items() if k.startswith("streamrec_consumer_lag_messages"))
        wait_for(lambda: list(series('model:streamrec_consumer_lag_messages:sum{model="lr"}').values()) == [lag],
                 30, f"the lag recording rule to read {lag}", 0.3)

        # The dashboard, pointed at this Prometheus, reads the same values.
        collector = Collector(PrometheusSource(base), None, namespace)
        collector.tick()
        snapshot = collector.snapshot()
        assert snapshot["errors"] == []
        (worker,) = [w for w in snapshot["workers"] if w["model"] == "lr"]
        assert (worker["role"], worker["worker"]) == ("trainer", "prom-w")
        _t, values = worker["points"][-1]
        assert values["examples"] == len(rows)
        assert values["auc_window"] == scraped["streamrec_auc_ratio{window=recent}"]
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(15)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()
        running.stop()
