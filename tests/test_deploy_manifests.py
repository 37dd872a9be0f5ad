"""deploy/compose.yaml and deploy/k8s/ are valid for their tools (the Compose specification's
schema; Kubernetes' OpenAPI schemas, strict) and wired to streamrec as it is: every streamrec
command line parses with the real CLI, every STREAMREC_ variable is a known setting, every
Service selects pods that exist and targets a port they expose, every scrape annotation names a
port the container listens on."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

from streamrec.cli import cli
from streamrec.stream.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SETTINGS = {f"STREAMREC_{name.upper()}" for name in Settings.model_fields}
K8S_VERSION = "1.30.0"


def _parses(args: list[str]) -> click.Command:
    """Parse a streamrec command line with the real CLI (options and types checked, nothing run)."""
    args = list(args)
    ctx = click.Context(cli, info_name="streamrec")
    command: click.Command = cli
    while isinstance(command, click.Group):
        name = args.pop(0)
        found = command.get_command(ctx, name)
        if found is None:
            raise click.UsageError(f"no command {name!r}")
        ctx = click.Context(found, info_name=name, parent=ctx)
        command = found
    command.make_context(command.name, args, parent=ctx.parent)
    return command


def _streamrec_lines(script: str, scratch: Path) -> list[list[str]]:
    """The `streamrec ...` invocations in a shell snippet, with $VARS given placeholder values and
    /tmp paths (files an earlier command of the snippet writes) moved to existing files in ``scratch``."""
    script = re.sub(r'"\$\$?\{(\w+):-([^}]*)\}"', r"\2", script)
    script = re.sub(r'"\$\{?(\w+)\}?"', "1", script)
    lines = []
    for part in re.split(r"&&|;", script):
        words = shlex.split(part.replace("exec ", ""))
        if words and words[0] == "torchrun":  # ranks of one model: torchrun ... -m streamrec ARGS
            words = words[words.index("-m") + 1:]
        if words and words[0] == "streamrec":
            lines.append([_scratch(w, scratch) for w in words[1:]])
    return lines


def _scratch(word: str, scratch: Path) -> str:
    if not word.startswith("/tmp/"):
        return word
    path = scratch / Path(word).name
    path.touch()
    return str(path)


# ------------------------------------------------------------------ compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_follows_the_compose_specification():
    jsonschema.Draft7Validator(get_builtin_schema("vendor.compose-spec")).validate(_compose())
    broken = _compose()
    broken["services"]["scorer"]["ports"] = {"not": "a list"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(get_builtin_schema("vendor.compose-spec")).validate(broken)


def test_compose_runs_the_whole_loop_with_real_streamrec_commands(tmp_path):
    services = _compose()["services"]
    assert {"kafka", "redis", "prometheus", "grafana", "trainer", "challenger", "scorer", "producer",
            "dashboard"} <= set(services)
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    commands = set()
    for name, service in services.items():
        if service.get("image") != "streamrec:local":
            continue
        env = service.get("environment", {})
        assert {k for k in env if k.startswith("STREAMREC_")} <= SETTINGS, name
        assert env["STREAMREC_KAFKA_BOOTSTRAP"] == "kafka:9092" and env["STREAMREC_REDIS_URL"].startswith("redis://redis:")
        if service.get("entrypoint") == ["sh", "-c"]:
            lines = _streamrec_lines(service["command"][0], tmp_path)
        else:
            lines = [[re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", word) for word in service["command"]]]
        for args in lines:
            commands.add(_parses(args).name)
    assert {"train", "join", "serve", "replay", "generate", "dashboard", "create"} <= commands
    trainers = ("trainer", "challenger", "ranked-0", "ranked-1")
    trainer_ports = {s["environment"]["STREAMREC_METRICS_PORT"] for n, s in services.items() if n in trainers}
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-compose.yml").read_text())
    jobs = {job["job_name"]: job["dns_sd_configs"][0] for job in prometheus["scrape_configs"]}
    assert str(jobs["streamrec-trainer"]["port"]) in trainer_ports
    assert set(jobs["streamrec-trainer"]["names"]) == set(trainers)
    assert services["scorer"]["command"][-1] == str(jobs["streamrec-scorer"]["port"])


# ------------------------------------------------------------------ kubernetes


def _k8s_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / "k8s" / resource).read_text()) if d]
    return docs


def test_kubernetes_manifests_pass_strict_schema_validation():
    docs = _k8s_docs()
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Deployment", "Service", "ConfigMap", "Job"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in ("StatefulSet", "Deployment", "Job")]


def test_kubernetes_manifests_are_wired_to_streamrec(tmp_path):
    docs = _k8s_docs()
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert set(config["data"]) <= SETTINGS
    pods = _pod_specs(docs)
    commands = set()
    for workload, template in pods:
        labels = template["metadata"]["labels"]
        if workload["kind"] != "Job":
            assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), workload["metadata"]["name"]
        for container in template["spec"]["containers"]:
            refs = [e["configMapRef"]["name"] for e in container.get("envFrom", [])]
            assert refs == [config["metadata"]["name"]]
            assert {e["name"] for e in container.get("env", []) if e["name"].startswith("STREAMREC_")} <= SETTINGS
            if container.get("command") == ["sh", "-c"]:
                lines = _streamrec_lines(container["args"][0], tmp_path)
            else:
                lines = [container["args"]]
            for args in lines:
                commands.add(_parses(args).name)
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            annotations = template["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/scrape") == "true":
                assert int(annotations["prometheus.io/port"]) in ports.values(), workload["metadata"]["name"]
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports
    assert {"train", "join", "serve", "dashboard", "replay", "generate", "create"} <= commands
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matched = [t for _w, t in pods if selector.items() <= t["metadata"]["labels"].items()]
        assert matched, service["metadata"]["name"]
        exposed = {p["name"] for t in matched for c in t["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= exposed, service["metadata"]["name"]
    trainer = next(w for w, _t in pods if w["metadata"]["name"] == "trainer")
    models = next(e["value"] for e in trainer["spec"]["template"]["spec"]["containers"][0]["env"]
                  if e["name"] == "TRAINER_MODELS").split(",")
    assert trainer["spec"]["replicas"] <= len(models)  # one model per pod ordinal
    # the join scales out in one consumer group and feeds every trainer
    join = next(w for w, _t in pods if w["metadata"]["name"] == "join")
    assert join["kind"] == "Deployment" and join["spec"]["replicas"] >= 2
    trainer_args = " ".join(trainer["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--from-examples" in trainer_args
    from streamrec.models import model_names

    assert set(models) <= set(model_names())
    # a model trained by ranks: one torchrun agent per pod, meeting at pod 0 of its own Service
    ranked = next(w for w, _t in pods if w["metadata"]["name"] == "trainer-ranks")
    container = ranked["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    args = shlex.split(container["args"][0])
    assert int(env["RANKS"]) == ranked["spec"]["replicas"] and args[args.index("--nnodes") + 1] == "$RANKS"
    endpoint = args[args.index("--rdzv-endpoint") + 1]
    assert endpoint == f"{ranked['metadata']['name']}-0.{ranked['spec']['serviceName']}:29400"
    assert env["RANKED_MODEL"] in model_names() and "--from-examples" in args


def test_the_cli_parser_used_above_rejects_what_streamrec_rejects():
    with pytest.raises(click.UsageError):
        _parses(["train", "--no-such-flag"])
    with pytest.raises(click.BadParameter):
        _parses(["serve", "--port", "notaport"])
