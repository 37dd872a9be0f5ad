"""``streamrec models``: list, inspect and move a model's pointers in Redis (no restart needed)."""

from __future__ import annotations

import json
import time

import click

from streamrec.cli.common import settings_from
from streamrec.versions.store import VersionStore


@click.group()
@click.option("--model", help="Model name (STREAMREC_MODEL).")
@click.pass_context
def models(ctx: click.Context, model: str | None) -> None:
    """List, inspect and move the live pointer of a model's versions in Redis (no restart needed)."""
    ctx.obj = {**(ctx.obj or {}), "model": model}


def _store(ctx: click.Context) -> VersionStore:
    from streamrec.local_stack import resolve_redis_url
    from streamrec.stream.redis_connection import connect

    settings = settings_from(ctx)
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
        rows.append({"version": number, "parent": meta.parent, "lineage": meta.lineage,
                     "examples_seen": meta.examples_seen,
                     "auc": meta.auc, "auc_window": meta.auc_window, "created_at": meta.created_at,
                     "live": number == live, "head": number == head,
                     "gate": None if meta.gate is None else meta.gate.as_dict(),
                     "annotation": store.annotation(number)})
    if as_json:
        click.echo(json.dumps({"model": store.model, "namespace": store.namespace, "head": head, "live": live,
                               "pinned": pinned, "versions": rows}, indent=2))
        return
    if not rows:
        click.echo(f"no versions of {store.model!r} in namespace {store.namespace!r}")
        return
    click.echo(f"{store.model} in {store.namespace}: head v{head}, live v{live}{' (pinned)' if pinned else ''}")
    click.echo(f"  {'version':<7} {'parent':<7} {'lineage':<12} {'examples':>12}  {'AUC':<6} {'(window)':<8}  "
               f"{'published':<19}  marks / notes")
    for row in rows:
        held = row["gate"] and not row["gate"].get("promoted")
        marks = ",".join(m for m in ("live" if row["live"] else "", "head" if row["head"] else "",
                                     f"held ({row['gate']['reason']})" if held else "") if m)
        auc = "-" if row["auc"] is None else f"{row['auc']:.4f}"
        window = "-" if row["auc_window"] is None else f"{row['auc_window']:.4f}"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created_at"] or 0))
        parent = "-" if row["parent"] is None else f"v{row['parent']}"
        note = row["annotation"] or {}
        text = " ".join([note.get("description", "")[:60], *(f"#{t}" for t in note.get("tags", ()))]).strip()
        notes = "  ".join(x for x in (marks, text) if x)
        click.echo(f"  {'v' + str(row['version']):<7} {parent:<7} {row['lineage'] or '-':<12} "
                   f"{row['examples_seen']:>12,}  {auc:<6} {window:<8}  {when:<19}  {notes}")


@models.command("show")
@click.argument("version", type=int)
@click.pass_context
def models_show(ctx: click.Context, version: int) -> None:
    """The metadata of one version (JSON), with its annotation if it has one, the configuration it
    learns with (crosses, counts, settings), if it was searched, where its online search stands, and
    with keyed tables, their rows, admissions, evictions and bytes."""
    from streamrec.models import REGISTRY
    from streamrec.models.base import config_from_json, read_metadata
    from streamrec.models.keyed_rows import combined_summary
    from streamrec.models.online_search import configuration_of
    from streamrec.stream.errors import ModelError
    from streamrec.stream.feature_spec import FeatureSpec

    store = _store(ctx)
    shown = store.meta(version).to_dict()
    annotation = store.annotation(version)
    if annotation is not None:
        shown["annotation"] = annotation
    try:
        stored = store.load(version, with_state=False)
        weights = read_metadata(stored.model_blob)
        if stored.shards:  # ranks wrote it: their shards' tables together
            weights["tables"] = json.dumps(combined_summary(
                [json.loads(read_metadata(shard).get("tables") or "{}") for shard in stored.shards]))
    except ModelError:  # weights written by something else: the metadata above is all there is
        weights = {}
    if weights.get("model") in REGISTRY:
        config = config_from_json(REGISTRY[weights["model"]].config_class, weights["config"])
        shown["configuration"] = configuration_of(FeatureSpec.from_json(weights["spec"]), config)
    if "search" in weights:
        shown["search"] = json.loads(weights["search"])
        if "configuration" in shown:  # the steps the searched model learns each batch in
            shown["configuration"]["steps_per_batch"] = shown["search"].get("steps", 1)
    if "tables" in weights:  # keyed tables: rows held, admitted, evicted, bytes, rows per field
        shown["tables"] = json.loads(weights["tables"])
    history = store.history(version)
    if history is not None:  # a sequence model's histories: keys held, and expired by tables.ttl_seconds
        state = json.loads(history)
        shown["history"] = {"keys": len(state.get("users", ())), "expired": state.get("expired", 0),
                            "ttl_seconds": state.get("ttl_seconds", 0.0)}
    click.echo(json.dumps(shown, indent=2, sort_keys=True))


@models.command("annotate")
@click.argument("version", type=int)
@click.option("--description", "-m", help="What this version is (free text, up to 1000 characters).")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable; letters, digits, . _ - :).")
@click.pass_context
def models_annotate(ctx: click.Context, version: int, description: str | None, tags: tuple[str, ...]) -> None:
    """Describe and tag a version; `models list`, `models show` and the dashboard show it.
    Annotating again replaces the description and tags."""
    click.echo(_act(ctx, "annotate", version, description=description, tags=tags))


REASON = click.option("--reason", "-r", help="Why (kept on the model's timeline with who did it).")


def _act(ctx: click.Context, action: str, version: int | None = None, **kwargs: object) -> str:
    from streamrec.versions.operator_actions import apply_action

    return apply_action(_store(ctx), action, version, by=_operator(), **kwargs).message  # type: ignore[arg-type]


def _operator() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli {user}@{socket.gethostname()}"


@models.command("promote")
@click.argument("version", type=int)
@click.option("--champion", "make_champion", is_flag=True,
              help="Also make this model the namespace's champion (what `streamrec serve` without --model serves).")
@REASON
@click.pass_context
def models_promote(ctx: click.Context, version: int, make_champion: bool, reason: str | None) -> None:
    """Serve VERSION of this model now (its live pointer only; the champion stays unless --champion).
    The trainer's next version goes live again unless pinned."""
    click.echo(_act(ctx, "promote", version, reason=reason or "by hand (streamrec models promote)"))
    if make_champion:
        click.echo(_act(ctx, "champion", reason=reason or "by hand (streamrec models promote --champion)"))


@models.command("champion")
@click.argument("name", required=False)
@REASON
@click.pass_context
def models_champion(ctx: click.Context, name: str | None, reason: str | None) -> None:
    """Show the champion model (served by `streamrec serve` without --model), or make NAME it."""
    from streamrec.api import check_model_name
    from streamrec.versions.operator_actions import apply_action
    from streamrec.versions.store import champion

    store = _store(ctx)
    if name is None:
        current = champion(store.client, store.namespace)
        click.echo(current or f"no champion in namespace {store.namespace!r} (`streamrec models champion NAME` "
                              "names one)")
        return
    check_model_name(name)
    named = VersionStore(store.client, store.namespace, name)
    click.echo(apply_action(named, "champion", by=_operator(),
                            reason=reason or "by hand (streamrec models champion)").message)


@models.command("rollback")
@click.argument("version", type=int, required=False)
@REASON
@click.pass_context
def models_rollback(ctx: click.Context, version: int | None, reason: str | None) -> None:
    """Serve VERSION (default: the newest kept version before the live one that the quality gate
    promoted) and pin it."""
    click.echo(_act(ctx, "rollback", version, reason=reason or "by hand (streamrec models rollback)"))


@models.command("pin")
@click.argument("version", type=int, required=False)
@REASON
@click.pass_context
def models_pin(ctx: click.Context, version: int | None, reason: str | None) -> None:
    """Keep serving VERSION (default: the live one) whatever the trainer publishes."""
    click.echo(_act(ctx, "pin", version, reason=reason or "by hand (streamrec models pin)"))


@models.command("unpin")
@REASON
@click.pass_context
def models_unpin(ctx: click.Context, reason: str | None) -> None:
    """Let the trainer's versions go live again; the newest promoted version goes live now."""
    click.echo(_act(ctx, "unpin", reason=reason))
