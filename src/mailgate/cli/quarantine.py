"""`mailgate quarantine`: kept messages: list, search, show, download, release, delete."""

from __future__ import annotations

import email
import email.policy
import json
import sys
from datetime import datetime
from pathlib import Path

import click

from mailgate.cli.common import Context, fail
from mailgate.quarantine import Quarantine, QuarantineError


def _store(ctx: Context) -> Quarantine:
    node = ctx.config_service().current().config.main.hostname
    return Quarantine(ctx.paths.quarantine, ctx.config_service().repository.engine, node)


@click.group("quarantine")
def quarantine_() -> None:
    """Messages kept by a Quarantine action."""


@quarantine_.command("list")
@click.option("--search", "text", default=None, help="Text in subject, sender, recipients, reason.")
@click.option("--sender", default=None)
@click.option("--recipient", default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(ctx: Context, text: str | None, sender: str | None, recipient: str | None,
          limit: int, as_json: bool) -> None:  # fmt: skip
    """List (and search) quarantined messages, newest first."""
    rows = _store(ctx).search(text, sender, recipient, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("the quarantine is empty")
    for row in rows:
        when = datetime.fromtimestamp(row["created"]).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{row['id']}  {when}  <{row['sender']}> -> {', '.join(row['recipients'])}  "
                   f"{row['subject'][:50]}  [{row['reason'][:60]}]")  # fmt: skip


@quarantine_.command()
@click.argument("qid")
@click.pass_obj
def show(ctx: Context, qid: str) -> None:
    """The verdicts, the headers and the text of a kept message (never its attachments)."""
    try:
        kept = _store(ctx).get(qid)
    except QuarantineError as exc:
        fail(str(exc))
    click.echo(json.dumps(kept.meta, indent=2))
    message = email.message_from_bytes(kept.content, policy=email.policy.default)
    for name, value in message.items():
        click.echo(f"{name}: {''.join(ch if ch.isprintable() else ' ' for ch in str(value))}")
    body = message.get_body(preferencelist=("plain",)) if hasattr(message, "get_body") else None
    if body is not None:
        text = body.get_content() if hasattr(body, "get_content") else ""
        click.echo("")
        click.echo("".join(ch if ch.isprintable() or ch == "\n" else " " for ch in str(text)))


@quarantine_.command()
@click.argument("qid")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.pass_obj
def download(ctx: Context, qid: str, file: str | None) -> None:
    """Write the original message (RFC 5322) to FILE or standard output."""
    try:
        raw = _store(ctx).raw(qid)
    except QuarantineError as exc:
        fail(str(exc))
    if file:
        Path(file).write_bytes(raw)
    else:
        sys.stdout.buffer.write(raw)


@quarantine_.command()
@click.argument("qid")
@click.pass_obj
def release(ctx: Context, qid: str) -> None:
    """Deliver a kept message to its original recipients, without scanning it again."""
    result = ctx.call("quarantine.release", qid=qid)
    if result is None:
        fail("mailgate is not running here; start it to release messages")
    click.echo(result)


@quarantine_.command()
@click.argument("qid")
@click.pass_obj
def delete(ctx: Context, qid: str) -> None:
    """Delete a kept message."""
    try:
        _store(ctx).delete(qid)
    except QuarantineError as exc:
        fail(str(exc))
    click.echo(f"{qid}: deleted")
