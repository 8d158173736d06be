"""The `mailgate` command: run the gateway, and manage domains, settings, configuration files
and the queue. Configuration commands work whether the gateway runs or not; when it runs,
changes reach it at once."""

from __future__ import annotations

import click

from mailgate.cli.check import check
from mailgate.cli.common import Context
from mailgate.cli.config import config
from mailgate.cli.domain import domain
from mailgate.cli.log import log_
from mailgate.cli.quarantine import quarantine_
from mailgate.cli.queue import queue
from mailgate.cli.rules import rules
from mailgate.cli.run import run, status
from mailgate.cli.settings import settings
from mailgate.cli.setup import setup
from mailgate.cli.trace import trace
from mailgate.cli.users import token, user
from mailgate.cli.verify import stats, verify
from mailgate.service import default_data_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    envvar="MAILGATE_DATA_DIR",
    default=None,
    help="Node's data directory: spool, SQLite store, control socket. "
    "[default: /var/lib/mailgate as root, else ~/.local/share/mailgate]",
)
@click.option(
    "--store",
    envvar="MAILGATE_STORE",
    default=None,
    help="Store URL (SQLAlchemy), e.g. postgresql://host/db. [default: SQLite in the data dir]",
)
@click.pass_context
def cli(ctx: click.Context, data_dir: str | None, store: str | None) -> None:
    """mailgate: a secure mail gateway."""
    from pathlib import Path

    ctx.obj = Context(Path(data_dir) if data_dir else default_data_dir(), store)


for command in (run, status, domain, settings, rules, config, queue, quarantine_, log_, verify,
                stats, user, token, check, trace, setup):  # fmt: skip
    cli.add_command(command)


def main() -> None:
    cli(prog_name="mailgate")
