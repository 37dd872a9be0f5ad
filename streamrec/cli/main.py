"""The ``streamrec`` command: the root group, its global flags, and errors mapped to exit codes
(stream/errors.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.markup import escape

from streamrec.cli.common import console
from streamrec.cli.data_commands import evaluate, generate, replay
from streamrec.cli.demo_command import demo
from streamrec.cli.model_commands import models
from streamrec.cli.stack_commands import stack, topics
from streamrec.cli.worker_commands import dashboard, join, serve, train
from streamrec.stream.errors import StreamrecError
from streamrec.stream.kafka_client import CLIENT_NAMES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), help="State directory (STREAMREC_HOME, default ~/.streamrec).")
@click.option("--kafka-bootstrap", help="Kafka bootstrap servers (STREAMREC_KAFKA_BOOTSTRAP); empty = local stack.")
@click.option("--redis-url", help="Redis URL (STREAMREC_REDIS_URL); empty = local stack.")
@click.option("--kafka-client", type=click.Choice(CLIENT_NAMES), help="Kafka client library (STREAMREC_KAFKA_CLIENT).")
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


for command in (stack, topics, generate, replay, evaluate, models, train, join, serve, dashboard, demo):
    cli.add_command(command)


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
        console.print(f"[red]error[/]: {escape(str(exc))}")  # a message may hold [brackets] (paths, tracebacks)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
