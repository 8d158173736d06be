"""`mailgate config`: export, import, history and the generated reference."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailgate.cli.common import Context, author, fail, fail_config
from mailgate.config.model import ConfigError
from mailgate.config.repository import ConflictError


@click.group()
def config() -> None:
    """The whole configuration as a file; its history and reference."""


@config.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.pass_obj
def export(ctx: Context, file: str | None) -> None:
    """Write the configuration as YAML to FILE (or standard output)."""
    text = ctx.config_service().export_text()
    if file:
        Path(file).write_text(text, encoding="utf-8")
        click.echo(f"written to {file}", err=True)
    else:
        sys.stdout.write(text)


@config.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_obj
def import_(ctx: Context, file: str) -> None:
    """Replace the whole configuration with FILE (YAML or JSON), if it is valid."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{file}: {exc.strerror}", 2)
    try:
        revision = ctx.config_service().import_text(text, author=author())
    except ConfigError as exc:
        fail_config(exc)
    except ConflictError as exc:
        fail(str(exc))
    click.echo(f"saved: configuration revision {revision.id}")
    ctx.notify()


@config.command()
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def history(ctx: Context, limit: int) -> None:
    """List the latest configuration revisions."""
    for rev in ctx.config_service().repository.history(limit):
        stamp = rev.created_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{rev.id:5}  {stamp}  {rev.author:20}  {rev.comment}")


@config.command()
@click.option("--output", type=click.Path(dir_okay=False), default=None)
def reference(output: str | None) -> None:
    """Print the configuration reference (Markdown) generated from the model."""
    from mailgate.config.reference import render

    text = render()
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
