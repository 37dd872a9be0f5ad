"""``streamrec stack`` (the embedded broker and Redis) and ``streamrec topics``."""

from __future__ import annotations

import json
import sys

import click

from streamrec.cli.common import console, settings_from


@click.group()
def stack() -> None:
    """Start, stop or inspect the embedded local broker and Redis."""


@stack.command("up")
@click.option("--storage", type=click.Choice(["durable", "memory"]), default="durable", show_default=True,
              help="durable: topics, offsets and versions survive `stack down; stack up` (kept under "
                   "$STREAMREC_HOME/data); memory: nothing is kept, for throwaway runs.")
@click.pass_context
def stack_up(ctx: click.Context, storage: str) -> None:
    """Start Tansu and redis-server on free local ports (no-op if already running). A process of the
    stack that died is restarted alone, on its ports, so connected workers carry on."""
    from streamrec.local_stack import repair_stack, stack_status, start_stack, stop_stack
    from streamrec.stream.errors import StackError

    settings = settings_from(ctx)
    status = stack_status(settings.home)
    if status.get("running"):
        console.print(f"already running ({status['storage']}): kafka {status['kafka_bootstrap']}  "
                      f"redis {status['redis_url']}")
        return
    if "broker_pid" in status:
        try:
            restarted = repair_stack(settings.home)
        except StackError as exc:
            console.print(f"could not restart the stack on its ports ({exc}); starting it anew")
            restarted = []
        if restarted and stack_status(settings.home).get("running"):
            console.print(f"restarted {', '.join(restarted)} on its recorded ports ({status['storage']} storage)")
            return
        stop_stack(settings.home)
    state = start_stack(settings.home, storage=storage)
    kept = f"  data {settings.home / 'data'}" if storage == "durable" else "  (memory: nothing is kept)"
    console.print(f"kafka {state.kafka_bootstrap} (pid {state.broker_pid})  "
                  f"redis {state.redis_url} (pid {state.redis_pid}){kept}  state {settings.home / 'stack.json'}")


@stack.command("down")
@click.option("--delete-data", is_flag=True,
              help="Also delete what the durable stack kept (topics, offsets, versions) under $STREAMREC_HOME/data.")
@click.pass_context
def stack_down(ctx: click.Context, delete_data: bool) -> None:
    """Stop exactly the processes `stack up` started; a durable stack's data stays for the next `stack up`."""
    import shutil

    from streamrec.local_stack import stop_stack

    home = settings_from(ctx).home
    stopped = stop_stack(home)
    console.print(f"stopped pids {stopped}" if stopped else "no local stack was running")
    if delete_data and (home / "data").exists():
        shutil.rmtree(home / "data")
        console.print(f"deleted {home / 'data'}")


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def stack_status(ctx: click.Context, as_json: bool) -> None:
    """Show whether the local stack runs and where; exit 1 if it does not."""
    from streamrec.local_stack import stack_status as status_of

    status = status_of(settings_from(ctx).home)
    if as_json:
        click.echo(json.dumps(status, indent=2))
    elif status.get("running"):
        stale = status.get("stale_pids") or []
        note = f"; {' and '.join(stale)} answer(s) but not from the recorded pid (restarted by hand?)" if stale else ""
        s3 = f", s3 {status['s3_endpoint']} (pid {status['s3_pid']})" if status.get("s3_pid") else ""
        click.echo(f"running ({status['storage']}): kafka {status['kafka_bootstrap']} (pid {status['broker_pid']}), "
                   f"redis {status['redis_url']} (pid {status['redis_pid']}){s3}{note}")
    else:
        click.echo("not running")
    sys.exit(0 if status.get("running") else 1)


@click.group()
def topics() -> None:
    """Manage the stream's topics."""


@topics.command("create")
@click.option("--partitions", type=click.IntRange(min=1), help="Partitions per topic (STREAMREC_PARTITIONS).")
@click.pass_context
def topics_create(ctx: click.Context, partitions: int | None) -> None:
    """Create <ns>.impressions, <ns>.clicks, <ns>.dead-letter and <ns>.examples with equal partition counts."""
    from streamrec.local_stack import resolve_endpoints
    from streamrec.stream.kafka_client import KafkaSecurity, create_topics

    settings = settings_from(ctx, partitions=partitions)
    endpoints = resolve_endpoints(settings)
    names = [settings.impressions_topic, settings.clicks_topic, settings.dead_letter_topic, settings.examples_topic]
    created = create_topics(endpoints.kafka_bootstrap, names, settings.partitions,
                            security=KafkaSecurity.from_settings(settings))
    for name in names:
        click.echo(f"{name}: {'created' if name in created else 'exists'} ({settings.partitions} partitions)")
