"""The deploy/ configs name only metrics that streamrec really exports, and parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from streamrec.consumers.join_exporter import JoinExporter
from streamrec.consumers.trainer_exporter import TrainerExporter
from streamrec.serving.http_app import ScorerMetrics
from streamrec.serving.scorer import Scorer

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")


def _exported() -> set[str]:
    scorer = Scorer("redis://127.0.0.1:1/0", "ns", "m", follow=False)  # never started: no connection
    ranked = TrainerExporter("m", "w-rank0")
    ranked.mark_rank("w", 0, 2)  # what a trainer run as ranks adds
    registries = [TrainerExporter("m", "w").registry, ranked.registry, JoinExporter("w").registry,
                  ScorerMetrics(scorer).registry]
    return {family.name + suffix for registry in registries for family in registry.collect() for suffix in SUFFIXES}


def test_every_metric_named_in_deploy_is_exported():
    exported = _exported()
    files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json")]
    assert len(files) >= 4
    named = set()
    for path in files:
        text = path.read_text()
        json.loads(text) if path.suffix == ".json" else list(yaml.safe_load_all(text))  # parses
        named |= {(m, path.name) for m in re.findall(r"streamrec_[a-z_]+[a-z]", text)}
    assert named, "no streamrec metric is referenced"
    unknown = sorted((m, f) for m, f in named if m not in exported)
    assert unknown == [], unknown


def test_the_dashboard_covers_every_model_metric_family():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "streamrec.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for name in ("streamrec_auc_ratio", "streamrec_logloss_nats", "streamrec_normalized_entropy_ratio",
                 "streamrec_calibration_ratio", "streamrec_consumer_lag_messages", "streamrec_join_outcomes",
                 "streamrec_dead_letters", "streamrec_examples_trained", "streamrec_live_version",
                 "streamrec_rollbacks_total", "streamrec_served_model_age_seconds", "streamrec_search_member_auc_ratio",
                 "streamrec_search_member_z"):
        assert name in exprs, name
    assert dashboard["templating"]["list"][0]["name"] == "model"


def test_the_image_copies_every_folder_that_installs_under_streamrec():
    import tomllib

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY (\S+) \1$", (DEPLOY / "Dockerfile").read_text(), re.M))
    assert folders and folders <= copied, sorted(folders - copied)
